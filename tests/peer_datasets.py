"""Test datasets laid out the way *other* tools write them, generated in the test session.

Two generators, for the tests of a reader that takes a dataset as those tools leave it (nothing
here is checked-in data; both write into a folder they are given, which must not exist yet):

* :func:`qsm_forward_dataset` runs qsm-forward 0.32 (the QSMxT team's forward simulation, PyPI
  ``qsm-forward``, in the dev extra) in its ``simple`` mode: ``qsm-forward simple <bids>``, its
  console script, as a user runs it. Offline, about 3 s on 2 cores at 16^3, most of it imports.
* :func:`qsmxt_layout` rewrites an oefray-simulated cohort (``oefray simulate``) the way a
  dcm2bids/heudiconv + QSMxT user has it: a session level, ``acq-``/``run-`` entities in every
  name, plain ``.nii``, phase beside the magnitude, and the QSM and mask as QSMxT names them
  under ``derivatives/qsmxt``. The ground truth is kept (renamed alike), so that a test can
  compare what oefray reads from it with what it reads from the original cohort.

qsm-forward 0.32, ``simple`` mode (``<bids>`` = the folder given; checked by
tests/io/test_peer_datasets.py)
-------------------------------------------------------------------------------------------------

===================================================  ===========================================
path (``<e>`` = entities, see below)                 what it holds
===================================================  ===========================================
``dataset_description.json``                         ``Name`` "qsm-forward BIDS (<date>)",
                                                     ``BIDSVersion`` 1.9.0, ``GeneratedBy``
                                                     qsm-forward 0.32; no ``DatasetType``
``README``, ``.bidsignore`` (empty)                  no ``participants.tsv``
``sub-1/anat/<e>_echo-<k>_part-mag_MEGRE.nii``       magnitude, k = 1..4, one 3-D file per echo
``sub-1/anat/<e>_echo-<k>_part-mag_MEGRE.json``      ``EchoTime`` in seconds (0.004, 0.012, 0.02,
                                                     0.028), ``EchoNumber`` k,
                                                     ``MagneticFieldStrength`` 7 (int, tesla),
                                                     ``RepetitionTime`` 0.05, ``FlipAngle`` 15,
                                                     ``ImageType`` ["M", "MAGNITUDE"],
                                                     ``PeakSNR``, ``B0_dir``, ``Subject``,
                                                     ``Session``/``Acquisition``/``Run`` (null
                                                     unless given), ``ConversionSoftware``
                                                     "qsm-forward", ...
``sub-1/anat/<e>_echo-<k>_part-phase_MEGRE.nii``     wrapped phase, radians in [-pi, pi]
``sub-1/anat/<e>_echo-<k>_part-phase_MEGRE.json``    as the magnitude's, ``ImageType``
                                                     ["P", "PHASE"]
``derivatives/qsm-forward/dataset_description.json`` the same as the raw one (no
                                                     ``DatasetType`` either)
``derivatives/qsm-forward/sub-1/anat/<e>_Chimap.nii`` ground-truth susceptibility, ppm (values 0,
                                                     0.005, 0.05, 0.1, 0.2, 0.5); no sidecar
``derivatives/qsm-forward/sub-1/anat/<e>_mask.nii``  0/1 (float32): where chi != 0, the phantom's
                                                     cylinder (1857 voxels at 16^3); no sidecar
``derivatives/qsm-forward/sub-1/anat/<e>_dseg.nii``  segmentation, here the mask again (0/1)
===================================================  ===========================================

``<e>`` is ``sub-1`` by default: **no session level and no run** unless asked for
(``--session S --acq A --run R``: folders ``sub-1/ses-S/anat`` and
``derivatives/qsm-forward/sub-1/ses-S/anat``, names ``sub-1_ses-S_acq-A_run-R_...``). Every
image is 3-D (16, 16, 16) float32 at ``--resolution 16 16 16`` (it runs down to 2^3; 16 is the
smallest that holds all four small sources), the same grid for the echoes, Chimap, mask and
dseg; the affine is the identity (1 mm isotropic, origin at voxel 0), ``sform_code`` 2,
``qform_code`` 0, no spatial/temporal units in the header, ``scl_slope`` unset (nan). With
``--peak-snr`` finite (100 here) the magnitude has complex Gaussian noise (seeded by
``--random-seed``, 42 by default), so it is nonzero outside the mask; with qsm-forward's default
``inf`` it is constant in the mask and 0 outside. The field strength defaults to 7 T.
The README in qsm-forward's own metadata (``extra_data/``, ``ses-1``, ``run-1``, ``_chi.nii``)
describes an older version; the table above is what 0.32 writes.

QSMxT layout (:func:`qsmxt_layout`; ``<L>`` the subject label, ``<e>`` =
``sub-<L>_ses-01_acq-gre_run-1`` by default)
-------------------------------------------------------------------------------------------------

======================================================  ========================================
path                                                    from the oefray cohort
======================================================  ========================================
``dataset_description.json``, ``README``,               copied as they are
``participants.tsv``, ``participants.json``,
``.bidsignore``
``sub-<L>/ses-01/anat/<e>_echo-<k>_part-mag_MEGRE.nii``  ``sub-<L>/anat/sub-<L>_echo-<k>_part-mag_
                                                        MEGRE.nii.gz``, same data and header
``sub-<L>/ses-01/anat/<e>_echo-<k>_part-mag_MEGRE.json`` its sidecar, plus ``ImageType``
                                                        ["ORIGINAL", "PRIMARY", "M", "ND"] and
                                                        ``ConversionSoftware`` "dcm2niix"
``sub-<L>/ses-01/anat/<e>_echo-<k>_part-phase_MEGRE.*``  new: wrapped phase
                                                        2 pi 42.58 B0 TE chi (radians, float32;
                                                        not a consistent field model, only so
                                                        that a run has the phase QSMxT needs),
                                                        sidecar as the magnitude's with
                                                        ``ImageType`` [..., "P", "ND"]
``derivatives/qsmxt/dataset_description.json``         new, as QSMxT writes it (``Name`` qsmxt,
                                                        ``GeneratedBy`` qsmxt.rs, no
                                                        ``DatasetType``)
``derivatives/qsmxt/sub-<L>/ses-01/anat/<e>_Chimap.nii`` ``derivatives/qsm/sub-<L>/anat/sub-<L>_
                                                        Chimap.nii.gz``: same values (ppm)
``derivatives/qsmxt/sub-<L>/ses-01/anat/<e>_mask.nii``   ``derivatives/qsm/sub-<L>/anat/sub-<L>_
                                                        desc-brain_mask.nii.gz``: 0/1 as float32
``derivatives/qq/`` ``dataset_description.json``,        copied as they are
``README``, ``.bidsignore``
``derivatives/qq/sub-<L>/ses-01/anat/<e>_<rest>``        ``derivatives/qq/sub-<L>/anat/sub-<L>_
                                                        <rest>`` (``R2map``, ``S0map``,
                                                        ``desc-nb_Chimap``, ``desc-Y_qq``,
                                                        ``desc-v_qq``; ``.nii.gz`` -> ``.nii``,
                                                        sidecars ``.json`` alike)
======================================================  ========================================

Dropped: everything else under ``derivatives/qsm`` (its description, README and the sidecars of
the Chimap and mask: QSMxT writes none), so there is no ``desc-brain_mask`` anywhere. QSMxT's
images (Chimap, mask) are written as its NIfTI writer (qsm_core) writes them: float32,
``sform_code`` 1, ``qform_code`` 0, no units (``scl_slope`` unset, where QSMxT writes 1: no
scaling either way); the affine is the cohort's. The raw images keep the cohort's headers
(float32, ``qform``/``sform`` code 1, mm and s) and grid (20, 24, 16) at ``tiny``. The
file-by-file mapping is :func:`qsmxt_mapping` (source path -> new path, None for a dropped
file). A real QSMxT run also leaves intermediates beside the outputs unless asked to clean them
(``<e>_echo-<k>_mag.nii``, ``_phase-scaled``, ``_field-ppm``, ``_localfield``, ``_Chimap-raw``,
``.pipeline_state.json``); this fixture writes the final outputs only. QSMxT's naming: the
derivative folder is ``<bids>/derivatives/qsmxt`` and a run's outputs are
``sub-X/[ses-Y/]anat/sub-X[_ses-Y][_acq-A][_rec-R][_inv-I][_run-N]_{Chimap,mask}.nii``
(qsmxt.rs, ``src/bids/derivatives.rs`` and ``src/bids/entities.rs``; its documentation's
"Running noninteractively" and "Input data" pages).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: The console script of qsm-forward, and the variable that names another one (e.g. in a venv
#: of its own) if it is not beside this Python or on ``PATH``.
QSM_FORWARD = "qsm-forward"
QSM_FORWARD_ENV = "OEFRAY_QSM_FORWARD"

#: What :func:`qsm_forward_dataset` asks for, and what qsm-forward 0.32 then writes.
QSM_FORWARD_RESOLUTION = 16  # the smallest grid that holds all five of the phantom's sources
QSM_FORWARD_PEAK_SNR = 100.0
QSM_FORWARD_SEED = 42
QSM_FORWARD_TE_S = (0.004, 0.012, 0.02, 0.028)  # its default echo times, seconds
QSM_FORWARD_B0_T = 7
QSM_FORWARD_CHI_PPM = (0.0, 0.005, 0.05, 0.1, 0.2, 0.5)  # background, cylinder, 4 sources

#: The entities :func:`qsmxt_layout` adds to every name by default.
QSMXT_SESSION = "01"
QSMXT_ACQ = "gre"
QSMXT_RUN = "1"

#: ``dataset_description.json`` of ``derivatives/qsmxt``, as qsmxt.rs writes it (its version
#: comes from the release tag; any 9.x).
QSMXT_DESCRIPTION = {
    "Name": "qsmxt",
    "BIDSVersion": "1.9.0",
    "GeneratedBy": [{"Name": "qsmxt.rs", "Version": "9.0.0"}],
    "PipelineDescription": {
        "Name": "QSMxT",
        "Description": "Quantitative Susceptibility Mapping pipeline",
    },
}

GAMMA_BAR_MHZ_PER_T = 42.58


# --------------------------------------------------------------------------------------------
# qsm-forward
# --------------------------------------------------------------------------------------------


def qsm_forward_executable() -> str:
    """qsm-forward's console script: ``$OEFRAY_QSM_FORWARD``, else beside this Python, else on
    ``PATH``; fails the test if none (it comes with the dev extra)."""
    named = os.environ.get(QSM_FORWARD_ENV)
    if named:
        if not Path(named).is_file():
            pytest.fail(f"{QSM_FORWARD_ENV}={named} is not a file", pytrace=False)
        return named
    beside = Path(sys.executable).parent / QSM_FORWARD
    found = str(beside) if beside.is_file() else shutil.which(QSM_FORWARD)
    if found is None:
        pytest.fail(
            f"{QSM_FORWARD} is not installed; it comes with the dev extra "
            f"(make install, or pip install -e '.[dev]'), or name it in {QSM_FORWARD_ENV}",
            pytrace=False,
        )
    return found


def qsm_forward_dataset(
    out_dir: str | Path,
    *,
    resolution: int = QSM_FORWARD_RESOLUTION,
    peak_snr: float = QSM_FORWARD_PEAK_SNR,
    session: str | None = None,
    acq: str | None = None,
    run: str | None = None,
) -> Path:
    """Run ``qsm-forward simple <out_dir>`` (see the module's table for what it writes).

    Parameters
    ----------
    out_dir : path
        The BIDS folder to create (must not exist).
    resolution : int
        The phantom's grid, ``resolution``^3 voxels of 1 mm.
    peak_snr : float
        ``--peak-snr``: complex Gaussian noise, seeded (``--random-seed 42``), so the dataset is
        the same each time.
    session, acq, run : str, optional
        ``--session``, ``--acq``, ``--run``: entities qsm-forward leaves out unless given.

    Returns
    -------
    Path
        ``out_dir``, resolved.
    """
    out = Path(out_dir).resolve()
    if out.exists():
        raise FileExistsError(out)
    cmd = [qsm_forward_executable(), "simple", str(out)]
    cmd += ["--resolution", *[str(resolution)] * 3]
    cmd += ["--peak-snr", str(peak_snr), "--random-seed", str(QSM_FORWARD_SEED)]
    for flag, value in (("--session", session), ("--acq", acq), ("--run", run)):
        if value is not None:
            cmd += [flag, value]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        )
    return out


# --------------------------------------------------------------------------------------------
# QSMxT layout of an oefray cohort
# --------------------------------------------------------------------------------------------


def qsmxt_stem(
    label: str, *, session: str = QSMXT_SESSION, acq: str = QSMXT_ACQ, run: str = QSMXT_RUN
) -> str:
    """The entities of every name of subject ``label`` in the QSMxT layout."""
    return f"sub-{label}_ses-{session}_acq-{acq}_run-{run}"


def _plain(name: str) -> str:
    return name[: -len(".gz")] if name.endswith(".nii.gz") else name


def qsmxt_mapping(
    src_cohort: str | Path,
    *,
    session: str = QSMXT_SESSION,
    acq: str = QSMXT_ACQ,
    run: str = QSMXT_RUN,
) -> dict[str, str | None]:
    """Every file of an oefray cohort (POSIX path relative to it) and its path in the QSMxT
    layout, or None where it is dropped. The phase images and ``derivatives/qsmxt``'s
    description are new and not in the mapping.

    Raises
    ------
    ValueError
        On a file that is not where ``oefray simulate`` puts one (the layout stays exact).
    """
    src = Path(src_cohort)
    mapping: dict[str, str | None] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src).as_posix()
        parts = rel.split("/")
        new: str | None
        if len(parts) == 1 or (parts[:2] == ["derivatives", "qq"] and len(parts) == 3):
            new = rel  # dataset files: descriptions, README, participants, .bidsignore
        elif len(parts) == 3 and parts[0].startswith("sub-") and parts[1] == "anat":
            new = _renamed(parts[0], (), parts[2], session, acq, run)
        elif parts[:2] == ["derivatives", "qq"] and len(parts) == 5 and parts[3] == "anat":
            new = _renamed(parts[2], ("derivatives", "qq"), parts[4], session, acq, run)
        elif parts[:2] == ["derivatives", "qsm"]:
            new = None
            if len(parts) == 5 and parts[3] == "anat":
                label = parts[2][len("sub-") :]
                stem = qsmxt_stem(label, session=session, acq=acq, run=run)
                where = f"derivatives/qsmxt/{parts[2]}/ses-{session}/anat"
                if _plain(parts[4]) == f"sub-{label}_Chimap.nii":
                    new = f"{where}/{stem}_Chimap.nii"
                elif _plain(parts[4]) == f"sub-{label}_desc-brain_mask.nii":
                    new = f"{where}/{stem}_mask.nii"
        else:
            raise ValueError(f"{rel}: not a file of an oefray-simulated cohort")
        mapping[rel] = new
    return mapping


def _renamed(
    subject: str, above: tuple[str, ...], name: str, session: str, acq: str, run: str
) -> str:
    """``[above/]sub-L/anat/sub-L_<rest>`` -> ``[above/]sub-L/ses-S/anat/<entities>_<rest>``."""
    label = subject[len("sub-") :]
    prefix = f"sub-{label}_"
    if not name.startswith(prefix):
        raise ValueError(f"{subject}/anat/{name}: not named after its subject")
    stem = qsmxt_stem(label, session=session, acq=acq, run=run)
    return "/".join(
        (*above, subject, f"ses-{session}", "anat", stem + "_" + _plain(name)[len(prefix) :])
    )


def _save_like_qsmxt(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """As QSMxT's NIfTI writer: float32, sform code 1, qform code 0, no units (it writes
    ``scl_slope`` 1 where nibabel leaves it unset: the same for a reader)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    img.set_sform(affine, code=1)
    img.set_qform(None, code=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def _write_json(path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")


def qsmxt_layout(
    src_cohort: str | Path,
    out_dir: str | Path,
    *,
    session: str = QSMXT_SESSION,
    acq: str = QSMXT_ACQ,
    run: str = QSMXT_RUN,
) -> Path:
    """Rewrite an oefray-simulated cohort as a dcm2bids/heudiconv + QSMxT user has it.

    See the module's table; :func:`qsmxt_mapping` is the file-by-file mapping.

    Parameters
    ----------
    src_cohort : path
        A cohort written by ``oefray simulate`` (``.nii.gz`` or ``.nii``); left unchanged.
    out_dir : path
        The folder to create (must not exist).
    session, acq, run : str
        The entities added to every name.

    Returns
    -------
    Path
        ``out_dir``, resolved.
    """
    src = Path(src_cohort).resolve()
    out = Path(out_dir).resolve()
    if out.exists():
        raise FileExistsError(out)
    mapping = qsmxt_mapping(src, session=session, acq=acq, run=run)
    chi_of: dict[str, Path] = {}  # subject folder -> its QSM, for the phase
    for rel, new in mapping.items():
        if new is None:
            continue
        source, target = src / rel, out / new
        target.parent.mkdir(parents=True, exist_ok=True)
        if new.startswith("derivatives/qsmxt/"):
            img = nib.load(source)
            _save_like_qsmxt(np.asanyarray(img.dataobj), img.affine, target)
            if new.endswith("_Chimap.nii"):
                chi_of[rel.split("/")[2]] = source
        elif rel.endswith((".nii", ".nii.gz")):
            nib.save(nib.load(source), target)
        elif rel.endswith("_part-mag_MEGRE.json"):
            meta = json.loads(source.read_text())
            meta.update(ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], ConversionSoftware="dcm2niix")
            _write_json(target, meta)
        else:
            shutil.copyfile(source, target)
    for rel, new in mapping.items():
        if new is None or not new.endswith("_part-mag_MEGRE.nii") or new.startswith("deriv"):
            continue
        mag = nib.load(src / rel)
        meta = json.loads((out / new).with_suffix(".json").read_text())
        chi = np.asanyarray(nib.load(chi_of[rel.split("/")[0]]).dataobj, dtype=np.float64)
        hz_per_ppm = GAMMA_BAR_MHZ_PER_T * float(meta["MagneticFieldStrength"])
        phase = np.angle(np.exp(2j * np.pi * hz_per_ppm * float(meta["EchoTime"]) * chi))
        img = nib.Nifti1Image(phase.astype(np.float32), mag.affine, mag.header)
        img.header.set_data_dtype(np.float32)
        stem = new[: -len("_part-mag_MEGRE.nii")] + "_part-phase_MEGRE"
        nib.save(img, out / f"{stem}.nii")
        meta["ImageType"] = ["ORIGINAL", "PRIMARY", "P", "ND"]
        _write_json(out / f"{stem}.json", meta)
    _write_json(out / "derivatives" / "qsmxt" / "dataset_description.json", QSMXT_DESCRIPTION)
    return out
