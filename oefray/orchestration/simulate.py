"""``oefray simulate``: a synthetic BIDS cohort with ground-truth QQ maps (DESIGN.md §3, §4).

Each subject is simulated from its own random stream, seeded by ``(seed, label)``, so a subject is
the same whether it is simulated alone or within a cohort. The dataset is written into a hidden
sibling folder and renamed into place at the end: an interrupted run leaves no half-written cohort.
"""

from __future__ import annotations

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
    for pipeline in ("qsm", "qq"):
        bids.write_dataset_description(
            partial / "derivatives" / pipeline,
            f"{pipeline} maps",
            generated_by=f"oefray {__version__}",
        )
    bids.write_participants(
        partial, [{"participant_id": f"sub-{s}", "split": split[s]} for s in config.subjects]
    )
    (partial / ".bidsignore").write_text("results.json\n")
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
        )
        result.subjects[label] = {
            "split": split[label],
            "lesion": lesion,
            "brain_voxels": int(sim.mask.sum()),
            "shape": list(preset.shape),
        }
    if progress:
        progress(n, n, "done")
