"""``oefray simulate``: a synthetic BIDS cohort with ground-truth QQ maps (DESIGN.md §3, §4).

Each subject is simulated from its own random stream, seeded by ``(seed, label)``, so a subject is
the same whether it is simulated alone or within a cohort. The dataset is written into a hidden
sibling folder and renamed into place at the end: an interrupted run leaves no half-written cohort.
"""

from __future__ import annotations

import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray import __version__
from oefray.config import FOV_MM, SimulationConfig, split_of
from oefray.errors import OefrayError
from oefray.io import bids
from oefray.io.files import atomic_folder
from oefray.io.locks import replacing
from oefray.io.outputs import check_output
from oefray.physics.anatomy import TISSUE_NAMES, Tissue
from oefray.physics.phantom import simulate_subject

#: Called as ``progress(subjects_done, subjects_total, message)``.
ProgressFn = Callable[[int, int, str], None]


def subject_rng(seed: int, label: str) -> np.random.Generator:
    """The random stream of one subject: depends on the master seed and the label only."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(label.encode())]))


def grid_affine(shape: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """RAS+ voxel-to-world affine (mm) of a grid centred on the field of view."""
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = [-(f / 2) + v / 2 for f, v in zip(FOV_MM, voxel_mm, strict=True)]
    return affine


@dataclass
class SimulationResult:
    """What a simulate run wrote (serialised into ``results.json``)."""

    dataset: str
    subjects: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)  # the SimulationConfig, as data

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "simulate",
            "dataset": self.dataset,
            "options": self.options,
            "subjects": self.subjects,
            "brain_voxels": sum(s["brain_voxels"] for s in self.subjects.values()),
            "seconds": round(self.seconds, 3),
        }


def simulate_cohort(
    out: str | Path,
    config: SimulationConfig | None = None,
    *,
    force: bool = False,
    suffix: str = ".nii.gz",
    progress: ProgressFn | None = None,
) -> SimulationResult:
    """Simulate a cohort and write it as a BIDS dataset.

    Parameters
    ----------
    out : path
        Dataset folder to create.
    config : SimulationConfig, optional
        Preset, subjects, echo scheme, SNR, QSM noise, field strength, seed.
    force : bool
        Replace ``out`` if it exists.
    suffix : {".nii.gz", ".nii"}
        Compressed (default, as BIDS tools write) or plain NIfTI.
    progress : callable, optional
        ``progress(subjects_done, subjects_total, message)``.

    Raises
    ------
    OefrayError
        If ``out`` exists (without ``force``) or cannot be written.
    """
    t0 = time.perf_counter()
    config = config or SimulationConfig()
    out = Path(out).resolve()
    check_output(out, force=force)
    result = SimulationResult(dataset=str(out), options=_options(config))
    try:
        with replacing(out, "simulate"), atomic_folder(out, replace=force) as partial:
            _write_cohort(partial, config, suffix, result, progress)
            result.seconds = time.perf_counter() - t0
    except OSError as exc:
        raise OefrayError(out, f"cannot write the dataset ({exc.strerror or exc})") from None
    return result


def _options(config: SimulationConfig) -> dict[str, Any]:
    return {
        "preset": config.preset,
        "subjects": list(config.subjects),
        "echo_times_s": list(config.echoes.te_s),
        "snr": config.snr,
        "qsm_noise_ppm": config.qsm_noise_ppm,
        "b0_t": config.b0_t,
        "seed": config.seed,
        "lesion_fraction": config.lesion_fraction,
    }


def _readme(config: SimulationConfig) -> str:
    """The dataset's README: what was simulated, and where the derivatives are."""
    preset = config.cohort
    te_ms = ", ".join(f"{t * 1e3:g}" for t in config.echoes.te_s)
    voxel = " x ".join(f"{v:.3g}" for v in preset.voxel_mm)
    paragraphs = [
        f"Synthetic multi-echo GRE cohort written by oefray {__version__} (oefray simulate): a "
        "procedural head per subject with tissue-specific QQ parameter maps, the qBOLD "
        "magnitude at each echo with Rician noise, and QSM with Gaussian noise. No human data.",
        f"Preset {preset.name}: grid {' x '.join(map(str, preset.shape))}, voxel {voxel} mm; "
        f"{len(config.subjects)} subjects; echo times {te_ms} ms; SNR {config.snr:g} at echo 1; "
        f"field {config.b0_t:g} T; QSM noise {config.qsm_noise_ppm:g} ppm; lesion fraction "
        f"{config.lesion_fraction:g}; seed {config.seed} (each subject depends only on the seed "
        "and its label).",
        "sub-<label>/anat: one magnitude image per echo (part-mag MEGRE; EchoTime in seconds in "
        "the JSON sidecars). participants.tsv: participant_id and split (train or test; see "
        "participants.json).",
        "derivatives/qsm: the QSM (Chimap, ppm) and the brain mask of each subject. "
        "derivatives/qq: the ground truth; R2, S0 and chi_nb use BIDS suffixes (R2map, S0map, "
        "desc-nb_Chimap), while venous oxygenation Y and venous blood volume fraction v, which "
        "BIDS has no suffix for, are desc-Y_qq and desc-v_qq, listed in "
        "derivatives/qq/.bidsignore. Each derivative is a BIDS dataset of its own.",
        "results.json (in .bidsignore): what the run wrote.",
    ]
    return "\n\n".join(textwrap.fill(p, 100) for p in paragraphs)


def _write_cohort(
    partial: Path,
    config: SimulationConfig,
    suffix: str,
    result: SimulationResult,
    progress: ProgressFn | None,
) -> None:
    """Write every subject, the participants and dataset descriptions into ``partial``."""
    preset = config.cohort
    affine = grid_affine(preset.shape, preset.voxel_mm)
    split = split_of(config.subjects)
    bids.write_dataset_description(
        partial,
        f"oefray synthetic cohort ({preset.name}, seed {config.seed})",
        generated_by=f"oefray {__version__}",
        dataset_type="raw",
    )
    bids.write_readme(partial, _readme(config))
    bids.write_derivative_datasets(partial, f"oefray {__version__}")
    bids.write_participants(
        partial, [{"participant_id": f"sub-{s}", "split": split[s]} for s in config.subjects]
    )
    bids.write_bidsignore(partial, ["results.json"])
    n = len(config.subjects)
    for i, label in enumerate(config.subjects):
        if progress:
            progress(i, n, f"sub-{label}")
        rng = subject_rng(config.seed, label)
        lesion = bool(rng.random() < config.lesion_fraction)
        sim = simulate_subject(
            preset.shape,
            preset.voxel_mm,
            np.asarray(config.echoes.te_s),
            rng,
            snr=config.snr,
            qsm_noise_ppm=config.qsm_noise_ppm,
            b0_t=config.b0_t,
            lesion=lesion,
        )
        bids.write_subject(
            partial,
            label,
            affine,
            sim.magnitude,
            config.echoes.te_s,
            sim.chi,
            sim.mask,
            sim.truth,
            b0_t=config.b0_t,
            sidecar={"Manufacturer": "oefray simulator", "oefray_seed": config.seed},
            suffix=suffix,
            labels=sim.labels,
            label_names=TISSUE_NAMES,
            lesion_codes=(int(Tissue.INFARCT_CORE),),
        )
        result.subjects[label] = {
            "split": split[label],
            "lesion": lesion,
            "brain_voxels": int(sim.mask.sum()),
            "shape": list(preset.shape),
        }
    if progress:
        progress(n, n, "done")
