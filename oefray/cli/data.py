"""``oefray simulate`` and ``oefray preprocess``: the data stages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from oefray.cli.common import (
    USAGE,
    AcqOption,
    AddressOption,
    ConfigOption,
    DsegOption,
    LesionsOption,
    MaskOption,
    OutResultsOption,
    QsmOption,
    RunOption,
    TruthOption,
    app,
    err_console,
    fail,
    labels,
    load,
    out_console,
    progress,
    run,
    selection_overrides,
    write_results,
)

log = logging.getLogger(__name__)


def _parse_ms_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        fail(f"--te must be a comma-separated list of milliseconds, got {text!r}", USAGE)
    return tuple(v * 1e-3 for v in values)


def _echo_scheme(te: str | None, te1: float | None, dte: float | None, echoes: int | None):
    """The echo scheme the flags give, or None (the config's)."""
    from oefray.config import DEFAULT_ECHOES, EchoScheme

    uniform = (te1, dte, echoes)
    if te is not None:
        if any(v is not None for v in uniform):
            fail("give either --te or --te1/--dte/--echoes, not both", USAGE)
        return EchoScheme(_parse_ms_list(te))
    if all(v is None for v in uniform):
        return None
    d = DEFAULT_ECHOES
    return EchoScheme.uniform(
        (te1 * 1e-3) if te1 is not None else d.te_s[0],
        (dte * 1e-3) if dte is not None else d.te_s[1] - d.te_s[0],
        echoes if echoes is not None else d.n_echoes,
    )


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder of the BIDS dataset to create.")],
    preset: Annotated[
        str | None,
        typer.Option(help="Grid size: tiny (tests), demo, full (~1e6 brain voxels/subject)."),
    ] = None,
    subjects: Annotated[
        str | None, typer.Option(help="Comma-separated labels (default: the paper's 18, P3..P34).")
    ] = None,
    te1: Annotated[float | None, typer.Option(help="First echo time, ms.")] = None,
    dte: Annotated[float | None, typer.Option(help="Echo spacing, ms.")] = None,
    echoes: Annotated[int | None, typer.Option(help="Number of echoes.")] = None,
    te: Annotated[
        str | None, typer.Option(help="Explicit echo times, ms, comma-separated (any spacing).")
    ] = None,
    snr: Annotated[float | None, typer.Option(help="Magnitude SNR at echo 1 in the brain.")] = None,
    b0: Annotated[float | None, typer.Option(help="Field strength, tesla.")] = None,
    qsm_noise: Annotated[
        float | None, typer.Option(help="QSM noise standard deviation, ppm.")
    ] = None,
    lesion_fraction: Annotated[
        float | None, typer.Option(help="Share of subjects with an infarct and penumbra.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Master seed (each subject: seed and label).")
    ] = None,
    plain_nii: Annotated[
        bool, typer.Option("--plain-nii", help="Write uncompressed .nii instead of .nii.gz.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    config: ConfigOption = None,
    results: OutResultsOption = None,
) -> None:
    """Simulate a synthetic BIDS cohort (mGRE magnitude, QSM, mask, ground-truth QQ maps)."""
    from oefray.config import SimulationConfig
    from oefray.orchestration.simulate import simulate_cohort

    try:
        scheme = _echo_scheme(te, te1, dte, echoes)
    except ValueError as exc:
        fail(str(exc), USAGE)
    sim = load(
        SimulationConfig,
        "simulate",
        config,
        {
            "preset": preset,
            "subjects": labels(subjects),
            "echoes": scheme,
            "snr": snr,
            "qsm_noise_ppm": qsm_noise,
            "b0_t": b0,
            "seed": seed,
            "lesion_fraction": lesion_fraction,
        },
    )
    with progress("simulate") as update:
        result = run(
            lambda: simulate_cohort(
                out, sim, force=force, suffix=".nii" if plain_nii else ".nii.gz", progress=update
            )
        )
    payload = result.to_dict()
    write_results(results or Path(result.dataset) / "results.json", payload)
    n_train = sum(1 for s in result.subjects.values() if s["split"] == "train")
    te_ms = ", ".join(f"{t * 1e3:g}" for t in sim.echoes.te_s)
    out_console.print(
        f"Wrote {len(result.subjects)} subjects ({n_train} train, {len(result.subjects) - n_train} test), "
        f"{payload['brain_voxels']:,} brain voxels, grid {sim.cohort.shape}, "
        f"{sim.echoes.n_echoes} echoes (TE {te_ms} ms) in {result.seconds:.1f} s -> {result.dataset}"
    )


def _scans_table(result: Any) -> Table:
    """Every scan of the run with its outcome (the errors follow on stderr, one line each)."""
    table = Table(title=None, show_edge=False)
    for col, justify in (("scan", "left"), ("outcome", "left"), ("voxels", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in result.scan_rows():
        table.add_row(row["scan"], row["outcome"], f"{row['voxels']:,}" if row["voxels"] else "")
    return table


def _preprocess_table(result: Any) -> Table:
    table = Table(title=None, show_edge=False)
    for col in ("done", "skipped", "failed", "not done", "voxels", "seconds", "voxels/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(result.completed)),
        str(len(result.skipped)),
        str(len(result.failed)),
        str(len(result.not_done)),
        f"{result.voxels:,}",
        f"{result.seconds:.1f}",
        f"{result.voxels_per_second:,.0f}",
    )
    return table


@app.command()
def preprocess(
    dataset: Annotated[Path, typer.Argument(help="BIDS dataset (see DESIGN.md section 4).")],
    out: Annotated[
        Path, typer.Option("--out", help="Features folder to write (Parquet + _manifest.json).")
    ],
    workers: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray runtime / concurrent fit tasks.")
    ] = None,
    slab: Annotated[
        int | None, typer.Option(help="z planes per Ray Data block (bounds memory per task).")
    ] = None,
    normalize: Annotated[
        str | None, typer.Option(help="Intensity normalisation: none or first-echo.")
    ] = None,
    address: AddressOption = None,
    subjects: Annotated[
        str | None,
        typer.Option(help="Comma-separated subject labels or scans (P3_ses-01); default: all."),
    ] = None,
    acq: AcqOption = None,
    run_label: RunOption = None,
    qsm: QsmOption = None,
    mask: MaskOption = None,
    truth: TruthOption = None,
    dseg: DsegOption = None,
    lesions: LesionsOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo scans that are already complete.")
    ] = False,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Finish the other scans when one fails.")
    ] = False,
    config: ConfigOption = None,
    results: Annotated[
        Path | None,
        typer.Option(help="Where to write results.json (default OUT/_results.json)."),
    ] = None,
) -> None:
    """Fit A·exp(-B·TE) per brain voxel with Ray Data and write the features Parquet."""
    from oefray.config import PreprocessConfig
    from oefray.io import features as fio
    from oefray.orchestration.preprocess import preprocess as run_preprocess

    options = load(
        PreprocessConfig,
        "preprocess",
        config,
        {
            "workers": workers,
            "slab": slab,
            "normalize": normalize,
            "address": address,
            "force": force or None,
            "keep_going": keep_going or None,
            **selection_overrides(acq, run_label, qsm, mask, truth, dseg, lesions),
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    existed = out.exists()
    with progress("preprocess") as update:
        result = run(
            lambda: run_preprocess(
                dataset, out, options, subjects=labels(subjects), progress=update
            )
        )
    made = Path(result.features)
    if results is not None:
        write_results(results, result.to_dict())
    elif existed or made.is_dir():
        # a run that failed before writing anything leaves OUT as it was: no folder holding
        # only _results.json (the re-run after the fix then needs no --force)
        try:
            write_results(made / fio.RESULTS, result.to_dict())
        except PermissionError:  # a read-only features folder whose subjects were all done
            log.warning("%s is read-only: no %s written there (see --results)", made, fio.RESULTS)
    out_console.print(_scans_table(result))
    out_console.print(_preprocess_table(result))
    out_console.print(f"features: {result.features}")
    for key, message in result.failed.items():
        err_console.print(
            f"oefray: error: sub-{key}: {message}", markup=False, highlight=False, soft_wrap=True
        )
    if result.not_done:
        shown = ", ".join(f"sub-{s}" for s in result.not_done)
        log.warning("not done after the failure: %s (--keep-going does them)", shown)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def verify(
    features: Annotated[
        Path | None, typer.Argument(help="Features folder from oefray preprocess.")
    ] = None,
    config: ConfigOption = None,
    results: Annotated[
        Path | None,
        typer.Option(help="Where to write results.json (default: nowhere; FEATURES is only read)."),
    ] = None,
) -> None:
    """Check every file of a features folder against the manifest: SHA-256, size, rows and
    content checksum. Exit 1 with one line per damaged file."""
    from oefray.config import VerifyConfig
    from oefray.io.features import verify_features

    options = load(VerifyConfig, "verify", config, {"features": features})
    if options.features is None:
        fail("give FEATURES (or features in the [verify] table of --config)", USAGE)
    with progress("verify") as update:
        report = run(lambda: verify_features(options.features, progress=update))
    if results is not None:
        write_results(results, report.to_dict())
    for path in report.unrecorded:
        log.warning("%s: subject folder not recorded in the manifest (ignored by readers)", path)
    for problem in report.problems:
        err_console.print(
            f"oefray: error: {problem}", markup=False, highlight=False, soft_wrap=True
        )
    state = "OK" if report.ok else f"{len(report.problems)} problem(s)"
    out_console.print(
        f"{report.root}: {state}; {report.subjects} subject(s), {report.files} file(s), "
        f"{report.bytes:,} bytes, {report.rows:,} rows checked",
        soft_wrap=True,
    )
    if not report.ok:
        raise typer.Exit(1)
