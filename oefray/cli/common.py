"""What every ``oefray`` command shares: the app, output, failures, progress, ``results.json``,
the ``--config`` loader, and the training options declared once for every command that trains.

No numerics here. Every user-facing failure is one line on stderr and a non-zero exit code:
1 for a failed run (bad data, a subject that failed), 2 for bad arguments.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from oefray.errors import OefrayError

app = typer.Typer(
    name="oefray",
    help="Brain oxygen extraction fraction (OEF) from multi-echo GRE MRI, at cluster scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: a path or a run id is never cut into two lines (scripts and job logs grep them)
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class _Debug:
    """``oefray --debug``: tracebacks instead of one line for the failures that have one."""

    on = False


DEBUG = _Debug()

#: Exit code of bad arguments (a bad flag value, a bad config file).
USAGE = 2
#: Exit code of a run that failed (bad data, an unreachable cluster, a failed subject).
FAILED = 1


def fail(message: str, code: int) -> NoReturn:
    """Print ``oefray: error: <message>`` on stderr and exit with ``code``."""
    err_console.print(f"oefray: error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def say(text: str) -> None:
    """A plain line on stdout (no markup, no wrapping)."""
    out_console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(description: str) -> Iterator[Any]:
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


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Write a command's ``results.json`` (atomically), so job scripts can chain stages."""
    from oefray.io.files import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def labels(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated subject labels (``sub-`` optional) as a tuple, or None."""
    if text is None:
        return None
    return tuple(s.strip().removeprefix("sub-") for s in text.split(",") if s.strip())


def load(cls: type, section: str, path: Path | None, overrides: dict[str, Any]):
    """A command's config: ``[section]`` of the ``--config`` file, then the flags that were
    given (paths as strings, as a file gives them); exits with code 2 and one line on a bad file
    or value."""
    from oefray.config import load_config

    given = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    try:
        return load_config(cls, section, path, given)
    except OefrayError as exc:
        fail(str(exc), USAGE)


def run(call: Callable[[], Any], *, interrupted_code: int | None = None) -> Any:
    """Run one orchestration call; an expected failure becomes one line and exit code 1
    (130 for an interruption that saved its state, where ``interrupted_code`` says so)."""
    from oefray.errors import Interrupted

    try:
        return call()
    except Interrupted as exc:
        fail(str(exc), interrupted_code or FAILED)
    except OefrayError as exc:
        fail(str(exc), FAILED)
    except OSError as exc:  # a folder not writable, a path that is a file, a full disk, ...
        if DEBUG.on or exc.strerror is None:
            raise
        where = exc.filename if exc.filename is not None else "oefray"
        fail(f"{where}: {exc.strerror}", FAILED)


def table1(frame) -> Table:
    """A rich table of a Table 1 frame (rows: subjects and Avg.; columns S0 ... OEF)."""
    out = Table(show_edge=False)
    out.add_column("subject")
    for col in frame.columns:
        out.add_column(f"{col} (%)" if col == "OEF" else col, justify="right")
    for label, row in frame.iterrows():
        out.add_row(str(label), *(f"{v:.4g}" for v in row.to_numpy()))
    return out


# --------------------------------------------------------------------------------------------
# Options every command declares the same way
# --------------------------------------------------------------------------------------------

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML/YAML file of options, a table per command (\\[train], \\[tune], \\[simulate], "
        "\\[preprocess], \\[predict], \\[ccm], \\[study], ...); flags override it.",
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db)."),
]
AddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster address (default: RAY_ADDRESS or a local runtime)."),
]
InferenceGpusOption = Annotated[
    bool | None,
    typer.Option("--gpus/--no-gpus", help="One GPU per inference actor (default: one CPU)."),
]
ExperimentOption = Annotated[str | None, typer.Option(help="MLflow experiment name.")]

# Which files of a BIDS dataset make a scan (oefray.io.scans.ScanSelection)
AcqOption = Annotated[
    str | None, typer.Option(help="acq label of the echoes, where a scan has several.")
]
RunOption = Annotated[  # a parameter named run_label: run() is this module's
    str | None, typer.Option("--run", help="run label of the echoes, where a scan has several.")
]
QsmOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Derivative (derivatives/NAME) with the QSM *_Chimap (default: the one that has it).",
    ),
]
MaskOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Derivative with the brain mask, *_desc-brain_mask or *_mask (default: the QSM's).",
    ),
]
TruthOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Derivative with ground-truth/reference QQ maps (default: qq; absent: none).",
    ),
]


DsegOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Derivative with a tissue segmentation *_dseg (default: the one that has it).",
    ),
]
LesionsOption = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="Derivative with lesion masks *_label-lesion_mask (default: the one that has them).",
    ),
]


def selection_overrides(*values: str | None) -> dict[str, Any]:
    """The config overrides of the scan-selection flags, given in the order of
    :data:`oefray.config.SCAN_OPTIONS` (acq, run, qsm, mask, truth, dseg, lesions)."""
    from oefray.config import SCAN_OPTIONS

    return dict(zip(SCAN_OPTIONS, values, strict=True))


StorageOption = Annotated[
    Path | None, typer.Option(help="Ray Train/Tune storage (default ./ray_results).")
]


ResultsOption = Annotated[
    Path, typer.Option(help="Where to write results.json (what the command did, for job scripts).")
]
OutResultsOption = Annotated[
    Path | None, typer.Option(help="Where to write results.json (default OUT/results.json).")
]


@dataclass(frozen=True)
class _TrainingOption:
    """One option of :class:`oefray.config.TrainConfig` on the command line."""

    name: str
    kind: Any
    help: str
    flags: tuple[str, ...] = ()
    labels: bool = False


#: The training options, declared once; ``oefray train`` and ``oefray tune`` both take them.
TRAINING_OPTIONS: tuple[_TrainingOption, ...] = (
    _TrainingOption("preset", str, "Model preset: small (CPU) or paper (the paper's network)."),
    _TrainingOption("workers", int, "Ray Train workers (data-parallel replicas) of a training."),
    _TrainingOption("gpus", bool, "One GPU per worker.", ("--gpus/--no-gpus",)),
    _TrainingOption("epochs", int, "Maximum epochs (default: the preset's)."),
    _TrainingOption("batch_size", int, "Global batch size."),
    _TrainingOption("learning_rate", float, "Adam learning rate."),
    _TrainingOption("patience", int, "Early-stopping patience, epochs."),
    _TrainingOption("max_train_windows", int, "Subsample the training windows (seeded)."),
    _TrainingOption(
        "cache_gb",
        float,
        "Memory (GB) a worker may keep its shard of windows in; beyond it the shard streams "
        "every epoch (default: a quarter of the node's available memory per worker; 0: stream).",
    ),
    _TrainingOption(
        "max_failures", int, "Worker failures to recover from (restart from the last checkpoint)."
    ),
    _TrainingOption(
        "seed", int, "Seed of the split, the weights and the shuffling (repeats: the first seed)."
    ),
    _TrainingOption("window", int, "Voxels per sequence (the paper: 5)."),
    _TrainingOption("anchor", str, "Target voxel of a window: centre or last."),
    _TrainingOption(
        "model",
        str,
        "lstm (the paper's network over 5-voxel lines) or patch (3-D neighbourhoods).",
    ),
    _TrainingOption("patch", int, "Side of the patch model's cube of voxels (odd; 3 = 27)."),
    _TrainingOption(
        "oversample", int, "Repeat training samples inside lesions this many times (1: none)."
    ),
    _TrainingOption(
        "train_subjects",
        str,
        "Comma-separated training subjects (default: the manifest's split).",
        labels=True,
    ),
    _TrainingOption(
        "test_subjects",
        str,
        "Comma-separated test subjects (default: the manifest's split).",
        labels=True,
    ),
    _TrainingOption("experiment", str, "MLflow experiment name."),
    _TrainingOption(
        "tracking_uri",
        str,
        "MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlruns/mlflow.db).",
    ),
    _TrainingOption(
        "address", str, "Ray cluster address (default: RAY_ADDRESS or a local runtime)."
    ),
)


def training_options(*, flags: dict[str, tuple[str, ...]] | None = None):
    """Give a command every training option; it receives them as ``train_config``.

    The command declares its own ``config`` (``--config``) parameter and a ``train_config``
    parameter; the options of :data:`TRAINING_OPTIONS` are added to its signature (``flags``
    renames some, e.g. ``--workers-per-trial``), and ``train_config`` is the
    :class:`~oefray.config.TrainConfig` loaded from the file's ``[train]`` table and the flags.
    """
    renamed = flags or {}

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        from oefray.config import TrainConfig

        base = inspect.signature(command, eval_str=True)
        own = [p for p in base.parameters.values() if p.name != "train_config"]
        added = [
            inspect.Parameter(
                o.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    o.kind | None, typer.Option(*renamed.get(o.name, o.flags), help=o.help)
                ],
            )
            for o in TRAINING_OPTIONS
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {o.name: kwargs.pop(o.name) for o in TRAINING_OPTIONS}
            given.update({o.name: labels(given[o.name]) for o in TRAINING_OPTIONS if o.labels})
            train_config = load(TrainConfig, "train", kwargs.get("config"), given)
            return command(**kwargs, train_config=train_config)

        wrapper.__signature__ = base.replace(parameters=own + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}
        return wrapper

    return decorate
