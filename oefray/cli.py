"""The ``oefray`` command: parse flags → config → one orchestration call → ``results.json``.

No numerics here. Every user-facing failure is one line on stderr and a non-zero exit code:
1 for a failed run (bad data, a subject that failed), 2 for bad arguments.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
    from oefray.io.files import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _parse_ms_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise UsageError(
            f"--te must be a comma-separated list of milliseconds, got {text!r}"
        ) from None
    return tuple(v * 1e-3 for v in values)


def _labels(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated subject labels (``sub-`` optional) as a tuple, or None."""
    if text is None:
        return None
    return tuple(s.strip().removeprefix("sub-") for s in text.split(",") if s.strip())


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
        labels = _labels(subjects) or PAPER_SUBJECTS
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
    labels = _labels(subjects)
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


def _table1(table) -> Table:
    """A rich table of the Table 1 frame (rows: subjects and Avg.; columns S0 ... OEF)."""
    out = Table(show_edge=False)
    out.add_column("subject")
    for col in table.columns:
        out.add_column(f"{col} (%)" if col == "OEF" else col, justify="right")
    for label, row in table.iterrows():
        out.add_row(str(label), *(f"{v:.4g}" for v in row.to_numpy()))
    return out


@app.command()
def train(
    features: Annotated[
        Path, typer.Argument(help="Features folder from oefray preprocess (with ground truth).")
    ],
    preset: Annotated[
        str | None, typer.Option(help="Model preset: small (CPU) or paper (the paper's network).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Ray Train workers (data-parallel replicas).")
    ] = None,
    gpus: Annotated[
        bool | None, typer.Option("--gpus/--no-gpus", help="One GPU per worker.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs (default: the preset's).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience, epochs.")] = None,
    max_train_windows: Annotated[
        int | None, typer.Option(help="Subsample the training windows (seeded).")
    ] = None,
    max_failures: Annotated[
        int | None,
        typer.Option(help="Worker failures to recover from (restart from the last checkpoint)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the split, the weights and the shuffling.")
    ] = None,
    window: Annotated[int | None, typer.Option(help="Voxels per sequence (the paper: 5).")] = None,
    anchor: Annotated[
        str | None, typer.Option(help="Target voxel of a window: centre or last.")
    ] = None,
    train_subjects: Annotated[
        str | None,
        typer.Option(help="Comma-separated training subjects (default: the manifest's split)."),
    ] = None,
    test_subjects: Annotated[
        str | None,
        typer.Option(help="Comma-separated test subjects (default: the manifest's split)."),
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (default: RAY_ADDRESS or a local runtime)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML/YAML file of training options; flags override it."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Resume an interrupted run (its MLflow run id) from its last checkpoint."
        ),
    ] = None,
    storage: Annotated[
        Path | None, typer.Option(help="Ray Train checkpoint storage (default ./ray_results).")
    ] = None,
    results: Annotated[Path, typer.Option(help="Where to write results.json.")] = Path(
        "results.json"
    ),
) -> None:
    """Train the LSTM on Ray Train, evaluate on the held-out subjects, track it all in MLflow."""
    from oefray.orchestration.train import train as run_train

    flags = {
        "preset": preset,
        "workers": workers,
        "gpus": gpus,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "patience": patience,
        "max_train_windows": max_train_windows,
        "max_failures": max_failures,
        "seed": seed,
        "experiment": experiment,
        "tracking_uri": tracking_uri,
        "address": address,
        "window": window,
        "anchor": anchor,
        "train_subjects": _labels(train_subjects),
        "test_subjects": _labels(test_subjects),
    }
    train_config = _train_config(config, flags)
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        result = run_train(features, train_config, storage_path=storage, resume=resume)
    except OefrayError as exc:
        _fail(str(exc), 1)
    _write_results(results, result.to_dict())
    out_console.print(
        f"run id: {result.run_id}  (experiment {result.experiment!r}, {result.epochs_run} epochs, best {result.best_epoch})"
    )
    out_console.print(_table1(result.table))
    t = result.test_metrics
    out_console.print(
        f"test OEF RMSE {t['test_rmse_OEF']:.3f} % over all test voxels, "
        f"{t['test_rmse_OEF_patient_mean']:.3f} % averaged over patients; "
        f"floor (training mean for every voxel) {t['floor_rmse_OEF']:.3f} %; "
        "paper: 5.23 ± 0.035 % (LSTM) vs 5.35 % (CCM) on patient data"
    )
    out_console.print(f"model: {result.model_uri}")
    out_console.print(f"MLflow UI: {result.ui_command}")


@app.command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
    features: Annotated[
        Path | None, typer.Option(help="Features folder (default: the one the run used).")
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Recompute a run's test tables, figures and maps (logged to the same run)."""
    from oefray.orchestration.predict import evaluate as run_evaluate

    try:
        table, metrics = run_evaluate(run_id, features=features, tracking_uri=tracking_uri)
    except OefrayError as exc:
        _fail(str(exc), 1)
    out_console.print(f"run id: {run_id}")
    out_console.print(_table1(table))
    out_console.print(f"test OEF RMSE {metrics['test_rmse_OEF']:.3f} % (pooled)")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Model URI (models:/<id>) or a training run id.")],
    dataset: Annotated[
        Path, typer.Argument(help="BIDS dataset, any echo scheme; ground truth optional.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the NIfTI maps.")],
    workers: Annotated[
        int, typer.Option(help="CPUs of the local Ray runtime for preprocessing.")
    ] = 2,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Predict Y, v, R2, S0, chi_nb and OEF maps for new data with a trained model."""
    from oefray.orchestration.predict import predict as run_predict

    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        result = run_predict(
            model,
            dataset,
            out,
            workers=workers,
            address=address,
            tracking_uri=tracking_uri,
            force=force,
        )
    except OefrayError as exc:
        _fail(str(exc), 1)
    n = sum(s["predicted"] for s in result.subjects.values())
    out_console.print(
        f"Wrote maps of {len(result.subjects)} subject(s), {n:,} voxels -> {result.out}"
    )
    if result.rmse:
        out_console.print(
            "RMSE against the dataset's ground truth: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.rmse.items())
        )


@app.command()
def tune(
    features: Annotated[
        Path | None,
        typer.Argument(help="Features folder from oefray preprocess (with ground truth)."),
    ] = None,
    repeats: Annotated[
        int | None,
        typer.Option(help="Seed repeats (default 5, the paper's); seeds are seed, seed+1, ..."),
    ] = None,
    search: Annotated[
        bool, typer.Option("--search", help="Hyperparameter search (ASHA) instead of repeats.")
    ] = False,
    samples: Annotated[int, typer.Option(help="Search: number of trials.")] = 8,
    space: Annotated[
        Path | None,
        typer.Option(
            help="Search: search-space file (default: the packaged one, see --write-space)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Search: continue the last interrupted search.")
    ] = False,
    best_config: Annotated[
        Path, typer.Option(help="Search: where to write the best trial's [train] TOML.")
    ] = Path("best_config.toml"),
    write_space: Annotated[
        Path | None,
        typer.Option(help="Write the default search space to this file (to edit) and exit."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Model preset: small or paper.")] = None,
    workers_per_trial: Annotated[
        int | None, typer.Option(help="Ray Train workers of each repeat.")
    ] = None,
    gpus_per_trial: Annotated[
        bool | None,
        typer.Option(
            "--gpus-per-trial/--no-gpus-per-trial", help="One GPU per worker of each repeat."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Maximum epochs (default: the preset's).")
    ] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Adam learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    max_train_windows: Annotated[
        int | None, typer.Option(help="Subsample the training windows (seeded).")
    ] = None,
    max_failures: Annotated[
        int | None,
        typer.Option(help="Worker failures to recover from (restart from the last checkpoint)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="First seed.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Cap on repeats running at once.")
    ] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="TOML/YAML file of training options; flags override it."),
    ] = None,
    storage: Annotated[
        Path | None, typer.Option(help="Ray Train/Tune storage (default ./ray_results).")
    ] = None,
    results: Annotated[Path, typer.Option(help="Where to write results.json.")] = Path(
        "results.json"
    ),
) -> None:
    """Seed repeats (the paper's protocol) or, with --search, an ASHA hyperparameter search.

    Both run on Ray Tune and are tracked in MLflow as a parent run with one child run per trial.
    """
    from oefray.orchestration.tune import run_repeats

    if write_space is not None:
        from oefray.orchestration.search import default_space_path

        write_space.parent.mkdir(parents=True, exist_ok=True)
        write_space.write_text(default_space_path().read_text())
        out_console.print(
            f"wrote {write_space}; use it with: oefray tune FEATURES --search --space {write_space}"
        )
        return
    if features is None:
        _fail("missing argument FEATURES (a features folder from oefray preprocess)", 2)
    assert features is not None
    if search and repeats is not None:
        _fail("--repeats and --search are different experiments; give one of them", 2)
    if not search and (resume or space is not None):
        _fail("--resume and --space belong to --search", 2)

    train_config = _train_config(
        config,
        {
            "preset": preset,
            "workers": workers_per_trial,
            "gpus": gpus_per_trial,
            "epochs": epochs,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "max_train_windows": max_train_windows,
            "max_failures": max_failures,
            "seed": seed,
            "experiment": experiment,
            "tracking_uri": tracking_uri,
            "address": address,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    if search:
        _tune_search(
            features,
            train_config,
            samples=samples,
            space=space,
            resume=resume,
            storage=storage,
            max_concurrent=max_concurrent,
            best_config=best_config,
            results=results,
        )
        return
    try:
        # Tune's trial tables go to stderr with the other logs; stdout keeps the summary
        with contextlib.redirect_stdout(sys.stderr):
            result = run_repeats(
                features,
                train_config,
                repeats=5 if repeats is None else repeats,
                storage_path=storage,
                max_concurrent=max_concurrent,
            )
    except OefrayError as exc:
        _fail(str(exc), 1)
    _write_results(results, result.to_dict())
    out_console.print(
        f"parent run: {result.parent_run_id}  ({len(result.child_run_ids)} repeats, seeds {result.seeds})"
    )
    table = Table(show_edge=False)
    table.add_column("test RMSE")
    table.add_column("mean ± std", justify="right")
    for i in range(len(result.seeds)):
        table.add_column(f"seed {result.seeds[i]}", justify="right")
    for q, row in result.summary.iterrows():
        reps = [row[f"repeat_{i}"] for i in range(len(result.seeds))]
        label = "OEF (%)" if q == "OEF" else str(q)
        table.add_row(label, f"{row['mean']:.4g} ± {row['std']:.2g}", *(f"{v:.4g}" for v in reps))
    out_console.print(table)
    out_console.print(
        f"representative repeat (closest to the mean OEF RMSE): {result.representative_run_id}"
    )
    out_console.print("paper (patient data): OEF 5.23 ± 0.035 % (LSTM) vs 5.35 % (CCM)")
    out_console.print(f"MLflow UI: {result.ui_command}")


def _tune_search(features: Path, train_config, *, results: Path, **options: Any) -> None:
    from oefray.errors import Interrupted
    from oefray.orchestration.search import run_search

    try:
        # Tune's trial tables go to stderr with the other logs; stdout keeps the summary
        with contextlib.redirect_stdout(sys.stderr):
            result = run_search(
                features,
                train_config,
                samples=options["samples"],
                space=options["space"],
                storage_path=options["storage"],
                resume=options["resume"],
                max_concurrent=options["max_concurrent"],
                best_config_path=options["best_config"],
            )
    except Interrupted as exc:
        _fail(str(exc), 130)
    except OefrayError as exc:
        _fail(str(exc), 1)
    _write_results(results, result.to_dict())
    table = Table(show_edge=False)
    for column in ("trial", "MLflow run", result.metric, "test OEF (%)", "status"):
        table.add_column(column)
    for t in result.trials:
        status = (
            "completed" if t["completed"] else (t["error"] or f"stopped after {t['epochs']} epochs")
        )
        value = t[result.metric]
        table.add_row(
            str(t["trial_id"]),
            str(t["run_id"]),
            "" if value is None else f"{value:.4g}",
            "" if t["test_rmse_OEF"] is None else f"{t['test_rmse_OEF']:.4g}",
            status,
        )
    out_console.print(f"parent run: {result.parent_run_id}  ({len(result.trials)} trials)")
    out_console.print(table)
    out_console.print(
        f"best trial on {result.metric} = {result.best_value:.4g}: run {result.best_run_id}; "
        f"config written to {result.best_config_path} (oefray train FEATURES --config {result.best_config_path})"
    )
    out_console.print(f"MLflow UI: {result.ui_command}")


baseline_app = typer.Typer(
    help="Baselines that sit beside the LSTM in MLflow and in comparisons.", no_args_is_help=True
)
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("ccm")
def baseline_ccm(
    features: Annotated[
        Path, typer.Argument(help="Features folder from oefray preprocess (with ground truth).")
    ],
    clusters: Annotated[int, typer.Option(help="k-means clusters of the library.")] = 256,
    neighbours: Annotated[int, typer.Option(help="Nearest centroids interpolated per voxel.")] = 4,
    library_size: Annotated[
        int, typer.Option(help="Reference voxels re-simulated (seeded subsample).")
    ] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the subsample and of k-means.")] = 0,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "oefray",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    results: Annotated[Path, typer.Option(help="Where to write results.json.")] = Path(
        "results.json"
    ),
) -> None:
    """The CCM baseline (Lee 2022): cluster library re-simulated at the data's echo times."""
    from oefray.orchestration.baseline import run_ccm

    try:
        out = run_ccm(
            features,
            clusters=clusters,
            neighbours=neighbours,
            library_size=library_size,
            seed=seed,
            experiment=experiment,
            tracking_uri=tracking_uri,
        )
    except (OefrayError, ValueError) as exc:
        _fail(str(exc), 1)
    table = out.pop("table")
    _write_results(
        results,
        {
            **out,
            "table": {str(k): {c: float(v) for c, v in row.items()} for k, row in table.iterrows()},
        },
    )
    t = out["test_metrics"]
    out_console.print(f"run id: {out['run_id']}  (CCM, K={clusters}, k={neighbours})")
    out_console.print(_table1(table))
    out_console.print(
        f"test OEF RMSE {t['test_rmse_OEF']:.3f} % over all test voxels; floor {t['floor_rmse_OEF']:.3f} %"
    )


@app.command()
def compare(
    refs: Annotated[list[str], typer.Argument(help="MLflow run ids and/or experiment names.")],
    format: Annotated[str, typer.Option("--format", help="md, csv or html.")] = "md",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """Per-parameter and OEF test RMSE of runs and experiments side by side (with the floor)."""
    from oefray.orchestration.compare import compare_runs, format_rows

    try:
        text = format_rows(compare_runs(refs, tracking_uri=tracking_uri), format)
    except OefrayError as exc:
        _fail(str(exc), 1)
    sys.stdout.write(text)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment name.")],
    out: Annotated[
        Path, typer.Option("--out", help="The HTML file to write (self-contained).")
    ] = Path("report.html"),
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."
        ),
    ] = None,
) -> None:
    """A static HTML report of an experiment: test RMSE with the floor, tables, figures, params."""
    from oefray.orchestration.report import write_report

    try:
        result = write_report(experiment, out, tracking_uri=tracking_uri)
    except OefrayError as exc:
        _fail(str(exc), 1)
    out_console.print(
        f"Wrote {result.path}: {len(result.run_ids)} run(s), {result.figures} figure(s), "
        f"{result.tables} table(s), {result.bytes / 1e3:,.0f} kB",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for note in result.notes:
        err_console.print(f"oefray: note: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def ui(
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="The store to serve (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Address to listen on (default: this machine only).")
    ] = "127.0.0.1",
) -> None:
    """The MLflow UI and REST API over the project's store, until Ctrl-C."""
    from oefray.orchestration.ui import serve_ui

    def say(text: str) -> None:
        out_console.print(text, markup=False, highlight=False, soft_wrap=True)

    def start(url: str, store: str) -> None:
        say(f"starting the MLflow server on {store} at {url} ...")

    def ready(url: str) -> None:
        say(f"MLflow UI: {url}  (Ctrl-C stops it; jobs log to it with --tracking-uri {url})")

    try:
        url = serve_ui(tracking_uri, host=host, port=port, on_start=start, on_ready=ready)
    except OefrayError as exc:
        _fail(str(exc), 1)
    out_console.print(f"stopped the MLflow server at {url}", markup=False, highlight=False)


study_app = typer.Typer(help="Studies that measure the method's claims.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("te-shift")
def study_te_shift(
    dataset: Annotated[
        Path, typer.Argument(help="BIDS dataset with ground truth and a train/test split.")
    ],
    model: Annotated[
        str, typer.Option("--model", help="Training run id (or model URI) of the LSTM.")
    ],
    snr: Annotated[float, typer.Option(help="Echo-1 SNR of the re-simulated magnitudes.")] = 100.0,
    clusters: Annotated[int, typer.Option(help="CCM clusters.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the re-simulation noise and of CCM.")] = 0,
    workers: Annotated[
        int, typer.Option(help="CPUs of the local Ray runtime for preprocessing.")
    ] = 2,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "oefray",
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Also write te_shift.csv and te_shift.md here.")
    ] = None,
) -> None:
    """Test RMSE of the LSTM, CCM and the floor when the test data come with other echo schemes."""
    from oefray.orchestration.study import te_shift

    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        result = te_shift(
            dataset,
            model,
            snr=snr,
            clusters=clusters,
            seed=seed,
            workers=workers,
            experiment=experiment,
            tracking_uri=tracking_uri,
            out=out,
        )
    except OefrayError as exc:
        _fail(str(exc), 1)
    sys.stdout.write(result["markdown"])
    out_console.print(f"run id: {result['run_id']}")


@app.command()
def submit(
    spec: Annotated[
        Path, typer.Argument(help="Job spec: jobs/<stage>.yaml (entrypoint + runtime_env).")
    ],
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray job server, http://<head>:8265 (default: RAY_API_SERVER_ADDRESS, "
            "an http:// RAY_ADDRESS, or http://127.0.0.1:8265)."
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow",
            help="Stream the job's logs and exit with its status (0 only if it SUCCEEDED); "
            "--no-follow returns once the job is submitted.",
        ),
    ] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="NAME=VALUE",
            help="Set an environment variable of the job (runtime_env.env_vars), e.g. "
            "--set OEFRAY_FEATURES=/mnt/shared/features; repeatable.",
        ),
    ] = None,
) -> None:
    """Run a pipeline stage as a Ray job on a cluster (jobs/<stage>.yaml)."""
    from oefray.orchestration.submit import follow as follow_job
    from oefray.orchestration.submit import parse_overrides, read_job_spec
    from oefray.orchestration.submit import submit as submit_job

    try:
        job_spec = read_job_spec(spec, parse_overrides(set_ or []))
    except OefrayError as exc:
        _fail(str(exc), 2)
    try:
        job = submit_job(job_spec, address)
    except OefrayError as exc:
        _fail(str(exc), 1)
    err_console.print(
        f"submitted {job.submission_id} to {job.address}: {job_spec.entrypoint}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if not follow:
        out_console.print(
            f"job {job.submission_id}; follow it with: ray job logs --follow "
            f"--address {job.address} {job.submission_id}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    try:
        outcome = follow_job(job, write)
    except KeyboardInterrupt:
        _fail(
            f"stopped following {job.submission_id}; it keeps running "
            f"(ray job stop --address {job.address} {job.submission_id})",
            130,
        )
    if not outcome.ok:
        detail = f": {outcome.message}" if outcome.message else ""
        _fail(
            f"{spec}: job {job.submission_id} {outcome.status} after {outcome.seconds:.0f} s{detail}",
            1,
        )
    out_console.print(
        f"job {job.submission_id} SUCCEEDED in {outcome.seconds:.1f} s",
        markup=False,
        highlight=False,
    )


def _train_config(config_path: Path | None, flags: dict[str, Any]):
    """TrainConfig from an optional config file (``[train]`` table or top level) and the flags
    that were given; exits with code 2 and one line on a bad file or value."""
    from oefray.config import TrainConfig, config_from_mapping, read_config_file

    try:
        values = read_config_file(config_path, section="train") if config_path is not None else {}
        values = {**values, **{k: v for k, v in flags.items() if v is not None}}
        return config_from_mapping(TrainConfig, values, config_path)
    except OefrayError as exc:
        _fail(str(exc), 2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oefray`` console script; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        app(args=argv, prog_name="oefray", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
