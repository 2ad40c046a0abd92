"""Datasets as other tools write them, through ``oefray preprocess`` (and on to windows, splits
and ``oefray predict``), run as a user runs them: qsm-forward's output and a QSMxT-named
derivative as written (no renaming), a session level, ``acq``/``run`` entities, and one bad scan
among good ones. Layouts of the fixtures: :mod:`tests.peer_datasets`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from oefray.cli import main
from oefray.config import PredictConfig
from oefray.io import features as fio
from oefray.io.manifest import FeaturesManifest
from oefray.ml.windows import WindowConfig, make_windows_table
from oefray.orchestration.predict import predict
from oefray.physics.decay import FitStatus
from tests.bids_validator import assert_valid
from tests.peer_datasets import QSM_FORWARD_TE_S, QSMXT_ACQ, QSMXT_RUN

pytestmark = pytest.mark.ray

_FEATURES = ("i", "j", "k", "idx", "A", "B", "E", "S", "status", "Y", "v", "R2", "S0", "chi_nb")


def _preprocess(dataset: Path, out: Path, *flags: str) -> dict:
    code = main(["preprocess", str(dataset), "--out", str(out), *flags])
    results = json.loads((out / fio.RESULTS).read_text()) if (out / fio.RESULTS).is_file() else {}
    results["exit"] = code
    return results


def test_qsm_forward_output_preprocesses_as_written(qsm_forward_cohort, ray_local, tmp_path):
    """qsm-forward 0.32 ``simple``: raw ``sub-1/anat`` echoes with phase beside them, QSM and a
    bare ``_mask`` under ``derivatives/qsm-forward``, no sidecars there, no participants.tsv."""
    out = tmp_path / "features"
    results = _preprocess(qsm_forward_cohort, out)
    assert results["exit"] == 0
    assert results["scans"] == [
        {"scan": "sub-1", "subject": "1", "session": "", "outcome": "done", "voxels": 1857}
    ]
    manifest = FeaturesManifest.load(out)
    record = manifest.subjects["1"]
    anat = qsm_forward_cohort / "sub-1" / "anat"
    derived = qsm_forward_cohort / "derivatives" / "qsm-forward" / "sub-1" / "anat"
    assert record.echo_times_s == pytest.approx(QSM_FORWARD_TE_S)
    assert record.source_files == {
        "echoes": [str(anat / f"sub-1_echo-{k}_part-mag_MEGRE.nii") for k in range(1, 5)],
        "chi": str(derived / "sub-1_Chimap.nii"),
        "mask": str(derived / "sub-1_mask.nii"),
    }
    assert not manifest.has_truth and record.rows == 1857
    table = fio.read_features(out).sort_by("idx")
    # S is the Chimap's value at every mask voxel, in C order of the grid
    chi = np.asarray(nib.load(derived / "sub-1_Chimap.nii").dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(derived / "sub-1_mask.nii").dataobj) > 0.5
    np.testing.assert_array_equal(table["idx"].to_numpy(), np.flatnonzero(mask.ravel()))
    np.testing.assert_array_equal(table["S"].to_numpy(), chi[mask])
    # the magnitude decays: every voxel fits, with a positive rate and A near echo 1's value
    echo1 = np.asarray(nib.load(anat / "sub-1_echo-1_part-mag_MEGRE.nii").dataobj)[mask]
    assert (table["status"].to_numpy() == FitStatus.OK).mean() > 0.99
    ok = table["status"].to_numpy() == FitStatus.OK
    assert np.all(table["B"].to_numpy()[ok] > 0)
    ratio = table["A"].to_numpy()[ok] / echo1[ok]
    assert 0.9 < np.median(ratio) < 1.5  # A = S(TE=0) >= S(TE1) for a decay


def test_qsmxt_layout_preprocesses_to_the_features_of_the_original(
    qsmxt_cohort, tiny_features, ray_local, tmp_path
):
    """The `tiny` cohort with a session level, ``acq-gre_run-1``, plain ``.nii``, phase, and
    QSMxT's ``Chimap``/``mask`` names: the same voxels and values as the cohort it came from,
    partitioned ``subject=<L>/session=01``, readable by pyarrow and DuckDB as they are."""
    out = tmp_path / "features"
    results = _preprocess(qsmxt_cohort, out)
    assert results["exit"] == 0
    original = FeaturesManifest.load(tiny_features)
    keys = [f"{label}_ses-01" for label in original.subjects]
    assert [r["scan"] for r in results["scans"]] == [f"sub-{k}" for k in keys]
    assert {r["outcome"] for r in results["scans"]} == {"done"}
    manifest = FeaturesManifest.load(out)
    assert list(manifest.subjects) == keys
    for label, key in zip(original.subjects, keys, strict=True):
        record = manifest.subjects[key]
        assert record.entities == {"acq": QSMXT_ACQ, "run": QSMXT_RUN}
        assert record.split == original.subjects[label].split
        assert (out / f"subject={label}" / "session=01").is_dir()
        mine = fio.read_features(out, [key]).select(list(_FEATURES))
        theirs = fio.read_features(tiny_features, [label]).select(list(_FEATURES))
        assert mine.equals(theirs), label
    # the folder as hive readers see it: subject and session from the path
    hive = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    assert hive.num_rows == sum(r.rows for r in manifest.subjects.values())
    assert set(pc.unique(hive["session"]).to_pylist()) == {1}  # "01", as a hive integer
    assert set(pc.unique(hive["subject"]).to_pylist()) == set(original.subjects)
    duck = (
        duckdb.connect()
        .execute(
            f"SELECT count(*), avg(Y) FROM read_parquet('{out}/**/*.parquet', "
            "hive_partitioning = true)"
        )
        .fetchone()
    )
    assert duck[0] == hive.num_rows
    assert duck[1] == pytest.approx(pc.mean(hive["Y"]).as_py(), rel=1e-6)

    # a re-run skips every scan, and --acq/--run naming the scans' acquisition changes nothing
    again = _preprocess(qsmxt_cohort, out, "--acq", QSMXT_ACQ, "--run", QSMXT_RUN)
    assert again["exit"] == 0 and again["skipped"] == keys and again["completed"] == []


def _add_session(dataset: Path, label: str, new: str) -> None:
    """Copy ``sub-<label>``'s ``ses-01`` (raw and every derivative) to session ``new``."""
    for root in [dataset, *sorted((dataset / "derivatives").iterdir())]:
        source = root / f"sub-{label}" / "ses-01"
        if not source.is_dir():
            continue
        for path in source.rglob("*"):
            if path.is_file():
                target = root / f"sub-{label}" / f"ses-{new}" / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target.with_name(path.name.replace("_ses-01_", f"_ses-{new}_")))


@pytest.fixture(scope="module")
def two_sessions(qsmxt_cohort, tmp_path_factory) -> Path:
    """The QSMxT-laid-out cohort where sub-P3 has a second session, a copy of its first."""
    dataset = tmp_path_factory.mktemp("sessions") / "bids"
    shutil.copytree(qsmxt_cohort, dataset)
    _add_session(dataset, "P3", "02")
    return dataset


def test_sessions_are_scans_windows_never_cross_them_and_the_split_is_by_subject(
    two_sessions, ray_local, tmp_path
):
    out = tmp_path / "features"
    results = _preprocess(two_sessions, out)
    assert results["exit"] == 0
    assert [r["scan"] for r in results["scans"]][:2] == ["sub-P3_ses-01", "sub-P3_ses-02"]
    manifest = FeaturesManifest.load(out)
    first, second = manifest.subjects["P3_ses-01"], manifest.subjects["P3_ses-02"]
    assert first.rows == second.rows and first.checksum == second.checksum
    assert first.split == second.split  # participants.tsv is per subject
    table = fio.read_features(out)
    windows = make_windows_table(table, WindowConfig())
    per_scan = dict(zip(*np.unique(windows.subject, return_counts=True), strict=True))
    # each session is its own sequence: as many windows as the other, none spanning both
    assert per_scan["P3_ses-01"] == per_scan["P3_ses-02"] > 0
    one = make_windows_table(table, WindowConfig(), ["P3_ses-01"])
    two = make_windows_table(table, WindowConfig(), ["P3_ses-02"])
    np.testing.assert_array_equal(one.x, two.x)
    np.testing.assert_array_equal(one.idx, two.idx)
    # a subject name takes both sessions; one session on each side is refused
    train, test = manifest.split_subjects(out, train=["P3"], test=["P6"])
    assert train == ["P3_ses-01", "P3_ses-02"] and test == ["P6_ses-01"]
    with pytest.raises(Exception, match="subjects both in training and test: P3"):
        manifest.split_subjects(out, train=["P3_ses-01"], test=["P3_ses-02"])


def test_predict_writes_each_session_back_where_it_came_from(
    two_sessions, trained, store, ray_local, tmp_path
):
    """Maps of a session dataset go to ``sub-<L>/ses-<S>/anat``, named with the scan's
    entities; the copy of a session gets the same maps; the validator passes the output."""
    out = tmp_path / "maps"
    result = predict(trained["run_id"], two_sessions, out, PredictConfig(tracking_uri=store["uri"]))
    assert set(result.subjects) == {
        "P3_ses-01",
        "P3_ses-02",
        "P4_ses-01",
        "P6_ses-01",
        "P11_ses-01",
    }
    stem = f"acq-{QSMXT_ACQ}_run-{QSMXT_RUN}_desc-OEF_pred.nii.gz"
    maps = [
        np.asarray(
            nib.load(out / "sub-P3" / f"ses-{s}" / "anat" / f"sub-P3_ses-{s}_{stem}").dataobj
        )
        for s in ("01", "02")
    ]
    np.testing.assert_array_equal(maps[0], maps[1])
    assert np.isfinite(maps[0]).sum() == result.subjects["P3_ses-01"]["predicted"] > 500
    assert {w["code"] for w in assert_valid(out)} <= {"TOO_FEW_AUTHORS"}


def test_one_bad_scan_never_hides_the_good_ones(qsmxt_cohort, ray_local, tmp_path, capsys):
    """Without --keep-going the run stops before Ray starts, and the summary table and
    results.json still list every scan with its outcome; with it, the good scans are done."""
    dataset = tmp_path / "bids"
    shutil.copytree(qsmxt_cohort, dataset)
    qsmxt = dataset / "derivatives" / "qsmxt" / "sub-P4" / "ses-01" / "anat"
    (qsmxt / f"sub-P4_ses-01_acq-{QSMXT_ACQ}_run-{QSMXT_RUN}_Chimap.nii").unlink()
    out = tmp_path / "features"
    code = main(
        ["preprocess", str(dataset), "--out", str(out), "--results", str(tmp_path / "r.json")]
    )
    assert code == 1
    shown = capsys.readouterr()
    results = json.loads((tmp_path / "r.json").read_text())
    outcomes = {r["scan"]: r["outcome"] for r in results["scans"]}
    assert outcomes == {
        "sub-P3_ses-01": "not done",
        "sub-P4_ses-01": "failed",
        "sub-P6_ses-01": "not done",
        "sub-P11_ses-01": "not done",
    }
    rows = [[c for c in line.split() if c != "│"] for line in shown.out.splitlines()]
    for scan, outcome in outcomes.items():  # the table: every scan with its outcome
        assert [scan, *outcome.split()] in [row[: 1 + len(outcome.split())] for row in rows]
    (error,) = [line for line in shown.err.splitlines() if line.startswith("oefray: error:")]
    searched = dataset / "derivatives" / "*" / "sub-P4" / "ses-01" / "anat"
    assert f"sub-P4_ses-01: {searched}: QSM map is missing" in error
    assert "seen: qq/sub-P4_ses-01_acq-gre_run-1_desc-nb_Chimap.nii (desc-nb: not a QSM)" in error
    assert "not done after the failure: sub-P3_ses-01, sub-P6_ses-01, sub-P11_ses-01" in shown.err

    code = main(["preprocess", str(dataset), "--out", str(out), "--keep-going"])
    assert code == 1
    results = json.loads((out / fio.RESULTS).read_text())
    assert {r["scan"]: r["outcome"] for r in results["scans"]} == {
        **outcomes,
        "sub-P3_ses-01": "done",
        "sub-P6_ses-01": "done",
        "sub-P11_ses-01": "done",
    }
    assert list(FeaturesManifest.load(out).subjects) == ["P3_ses-01", "P6_ses-01", "P11_ses-01"]
