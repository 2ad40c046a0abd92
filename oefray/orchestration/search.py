"""``oefray tune --search``: a hyperparameter search on Ray Tune with ASHA early stopping.

Every trial is the training of ``oefray train`` — :func:`oefray.orchestration.train.train`, the
same trainer builder — with sampled options, run as a child MLflow run of one parent run. After
every epoch, Ray Train's ``TuneReportCallback`` hands rank 0's report (``val_rmse_OEF``,
``epochs_done``, …) to Tune, so ASHA can stop a trial between epochs. A trial that runs to its end
reports once more with its test metrics and its best-epoch validation metrics, which rank trials.
The best trial is chosen on **validation** OEF RMSE (the test subjects stay held out), logged on
the parent run and written as a ``[train]`` TOML file that ``oefray train --config`` reads.

Interrupted searches resume (``--resume``): the Tune experiment lives under the storage folder
and a small pointer file (``oefray-search-<experiment>.json``) names it and the parent run; Tune
re-runs only the unfinished trials, each of which re-opens its own MLflow run and restarts from
its last Ray Train checkpoint.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from oefray.config import TrainConfig, config_from_mapping, read_config_file
from oefray.errors import Interrupted, OefrayError
from oefray.io.files import write_text_atomic

#: Training options a search may vary (the rest say where and how to run, not what to train).
SEARCHABLE: tuple[str, ...] = (
    "preset",
    "epochs",
    "batch_size",
    "learning_rate",
    "patience",
    "lstm_units",
    "dense_units",
    "window",
    "anchor",
    "val_fraction",
    "max_train_windows",
    "seed",
)
DISTRIBUTIONS: tuple[str, ...] = ("loguniform", "uniform", "randint", "choice")
SCHEDULER_KEYS: dict[str, type] = {
    "metric": str,
    "mode": str,
    "grace_period": int,
    "reduction_factor": int,
}
#: Tag that ties an MLflow child run to its Tune trial (a resumed trial re-opens that run).
TRIAL_TAG = "oefray.trial_id"


def default_space_path() -> Path:
    """The packaged default search space (``oefray/configs/search_space.toml``)."""
    return Path(str(resources.files("oefray.configs") / "search_space.toml"))


@dataclass(frozen=True)
class SearchSpace:
    """A parsed search-space file: ``space`` maps option → spec, ``scheduler`` the ASHA knobs."""

    space: dict[str, Any]
    scheduler: dict[str, Any]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "scheduler": self.scheduler, "source": self.source}


def read_search_space(path: str | Path | None = None) -> SearchSpace:
    """Read and check a search-space file (TOML or YAML with ``[space]`` and ``[scheduler]``).

    Raises
    ------
    OefrayError
        Naming the file and the offending key: unknown options, unknown distributions, bad
        bounds, empty choices, bad scheduler values.
    """
    path = Path(path) if path is not None else default_space_path()
    data = read_config_file(path)
    unknown = sorted(set(data) - {"space", "scheduler"})
    if unknown:
        raise OefrayError(
            path, f"unknown table(s) {unknown}; a search space has [space], [scheduler]"
        )
    space = data.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise OefrayError(path, "[space] must name at least one training option")
    bad = sorted(set(space) - set(SEARCHABLE))
    if bad:
        raise OefrayError(
            path, f"[space] cannot vary {', '.join(bad)}; searchable: {', '.join(SEARCHABLE)}"
        )
    for key, spec in space.items():
        if isinstance(spec, dict):
            _check_distribution(path, key, spec)
    scheduler: dict[str, Any] = {
        "metric": "val_rmse_OEF",
        "mode": "min",
        "grace_period": 2,
        "reduction_factor": 3,
    }
    given = data.get("scheduler") or {}
    if not isinstance(given, dict):
        raise OefrayError(path, "[scheduler] must be a table")
    for key, value in given.items():
        kind = SCHEDULER_KEYS.get(key)
        if kind is None:
            raise OefrayError(
                path, f"[scheduler] unknown key {key!r}; known: {', '.join(SCHEDULER_KEYS)}"
            )
        if not isinstance(value, kind) or isinstance(value, bool):
            raise OefrayError(path, f"[scheduler] {key} must be a {kind.__name__}, got {value!r}")
        scheduler[key] = value
    if scheduler["mode"] not in ("min", "max"):
        raise OefrayError(path, f"[scheduler] mode must be min or max, got {scheduler['mode']!r}")
    if scheduler["grace_period"] < 1 or scheduler["reduction_factor"] < 2:
        raise OefrayError(path, "[scheduler] needs grace_period >= 1 and reduction_factor >= 2")
    if not scheduler["metric"].startswith("val_"):
        raise OefrayError(
            path,
            f"[scheduler] metric must be a validation metric (val_*), got {scheduler['metric']!r}:"
            " the test subjects stay held out",
        )
    return SearchSpace(space=dict(space), scheduler=scheduler, source=str(path))


def _check_distribution(path: Path, key: str, spec: dict[str, Any]) -> None:
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise OefrayError(
            path, f"[space] {key}: give exactly one of {', '.join(DISTRIBUTIONS)}, got {spec}"
        )
    ((kind, args),) = spec.items()
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise OefrayError(path, f"[space] {key}: choice needs a non-empty list")
        return
    ok = (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        and all(math.isfinite(a) for a in args)
        and args[0] < args[1]
    )
    if not ok:
        raise OefrayError(path, f"[space] {key}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise OefrayError(path, f"[space] {key}: loguniform needs low > 0")


def tune_domains(space: SearchSpace) -> dict[str, Any]:
    """The space as Ray Tune sampling domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.space.items():
        if not isinstance(spec, dict):
            out[key] = spec
            continue
        ((kind, args),) = spec.items()
        out[key] = {
            "loguniform": lambda a: tune.loguniform(*a),
            "uniform": lambda a: tune.uniform(*a),
            "randint": lambda a: tune.randint(*a),
            "choice": tune.choice,
        }[kind](args)
    return out


def trial_config(
    base: TrainConfig, sampled: dict[str, Any], source: str | None = None
) -> TrainConfig:
    """``base`` with a trial's sampled options (lists become tuples; checked like a config file)."""
    values = {**asdict(base), **sampled}
    return config_from_mapping(TrainConfig, values, source)


def _search_trainable(config: dict[str, Any]) -> None:
    """One Tune trial: the training of ``oefray train`` with sampled options, as a child run."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from oefray.orchestration.train import train
    from oefray.tracking import Tracker

    trial_id = tune.get_context().get_trial_id()
    train_config = trial_config(TrainConfig(**config["train_config"]), config["sampled"])
    tracker = Tracker.from_uri(train_config.tracking_uri)
    # a trial restored by `--resume` re-opens its MLflow run (and Ray Train its checkpoint)
    earlier = [
        r
        for r in tracker.child_runs(config["parent_run_id"], {TRIAL_TAG: trial_id})
        if r.info.status != "FINISHED"
    ]
    result = train(
        config["features"],
        train_config,
        storage_path=config["storage"],
        resume=earlier[-1].info.run_id if earlier else None,
        parent_run_id=config["parent_run_id"],
        tags={TRIAL_TAG: trial_id, "oefray.command": "tune --search"},
        callbacks=(TuneReportCallback(),),
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
class SearchResult:
    """What ``tune --search`` produced (serialised into ``results.json``)."""

    parent_run_id: str
    best_run_id: str
    best_config: dict[str, Any]
    best_config_path: str
    metric: str
    best_value: float
    trials: list[dict[str, Any]]
    tracking_uri: str
    ui_command: str
    seconds: float
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "tune --search",
            "parent_run_id": self.parent_run_id,
            "best_run_id": self.best_run_id,
            "best_config": self.best_config,
            "best_config_path": self.best_config_path,
            "metric": self.metric,
            "best_value": self.best_value,
            "trials": self.trials,
            "resumed": self.resumed,
            "tracking_uri": self.tracking_uri,
            "ui_command": self.ui_command,
            "seconds": round(self.seconds, 2),
        }


def pointer_path(storage: str | Path, experiment: str) -> Path:
    """Where a search records its Tune folder and parent run, for ``--resume``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment)
    return Path(storage) / f"oefray-search-{safe}.json"


def write_best_config(path: str | Path, config: TrainConfig, sampled: dict[str, Any]) -> Path:
    """A ``[train]`` TOML file of the best trial that ``oefray train --config`` accepts.

    It holds what was searched plus the preset, epochs and window, so it reproduces the trial's
    model; where to run (workers, tracking URI, cluster) is left to the command line.
    """
    import tomli_w

    keep = set(sampled) | {"preset", "epochs", "window", "anchor", "seed"}
    values = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in asdict(config).items()
        if k in keep and v is not None
    }
    header = "# Best configuration of an `oefray tune --search`; use: oefray train --config FILE\n"
    return write_text_atomic(path, header + tomli_w.dumps({"train": values}))


def run_search(
    features: str | Path,
    config: TrainConfig | None = None,
    *,
    samples: int = 8,
    space: str | Path | None = None,
    storage_path: str | Path | None = None,
    resume: bool = False,
    max_concurrent: int | None = None,
    best_config_path: str | Path = "best_config.toml",
) -> SearchResult:
    """Search hyperparameters with ASHA; log every trial as a child run; write the best config.

    Parameters
    ----------
    features : path
        Features folder with ground truth.
    config : TrainConfig
        The options every trial shares (the space overrides what it names).
    samples : int
        Number of trials.
    space : path, optional
        Search-space file (default :func:`default_space_path`).
    storage_path : path, optional
        Ray Train/Tune storage (default ``./ray_results``).
    resume : bool
        Continue the last interrupted search of ``config.experiment`` under ``storage_path``.
    max_concurrent : int, optional
        Cap on trials running at once (default: as many as resources allow).
    best_config_path : path
        Where to write the best trial's ``[train]`` TOML.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from oefray.orchestration.preprocess import ray_runtime
    from oefray.tracking import Tracker

    if samples < 1:
        raise OefrayError(None, f"--samples must be >= 1, got {samples}")
    t0 = time.perf_counter()
    config = config or TrainConfig()
    tracker = Tracker.from_uri(config.tracking_uri)
    config = replace(config, tracking_uri=tracker.tracking_uri)
    storage = Path(storage_path or Path.cwd() / "ray_results").resolve()
    features = str(Path(features).resolve())
    pointer = pointer_path(storage, config.experiment)

    if resume:
        if not pointer.is_file():
            raise OefrayError(
                pointer, f"no search of experiment {config.experiment!r} to resume under {storage}"
            )
        state = json.loads(pointer.read_text())
        if state.get("finished"):
            raise OefrayError(pointer, "the last search of this experiment already finished")
        parsed = SearchSpace(**state["space"])
        config = config_from_mapping(
            TrainConfig, {**state["train_config"], "tracking_uri": tracker.tracking_uri}, pointer
        )
        opened = tracker.resumed_run(state["parent_run_id"])
    else:
        parsed = read_search_space(space)
        for key in parsed.space:  # every fixed value must make a valid config on its own
            if not isinstance(parsed.space[key], dict):
                trial_config(config, {key: parsed.space[key]}, parsed.source)
        epochs = _max_epochs(config)
        opened = tracker.tracked_run(
            config.experiment,
            run_name=f"search-{config.preset}-n{samples}",
            params={
                "samples": samples,
                "space": parsed.space,
                "scheduler": parsed.scheduler,
                "train": asdict(config),
                "features": features,
                "max_epochs": epochs,
            },
            tags={"oefray.command": "tune --search"},
        )
    scheduler = parsed.scheduler
    metric, mode = scheduler["metric"], scheduler["mode"]
    with ray_runtime(config.address, max(config.workers, 2)), opened as parent:
        trainable = tune.with_resources(_search_trainable, {"cpu": 0.01})
        if resume:
            tuner = tune.Tuner.restore(
                state["tune_path"], trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            name = f"oefray-search-{parent.run_id}"
            state = {
                "parent_run_id": parent.run_id,
                "tune_path": str(storage / name),
                "experiment": config.experiment,
                "features": features,
                "samples": samples,
                "space": parsed.to_dict(),
                "train_config": asdict(config),
                "finished": False,
            }
            _write_json(pointer, state)
            tuner = tune.Tuner(
                trainable,
                param_space={
                    "features": features,
                    "storage": str(storage),
                    "parent_run_id": parent.run_id,
                    "train_config": asdict(config),
                    "sampled": tune_domains(parsed),
                },
                tune_config=tune.TuneConfig(
                    num_samples=samples,
                    max_concurrent_trials=max_concurrent,
                    scheduler=ASHAScheduler(
                        time_attr="epochs_done",
                        metric=metric,
                        mode=mode,
                        # never reached by an epoch: a trial that is not cut short ends by itself
                        # and still sends its final (test) report
                        max_t=_max_epochs(config) + 1,
                        grace_period=scheduler["grace_period"],
                        reduction_factor=scheduler["reduction_factor"],
                    ),
                ),
                run_config=tune.RunConfig(name=name, storage_path=str(storage)),
            )
        grid = tuner.fit()
        unfinished = _unfinished_trials(state["tune_path"], state["samples"])
        if unfinished:  # Tune caught Ctrl-C, saved its state and returned early
            raise Interrupted(
                None,
                f"search interrupted with {unfinished} of {state['samples']} trial(s) unfinished;"
                " continue it with: oefray tune --search --resume",
            )
        trials = []
        for i in range(len(grid)):
            r = grid[i]
            m = r.metrics or {}
            trials.append(
                {
                    "trial_id": m.get("trial_id"),
                    "run_id": m.get("run_id"),
                    "sampled": _plain(r.config["sampled"]) if r.config else {},
                    "completed": bool(m.get("completed")),
                    "epochs": int(m.get("epochs_done") or 0) if not m.get("completed") else None,
                    metric: m.get(metric),
                    "test_rmse_OEF": m.get("test_rmse_OEF"),
                    "error": None if r.error is None else " ".join(str(r.error).split())[:300],
                }
            )
        _close_stopped_runs(tracker, parent.run_id)
        finished = [t for t in trials if t["completed"] and t[metric] is not None]
        if not finished:
            errors = [t["error"] for t in trials if t["error"]]
            raise OefrayError(
                None,
                "no trial of the search completed"
                + (f": {errors[0]}" if errors else " (every trial was stopped early)"),
            )
        best = (min if mode == "min" else max)(finished, key=lambda t: t[metric])
        best_config = trial_config(config, best["sampled"])
        path = write_best_config(best_config_path, best_config, best["sampled"])
        parent.log_metrics(
            {
                f"best_{metric}": float(best[metric]),
                "trials_completed": float(len(finished)),
                "trials_stopped_early": float(sum(not t["completed"] for t in trials)),
            }
        )
        parent.log_params({f"best.{k}": v for k, v in best["sampled"].items()})
        parent.set_tags({"oefray.best_run": best["run_id"]})
        parent.log_artifact_file(path)
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "trials.json"
            table.write_text(json.dumps(trials, indent=2, default=str))
            parent.log_artifact_file(table)
        _write_json(pointer, {**state, "finished": True})
    return SearchResult(
        parent_run_id=parent.run_id,
        best_run_id=best["run_id"],
        best_config={k: v for k, v in asdict(best_config).items() if k in best["sampled"]},
        best_config_path=str(path),
        metric=metric,
        best_value=float(best[metric]),
        trials=trials,
        tracking_uri=tracker.tracking_uri,
        ui_command=tracker.ui_command(),
        seconds=time.perf_counter() - t0,
        resumed=resume,
    )


def _unfinished_trials(tune_path: str, samples: int) -> int:
    """Trials not yet run to their end (or error), from the experiment state Tune saved last.

    After Ctrl-C, Tune saves the state and then ends its remaining trials in memory as
    TERMINATED, so the ``ResultGrid`` in hand cannot tell an interrupted trial from one that ASHA
    stopped; the saved state can. Trials the searcher had not created yet count as unfinished.
    """
    import logging

    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "failed to fetch metrics" of trials that never started
    try:
        trials = ExperimentAnalysis(tune_path).trials
    finally:
        quiet.setLevel(level)
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in trials)
    return max(samples, len(trials)) - ended


def _max_epochs(config: TrainConfig) -> int:
    from oefray.ml.model import model_config

    return model_config(config.preset, **config.model_overrides()).epochs


def _plain(value: Any) -> Any:
    """Tune configs to JSON-able values (tuples to lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _close_stopped_runs(tracker, parent_run_id: str) -> None:
    """Trials that ASHA stopped were killed mid-run: end their MLflow runs as KILLED, tagged."""
    for run in tracker.child_runs(parent_run_id):
        if run.info.status == "RUNNING":
            tracker.run(run.info.run_id).set_tags({"oefray.stopped_early": "asha"})
            tracker.end_run(run.info.run_id, "KILLED")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


__all__ = [
    "SEARCHABLE",
    "SearchResult",
    "SearchSpace",
    "default_space_path",
    "read_search_space",
    "run_search",
    "trial_config",
    "tune_domains",
    "write_best_config",
]
