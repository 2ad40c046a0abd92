"""``preprocess`` on a real local Ray runtime (2 CPUs): output contract, equality with the bare
kernel, idempotence, atomicity and bad input."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from oefray.config import PreprocessConfig
from oefray.errors import FeaturesError
from oefray.io import bids, scans
from oefray.io import features as fio
from oefray.orchestration.preprocess import preprocess
from oefray.physics.decay import fit_decay

from ..conftest import TINY_SUBJECTS
from ..io.features_reference import checksum_subject

pytestmark = pytest.mark.ray

EXPECTED_COLUMNS = [
    "subject",
    "i",
    "j",
    "k",
    "idx",
    "A",
    "B",
    "E",
    "S",
    "status",
    "Y",
    "v",
    "R2",
    "S0",
    "chi_nb",
    "tissue",  # the cohort's segmentation (derivatives/qq/*_dseg) and lesion masks
    "lesion",
]


def _direct(cohort, label, normalize="none"):
    """The bare kernel on the same voxels: whole volumes read with nibabel, one fit_decay call."""
    sub = scans.scan_subject(cohort, label)
    mag = np.stack([np.asarray(nib.load(p).dataobj, dtype=np.float32) for p in sub.echoes], axis=-1)
    mask = np.asarray(nib.load(sub.mask).dataobj) != 0
    signal = mag[mask]
    if normalize == "first-echo":
        signal = signal / signal[:, :1]
    fit = fit_decay(signal, np.asarray(sub.te_s))
    x, y, z = np.nonzero(mask)
    chi = np.asarray(nib.load(sub.chi).dataobj, dtype=np.float32)[mask]
    return {
        "i": x,
        "j": y,
        "k": z,
        "idx": np.ravel_multi_index((x, y, z), sub.shape),
        "A": fit.A,
        "B": fit.B,
        "E": fit.E,
        "S": chi,
        "status": fit.status,
    }


@pytest.fixture(scope="module")
def features(tiny_cohort, ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "tiny"
    result = preprocess(tiny_cohort, out, PreprocessConfig(workers=2, slab=4))
    assert result.ok, result.failed
    return out


def test_output_contract(features, tiny_cohort):
    manifest = fio.read_manifest(features)
    assert list(manifest["subjects"]) == ["P3", "P4", "P6", "P11"]  # natural order
    assert manifest["has_truth"] is True and manifest["columns"] == EXPECTED_COLUMNS
    assert manifest["echo_times_s"] == pytest.approx(
        [0.0045 + 0.005 * k for k in range(8)], abs=1e-12
    )
    assert manifest["source"]["dataset"] == str(tiny_cohort)
    assert {s: e["split"] for s, e in manifest["subjects"].items()} == {
        "P3": "train",
        "P4": "train",
        "P6": "test",
        "P11": "test",
    }
    for label in TINY_SUBJECTS:
        entry = manifest["subjects"][label]
        mask = bids.read_mask(scans.scan_subject(tiny_cohort, label).mask)
        assert entry["rows"] == mask.sum() > 500
        # the checksum summed from the slabs equals the one recomputed from the files
        on_disk = checksum_subject(fio.scan_dir(features, label))
        assert on_disk == (entry["rows"], entry["checksum"], entry["status_counts"])
        assert (
            entry["status_counts"].get("0", 0) >= 0.99 * entry["rows"]
        )  # brain voxels fit fine at SNR 100
    # no staging or temporary leftovers
    assert not [p for p in features.rglob("*") if p.name.startswith(".") and p.name != ".lock"]


def test_readable_by_pyarrow_duckdb_polars_as_it_is(features, tiny_cohort):
    """The calls a user tries first, with no options: pyarrow on the folder (the side files start
    with `_`, which Parquet readers skip), DuckDB and Polars on its files' glob. DuckDB is
    case-insensitive: the voxel index `j` and the oxygenation `Y` must stay two columns, and
    `avg(Y)` must be pyarrow's mean Y (it was the mean voxel coordinate with `y`)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from oefray.cli import main

    # the command line writes its _results.json in the folder (every subject is skipped here)
    assert main(["preprocess", str(tiny_cohort), "--out", str(features), "--slab", "4"]) == 0
    manifest = fio.read_manifest(features)
    total = sum(e["rows"] for e in manifest["subjects"].values())
    assert sorted(p.name for p in features.iterdir() if p.is_file()) == [
        ".lock", "_manifest.json", "_results.json"
    ]  # fmt: skip
    t = pads.dataset(features, format="parquet", partitioning="hive").to_table()
    assert sorted(t.column_names) == sorted(EXPECTED_COLUMNS) and t.num_rows == total
    assert pq.read_table(features, partitioning="hive").num_rows == total
    ours = fio.read_features(features)
    assert ours.column_names == EXPECTED_COLUMNS and ours.num_rows == total
    mean_y = pc.mean(t["Y"]).as_py()
    assert 0.4 < mean_y < 0.8  # an oxygenation, not a voxel index

    import duckdb
    import polars as pl

    glob = str(features / "*" / "*.parquet")
    con = duckdb.connect()
    n, subjects, mean_b, duck_y = con.execute(
        f"SELECT count(*), count(DISTINCT subject), avg(B), avg(Y) FROM read_parquet('{glob}')"
    ).fetchone()
    assert (n, subjects) == (total, len(TINY_SUBJECTS))
    assert mean_b == pytest.approx(float(np.nanmean(ours["B"].to_numpy())), rel=1e-5)
    assert duck_y == pytest.approx(mean_y, rel=1e-6)
    names = [
        row[0] for row in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()
    ]
    assert sorted(names) == sorted(EXPECTED_COLUMNS)  # no `Y_1`: every name is distinct
    df = pl.read_parquet(glob, hive_partitioning=True)
    assert df.height == total and set(df.columns) == set(EXPECTED_COLUMNS)
    assert df["Y"].mean() == pytest.approx(mean_y, rel=1e-6)
    per_subject = dict(df.group_by("subject").len().iter_rows())
    assert per_subject == {s: e["rows"] for s, e in manifest["subjects"].items()}


@pytest.mark.parametrize("slab", [1, 5, 40])  # 1 plane, fewer than the depth (16), more than it
def test_ray_output_equals_direct_kernel(tiny_cohort, ray_local, tmp_path, slab):
    out = tmp_path / "f"
    result = preprocess(tiny_cohort, out, PreprocessConfig(slab=slab), subjects=["P3", "P6"])
    assert result.ok and sorted(result.completed) == ["P3", "P6"]
    table = fio.read_features(out)
    for label in ("P3", "P6"):
        got = table.filter(pc.equal(table["subject"], label))
        want = _direct(tiny_cohort, label)
        assert got.num_rows == len(want["idx"])
        for col, values in want.items():
            # identical: the same float32 kernel on the same voxels
            np.testing.assert_array_equal(
                got[col].to_numpy(), values, err_msg=f"{label}.{col} slab={slab}"
            )
        truth = nib.load(scans.scan_subject(tiny_cohort, label).truth["Y"]).get_fdata(
            dtype=np.float32
        )
        np.testing.assert_array_equal(got["Y"].to_numpy(), truth[want["i"], want["j"], want["k"]])


def test_normalize_first_echo(tiny_cohort, ray_local, tmp_path):
    out = tmp_path / "f"
    preprocess(tiny_cohort, out, PreprocessConfig(slab=8, normalize="first-echo"), subjects=["P4"])
    got = fio.read_features(out)
    want = _direct(tiny_cohort, "P4", normalize="first-echo")
    np.testing.assert_array_equal(got["A"].to_numpy(), want["A"])
    # normalised amplitude at TE=0 is exp(B*TE1) / (noise) ~ 1.0-1.2, and S0 truth is rescaled alike
    assert 0.95 < float(np.median(got["A"].to_numpy())) < 1.3
    assert 0.95 < float(np.median(got["S0"].to_numpy())) < 1.3
    # the manifest records the option; a different option on the same folder is refused
    assert fio.read_manifest(out)["options"] == {"normalize": "first-echo"}
    with pytest.raises(FeaturesError, match="was made with options"):
        preprocess(tiny_cohort, out, PreprocessConfig(), subjects=["P4"])


def test_rerun_is_idempotent_and_force_redoes(tiny_cohort, ray_local, tmp_path):
    out = tmp_path / "f"
    first = preprocess(tiny_cohort, out, PreprocessConfig(slab=8), subjects=["P3", "P11"])
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    manifest = fio.read_manifest(out)
    again = preprocess(tiny_cohort, out, PreprocessConfig(slab=8), subjects=["P3", "P11"])
    assert again.skipped == ["P3", "P11"] and again.completed == [] and again.voxels == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files
    more = preprocess(tiny_cohort, out, PreprocessConfig(slab=8))  # adds the two missing subjects
    assert sorted(more.completed) == ["P4", "P6"] and sorted(more.skipped) == ["P11", "P3"]
    forced = preprocess(tiny_cohort, out, PreprocessConfig(slab=3, force=True), subjects=["P3"])
    assert forced.completed == ["P3"] and first.voxels > 0
    after = fio.read_manifest(out)
    # the content checksum does not depend on the slab size
    assert after["subjects"]["P3"]["checksum"] == manifest["subjects"]["P3"]["checksum"]
    assert set(after["subjects"]) == {"P3", "P4", "P6", "P11"}


def test_stale_staging_and_half_written_subjects_are_ignored(tiny_cohort, ray_local, tmp_path):
    """What a killed run leaves (a staging folder, a subject folder without a manifest entry)
    is cleaned up or redone by the next run."""
    out = tmp_path / "f"
    preprocess(tiny_cohort, out, PreprocessConfig(), subjects=["P3"])
    stale = out / f"{fio.STAGING_PREFIX}dead"
    (stale / "subject=P6").mkdir(parents=True)
    (stale / "subject=P6" / "part-z0000-0004.parquet").write_bytes(b"partial")
    orphan = fio.scan_dir(out, "P4")  # published but never recorded: not complete
    orphan.mkdir()
    (orphan / "part-z0000-0001.parquet").write_bytes(b"junk")
    result = preprocess(tiny_cohort, out, PreprocessConfig(), subjects=["P3", "P4"])
    assert result.skipped == ["P3"] and result.completed == ["P4"]
    assert not stale.exists()
    n, digest, _ = checksum_subject(orphan)
    assert fio.read_manifest(out)["subjects"]["P4"]["checksum"] == digest


def _broken_copy(cohort, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(cohort, root)
    # P4: header fine, voxels truncated -> fails inside a Ray task
    bad = root / "sub-P4" / "anat" / "sub-P4_echo-3_part-mag_MEGRE.nii.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    # P6: missing EchoTime -> fails during the scan, before Ray starts
    (root / "sub-P6" / "anat" / "sub-P6_echo-2_part-mag_MEGRE.json").write_text("{}")
    return root, bad


def test_bad_subject_stops_the_run(tiny_cohort, ray_local, tmp_path):
    root, _ = _broken_copy(tiny_cohort, tmp_path)
    out = tmp_path / "f"
    result = preprocess(root, out, PreprocessConfig())
    assert not result.ok and "no EchoTime" in result.failed["P6"]
    assert not out.exists()  # failed in the scan: nothing written at all
    result = preprocess(root, out, PreprocessConfig(), subjects=["P4"])
    assert list(result.failed) == ["P4"] and "corrupt or truncated" in result.failed["P4"]
    assert "sub-P4_echo-3_part-mag_MEGRE.nii.gz" in result.failed["P4"]
    assert not fio.scan_dir(out, "P4").exists()
    assert (fio.read_manifest(out) or {"subjects": {}})["subjects"] == {}


def test_keep_going_completes_the_others(tiny_cohort, ray_local, tmp_path):
    root, bad = _broken_copy(tiny_cohort, tmp_path)
    out = tmp_path / "f"
    result = preprocess(root, out, PreprocessConfig(keep_going=True, slab=4))
    assert sorted(result.completed) == ["P11", "P3"]
    assert sorted(result.failed) == ["P4", "P6"] and bad.name in result.failed["P4"]
    assert sorted(fio.read_manifest(out)["subjects"]) == ["P11", "P3"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("subject=")) == [
        "subject=P11",
        "subject=P3",
    ]


def test_refuses_a_foreign_output_folder(tiny_cohort, ray_local, tmp_path):
    out = tmp_path / "f"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FeaturesError, match="not an oefray features folder"):
        preprocess(tiny_cohort, out, PreprocessConfig(), subjects=["P3"])
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_plain_nii_and_integer_storage(tiny_cohort, ray_local, tmp_path):
    """A dataset written by another tool: plain .nii, int16 magnitudes with scl_slope."""
    root = tmp_path / "other"
    shutil.copytree(tiny_cohort, root)
    for gz in root.rglob("*.nii.gz"):
        img = nib.load(gz)
        data = np.asanyarray(img.dataobj)
        if "MEGRE" in gz.name:
            slope = float(data.max()) / 32000
            new = nib.Nifti1Image(np.round(data / slope).astype(np.int16), img.affine)
            new.header.set_slope_inter(slope, 0.0)
        else:
            new = nib.Nifti1Image(data, img.affine)
        nib.save(new, gz.with_name(gz.name[:-3]))
        gz.unlink()
    out = tmp_path / "f"
    result = preprocess(root, out, PreprocessConfig(), subjects=["P3"])
    assert result.ok
    got = fio.read_features(out)
    ref = _direct(tiny_cohort, "P3")
    ok = ref["status"] == 0
    # int16 quantisation (step ~ max/32000) moves the fit only slightly
    np.testing.assert_allclose(got["B"].to_numpy()[ok], ref["B"][ok], rtol=2e-2, atol=0.5)


def test_uneven_echo_scheme_and_three_echoes(ray_local, tmp_path):
    """Any echo count >= 2 and uneven spacing: the pipeline equals the kernel on those TEs."""
    from oefray.config import EchoScheme, SimulationConfig
    from oefray.orchestration.simulate import simulate_cohort

    ds = tmp_path / "bids"
    te = (0.003, 0.0071, 0.0185)
    simulate_cohort(
        ds, SimulationConfig(preset="tiny", subjects=("Q1",), echoes=EchoScheme(te), seed=5)
    )
    out = tmp_path / "f"
    assert preprocess(ds, out, PreprocessConfig(slab=7)).ok
    manifest = fio.read_manifest(out)
    assert manifest["echo_times_s"] == list(te)
    got = fio.read_features(out)
    want = _direct(ds, "Q1")
    for col in ("idx", "A", "B", "E", "status"):
        np.testing.assert_array_equal(got[col].to_numpy(), want[col])
    assert (want["status"] == 0).mean() > 0.99


def test_nonfinite_qsm_gets_a_nonfinite_status(tmp_path):
    """A NaN or inf QSM value makes the voxel NONFINITE with A = B = E = NaN (it was status 0,
    a good voxel, before), so no window is cut around it as if it were good."""
    from oefray.orchestration.preprocess import slab_features
    from oefray.physics.decay import FitStatus

    rng = np.random.default_rng(3)
    shape, te = (5, 6, 4), (0.0045, 0.0095, 0.0145, 0.0195)
    mag = (np.exp(-np.asarray(te) * 20.0) * rng.uniform(0.8, 1.2, size=(*shape, 1))).astype(
        np.float32
    )
    chi = rng.normal(0, 0.05, size=shape).astype(np.float32)
    chi[2, 2, 1], chi[2, 3, 1] = np.nan, np.inf
    mask = np.ones(shape, bool)
    bids.write_dataset_description(tmp_path, "t")
    bids.write_subject(tmp_path, "A1", np.eye(4), mag, te, chi, mask, None)
    cols = slab_features(scans.scan_subject(tmp_path, "A1"), 0, shape[2])
    bad = np.isin(cols["idx"], np.ravel_multi_index(([2, 2], [2, 3], [1, 1]), shape))
    assert bad.sum() == 2
    assert np.all(cols["status"][bad] == FitStatus.NONFINITE)
    assert np.all(np.isnan(np.stack([cols[c][bad] for c in "ABE"])))
    assert np.all(cols["status"][~bad] == FitStatus.OK) and np.isfinite(cols["A"][~bad]).all()


@pytest.mark.parametrize("version", [1, 2], ids=["older-format", "this-format"])
def test_a_hostile_manifest_label_deletes_nothing_outside(tiny_cohort, tmp_path, version):
    """A manifest subject key `x/../../victim` with `--force` and other options used to delete a
    folder outside the features folder; it is refused before anything is touched, in a manifest
    of this format and in one of an older format (which `--force` otherwise redoes)."""
    import json

    out = tmp_path / "features" / "here"
    out.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    record = {
        "rows": 1, "checksum": "xsum64:0", "split": "train", "shape": [1, 1, 1],
        "affine": np.eye(4).tolist(), "echo_times_s": [0.01, 0.02], "files": {},
    }  # fmt: skip
    manifest = {
        "format": "oefray-features", "format_version": version, "options": {"normalize": "none"},
        "has_truth": True, "subjects": {"x/../../victim": record},
    }  # fmt: skip
    (out / fio.MANIFEST).write_text(json.dumps(manifest))
    config = PreprocessConfig(normalize="first-echo", force=True)
    with pytest.raises(FeaturesError, match="is not a BIDS subject label"):
        preprocess(tiny_cohort, out, config)
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [fio.MANIFEST]


def test_a_failed_run_leaves_out_as_it_found_it_and_the_fixed_rerun_needs_no_force(
    tiny_cohort, ray_local, tmp_path, capsys
):
    import json

    from oefray.cli import main

    ds = tmp_path / "bids"
    shutil.copytree(tiny_cohort, ds)
    sidecar = ds / "sub-P3" / "anat" / "sub-P3_echo-2_part-mag_MEGRE.json"
    good = sidecar.read_text()
    sidecar.write_text(json.dumps({**json.loads(good), "EchoTime": "0.0095"}))
    out = tmp_path / "features"
    assert main(["preprocess", str(ds), "--out", str(out)]) == 1
    assert str(sidecar) in capsys.readouterr().err
    assert not out.exists()  # no _results.json-only folder left behind
    sidecar.write_text(good)
    assert main(["preprocess", str(ds), "--out", str(out), "--subjects", "P3"]) == 0
    assert json.loads((out / "_results.json").read_text())["completed"] == ["P3"]
