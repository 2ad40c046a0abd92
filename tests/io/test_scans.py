"""Finding a BIDS dataset's scans (:mod:`oefray.io.scans`): sessions, acq/run entities,
part-less and 4-D magnitudes, inherited sidecars, QSM, mask and truth from any derivative, and
the one-line errors (with their near misses) of the layouts that cannot be read."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oefray.errors import DatasetError
from oefray.io import bids, scans
from oefray.io.slabs import iter_brain_voxels

TE = (0.005, 0.01, 0.015, 0.02)
SHAPE = (6, 7, 5)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


# --------------------------------------------------------------------------------------------
# Writing small datasets
# --------------------------------------------------------------------------------------------


def _arrays(rng: np.random.Generator, n_echoes: int = len(TE)) -> dict[str, object]:
    """Random images of one scan on the grid :data:`SHAPE`.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the voxel values.
    n_echoes : int
        Number of magnitude echoes.

    Returns
    -------
    dict
        ``mag`` (X, Y, Z, n_echoes), ``chi`` and ``mask`` (X, Y, Z) arrays, and ``truth``: the
        ground-truth maps keyed as :data:`oefray.io.bids.TRUTH_DESC`.
    """
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return {
        "mag": rng.uniform(0.1, 1.2, size=(*SHAPE, n_echoes)).astype(np.float32),
        "chi": rng.normal(0, 0.05, size=SHAPE).astype(np.float32),
        "mask": mask,
        "truth": {k: rng.uniform(0, 1, size=SHAPE).astype(np.float32) for k in bids.TRUTH_DESC},
    }


def _save(path: Path, data: np.ndarray, dtype: type = np.float32) -> None:
    """Write ``data`` as a NIfTI image on :data:`AFFINE`, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), AFFINE), path)


def _write_json(path: Path, meta: object) -> None:
    """Write a JSON sidecar, creating the folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta) + "\n")


def _start(root: Path, labels: Sequence[str], split: str = "train") -> None:
    """Describe ``root`` as a raw BIDS dataset of ``labels``, all in one ``split``."""
    bids.write_dataset_description(root, "test")
    bids.write_participants(
        root, [{"participant_id": f"sub-{label}", "split": split} for label in labels]
    )


def _write_scan(
    root: Path,
    label: str,
    rng: np.random.Generator,
    *,
    session: str = "",
    entities: str = "",
    part: str = "_part-mag",
    four_d: bool = False,
    suffix: str = ".nii.gz",
    te: Sequence[float] = TE,
    derivatives: bool = True,
    qsm: str = "qsm",
    qsm_entities: str = "",
    qsm_suffix: str | None = None,
    mask_name: str = "desc-brain_mask",
    truth: str | None = None,
) -> dict[str, object]:
    """Write one scan: magnitude echoes with sidecars, and optionally its derivatives.

    Parameters
    ----------
    root : Path
        Dataset root (see :func:`_start`).
    label, session : str
        Subject and session labels (``session`` "": the subject has no session folders).
    rng : numpy.random.Generator
        Source of the voxel values (:func:`_arrays`).
    entities : str
        Entities between the scan's name and ``echo-`` (``"_acq-gre_run-1"``).
    part : str
        ``"_part-mag"``, or ``""`` for part-less magnitudes.
    four_d : bool
        One 4-D ``<name><entities><part>_MEGRE`` file (sidecar: an ``EchoTime`` list) instead of
        one 3-D ``echo-<k>`` file per echo.
    suffix : {".nii.gz", ".nii"}
        Extension of the echoes (and, unless ``qsm_suffix`` says otherwise, the derivatives).
    te : sequence of float
        Echo times in seconds.
    derivatives : bool
        Whether to write the QSM and mask (and ``truth``).
    qsm, qsm_entities, qsm_suffix : str
        The derivative folder of the QSM and mask, the entities of their names (after the scan's
        ``sub-``/``ses-``), and their extension.
    mask_name : str
        The mask's name after the entities (``desc-brain_mask`` or ``mask``).
    truth : str, optional
        Derivative folder to write the ground truth into (None: none).

    Returns
    -------
    dict
        The arrays written (:func:`_arrays`).
    """
    arrays = _arrays(rng, len(te))
    scan = f"sub-{label}" + (f"_ses-{session}" if session else "")
    where = Path(f"sub-{label}") / (f"ses-{session}" if session else "") / "anat"
    anat = root / where
    if four_d:
        stem = f"{scan}{entities}{part}_MEGRE"
        _save(anat / f"{stem}{suffix}", arrays["mag"])
        _write_json(anat / f"{stem}.json", {"EchoTime": [float(t) for t in te]})
    else:
        for k, t in enumerate(te, start=1):
            stem = f"{scan}{entities}_echo-{k}{part}_MEGRE"
            _save(anat / f"{stem}{suffix}", arrays["mag"][..., k - 1])
            _write_json(anat / f"{stem}.json", {"EchoTime": float(t), "EchoNumber": k})
    if not derivatives:
        return arrays
    ext = suffix if qsm_suffix is None else qsm_suffix
    folder = root / "derivatives" / qsm
    bids.write_dataset_description(folder, qsm, generated_by="test")
    _save(folder / where / f"{scan}{qsm_entities}_Chimap{ext}", arrays["chi"])
    _save(folder / where / f"{scan}{qsm_entities}_{mask_name}{ext}", arrays["mask"], np.uint8)
    if truth is not None:
        for name, values in arrays["truth"].items():
            stem = bids.truth_stem(label + qsm_entities, name)
            _save(root / "derivatives" / truth / where / f"{stem}{ext}", values)
    return arrays


def _error(call: Callable[[], object]) -> str:
    """The one-line message of the :class:`DatasetError` that ``call()`` raises."""
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _names(paths: Sequence[str]) -> list[str]:
    return [Path(p).name for p in paths]


def _assert_slabs_equal(a: bids.ScanFiles, b: bids.ScanFiles) -> None:
    """Every slab read from scan ``a`` is exactly the one read from scan ``b``."""
    for z0, z1 in [(0, SHAPE[2]), (1, 3), (4, 5)]:
        sa, sb = bids.read_slab(a, z0, z1), bids.read_slab(b, z0, z1)
        np.testing.assert_array_equal(sa.magnitude, sb.magnitude)
        np.testing.assert_array_equal(sa.chi, sb.chi)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        va, vb = bids.read_brain_voxels(a, z0, z1), bids.read_brain_voxels(b, z0, z1)
        np.testing.assert_array_equal(va.signal, vb.signal)
        np.testing.assert_array_equal(va.chi, vb.chi)
        np.testing.assert_array_equal(va.mask, vb.mask)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder, its path resolved (as :func:`scans.scan_dataset` names its files)."""
    return tmp_path.resolve()


# --------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------


def _write_sessions(root: Path) -> dict[str, dict[str, object]]:
    """Subject X with sessions 01 and 02, subject Y without sessions; split ``test``."""
    rng = np.random.default_rng(1)
    _start(root, ["X", "Y"], split="test")
    return {
        "X_ses-01": _write_scan(root, "X", rng, session="01"),
        "X_ses-02": _write_scan(root, "X", rng, session="02", te=(0.004, 0.008, 0.012)),
        "Y": _write_scan(root, "Y", rng),
    }


def test_each_session_is_a_scan(root):
    arrays = _write_sessions(root)
    index = scans.scan_dataset(root)
    assert list(index.scans) == ["X_ses-01", "X_ses-02", "Y"] and not index.errors
    assert index.keys == ["X_ses-01", "X_ses-02", "Y"]
    assert index.split == {"X_ses-01": "test", "X_ses-02": "test", "Y": "test"}
    for key, session in (("X_ses-01", "01"), ("X_ses-02", "02")):
        scan = index.scans[key]
        assert (scan.label, scan.session, scan.key) == ("X", session, key)
        assert scan.prefix == f"sub-X_ses-{session}" and scan.entities == ()
        anat = root / "sub-X" / f"ses-{session}" / "anat"
        assert [Path(p).parent for p in scan.echoes] == [anat] * len(scan.te_s)
        assert _names(scan.echoes)[0] == f"sub-X_ses-{session}_echo-1_part-mag_MEGRE.nii.gz"
        qsm = root / "derivatives" / "qsm" / "sub-X" / f"ses-{session}" / "anat"
        assert scan.chi == str(qsm / f"sub-X_ses-{session}_Chimap.nii.gz")
        assert scan.mask == str(qsm / f"sub-X_ses-{session}_desc-brain_mask.nii.gz")
        slab = bids.read_slab(scan, 0, SHAPE[2])
        np.testing.assert_array_equal(slab.magnitude, arrays[key]["mag"])
        np.testing.assert_array_equal(slab.chi, arrays[key]["chi"])
    assert index.scans["X_ses-01"].te_s == TE
    assert index.scans["X_ses-02"].te_s == (0.004, 0.008, 0.012)
    y = index.scans["Y"]
    assert (y.session, y.key, y.prefix) == ("", "Y", "sub-Y")


def test_a_session_is_selected_by_its_scan_key(root):
    _write_sessions(root)
    index = scans.scan_dataset(root, ["X_ses-02"])
    assert list(index.scans) == ["X_ses-02"] and index.split == {"X_ses-02": "test"}
    assert list(scans.scan_dataset(root, ["X"]).scans) == ["X_ses-01", "X_ses-02"]
    assert list(scans.scan_dataset(root, ["X_ses-02", "Y"]).scans) == ["X_ses-02", "Y"]
    assert scans.sessions_of(root, "X") == ["01", "02"] and scans.sessions_of(root, "Y") == [""]
    # one session read on its own
    scan = scans.scan_subject(root, "X", "01")
    assert scan.key == "X_ses-01" and scan.te_s == TE


def test_an_unknown_session_or_subject_is_an_error(root):
    _write_sessions(root)
    message = _error(lambda: scans.scan_dataset(root, ["X_ses-03"]))
    assert message == f"{root / 'sub-X'}: no such session(s): 03"
    message = _error(lambda: scans.scan_dataset(root, ["Y_ses-01"]))
    assert message == f"{root / 'sub-Y'}: no such session(s): 01"
    message = _error(lambda: scans.scan_dataset(root, ["Z_ses-01", "X"]))
    assert message == f"{root}: no such subject(s): Z_ses-01"


def test_a_session_qsm_named_without_its_session_is_a_near_miss(root):
    _write_sessions(root)
    qsm = root / "derivatives" / "qsm" / "sub-X" / "ses-01" / "anat"
    (qsm / "sub-X_ses-01_Chimap.nii.gz").rename(qsm / "sub-X_Chimap.nii.gz")
    index = scans.scan_dataset(root)
    assert list(index.scans) == ["X_ses-02", "Y"] and list(index.errors) == ["X_ses-01"]
    message = str(index.errors["X_ses-01"])
    assert message.startswith(f"{root / 'derivatives' / '*' / 'sub-X' / 'ses-01' / 'anat'}: ")
    assert "QSM map is missing (no sub-X_ses-01[_<entities>]_Chimap.nii[.gz]" in message
    assert "; seen: qsm/sub-X_Chimap.nii.gz (no ses-)" in message
    assert index.keys == ["X_ses-01", "X_ses-02", "Y"] and index.split["X_ses-01"] == "test"


# --------------------------------------------------------------------------------------------
# acq / run entities
# --------------------------------------------------------------------------------------------


def test_acq_and_run_are_recorded_and_a_derivative_without_them_matches(root):
    _start(root, ["X"])
    arrays = _write_scan(
        root, "X", np.random.default_rng(2), entities="_acq-gre_run-1", qsm_suffix=".nii"
    )
    scan = scans.scan_subject(root, "X")
    assert scan.entities == (("acq", "gre"), ("run", "1"))
    assert scan.prefix == "sub-X_acq-gre_run-1" and scan.key == "X"
    assert _names(scan.echoes) == [
        f"sub-X_acq-gre_run-1_echo-{k}_part-mag_MEGRE.nii.gz" for k in (1, 2, 3, 4)
    ]
    assert scan.te_s == TE and scan.volumes == ()
    assert Path(scan.chi).name == "sub-X_Chimap.nii"
    assert Path(scan.mask).name == "sub-X_desc-brain_mask.nii"
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).magnitude, arrays["mag"])


def _write_two_runs(root: Path) -> None:
    """Subject X with runs 1 (echo times :data:`TE`) and 2 (three others) of ``acq-gre``."""
    rng = np.random.default_rng(3)
    _start(root, ["X"])
    _write_scan(root, "X", rng, entities="_acq-gre_run-1")
    _write_scan(
        root, "X", rng, entities="_acq-gre_run-2", te=(0.003, 0.006, 0.009), derivatives=False
    )


def test_two_runs_are_refused_with_both_candidates_listed(root):
    _write_two_runs(root)
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == (
        f"{root / 'sub-X' / 'anat'}: several acquisitions: acq-gre_run-1 (4 file(s)), "
        "acq-gre_run-2 (3 file(s)); choose one with --acq/--run"
    )
    # acq alone does not tell them apart
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(acq="gre"))
    )
    assert "several acquisitions: acq-gre_run-1 (4 file(s)), acq-gre_run-2 (3 file(s))" in message


def test_a_run_is_chosen_by_the_selection(root):
    _write_two_runs(root)
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(run="2"))
    assert scan.entities == (("acq", "gre"), ("run", "2"))
    assert scan.prefix == "sub-X_acq-gre_run-2" and scan.te_s == (0.003, 0.006, 0.009)
    assert _names(scan.echoes) == [
        f"sub-X_acq-gre_run-2_echo-{k}_part-mag_MEGRE.nii.gz" for k in (1, 2, 3)
    ]
    both = scans.ScanSelection(acq="gre", run="1")
    assert scans.scan_subject(root, "X", selection=both).te_s == TE
    index = scans.scan_dataset(root, selection=scans.ScanSelection(run="1"))
    assert list(index.scans) == ["X"] and index.scans["X"].prefix == "sub-X_acq-gre_run-1"


def test_a_run_that_does_not_exist_names_those_that_do(root):
    _write_two_runs(root)
    message = _error(lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(run="3")))
    assert message.startswith(
        f"{root / 'sub-X' / 'anat'}: found 0 magnitude echo(es) of the chosen acquisition; it has "
        "acq-gre_run-1 (4 file(s)), acq-gre_run-2 (3 file(s)); seen: "
    )
    assert (
        "sub-X_acq-gre_run-1_echo-1_part-mag_MEGRE.nii.gz (acq-gre_run-1, not --run 3)" in message
    )
    assert (
        "sub-X_acq-gre_run-2_echo-3_part-mag_MEGRE.nii.gz (acq-gre_run-2, not --run 3)" in message
    )
    assert "more" not in message  # 7 near misses: all shown


def test_a_derivative_of_another_run_does_not_match(root):
    _start(root, ["X"])
    rng = np.random.default_rng(4)
    _write_scan(root, "X", rng, entities="_acq-gre_run-1", qsm_entities="_run-2")
    qsm = root / "derivatives" / "qsm" / "sub-X" / "anat"
    (qsm / "sub-X_run-2_desc-brain_mask.nii.gz").rename(qsm / "sub-X_desc-brain_mask.nii.gz")
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == (
        f"{root / 'derivatives' / '*' / 'sub-X' / 'anat'}: QSM map is missing (no "
        "sub-X[_<entities>]_Chimap.nii[.gz] in any derivative); seen: "
        "qsm/sub-X_run-2_Chimap.nii.gz (run-2, not the scan's run-1)"
    )
    # the run's own QSM (as QSMxT names it, acq and run kept) is found beside the other run's
    chi = rng.normal(size=SHAPE).astype(np.float32)
    _save(qsm / "sub-X_acq-gre_run-1_Chimap.nii.gz", chi)
    scan = scans.scan_subject(root, "X")
    assert scan.chi == str(qsm / "sub-X_acq-gre_run-1_Chimap.nii.gz")
    assert scan.mask == str(qsm / "sub-X_desc-brain_mask.nii.gz")
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).chi, chi)


# --------------------------------------------------------------------------------------------
# part-mag, part-less and part-phase
# --------------------------------------------------------------------------------------------


def test_partless_magnitudes_without_phase_are_read(root):
    _start(root, ["X"])
    arrays = _write_scan(root, "X", np.random.default_rng(5), part="")
    scan = scans.scan_subject(root, "X")
    assert _names(scan.echoes) == [f"sub-X_echo-{k}_MEGRE.nii.gz" for k in (1, 2, 3, 4)]
    assert scan.te_s == TE and scan.entities == () and scan.prefix == "sub-X"
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).magnitude, arrays["mag"])


def _write_phase(root: Path, label: str = "X") -> list[Path]:
    """``part-phase`` echoes (with sidecars) beside subject ``label``'s magnitudes."""
    anat = root / f"sub-{label}" / "anat"
    paths = []
    for k, te in enumerate(TE, start=1):
        stem = f"sub-{label}_echo-{k}_part-phase_MEGRE"
        _save(anat / f"{stem}.nii.gz", np.full(SHAPE, 0.5 * k))
        _write_json(anat / f"{stem}.json", {"EchoTime": te})
        paths.append(anat / f"{stem}.nii.gz")
    return paths


def test_partless_magnitudes_beside_phase_are_refused(root):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(6), part="")
    _write_phase(root)
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message.startswith(f"{root / 'sub-X' / 'anat'}: found 0 magnitude echo(es)")
    assert "need at least 2; seen: " in message
    for k in (1, 2, 3, 4):
        assert f"sub-X_echo-{k}_MEGRE.nii.gz (no part- beside part-phase files)" in message


def test_a_4d_part_mag_beside_a_4d_part_phase_is_read(root, caplog):
    _start(root, ["X"])
    arrays = _write_scan(root, "X", np.random.default_rng(21), four_d=True)
    _write_scan(
        root, "X", np.random.default_rng(22), four_d=True, part="_part-phase", derivatives=False
    )
    anat = root / "sub-X" / "anat"
    with caplog.at_level(logging.INFO, logger="oefray.io.scans"):
        scan = scans.scan_subject(root, "X")
    assert scan.echoes == (str(anat / "sub-X_part-mag_MEGRE.nii.gz"),) * 4
    assert scan.volumes == (0, 1, 2, 3) and scan.te_s == TE
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).magnitude, arrays["mag"])
    assert [r.getMessage() for r in caplog.records if r.name == "oefray.io.scans"] == [
        f"{anat / 'sub-X_part-phase_MEGRE.nii.gz'}: ignored (part-phase: oefray reads the "
        "magnitude)"
    ]


def test_phase_beside_part_mag_is_ignored_and_logged(root, caplog):
    _start(root, ["X"])
    arrays = _write_scan(root, "X", np.random.default_rng(7))
    phase = _write_phase(root)
    with caplog.at_level(logging.INFO, logger="oefray.io.scans"):
        scan = scans.scan_subject(root, "X")
    assert _names(scan.echoes) == [f"sub-X_echo-{k}_part-mag_MEGRE.nii.gz" for k in (1, 2, 3, 4)]
    assert scan.te_s == TE
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).magnitude, arrays["mag"])
    ignored = [
        r.getMessage()
        for r in caplog.records
        if r.name == "oefray.io.scans" and "ignored (part-phase" in r.getMessage()
    ]
    assert ignored == [f"{p}: ignored (part-phase: oefray reads the magnitude)" for p in phase]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "oefray.io.scans")


# --------------------------------------------------------------------------------------------
# 4-D MEGRE
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["", "_part-mag"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_4d_megre_reads_as_its_3d_echoes(tmp_path, suffix, part):
    three, four = tmp_path.resolve() / "three", tmp_path.resolve() / "four"
    for where, four_d in ((three, False), (four, True)):
        _start(where, ["X"])
        _write_scan(where, "X", np.random.default_rng(8), four_d=four_d, part=part, suffix=suffix)
    a = scans.scan_subject(three, "X")
    b = scans.scan_subject(four, "X")
    image = four / "sub-X" / "anat" / f"sub-X{part}_MEGRE{suffix}"
    assert nib.load(image).shape == (*SHAPE, 4)
    assert b.echoes == (str(image),) * 4 and b.volumes == (0, 1, 2, 3)
    assert [b.volume(k) for k in range(4)] == [0, 1, 2, 3] and a.volume(0) is None
    assert a.volumes == () and len(set(a.echoes)) == 4
    assert b.te_s == a.te_s == TE
    assert (b.shape, b.affine, b.n_brain, b.entities) == (a.shape, a.affine, a.n_brain, ())
    _assert_slabs_equal(a, b)
    mag = _arrays(np.random.default_rng(8))["mag"]
    np.testing.assert_array_equal(bids.read_slab(b, 0, SHAPE[2]).magnitude, mag)


@pytest.mark.parametrize("read_ahead", [True, False])
def test_iter_brain_voxels_streams_a_4d_megre(root, read_ahead):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(9), four_d=True, part="")
    scan = scans.scan_subject(root, "X")
    assert scan.volumes == (0, 1, 2, 3) and scan.echoes[0].endswith("sub-X_MEGRE.nii.gz")
    bounds = [(0, 2), (2, 5)]
    streamed = list(iter_brain_voxels(scan, bounds, read_ahead=read_ahead))
    assert [(v.z0, v.z1) for v in streamed] == bounds
    for voxels, (z0, z1) in zip(streamed, bounds, strict=True):
        expected = bids.read_brain_voxels(scan, z0, z1)
        assert voxels.signal.shape == (int(expected.mask.sum()), 4)
        np.testing.assert_array_equal(voxels.mask, expected.mask)
        np.testing.assert_array_equal(voxels.signal, expected.signal)
        np.testing.assert_array_equal(voxels.chi, expected.chi)
    assert sum(len(v.signal) for v in streamed) == scan.n_brain


@pytest.mark.parametrize(
    ("echo_time", "got"),
    [(0.005, "got 0.005"), ([0.005, 0.01, 0.015], "got a list of 3")],
)
def test_a_4d_megre_needs_one_echo_time_per_volume(root, echo_time, got):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(10), four_d=True, part="")
    sidecar = root / "sub-X" / "anat" / "sub-X_MEGRE.json"
    _write_json(sidecar, {"EchoTime": echo_time})
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == f"{sidecar}: a 4-D MEGRE of 4 echoes needs an EchoTime list of 4, {got}"


# --------------------------------------------------------------------------------------------
# Sidecar inheritance
# --------------------------------------------------------------------------------------------


def _write_inheriting(root: Path) -> None:
    """Subjects A and B whose echoes have no sidecar of their own; the top-level
    ``echo-<k>_part-mag_MEGRE.json`` give their echo times."""
    rng = np.random.default_rng(11)
    _start(root, ["A", "B"])
    for label in ("A", "B"):
        _write_scan(root, label, rng)
        for sidecar in (root / f"sub-{label}" / "anat").glob("*.json"):
            sidecar.unlink()
    for k, te in enumerate(TE, start=1):
        _write_json(root / f"echo-{k}_part-mag_MEGRE.json", {"EchoTime": te})


def test_top_level_sidecars_apply_to_every_subject(root):
    _write_inheriting(root)
    index = scans.scan_dataset(root)
    assert list(index.scans) == ["A", "B"] and not index.errors
    assert index.scans["A"].te_s == index.scans["B"].te_s == TE


def test_a_deeper_sidecar_overrides_an_inherited_one(root):
    _write_inheriting(root)
    _write_json(root / "sub-B" / "sub-B_echo-2_part-mag_MEGRE.json", {"EchoTime": 0.012})
    index = scans.scan_dataset(root)
    assert index.scans["A"].te_s == TE
    assert index.scans["B"].te_s == (0.005, 0.012, 0.015, 0.02)
    # the image's own sidecar wins over the subject's
    _write_json(root / "sub-B" / "anat" / "sub-B_echo-2_part-mag_MEGRE.json", {"EchoTime": 0.011})
    assert scans.scan_subject(root, "B").te_s == (0.005, 0.011, 0.015, 0.02)


def test_sidecar_metadata_merges_key_by_key(root):
    _write_inheriting(root)
    _write_json(root / "MEGRE.json", {"EchoTime": 0.5, "FlipAngle": 15, "Manufacturer": "x"})
    _write_json(root / "sub-A" / "sub-A_MEGRE.json", {"Manufacturer": "y"})
    own = root / "sub-A" / "anat" / "sub-A_echo-1_part-mag_MEGRE.json"
    _write_json(own, {"EchoNumber": 1})
    image = root / "sub-A" / "anat" / "sub-A_echo-1_part-mag_MEGRE.nii.gz"
    # at the top level, echo-1_part-mag_MEGRE.json (more entities) wins over MEGRE.json
    assert scans.sidecar_metadata(image) == {
        "EchoTime": 0.005,
        "FlipAngle": 15,
        "Manufacturer": "y",
        "EchoNumber": 1,
    }
    phase = root / "sub-A" / "anat" / "sub-A_echo-1_part-phase_MEGRE.nii.gz"
    assert scans.sidecar_metadata(phase) == {"EchoTime": 0.5, "FlipAngle": 15, "Manufacturer": "y"}


def test_a_top_level_megre_json_gives_a_4d_file_its_echo_times(root):
    rng = np.random.default_rng(12)
    _start(root, ["A", "B"])
    for label in ("A", "B"):
        _write_scan(root, label, rng, four_d=True, part="")
        (root / f"sub-{label}" / "anat" / f"sub-{label}_MEGRE.json").unlink()
    _write_json(root / "MEGRE.json", {"EchoTime": [0.004, 0.008, 0.012, 0.016]})
    index = scans.scan_dataset(root)
    assert list(index.scans) == ["A", "B"] and not index.errors
    for scan in index.scans.values():
        assert scan.te_s == (0.004, 0.008, 0.012, 0.016) and scan.volumes == (0, 1, 2, 3)


def test_a_malformed_top_level_sidecar_is_named(root):
    _write_inheriting(root)
    bad = root / "echo-3_part-mag_MEGRE.json"
    bad.write_text('{"EchoTime": 0.015')
    message = _error(lambda: scans.scan_subject(root, "A"))
    assert message.startswith(f"{bad}: malformed JSON (")
    index = scans.scan_dataset(root)
    assert not index.scans and list(index.errors) == ["A", "B"]
    assert all(str(e).startswith(f"{bad}: malformed JSON") for e in index.errors.values())


def test_no_sidecar_anywhere_is_an_error(root):
    _write_inheriting(root)
    for k in (1, 2, 3, 4):
        (root / f"echo-{k}_part-mag_MEGRE.json").unlink()
    message = _error(lambda: scans.scan_subject(root, "A"))
    sidecar = root / "sub-A" / "anat" / "sub-A_echo-1_part-mag_MEGRE.json"
    assert message == (
        f"{sidecar}: JSON sidecar is missing and none is inherited (it must give EchoTime in "
        "seconds)"
    )


# --------------------------------------------------------------------------------------------
# QSM and mask from any derivative
# --------------------------------------------------------------------------------------------


def test_qsm_and_a_bare_mask_from_another_pipeline(root):
    _start(root, ["X"])
    arrays = _write_scan(
        root, "X", np.random.default_rng(13), qsm="qsmxt", mask_name="mask", qsm_suffix=".nii"
    )
    scan = scans.scan_subject(root, "X")
    qsmxt = root / "derivatives" / "qsmxt" / "sub-X" / "anat"
    assert scan.chi == str(qsmxt / "sub-X_Chimap.nii")
    assert scan.mask == str(qsmxt / "sub-X_mask.nii")
    assert scan.n_brain == int(arrays["mask"].sum()) == 4 * 5 * 3
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).chi, arrays["chi"])
    # a desc-brain_mask is preferred to the bare _mask
    brain = np.zeros(SHAPE, bool)
    brain[2:4, 2:4, 2:4] = True
    _save(qsmxt / "sub-X_desc-brain_mask.nii", brain, np.uint8)
    scan = scans.scan_subject(root, "X")
    assert scan.mask == str(qsmxt / "sub-X_desc-brain_mask.nii") and scan.n_brain == 8


def _write_two_pipelines(root: Path) -> dict[str, np.ndarray]:
    """Subject X with a QSM and mask in both ``derivatives/qsm`` and ``derivatives/other``."""
    rng = np.random.default_rng(14)
    _start(root, ["X"])
    _write_scan(root, "X", rng)
    other = root / "derivatives" / "other" / "sub-X" / "anat"
    chi = rng.normal(size=SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[:3] = True
    _save(other / "sub-X_Chimap.nii.gz", chi)
    _save(other / "sub-X_desc-brain_mask.nii.gz", mask, np.uint8)
    return {"chi": chi, "mask": mask}


def test_several_qsm_maps_must_be_chosen(root):
    _write_two_pipelines(root)
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == (
        f"{root / 'derivatives'}: several QSM maps for sub-X: other/sub-X_Chimap.nii.gz, "
        "qsm/sub-X_Chimap.nii.gz; choose one with --qsm NAME"
    )


def test_the_qsm_derivative_is_chosen_by_name(root):
    other = _write_two_pipelines(root)
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(qsm="other"))
    folder = root / "derivatives" / "other" / "sub-X" / "anat"
    assert scan.chi == str(folder / "sub-X_Chimap.nii.gz")
    assert scan.mask == str(folder / "sub-X_desc-brain_mask.nii.gz")
    assert scan.n_brain == int(other["mask"].sum()) == 3 * 7 * 5
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).chi, other["chi"])
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(qsm="qsm"))
    assert "/derivatives/qsm/" in scan.chi and scan.n_brain == 4 * 5 * 3


def test_an_unknown_qsm_derivative_lists_those_there_are(root):
    _write_two_pipelines(root)
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(qsm="nope"))
    )
    assert message == (
        f"{root / 'derivatives' / 'nope'}: no such derivative (--qsm); derivatives/ holds "
        "other, qsm"
    )


def test_a_named_qsm_derivative_without_the_scans_qsm(root):
    _write_two_pipelines(root)
    other = root / "derivatives" / "other" / "sub-X" / "anat"
    (other / "sub-X_Chimap.nii.gz").rename(other / "sub-X_run-2_Chimap.nii.gz")
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(qsm="other"))
    )
    assert message == (
        f"{other}: QSM map is missing (no sub-X[_<entities>]_Chimap.nii[.gz] in "
        "derivatives/other); seen: other/sub-X_run-2_Chimap.nii.gz (run-2)"
    )
    # left open, the one derivative with a QSM for the scan is used
    assert "/derivatives/qsm/" in scans.scan_subject(root, "X").chi


def test_a_missing_mask_names_the_near_misses(root):
    _start(root, ["X"])
    arrays = _write_scan(root, "X", np.random.default_rng(15))
    qsm = root / "derivatives" / "qsm" / "sub-X" / "anat"
    (qsm / "sub-X_desc-brain_mask.nii.gz").unlink()
    _save(qsm / "sub-X_desc-csf_mask.nii.gz", arrays["mask"], np.uint8)
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == (
        f"{qsm}: brain mask is missing (sub-X[_<entities>]_desc-brain_mask or _mask.nii[.gz]); "
        "seen: qsm/sub-X_desc-csf_mask.nii.gz (desc-csf)"
    )


def test_the_mask_derivative_is_chosen_by_name(root):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(16))
    masks = root / "derivatives" / "masks" / "sub-X" / "anat"
    mask = np.zeros(SHAPE, bool)
    mask[2:5, 2:5, 1:3] = True
    _save(masks / "sub-X_desc-brain_mask.nii.gz", mask, np.uint8)
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(mask="masks"))
    assert scan.chi == str(root / "derivatives" / "qsm" / "sub-X" / "anat" / "sub-X_Chimap.nii.gz")
    assert scan.mask == str(masks / "sub-X_desc-brain_mask.nii.gz") and scan.n_brain == 18
    np.testing.assert_array_equal(bids.read_slab(scan, 0, SHAPE[2]).mask, mask)
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(mask="nope"))
    )
    assert message == (
        f"{root / 'derivatives' / 'nope'}: no such derivative (--mask); derivatives/ holds "
        "masks, qsm"
    )


def test_a_named_mask_derivative_lists_each_near_miss_once(root):
    """A file of another run in the ``--mask`` derivative is one near miss, named once."""
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(20))
    masks = root / "derivatives" / "masks" / "sub-X" / "anat"
    _save(masks / "sub-X_run-2_desc-brain_mask.nii.gz", np.ones(SHAPE), np.uint8)
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(mask="masks"))
    )
    assert message == (
        f"{masks}: brain mask is missing (sub-X[_<entities>]_desc-brain_mask or _mask.nii[.gz]); "
        "seen: masks/sub-X_run-2_desc-brain_mask.nii.gz (run-2)"
    )


# --------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------


def test_no_truth_derivative_is_no_ground_truth(root):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(17))
    assert not (root / "derivatives" / "qq").exists()
    assert scans.scan_subject(root, "X").truth == {}
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(truth="nope"))
    )
    assert message == (
        f"{root / 'derivatives' / 'nope'}: no such derivative (--truth); derivatives/ holds qsm"
    )


def test_truth_from_a_named_derivative(root):
    _start(root, ["X"])
    arrays = _write_scan(root, "X", np.random.default_rng(18), truth="ref")
    assert scans.scan_subject(root, "X").truth == {}  # qq (the default) is absent
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(truth="ref"))
    ref = root / "derivatives" / "ref" / "sub-X" / "anat"
    assert scan.truth == {
        name: str(ref / f"{bids.truth_stem('X', name)}.nii.gz") for name in bids.TRUTH_DESC
    }
    # the ground truth's desc-nb_Chimap is not a QSM: the QSM still comes from qsm
    assert "/derivatives/qsm/" in scan.chi
    slab = bids.read_slab(scan, 0, SHAPE[2])
    for name in bids.TRUTH_DESC:
        np.testing.assert_array_equal(slab.truth[name], arrays["truth"][name])


# --------------------------------------------------------------------------------------------
# Near misses
# --------------------------------------------------------------------------------------------


def test_a_folder_without_megre_lists_what_it_holds(root):
    _start(root, ["X"])
    anat = root / "sub-X" / "anat"
    _save(anat / "sub-X_T2starw.nii.gz", np.ones(SHAPE))
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == (
        f"{anat}: found 0 magnitude echo(es) (*_echo-<k>[_part-mag]_MEGRE.nii[.gz]); need at "
        "least 2; seen: sub-X_T2starw.nii.gz (suffix T2starw)"
    )
    # echoes that name another subject are near misses too, listed first
    _save(anat / "sub-Y_echo-1_part-mag_MEGRE.nii.gz", np.ones(SHAPE))
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message.endswith(
        "; seen: sub-Y_echo-1_part-mag_MEGRE.nii.gz (names sub-Y), sub-X_T2starw.nii.gz "
        "(suffix T2starw)"
    )


def test_a_long_list_of_near_misses_is_cut(root):
    _start(root, ["X"])
    anat = root / "sub-X" / "anat"
    for k in range(scans.MAX_SEEN + 2):
        _save(anat / f"sub-X_run-{k}_T2starw.nii.gz", np.ones(SHAPE))
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message.count("(suffix T2starw)") == scans.MAX_SEEN
    assert message.endswith(", and 2 more")


def test_a_subject_without_anat_or_sessions(root):
    _start(root, ["X", "Y"])
    _write_scan(root, "Y", np.random.default_rng(19))
    (root / "sub-X" / "func").mkdir(parents=True)
    (root / "sub-X" / "notes.txt").write_text("nothing here\n")
    index = scans.scan_dataset(root)
    assert list(index.scans) == ["Y"] and list(index.errors) == ["X"]
    assert str(index.errors["X"]) == (
        f"{root / 'sub-X' / 'anat'}: missing anat folder (and no ses-<label> folders); found "
        "func/, notes.txt"
    )
    assert index.keys == ["X", "Y"] and index.split == {"X": "train", "Y": "train"}
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message == f"{root / 'sub-X' / 'anat'}: missing anat folder"
    shutil.rmtree(root / "sub-X" / "func")
    (root / "sub-X" / "notes.txt").unlink()
    assert str(scans.scan_dataset(root).errors["X"]).endswith(
        "missing anat folder (and no ses-<label> folders); the folder is empty"
    )


# --------------------------------------------------------------------------------------------
# ScanSelection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("acq", "a/b", "--acq must be a BIDS label"),
        ("run", "1_2", "--run must be a BIDS label"),
        ("acq", "", "--acq must be a BIDS label"),
        ("qsm", "../x", "--qsm must name a folder under derivatives/"),
        ("qsm", "..", "--qsm must name a folder under derivatives/"),
        ("mask", "a\\b", "--mask must name a folder under derivatives/"),
        ("truth", "", "--truth must name a folder under derivatives/"),
    ],
)
def test_scan_selection_refuses_what_is_not_a_label_or_a_folder_name(field, value, match):
    with pytest.raises(ValueError, match=match) as info:
        scans.ScanSelection(**{field: value})
    assert repr(value) in str(info.value)


def test_scan_selection_defaults():
    selection = scans.ScanSelection()
    assert (selection.acq, selection.run, selection.qsm, selection.mask) == (None,) * 4
    assert selection.truth == "qq"
    assert scans.ScanSelection(acq="gre", run="2", qsm="qsmxt").run == "2"


# --------------------------------------------------------------------------------------------
# Indices, phase-only folders, a named truth without maps
# --------------------------------------------------------------------------------------------


def test_run_is_an_index_so_run_01_is_run_1(root):
    """BIDS ``run`` is an index: ``--run 1`` chooses ``run-01``, and a derivative named
    ``run-1`` matches a ``run-01`` scan."""
    rng = np.random.default_rng(41)
    _start(root, ["X"])
    _write_scan(root, "X", rng, entities="_run-01", qsm_entities="_run-1")
    _write_scan(root, "X", rng, entities="_run-02", derivatives=False)
    scan = scans.scan_subject(root, "X", selection=scans.ScanSelection(run="1"))
    assert scan.entities == (("run", "01"),) and scan.te_s == TE
    assert Path(scan.chi).name == "sub-X_run-1_Chimap.nii.gz"


def test_a_folder_of_phase_only_names_the_phase_it_ignored(root):
    rng = np.random.default_rng(42)
    _start(root, ["X"])
    _write_scan(root, "X", rng, part="_part-phase")
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message.startswith(f"{root / 'sub-X' / 'anat'}: found 0 magnitude echo(es)")
    assert "sub-X_echo-1_part-phase_MEGRE.nii.gz (part-phase: ignored)" in message


def test_partless_files_beside_part_mag_are_named_when_the_scan_fails(root):
    rng = np.random.default_rng(43)
    _start(root, ["X"])
    _write_scan(root, "X", rng, te=(0.005,), derivatives=False)  # one part-mag echo
    _write_scan(root, "X", rng, part="", derivatives=False)  # four part-less ones
    message = _error(lambda: scans.scan_subject(root, "X"))
    assert message.startswith(f"{root / 'sub-X' / 'anat'}: found 1 magnitude echo(es)")
    assert "sub-X_echo-3_MEGRE.nii.gz (no part- beside part-mag files)" in message


def test_a_named_truth_derivative_without_the_scans_maps_is_an_error(root):
    _start(root, ["X"])
    _write_scan(root, "X", np.random.default_rng(44))
    (root / "derivatives" / "ref" / "sub-X" / "anat").mkdir(parents=True)
    message = _error(
        lambda: scans.scan_subject(root, "X", selection=scans.ScanSelection(truth="ref"))
    )
    assert message == (
        f"{root / 'derivatives' / 'ref' / 'sub-X' / 'anat'}: no ground-truth maps of sub-X "
        "(--truth ref)"
    )
