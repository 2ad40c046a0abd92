"""``oefray train``, ``oefray tune`` and ``oefray evaluate``: the commands that train the LSTM
(both take the same training options and ``--config``) and the one that re-evaluates a run."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from oefray.cli.common import (
    USAGE,
    AddressOption,
    ConfigOption,
    InferenceGpusOption,
    ResultsOption,
    StorageOption,
    TrackingOption,
    app,
    fail,
    load,
    out_console,
    progress,
    run,
    say,
    table1,
    training_options,
    write_results,
)

PAPER_LINE = "paper: 5.23 ± 0.035 % (LSTM) vs 5.35 % (CCM) on patient data"


@app.command()
@training_options()
def train(
    features: Annotated[
        Path, typer.Argument(help="Features folder from oefray preprocess (with ground truth).")
    ],
    resume: Annotated[
        str | None,
        typer.Option(
            help="Resume an interrupted run (its MLflow run id) from its last checkpoint."
        ),
    ] = None,
    storage: StorageOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
    train_config: Any = None,
) -> None:
    """Train the LSTM on Ray Train, evaluate on the held-out subjects, track it all in MLflow."""
    from oefray.orchestration.train import train as run_train

    logging.getLogger("ray").setLevel(logging.WARNING)
    result = run(lambda: run_train(features, train_config, storage_path=storage, resume=resume))
    write_results(results, result.to_dict())
    out_console.print(
        f"run id: {result.run_id}  (experiment {result.experiment!r}, {result.epochs_run} epochs, best {result.best_epoch})"
    )
    out_console.print(table1(result.table))
    t = result.test_metrics
    out_console.print(
        f"test OEF RMSE {t['test_rmse_OEF']:.3f} % over all test voxels, "
        f"{t['test_rmse_OEF_patient_mean']:.3f} % averaged over patients; "
        f"floor (training mean for every voxel) {t['floor_rmse_OEF']:.3f} %; {PAPER_LINE}"
    )
    out_console.print(f"model: {result.model_uri}")
    out_console.print(f"MLflow UI: {result.ui_command}")


@app.command()
def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a training run.")],
    features: Annotated[
        Path | None, typer.Option(help="Features folder (default: the one the run used).")
    ] = None,
    tracking_uri: TrackingOption = None,
    workers: Annotated[
        int | None,
        typer.Option(help="CPUs of the local Ray runtime (default: the machine's)."),
    ] = None,
    address: AddressOption = None,
    gpus: InferenceGpusOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """Recompute a run's test tables, figures and maps, logged to a new run under it."""
    from oefray.config import EvaluateConfig
    from oefray.orchestration.evaluate import evaluate as run_evaluate
    from oefray.reports import table_to_dict

    options = load(
        EvaluateConfig,
        "evaluate",
        config,
        {
            "features": features,
            "tracking_uri": tracking_uri,
            "workers": workers,
            "address": address,
            "gpus": gpus,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    with progress("evaluate") as update:
        result = run(
            lambda: run_evaluate(
                run_id,
                features=options.features,
                tracking_uri=options.tracking_uri,
                address=options.address,
                workers=options.workers,
                gpus=options.gpus,
                progress=update,
            )
        )
    write_results(
        results,
        {
            "command": "evaluate",
            "run_id": result.run_id,
            "evaluates": result.evaluates,
            "features": result.features,
            "test_metrics": result.test_metrics,
            "table": table_to_dict(result.table),
        },
    )
    out_console.print(f"evaluation run id: {result.run_id} (of the training run {run_id})")
    out_console.print(table1(result.table))
    out_console.print(f"test OEF RMSE {result.test_metrics['test_rmse_OEF']:.3f} % (pooled)")


@app.command()
@training_options(
    flags={
        "workers": ("--workers-per-trial",),
        "gpus": ("--gpus-per-trial/--no-gpus-per-trial",),
    }
)
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
    samples: Annotated[int | None, typer.Option(help="Search: number of trials.")] = None,
    space: Annotated[
        Path | None,
        typer.Option(
            help="Search: search-space file (default: the packaged one, see --write-space)."
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue an interrupted tune: its parent MLflow run id."),
    ] = None,
    best_config: Annotated[
        Path | None,
        typer.Option(help="Search: where to write the best trial's \\[train] TOML."),
    ] = None,
    write_space: Annotated[
        Path | None,
        typer.Option(help="Write the default search space to this file (to edit) and exit."),
    ] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(help="Cap on trials running at once.")
    ] = None,
    storage: StorageOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
    train_config: Any = None,
) -> None:
    """Seed repeats (the paper's protocol) or, with --search, an ASHA hyperparameter search.

    Both run on Ray Tune and are tracked in MLflow as a parent run with one child run per trial.
    """
    from oefray.config import TuneConfig

    if write_space is not None:
        _write_space(write_space)
        return
    if features is None:
        fail("missing argument FEATURES (a features folder from oefray preprocess)", USAGE)
    if search and repeats is not None:
        fail("--repeats and --search are different experiments; give one of them", USAGE)
    if not search and (space is not None or samples is not None or best_config is not None):
        fail("--space, --samples and --best-config belong to --search", USAGE)
    options = load(
        TuneConfig,
        "tune",
        config,
        {
            "repeats": repeats,
            "samples": samples,
            "space": space,
            "max_concurrent": max_concurrent,
            "best_config": best_config,
        },
    )
    logging.getLogger("ray").setLevel(logging.WARNING)
    if search:
        _tune_search(features, train_config, options, resume, storage, results)
    else:
        _tune_repeats(features, train_config, options, resume, storage, results)


def _write_space(path: Path) -> None:
    from oefray.config import default_space_path
    from oefray.io.files import write_text_atomic

    write_text_atomic(path, default_space_path().read_text())
    say(f"wrote {path}; use it with: oefray tune FEATURES --search --space {path}")


def _run_tune(runner, features: Path, train_config, options, resume, storage, results: Path):
    """Run repeats or a search (Ctrl-C: exit 130, resumable) and write its results.json."""
    with contextlib.redirect_stdout(sys.stderr):  # Tune's trial tables: stderr, with the logs
        result = run(
            lambda: runner(features, train_config, options, storage_path=storage, resume=resume),
            interrupted_code=130,
        )
    write_results(results, result.to_dict())
    return result


def _tune_repeats(features: Path, train_config, options, resume, storage, results: Path) -> None:
    from oefray.orchestration.repeats import run_repeats

    result = _run_tune(run_repeats, features, train_config, options, resume, storage, results)
    out_console.print(
        f"parent run: {result.parent_run_id}  ({len(result.child_run_ids)} repeats, seeds {result.seeds})"
    )
    table = Table(show_edge=False)
    table.add_column("test RMSE")
    table.add_column("mean ± std", justify="right")
    for seed in result.seeds:
        table.add_column(f"seed {seed}", justify="right")
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


def _tune_search(features: Path, train_config, options, resume, storage, results: Path) -> None:
    from oefray.orchestration.search import run_search

    result = _run_tune(run_search, features, train_config, options, resume, storage, results)
    table = Table(show_edge=False)
    for column in ("trial", "MLflow run", result.metric, "test OEF (%)", "status"):
        table.add_column(column)
    for t in result.trials:
        stopped = t["error"] or f"stopped after {t['epochs']} epochs"
        value = t[result.metric]
        table.add_row(
            str(t["trial_id"]),
            str(t["run_id"]),
            "" if value is None else f"{value:.4g}",
            "" if t["test_rmse_OEF"] is None else f"{t['test_rmse_OEF']:.4g}",
            "completed" if t["completed"] else stopped,
        )
    out_console.print(f"parent run: {result.parent_run_id}  ({len(result.trials)} trials)")
    out_console.print(table)
    out_console.print(
        f"best trial on {result.metric} = {result.best_value:.4g}: run {result.best_run_id}; "
        f"config written to {result.best_config_path} (oefray train FEATURES --config {result.best_config_path})"
    )
    out_console.print(f"MLflow UI: {result.ui_command}")
