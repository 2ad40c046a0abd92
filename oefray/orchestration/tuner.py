"""The one Ray Tune runner behind ``oefray tune``: seed repeats and hyperparameter searches.

Every trial is the training of ``oefray train`` — :func:`oefray.orchestration.train.train`, the
same trainer builder — with the trial's ``sampled`` options (a seed for repeats; a point of the
search space for searches), run as a child MLflow run of one parent run. :func:`run_trials`
owns what both experiments share: the Ray runtime, the parent run, the trainable and its
resources, the Tune experiment's state for ``--resume``, Ctrl-C, and the child runs that Tune
stopped. What differs — the param space, the scheduler, how the trials are summarised on the
parent run — comes in a :class:`TrialsPlan`.

Measured with ray 2.60: under Ray Train V2, ``Tuner(trainer)`` fails (``TuneError: Improper
'run'``); a function trainable that builds and fits the trainer works. The trainable reserves
almost nothing (``{"cpu": 0.01}``, as ``0`` is rejected): the CPUs/GPUs are reserved by the Ray
Train workers each trial starts, so as many trials run at once as the cluster has room for.

Resuming: the Tune experiment lives under the storage folder, with a state file
(``oefray-tune-<parent run id>.json``) that the parent run names in its tag ``oefray.tune_state``;
``--resume <parent run id>`` re-runs only the unfinished trials, each of which re-opens its own
MLflow run and restarts from its last Ray Train checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from oefray.config import TrainConfig, config_from_mapping
from oefray.errors import Interrupted, OefrayError
from oefray.io.files import write_text_atomic
from oefray.tracking.names import COMMAND_TAG, STOPPED_EARLY_TAG, TRIAL_ID_TAG, TUNE_STATE_TAG
from oefray.tracking.store import redact_uri

#: Resources of the trainable itself (0 is refused by Tune); the trial's Ray Train workers
#: reserve the real CPUs and GPUs.
TRAINABLE_RESOURCES = {"cpu": 0.01}


def trial_config(
    base: TrainConfig, sampled: dict[str, Any], source: str | None = None
) -> TrainConfig:
    """``base`` with a trial's sampled options (lists become tuples; checked like a config file)."""
    return config_from_mapping(TrainConfig, {**asdict(base), **sampled}, source)


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: the training of ``oefray train`` with the sampled options, as a child run;
    reports its best-epoch validation and its test metrics once it has finished."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from oefray.orchestration.train import train
    from oefray.tracking import Tracker

    trial_id = tune.get_context().get_trial_id()
    sampled, tags = config["trial"]["sampled"], config["trial"]["tags"]
    train_config = trial_config(TrainConfig(**config["train_config"]), sampled)
    tracker = Tracker.from_uri(train_config.tracking_uri)
    # a trial restored by `--resume` re-opens its MLflow run (and Ray Train its checkpoint)
    earlier = [
        r
        for r in tracker.child_runs(config["parent_run_id"], {TRIAL_ID_TAG: trial_id})
        if r.info.status != "FINISHED"
    ]
    result = train(
        config["features"],
        train_config,
        storage_path=config["storage"],
        resume=earlier[-1].info.run_id if earlier else None,
        parent_run_id=config["parent_run_id"],
        tags={TRIAL_ID_TAG: trial_id, COMMAND_TAG: config["command"], **tags},
        callbacks=(TuneReportCallback(),) if config["per_epoch"] else (),
        stream=False,  # trials share the cluster: each one's data is made before its workers
    )
    # No `epochs_done` here: ASHA only acts on per-epoch reports, this one ranks the trial.
    tune.report(
        {
            **result.val_metrics,
            **result.test_metrics,
            "run_id": result.run_id,
            "best_epoch": result.best_epoch,
            "completed": 1,
        }
    )


@dataclass
class TrialsPlan:
    """What one kind of ``tune`` experiment adds to the runner.

    Parameters
    ----------
    command : str
        ``tune --repeats`` or ``tune --search`` (the ``oefray.command`` tag of every run).
    run_name : str
        Name of the parent run.
    params : dict
        Parent-run params (besides ``train`` and ``features``, which the runner logs).
    trial : dict or Tune grid
        Each trial's ``{"sampled": <training options>, "tags": <extra child-run tags>}``: with
        Tune domains among the options (a search), or a ``grid_search`` over such dicts
        (repeats).
    n_trials : int
        Trials the experiment runs (to tell an interrupted experiment from a finished one).
    tune_config : dict
        Further ``tune.TuneConfig`` arguments (``num_samples``, ``scheduler``).
    per_epoch : bool
        Report to Tune after every epoch (an early-stopping scheduler needs it).
    extra_state : dict
        Kept in the experiment's state file (what a resumed run needs again).
    """

    command: str
    run_name: str
    params: dict[str, Any]
    trial: Any
    n_trials: int
    tune_config: dict[str, Any] = field(default_factory=dict)
    per_epoch: bool = False
    extra_state: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trial:
    """One trial as the runner saw it end: its sampled options, metrics, and error if any."""

    trial_id: str | None
    run_id: str | None
    sampled: dict[str, Any]
    metrics: dict[str, Any]
    completed: bool
    error: str | None


def _plain(value: Any) -> Any:
    """Tune configs to JSON-able values (tuples to lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def state_path(storage: Path, parent_run_id: str) -> Path:
    """Where an experiment records its Tune folder and options, for ``--resume``."""
    return storage / f"oefray-tune-{parent_run_id}.json"


def _read_state(tracker, resume: str, command: str) -> dict[str, Any]:
    """The state of the interrupted experiment whose parent run is ``resume``."""
    tag = tracker.get_run(resume).data.tags.get(TUNE_STATE_TAG)
    if not tag:
        raise OefrayError(None, f"MLflow run {resume} is not the parent run of an oefray tune")
    path = Path(tag)
    # the tag is text from the store: only a state file this runner named is read and rewritten
    if not path.is_absolute() or path != state_path(path.parent, resume):
        raise OefrayError(path, f"run {resume}'s tune state tag is not an oefray state file")
    if not path.is_file():
        raise OefrayError(path, "the state of this tune experiment is gone: cannot resume it")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OefrayError(path, f"malformed tune state ({exc})") from None
    if (
        not isinstance(state, dict)
        or state.get("parent_run_id") != resume
        or Path(str(state.get("storage"))) != path.parent
    ):
        raise OefrayError(path, f"this state file is not run {resume}'s: cannot resume from it")
    if state.get("command") != command:
        raise OefrayError(path, f"run {resume} is a `{state.get('command')}`, not a `{command}`")
    if state.get("finished"):
        raise OefrayError(path, f"the `{command}` of run {resume} already finished")
    return state


def _tuner(plan: TrialsPlan, state: dict[str, Any], resume: bool, max_concurrent: int | None):
    from ray import tune

    trainable = tune.with_resources(_trial, TRAINABLE_RESOURCES)
    if resume:
        return tune.Tuner.restore(
            state["tune_path"], trainable, resume_unfinished=True, resume_errored=True
        )
    return tune.Tuner(
        trainable,
        param_space={
            "features": state["features"],
            "storage": state["storage"],
            "parent_run_id": state["parent_run_id"],
            "train_config": state["train_config"],
            "command": plan.command,
            "per_epoch": plan.per_epoch,
            "trial": plan.trial,
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent, **plan.tune_config),
        run_config=tune.RunConfig(
            name=Path(state["tune_path"]).name, storage_path=state["storage"]
        ),
    )


def _unfinished_trials(tune_path: str, n_trials: int) -> int:
    """Trials not yet run to their end (or error), from the experiment state Tune saved last.

    After Ctrl-C, Tune saves the state and then ends its remaining trials in memory as
    TERMINATED, so the ``ResultGrid`` in hand cannot tell an interrupted trial from one that a
    scheduler stopped; the saved state can. Trials not created yet count as unfinished.
    """
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "failed to fetch metrics" of trials that never started
    try:
        trials = ExperimentAnalysis(tune_path).trials
    finally:
        quiet.setLevel(level)
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    return max(n_trials, len(trials)) - ended


def _close_stopped_runs(tracker, parent_run_id: str) -> None:
    """Trials a scheduler stopped were killed mid-run: end their MLflow runs as KILLED, tagged."""
    for run in tracker.child_runs(parent_run_id):
        if run.info.status == "RUNNING":
            handle = tracker.run(run.info.run_id)
            handle.set_tags({STOPPED_EARLY_TAG: "asha"})
            tracker.end_run(run.info.run_id, "KILLED")


def _trials(grid) -> list[Trial]:
    out = []
    for i in range(len(grid)):
        r = grid[i]
        m = dict(r.metrics or {})
        out.append(
            Trial(
                trial_id=m.get("trial_id"),
                run_id=m.get("run_id"),
                sampled=_plain(r.config["trial"]["sampled"]) if r.config else {},
                metrics=m,
                completed=bool(m.get("completed")),
                error=None if r.error is None else " ".join(str(r.error).split())[:500],
            )
        )
    return out


def run_trials(
    features: str | Path,
    config: TrainConfig,
    plan: TrialsPlan,
    summarize: Callable[[Any, Any, list[Trial], dict[str, Any]], Any],
    *,
    storage_path: str | Path | None = None,
    resume: str | None = None,
    max_concurrent: int | None = None,
):
    """Run the trials of ``plan`` on Ray Tune under one MLflow parent run; summarise them.

    Parameters
    ----------
    features : path
        Features folder with ground truth.
    config : TrainConfig
        The options every trial shares (a trial's ``sampled`` options override what they name).
    plan : TrialsPlan
    summarize : callable
        ``summarize(parent_run, tracker, trials, state)``, called with the parent run still open
        once every trial has ended; its return value is returned.
    storage_path : path, optional
        Ray Train/Tune storage (default ``./ray_results``).
    resume : str, optional
        Parent run id of an interrupted experiment of the same kind: run its unfinished trials.
    max_concurrent : int, optional
        Cap on trials running at once (default: as many as resources allow).

    Raises
    ------
    Interrupted
        Ctrl-C: Tune saved its state; the message says how to resume.
    """
    from oefray.orchestration import runtime
    from oefray.tracking import Tracker

    tracker = Tracker.from_uri(config.tracking_uri)
    storage = runtime.storage_path(storage_path)
    if resume is not None:
        state = _read_state(tracker, resume, plan.command)
        config = config_from_mapping(
            TrainConfig, {**state["train_config"], "tracking_uri": tracker.tracking_uri}
        )
        opened = tracker.resumed_run(resume)
    else:
        config = replace(config, tracking_uri=tracker.tracking_uri)
        features = str(Path(features).resolve())
        opened = tracker.tracked_run(
            config.experiment,
            run_name=plan.run_name,
            params={**plan.params, "train": _logged(config), "features": features},
            tags={COMMAND_TAG: plan.command},
        )
    with (
        runtime.ray_runtime(config.address, runtime.training_cpus(config.workers)),
        opened as parent,
    ):
        if resume is None:
            state = _new_state(plan, parent, storage, str(features), config)
        grid = _tuner(plan, state, resume is not None, max_concurrent).fit()
        _check_finished(plan, state)
        _close_stopped_runs(tracker, parent.run_id)
        outcome = summarize(parent, tracker, _trials(grid), state)
        _write_state({**state, "finished": True})
    return outcome


def _logged(config: TrainConfig) -> dict[str, Any]:
    """The training options as MLflow params: credentials in the store URI redacted."""
    return {**asdict(config), "tracking_uri": redact_uri(config.tracking_uri)}


def _write_state(state: dict[str, Any]) -> Path:
    path = state_path(Path(state["storage"]), state["parent_run_id"])
    return write_text_atomic(path, json.dumps(state, indent=2, default=str))


def _new_state(plan: TrialsPlan, parent, storage: Path, features: str, config) -> dict[str, Any]:
    """The state file of a new experiment, named on its parent run (tag ``oefray.tune_state``)."""
    state = {
        "command": plan.command,
        "parent_run_id": parent.run_id,
        "tune_path": str(storage / f"oefray-{_kind(plan)}-{parent.run_id}"),
        "storage": str(storage),
        "features": features,
        "train_config": asdict(config),
        "n_trials": plan.n_trials,
        **plan.extra_state,
        "finished": False,
    }
    parent.set_tags({TUNE_STATE_TAG: str(_write_state(state))})
    return state


def _kind(plan: TrialsPlan) -> str:
    return plan.command.split("--")[-1]  # "repeats" or "search"


def _check_finished(plan: TrialsPlan, state: dict[str, Any]) -> None:
    """Raise :class:`Interrupted` when Tune caught Ctrl-C, saved its state and returned early."""
    unfinished = _unfinished_trials(state["tune_path"], state["n_trials"])
    if unfinished:
        raise Interrupted(
            None,
            f"{_kind(plan)} interrupted with {unfinished} of {state['n_trials']} trial(s) "
            f"unfinished; continue it with: oefray tune {state['features']} "
            f"{plan.command.split()[-1]} --resume {state['parent_run_id']}",
        )
