"""Echo times: the one validation every layer uses (acquisition configs, models, simulators).

Echo times are seconds, in the order of the data's echo axis. That order is kept as given: it
labels the echoes and need not be increasing (the decay fit sorts internally), and any spacing is
allowed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["validate_te"]


def validate_te(
    te_s: npt.ArrayLike, *, min_echoes: int = 1, allow_zero: bool = True
) -> npt.NDArray[np.float64]:
    """Check a set of echo times and return them as a read-only float64 vector.

    Parameters
    ----------
    te_s : array_like of shape (E,)
        Echo times, seconds, in the order of the data's echo axis (any order, any spacing).
    min_echoes : int
        Fewest echoes accepted: 2 for an acquisition, 1 where a single echo is meaningful
        (evaluating the signal model, simulating images), 0 for the decay fit (which reports
        fewer than 2 echoes per voxel, as a status, instead of raising).
    allow_zero : bool
        Accept ``TE = 0``, the model's time origin (``S(0) = S0``). Echo times of an acquisition
        are strictly positive: pass False there.

    Returns
    -------
    te : ndarray of shape (E,), float64
        A read-only copy, in the given order.

    Raises
    ------
    ValueError
        The first rule broken, in this order, naming ``te_s``: not one-dimensional ("1-D"),
        fewer than `min_echoes` echoes ("at least N echoes"), a NaN or infinite entry
        ("finite"), a negative (or, without `allow_zero`, zero) entry (">= 0" / "> 0"), a
        repeated entry ("distinct").
    """
    te = np.array(te_s, dtype=np.float64, copy=True)
    if te.ndim != 1:
        raise ValueError(
            f"te_s must be a 1-D sequence of echo times in seconds, got shape {te.shape}"
        )
    if te.size < min_echoes:
        noun = "echo" if min_echoes == 1 else "echoes"
        raise ValueError(f"te_s needs at least {min_echoes} {noun}, got {te.size}")
    if not np.all(np.isfinite(te)):
        raise ValueError(f"te_s must be finite, got {te.tolist()}")
    too_small = te < 0 if allow_zero else te <= 0
    if np.any(too_small):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"te_s must be {bound} (seconds), got {te.tolist()}")
    if np.unique(te).size != te.size:
        raise ValueError(f"te_s must be distinct, got {te.tolist()}")
    te.setflags(write=False)
    return te
