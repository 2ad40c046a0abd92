"""Tests of the one echo-time validation (oefray.physics.echoes.validate_te) and of its callers
refusing bad echo times with its messages."""

from __future__ import annotations

import numpy as np
import pytest

from oefray.config import EchoScheme
from oefray.ml.ccm import build_library
from oefray.physics.decay import DecayModel, fit_decay_loglinear
from oefray.physics.echoes import validate_te
from oefray.physics.phantom import simulate_subject
from oefray.physics.qq import qbold_signal

TE_UNEVEN_UNSORTED = [0.012, 0.003, 0.0045, 0.030]


def test_valid_echo_times_come_back_as_a_read_only_float64_copy_in_their_order() -> None:
    given = np.array(TE_UNEVEN_UNSORTED)
    te = validate_te(given)
    assert te.dtype == np.float64 and te.ndim == 1
    np.testing.assert_array_equal(te, given)  # unsorted and unevenly spaced: kept as given
    assert not te.flags.writeable
    given[0] = 1.0
    assert te[0] == 0.012  # a copy
    np.testing.assert_array_equal(validate_te((1, 2)), [1.0, 2.0])  # ints and tuples too


@pytest.mark.parametrize(
    ("te", "kwargs", "message"),
    [
        (0.005, {}, "te_s must be a 1-D sequence"),
        ([[0.005, 0.01]], {}, "te_s must be a 1-D sequence"),
        ([], {}, "te_s needs at least 1 echo, got 0"),
        ([0.005], {"min_echoes": 2}, "te_s needs at least 2 echoes, got 1"),
        ([0.005, np.nan], {}, "te_s must be finite"),
        ([0.005, np.inf], {}, "te_s must be finite"),
        ([0.005, -0.01], {}, "te_s must be >= 0 (seconds)"),
        ([0.0, 0.01], {"allow_zero": False}, "te_s must be > 0 (seconds)"),
        ([0.005, 0.005, 0.01], {}, "te_s must be distinct"),
        ([np.nan, np.nan], {}, "te_s must be finite"),  # the rules in their documented order
        ([-1.0, -1.0], {}, "te_s must be >= 0"),
        ([0.005], {"min_echoes": 2, "allow_zero": False}, "at least 2 echoes"),
    ],
)
def test_each_rule_raises_with_its_message(te: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_te(te, **kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_zero_echoes_allowed_and_zero_time_by_default() -> None:
    assert validate_te([], min_echoes=0).shape == (0,)
    np.testing.assert_array_equal(validate_te([0.0, 0.01]), [0.0, 0.01])


@pytest.mark.parametrize(
    "call",
    [
        lambda te: EchoScheme(tuple(te)),
        lambda te: DecayModel(te),
        lambda te: fit_decay_loglinear(np.ones((1, len(te))), te),
        lambda te: qbold_signal(1.0, 13.5, 0.6, 0.03, 0.0, te),
        lambda te: simulate_subject((8, 8, 8), 22.0, te, 0),
        lambda te: build_library(np.ones((4, 5)), te),
    ],
    ids=["EchoScheme", "DecayModel", "fit_decay_loglinear", "qbold_signal", "phantom", "ccm"],
)
def test_every_caller_uses_the_one_validation(call) -> None:
    for te, message in (([0.005, 0.01, 0.005], "distinct"), ([0.005, np.nan], "finite")):
        with pytest.raises(ValueError, match=f"te_s must be {message}"):
            call(te)


def test_echo_scheme_keeps_its_rounding_and_acquisition_rules() -> None:
    assert EchoScheme.uniform(4.5e-3, 5e-3, 3).te_s == (0.0045, 0.0095, 0.0145)
    assert EchoScheme((0.012, 0.003)).te_s == (0.012, 0.003)  # acquisition order kept
    with pytest.raises(ValueError, match="at least 2 echoes"):
        EchoScheme((0.0045,))
    with pytest.raises(ValueError, match="> 0"):
        EchoScheme((0.0, 0.005))
    with pytest.raises(ValueError, match="distinct"):  # equal after rounding to 1e-12 s
        EchoScheme((0.005, 0.005 + 1e-14))
