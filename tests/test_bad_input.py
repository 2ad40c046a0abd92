"""Bad input everywhere: property/fuzz tests (hypothesis) on the decay fitter, the window builder,
the BIDS reader and the config readers, and the command line's answer to each kind of bad input:
one line naming what is wrong, a non-zero exit, nothing half-written. The README's table of
"what was tried and what the user sees" is this file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oefray.cli import main
from oefray.config import TrainConfig, config_from_mapping, read_config_file
from oefray.errors import DatasetError, OefrayError
from oefray.io.scans import scan_dataset
from oefray.ml.windows import FEATURES, TARGETS, WindowConfig, make_windows
from oefray.physics.decay import FitStatus, fit_decay

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# The decay fitter
# --------------------------------------------------------------------------------------------

#: Any float a scanner file can hold, and some it should not: NaN, +-inf, 0, negatives, 1e300.
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
ECHO_TIMES = st.lists(
    st.floats(min_value=1e-4, max_value=0.2), min_size=2, max_size=12, unique=True
).filter(lambda te: np.unique(np.round(te, 9)).size == len(te))


@FUZZ
@given(data=st.data(), te=ECHO_TIMES, dtype=st.sampled_from([np.float32, np.float64]))
def test_decay_fit_never_raises_on_bad_values_and_flags_them(data, te, dtype):
    """Whatever the voxel values, the fit returns; a voxel with a non-finite echo is never OK;
    an OK voxel has finite, non-negative A and finite B, E."""
    with np.errstate(over="ignore"):  # float32: huge values become inf, on purpose
        signal = data.draw(arrays(np.float64, (7, len(te)), elements=ANY_FLOAT)).astype(dtype)
    fit = fit_decay(signal, te)
    status = np.asarray(fit.status)
    assert status.shape == (7,)
    assert set(np.unique(status)) <= {int(s) for s in FitStatus}
    bad = ~np.all(np.isfinite(signal), axis=1)
    assert np.all(status[bad] != FitStatus.OK)
    ok = status == FitStatus.OK
    for name in ("A", "B", "E"):
        values = np.asarray(getattr(fit, name))[ok]
        assert np.all(np.isfinite(values)), name
    assert np.all(np.asarray(fit.A)[ok] >= 0)


@FUZZ
@given(
    te=ECHO_TIMES,
    a=st.floats(0.1, 1e4),
    b=st.floats(0.0, 80.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_unsorted_echo_times_give_the_same_fit(te, a, b, seed):
    """Echo order is only a labelling: permuting echoes and echo times leaves the fit unchanged
    (rtol 1e-6 on A and B)."""
    rng = np.random.default_rng(seed)
    te = np.asarray(te)
    signal = a * np.exp(-b * te) * (1 + 0.01 * rng.standard_normal(te.size))
    assume(np.all(signal > 0))
    order = rng.permutation(te.size)
    one, two = fit_decay(signal[None], te), fit_decay(signal[None, order], te[order])
    assert int(one.status[0]) == int(two.status[0])
    if int(one.status[0]) == FitStatus.OK:
        np.testing.assert_allclose(two.A, one.A, rtol=1e-6)
        np.testing.assert_allclose(two.B, one.B, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("te", "message"),
    [
        ([0.005, 0.005, 0.01], "distinct"),
        ([0.005, float("nan")], "finite"),
        ([0.005, -0.01], ">= 0"),
        ([[0.005, 0.01]], "1-D"),
    ],
)
def test_bad_echo_times_are_refused_by_name(te, message):
    n = np.size(te)
    with pytest.raises(ValueError, match="te_s") as info:
        fit_decay(np.ones((3, n)), te)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("signal", "message"),
    [
        (np.ones((3, 4), dtype=np.complex64), "real (magnitude)"),
        (np.array([["a", "b", "c", "d"]]), "numeric"),
        (np.ones((3, 5)), "(..., 4)"),
    ],
)
def test_bad_signal_arrays_are_refused_by_name(signal, message):
    with pytest.raises(ValueError) as info:
        fit_decay(signal, [0.005, 0.01, 0.015, 0.02])
    assert message in str(info.value)


def test_a_single_echo_flags_every_voxel_instead_of_raising():
    fit = fit_decay(np.ones((3, 1)), [0.005])
    assert np.all(np.asarray(fit.status) == FitStatus.TOO_FEW_ECHOES)
    assert np.all(np.isnan(fit.A))


def test_integer_and_boolean_signals_are_fitted_as_floats():
    te = np.array([0.005, 0.01, 0.015, 0.02])
    ints = np.round(1000 * np.exp(-20 * te)).astype(np.int16)[None]
    fit = fit_decay(ints, te)
    assert int(fit.status[0]) == FitStatus.OK
    assert float(fit.B[0]) == pytest.approx(20.0, rel=2e-3)


# --------------------------------------------------------------------------------------------
# The window builder
# --------------------------------------------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    m=st.integers(0, 40),
    length=st.sampled_from([1, 3, 5, 7]),
    anchor=st.sampled_from(["centre", "last"]),
)
def test_windows_hold_only_finite_features_whatever_the_rows(data, m, length, anchor):
    """NaN/inf/huge features and failed fits are dropped, never windowed; the counts add up."""
    columns = {
        "idx": np.sort(
            np.asarray(
                data.draw(st.lists(st.integers(0, 10**6), min_size=m, max_size=m, unique=True))
            )
        ).astype(np.int64),
        "status": data.draw(arrays(np.int8, m, elements=st.sampled_from([0, 0, 0, 1, 2, 7]))),
    }
    for name in FEATURES + TARGETS:
        columns[name] = data.draw(arrays(np.float64, m, elements=ANY_FLOAT))
    w = make_windows(columns, WindowConfig(length, anchor))
    assert np.all(np.isfinite(w.x))
    assert w.x.shape[1:] == (length, 4)
    assert w.n_voxels == m
    assert len(w.x) + w.n_excluded + w.n_no_window == m
    with np.errstate(over="ignore"):
        finite = np.all(
            np.isfinite(np.stack([columns[c].astype(np.float32) for c in FEATURES], 1)), 1
        )
    kept = (columns["status"] == 0) & finite
    assert w.n_excluded == m - int(kept.sum())
    assert set(w.idx.tolist()) <= set(columns["idx"][kept].tolist())


@pytest.mark.parametrize(
    ("length", "anchor", "message"),
    [
        (4, "centre", "odd length"),
        (0, "last", ">= 1"),
        (5, "middle", "anchor"),
        (2.5, "last", "integer"),
    ],
)
def test_bad_window_configs_are_refused_by_name(length, anchor, message):
    with pytest.raises(ValueError, match="window") as info:
        WindowConfig(length, anchor)  # type: ignore[arg-type]
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------
# The BIDS reader
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort(tiny_cohort, tmp_path_factory) -> Path:
    """One subject of the tiny cohort, copied so each test can damage its own copy."""
    root = tmp_path_factory.mktemp("bad") / "one"
    shutil.copytree(tiny_cohort, root, ignore=shutil.ignore_patterns("sub-P4", "sub-P6", "sub-P11"))
    return root


def _copy(cohort: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bids"
    shutil.copytree(cohort, out)
    return out


def _sidecar(root: Path, echo: int = 2) -> Path:
    return next((root / "sub-P3" / "anat").glob(f"*echo-{echo}_*.json"))


SIDECARS = st.one_of(
    st.text(max_size=40),  # anything, mostly not JSON
    st.builds(
        json.dumps,
        st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=5), max_size=3),
    ),
    st.builds(
        lambda v: json.dumps({"EchoTime": v}),
        st.one_of(
            st.none(),
            st.booleans(),
            st.text(max_size=6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(10**6), 10**6),
            st.lists(st.floats(0, 1), max_size=2),
        ),
    ),
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=SIDECARS)
def test_fuzzed_sidecars_give_one_line_naming_the_sidecar(cohort, tmp_path, text):
    """Any sidecar content either yields a valid echo time (positive seconds, distinct) or a
    DatasetError whose message is one line starting with the sidecar's path."""
    sidecar = _sidecar(cohort)
    original = sidecar.read_text()
    try:
        sidecar.write_text(text)
        try:
            index = scan_dataset(cohort)
        except DatasetError as exc:
            message = str(exc)
            assert "\n" not in message
            assert message.startswith(str(sidecar)) or message.startswith(str(sidecar.parent))
            return
        if index.errors:
            message = str(next(iter(index.errors.values())))
            assert "\n" not in message and str(sidecar.parent) in message
            return
        te = index.scans["P3"].te_s
        assert all(0 < t < 1 for t in te) and len(set(te)) == len(te)
    finally:
        sidecar.write_text(original)


# --------------------------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------------------------

KNOWN = {f for f in TrainConfig.__dataclass_fields__}


@FUZZ
@given(
    extra=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
            lambda k: k not in KNOWN
        ),
        st.integers() | st.text(max_size=4),
        min_size=1,
        max_size=3,
    )
)
def test_unknown_config_keys_are_named(extra):
    with pytest.raises(OefrayError) as info:
        config_from_mapping(TrainConfig, {"epochs": 3, **extra}, "train.toml")
    message = str(info.value)
    assert message.startswith("train.toml: unknown config key(s): ")
    assert all(k in message for k in extra)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workers": 0}, "workers must be >= 1"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"val_fraction": 1.5}, "val_fraction must be in (0, 1)"),
        ({"window": 4}, "odd length"),
        ({"anchor": "first"}, "anchor"),
        ({"max_failures": -2}, "max_failures"),
    ],
)
def test_wrong_config_values_are_named(values, message):
    with pytest.raises(OefrayError) as info:
        config_from_mapping(TrainConfig, values, "train.toml")
    assert str(info.value).startswith("train.toml: ") and message in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.toml", "epochs = [", "malformed config"),
        ("c.yaml", "epochs: [1,\n", "malformed config"),
        ("c.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("c.json", "{}", "config files are .toml, .yaml or .yml"),
    ],
)
def test_malformed_config_files_are_named(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(OefrayError) as info:
        read_config_file(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


# --------------------------------------------------------------------------------------------
# The command line: one line, non-zero exit, nothing half-written
# --------------------------------------------------------------------------------------------


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("oefray: error: ")]
    assert len(errors) == 1, err
    return errors[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _damage(root: Path, how: str) -> Path:
    """Break the copied one-subject cohort in one way; return the file at fault."""
    anat = root / "sub-P3" / "anat"
    if how == "malformed sidecar":
        path = _sidecar(root)
        path.write_text("{EchoTime: 0.01")
    elif how == "echo time in ms":
        path = _sidecar(root)
        path.write_text(json.dumps({"EchoTime": 14.5}))
    elif how == "duplicate echo time":
        path = _sidecar(root, 3)
        path.write_text(_sidecar(root, 2).read_text())
        path = anat
    elif how == "one echo":
        for k in range(2, 20):
            for p in anat.glob(f"*echo-{k}_*"):
                p.unlink()
        path = anat
    elif how == "complex magnitude":
        path = next(anat.glob("*echo-1_*.nii*"))
        img = nib.load(path)
        data = np.asarray(img.dataobj).astype(np.complex64)
        nib.save(nib.Nifti1Image(data, img.affine), path)
    elif how == "4-D echo":
        path = next(anat.glob("*echo-1_*.nii*"))
        img = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros((*img.shape, 2), np.float32), img.affine), path)
    elif how == "not NIfTI":
        path = next(anat.glob("*echo-1_*.nii*"))
        path.write_bytes(b"this is not an image")
    else:
        raise AssertionError(how)
    return path


@pytest.mark.ray
@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("malformed sidecar", "malformed JSON"),
        ("echo time in ms", "looks like milliseconds"),
        ("duplicate echo time", "duplicate echo times"),
        ("one echo", "found 1 magnitude echo(es)"),
        ("complex magnitude", "complex"),
        ("4-D echo", "3-D volume"),
        ("not NIfTI", "NIfTI"),
    ],
)
def test_preprocess_refuses_a_broken_dataset_in_one_line(
    cohort, tmp_path, ray_local, capsys, how, message
):
    root = _copy(cohort, tmp_path)
    culprit = _damage(root, how)
    out = tmp_path / "features"
    code = main(["preprocess", str(root), "--out", str(out)])
    assert code != 0
    line = _one_error_line(capsys)
    assert str(culprit) in line and message in line, line
    assert not out.exists() or not any(out.glob("subject=*"))  # nothing half-written


@pytest.mark.ray
def test_bad_voxel_values_are_flagged_not_fatal(cohort, tmp_path, ray_local):
    """NaN, inf, zero, negative and huge magnitudes inside the brain: the run completes and
    those voxels carry a non-OK fit status (they never reach training windows)."""
    from oefray.io.features import read_features

    root = _copy(cohort, tmp_path)
    anat = root / "sub-P3" / "anat"
    mask = (
        np.asarray(nib.load(next((root / "derivatives").rglob("*_desc-brain_mask.nii*"))).dataobj)
        > 0
    )
    inside = np.argwhere(mask)[:5]
    poison = [np.nan, np.inf, 0.0, -5.0, 1e300]
    for k in (1, 2):
        path = next(anat.glob(f"*echo-{k}_*.nii*"))
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
        for (i, j, z), value in zip(inside, poison, strict=True):
            data[i, j, z] = value
        nib.save(nib.Nifti1Image(data, img.affine), path)
    assert main(["preprocess", str(root), "--out", str(tmp_path / "features")]) == 0
    table = read_features(tmp_path / "features").to_pandas().set_index(["i", "j", "k"])
    status = [int(table.loc[tuple(int(c) for c in v), "status"]) for v in inside]
    assert all(s != FitStatus.OK for s in status), status


def test_unknown_run_id_is_one_line(tmp_path, capsys):
    code = main(["evaluate", "0" * 32, "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert code != 0
    assert f"unknown MLflow run id {'0' * 32}" in _one_error_line(capsys)
    assert not list(tmp_path.glob("results.json"))


def test_unreachable_cluster_is_one_line(cohort, tmp_path):
    """In a process of its own (a test session's Ray runtime would otherwise be reused)."""
    address = f"127.0.0.1:{_closed_port()}"
    out = tmp_path / "f"
    proc = subprocess.run(
        [sys.executable, "-m", "oefray.cli", "preprocess", str(cohort), "--out", str(out)]
        + ["--address", address],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, RAY_ADDRESS=""),
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("oefray: error: ")]
    assert errors == [
        f"oefray: error: {address}: cannot reach the Ray cluster (Connection refused)"
    ]
    assert not out.exists()


def test_unknown_config_key_on_the_command_line(tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text("[train]\nepochs = 2\nlearning_rte = 0.001\n")
    code = main(["train", str(tmp_path), "--config", str(config)])
    assert code != 0
    line = _one_error_line(capsys)
    assert str(config) in line and "learning_rte" in line


@pytest.mark.ray
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 0}, "features format version 0 is not the supported 3"),
        ({"format": "something-else"}, "not an oefray features manifest"),
    ],
)
def test_features_from_another_version_are_refused(
    tiny_features, tmp_path, capsys, change, message
):
    old = tmp_path / "old-features"
    shutil.copytree(tiny_features, old)
    manifest = json.loads((old / "_manifest.json").read_text())
    (old / "_manifest.json").write_text(json.dumps({**manifest, **change}))
    code = main(["train", str(old), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert code != 0
    line = _one_error_line(capsys)
    assert str(old / "_manifest.json") in line and message in line
    from oefray.tracking import Tracker

    client = Tracker(f"sqlite:///{tmp_path}/m.db").client
    assert not [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ]
