"""The ``oefray`` command: parse flags → config → one orchestration call → ``results.json``.

No numerics here. Every user-facing failure is one line on stderr and a non-zero exit code:
1 for a failed run (bad data, a subject that failed), 2 for bad arguments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oefray import __version__
from oefray.errors import OefrayError

app = typer.Typer(
    name="oefray",
    help="Brain oxygen extraction fraction (OEF) from multi-echo GRE MRI, at cluster scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)


class UsageError(Exception):
    """Bad arguments: exit code 2."""


def _fail(message: str, code: int) -> None:
    err_console.print(f"oefray: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Any]:
    """A progress bar on stderr; yields ``update(done, total, message)``."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[msg]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(description, total=None, msg="")

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total, msg=message)

        yield update


def _write_results(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def _parse_ms_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise UsageError(
            f"--te must be a comma-separated list of milliseconds, got {text!r}"
        ) from None
    return tuple(v * 1e-3 for v in values)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out_console.print(f"oefray {__version__}")
        raise typer.Exit(0)


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder of the BIDS dataset to create.")],
    preset: Annotated[
        str, typer.Option(help="Grid size: tiny (tests), demo, full (~1e6 brain voxels/subject).")
    ] = "demo",
    subjects: Annotated[
        str | None, typer.Option(help="Comma-separated labels (default: the paper's 18, P3..P34).")
    ] = None,
    te1: Annotated[float | None, typer.Option(help="First echo time, ms.")] = None,
    dte: Annotated[float | None, typer.Option(help="Echo spacing, ms.")] = None,
    echoes: Annotated[int | None, typer.Option(help="Number of echoes.")] = None,
    te: Annotated[
        str | None, typer.Option(help="Explicit echo times, ms, comma-separated (any spacing).")
    ] = None,
    snr: Annotated[float, typer.Option(help="Magnitude SNR at echo 1 in the brain.")] = 100.0,
    b0: Annotated[float, typer.Option(help="Field strength, tesla.")] = 3.0,
    qsm_noise: Annotated[float, typer.Option(help="QSM noise standard deviation, ppm.")] = 0.002,
    lesion_fraction: Annotated[
        float, typer.Option(help="Share of subjects with an infarct and penumbra.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Master seed (each subject: seed and label).")] = 0,
    plain_nii: Annotated[
        bool, typer.Option("--plain-nii", help="Write uncompressed .nii instead of .nii.gz.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    results: Annotated[
        Path | None, typer.Option(help="Where to write results.json (default OUT/results.json).")
    ] = None,
) -> None:
    """Simulate a synthetic BIDS cohort (mGRE magnitude, QSM, mask, ground-truth QQ maps)."""
    from oefray.config import DEFAULT_ECHOES, PAPER_SUBJECTS, EchoScheme, SimulationConfig
    from oefray.orchestration.simulate import simulate_cohort

    try:
        if te is not None:
            if any(v is not None for v in (te1, dte, echoes)):
                raise UsageError("give either --te or --te1/--dte/--echoes, not both")
            scheme = EchoScheme(_parse_ms_list(te))
        elif any(v is not None for v in (te1, dte, echoes)):
            d = DEFAULT_ECHOES
            scheme = EchoScheme.uniform(
                (te1 * 1e-3) if te1 is not None else d.te_s[0],
                (dte * 1e-3) if dte is not None else d.te_s[1] - d.te_s[0],
                echoes if echoes is not None else d.n_echoes,
            )
        else:
            scheme = DEFAULT_ECHOES
        labels = (
            PAPER_SUBJECTS
            if subjects is None
            else tuple(s.strip().removeprefix("sub-") for s in subjects.split(",") if s.strip())
        )
        config = SimulationConfig(
            preset=preset,
            subjects=labels,
            echoes=scheme,
            snr=snr,
            qsm_noise_ppm=qsm_noise,
            b0_t=b0,
            seed=seed,
            lesion_fraction=lesion_fraction,
        )
    except (UsageError, ValueError) as exc:
        _fail(str(exc), 2)
    try:
        with _progress("simulate") as update:
            result = simulate_cohort(
                out, config, force=force, suffix=".nii" if plain_nii else ".nii.gz", progress=update
            )
    except OefrayError as exc:
        _fail(str(exc), 1)
    payload = result.to_dict()
    _write_results(results or Path(result.dataset) / "results.json", payload)
    n_train = sum(1 for s in result.subjects.values() if s["split"] == "train")
    out_console.print(
        f"Wrote {len(result.subjects)} subjects ({n_train} train, {len(result.subjects) - n_train} test), "
        f"{payload['brain_voxels']:,} brain voxels, grid {config.cohort.shape}, "
        f"{config.echoes.n_echoes} echoes (TE {', '.join(f'{t * 1e3:g}' for t in config.echoes.te_s)} ms) "
        f"in {result.seconds:.1f} s -> {result.dataset}"
    )


@app.command()
def preprocess(
    dataset: Annotated[Path, typer.Argument(help="BIDS dataset (see DESIGN.md section 4).")],
    out: Annotated[
        Path, typer.Option("--out", help="Features folder to write (Parquet + manifest.json).")
    ],
    workers: Annotated[
        int, typer.Option(help="CPUs of the local Ray runtime / concurrent fit tasks.")
    ] = 2,
    slab: Annotated[
        int, typer.Option(help="z planes per Ray Data block (bounds memory per task).")
    ] = 8,
    normalize: Annotated[
        str, typer.Option(help="Intensity normalisation: none or first-echo.")
    ] = "none",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (default: RAY_ADDRESS or a local runtime)."),
    ] = None,
    subjects: Annotated[
        str | None, typer.Option(help="Comma-separated labels (default: all).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo subjects that are already complete.")
    ] = False,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Finish the other subjects when one fails.")
    ] = False,
    results: Annotated[
        Path | None, typer.Option(help="Where to write results.json (default OUT/results.json).")
    ] = None,
) -> None:
    """Fit A·exp(-B·TE) per brain voxel with Ray Data and write the features Parquet."""
    from oefray.config import PreprocessConfig
    from oefray.orchestration.preprocess import preprocess as run_preprocess

    try:
        config = PreprocessConfig(
            workers=workers,
            slab=slab,
            normalize=normalize,
            address=address,
            force=force,
            keep_going=keep_going,
        )
    except ValueError as exc:
        _fail(str(exc), 2)
    labels = (
        None
        if subjects is None
        else [s.strip().removeprefix("sub-") for s in subjects.split(",") if s.strip()]
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        with _progress("preprocess") as update:
            result = run_preprocess(dataset, out, config, subjects=labels, progress=update)
    except OefrayError as exc:
        _fail(str(exc), 1)
    _write_results(results or Path(result.features) / "results.json", result.to_dict())
    table = Table(title=None, show_edge=False)
    for col in ("done", "skipped", "failed", "voxels", "seconds", "voxels/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(result.completed)),
        str(len(result.skipped)),
        str(len(result.failed)),
        f"{result.voxels:,}",
        f"{result.seconds:.1f}",
        f"{result.voxels_per_second:,.0f}",
    )
    out_console.print(table)
    out_console.print(f"features: {result.features}")
    for label, message in result.failed.items():
        err_console.print(
            f"oefray: error: sub-{label}: {message}", markup=False, highlight=False, soft_wrap=True
        )
    if not result.ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oefray`` console script; returns the exit code."""
    try:
        app(args=argv, prog_name="oefray", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
