"""``oefray tune --search``: a hyperparameter search with ASHA early stopping, on the Tune runner
(:mod:`oefray.orchestration.tuner`).

After every epoch, Ray Train's ``TuneReportCallback`` hands rank 0's report (``val_rmse_OEF``,
``epochs_done``, …) to Tune, so ASHA can stop a trial between epochs. A trial that runs to its end
reports once more with its test metrics and its best-epoch validation metrics, which rank trials.
The best trial is chosen on **validation** OEF RMSE (the test subjects stay held out), logged on
the parent run and written as a ``[train]`` TOML file that ``oefray train --config`` reads. The
search space is a file (:func:`oefray.config.read_search_space`); interrupted searches resume
with ``--resume <parent run id>``.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oefray.config import SearchSpace, TrainConfig, TuneConfig, read_search_space
from oefray.errors import OefrayError
from oefray.io.files import write_text_atomic
from oefray.orchestration.tuner import Trial, trial_config
from oefray.tracking.names import BEST_RUN_TAG, rmse_metric_name
from oefray.tracking.store import redact_uri

OEF_TEST = rmse_metric_name("test", "OEF")


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
            "tracking_uri": redact_uri(self.tracking_uri),
            "ui_command": self.ui_command,
            "seconds": round(self.seconds, 2),
        }


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


def _max_epochs(config: TrainConfig) -> int:
    from oefray.ml.model import model_config

    return model_config(config.preset, **config.model_overrides()).epochs


def _trial_row(t: Trial, metric: str) -> dict[str, Any]:
    m = t.metrics
    return {
        "trial_id": m.get("trial_id", t.trial_id),
        "run_id": t.run_id,
        "sampled": t.sampled,
        "completed": t.completed,
        "epochs": None if t.completed else int(m.get("epochs_done") or 0),
        metric: m.get(metric),
        OEF_TEST: m.get(OEF_TEST),
        "error": None if t.error is None else t.error[:300],
    }


def _summarizer(best_config_path: str | Path):
    def summarize(parent, tracker, trials: list[Trial], state: dict[str, Any]) -> SearchResult:
        """The best trial on validation: its config file, metrics and tags on the parent."""
        space = SearchSpace(**state["space"])
        metric, mode = space.scheduler["metric"], space.scheduler["mode"]
        rows = [_trial_row(t, metric) for t in trials]
        finished = [r for r in rows if r["completed"] and r[metric] is not None]
        if not finished:
            errors = [r["error"] for r in rows if r["error"]]
            raise OefrayError(
                None,
                "no trial of the search completed"
                + (f": {errors[0]}" if errors else " (every trial was stopped early)"),
            )
        best = (min if mode == "min" else max)(finished, key=lambda r: r[metric])
        base = TrainConfig(**state["train_config"])
        best_config = trial_config(base, best["sampled"])
        path = write_best_config(best_config_path, best_config, best["sampled"])
        parent.log_metrics(
            {
                f"best_{metric}": float(best[metric]),
                "trials_completed": float(len(finished)),
                "trials_stopped_early": float(sum(not r["completed"] for r in rows)),
            }
        )
        parent.log_params({f"best.{k}": v for k, v in best["sampled"].items()})
        parent.set_tags({BEST_RUN_TAG: best["run_id"]})
        parent.log_artifact_file(path)
        with tempfile.TemporaryDirectory() as tmp:
            table = write_text_atomic(
                Path(tmp) / "trials.json", json.dumps(rows, indent=2, default=str)
            )
            parent.log_artifact_file(table)
        return SearchResult(
            parent_run_id=parent.run_id,
            best_run_id=best["run_id"],
            best_config={k: v for k, v in asdict(best_config).items() if k in best["sampled"]},
            best_config_path=str(path),
            metric=metric,
            best_value=float(best[metric]),
            trials=rows,
            tracking_uri=tracker.tracking_uri,
            ui_command=tracker.ui_command(),
            seconds=0.0,
        )

    return summarize


def _plan(config: TrainConfig, parsed: SearchSpace, samples: int):
    """The runner's plan of a search: the space's domains, ASHA on a per-epoch metric."""
    from ray.tune.schedulers import ASHAScheduler

    from oefray.orchestration.tuner import TrialsPlan

    scheduler = parsed.scheduler
    return TrialsPlan(
        command="tune --search",
        run_name=f"search-{config.preset}-n{samples}",
        params={
            "samples": samples,
            "space": parsed.space,
            "scheduler": scheduler,
            "max_epochs": _max_epochs(config),
        },
        trial={"sampled": tune_domains(parsed), "tags": {}},
        n_trials=samples,
        tune_config={
            "num_samples": samples,
            "scheduler": ASHAScheduler(
                time_attr="epochs_done",
                metric=scheduler["metric"],
                mode=scheduler["mode"],
                # never reached by an epoch: a trial that is not cut short ends by itself and
                # still sends its final (test) report
                max_t=_max_epochs(config) + 1,
                grace_period=scheduler["grace_period"],
                reduction_factor=scheduler["reduction_factor"],
            ),
        },
        per_epoch=True,
        extra_state={"space": parsed.to_dict()},
    )


def run_search(
    features: str | Path,
    config: TrainConfig | None = None,
    tune_config: TuneConfig | None = None,
    *,
    storage_path: str | Path | None = None,
    resume: str | None = None,
) -> SearchResult:
    """Search hyperparameters with ASHA; log every trial as a child run; write the best config.

    Parameters
    ----------
    features : path
        Features folder with ground truth.
    config : TrainConfig
        The options every trial shares (the space overrides what it names).
    tune_config : TuneConfig, optional
        ``samples`` (trials), ``space`` (the search-space file; default
        :func:`oefray.config.default_space_path`), ``max_concurrent`` (a cap on trials running at
        once) and ``best_config`` (where to write the best trial's ``[train]`` TOML).
    storage_path : path, optional
        Ray Train/Tune storage (default ``./ray_results``).
    resume : str, optional
        Parent run id of an interrupted search: run its unfinished trials.
    """
    from oefray.orchestration.tuner import run_trials

    t0 = time.perf_counter()
    config = config or TrainConfig()
    tune_config = tune_config or TuneConfig()
    samples = tune_config.samples
    parsed = read_search_space(tune_config.space)
    for key, value in parsed.space.items():  # every fixed value must make a valid config alone
        if not isinstance(value, dict):
            trial_config(config, {key: value}, parsed.source)
    plan = _plan(config, parsed, samples)
    result = run_trials(
        features,
        config,
        plan,
        _summarizer(tune_config.best_config),
        storage_path=storage_path,
        resume=resume,
        max_concurrent=tune_config.max_concurrent,
    )
    result.seconds = time.perf_counter() - t0
    result.resumed = resume is not None
    return result
