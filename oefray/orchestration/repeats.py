"""``oefray tune --repeats N``: the paper's protocol — the same training N times, changing only the
seed — as a grid over seeds on the Tune runner (:mod:`oefray.orchestration.tuner`), with an MLflow
parent run that summarises the repeats (Table 2/3: mean ± std over seeds), names a representative
repeat and holds the ensemble maps (per-voxel mean and spread of the repeats' predictions).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from oefray.config import TrainConfig, TuneConfig
from oefray.errors import OefrayError
from oefray.physics.constants import RMSE_QUANTITIES
from oefray.reports import table_to_dict
from oefray.tracking.names import (
    CHILD_RUNS_TAG,
    REPEAT_TAG,
    REPRESENTATIVE_RUN_TAG,
    repeats_metrics,
    rmse_metric_name,
    spread_metric_values,
)
from oefray.tracking.store import redact_uri


@dataclass
class RepeatsResult:
    """What ``tune --repeats`` produced (serialised into ``results.json``)."""

    parent_run_id: str
    child_run_ids: list[str]
    seeds: list[int]
    summary: Any  # pandas DataFrame, Table 2/3 layout
    representative_run_id: str
    tracking_uri: str
    ui_command: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "tune --repeats",
            "parent_run_id": self.parent_run_id,
            "child_run_ids": self.child_run_ids,
            "seeds": self.seeds,
            "representative_run_id": self.representative_run_id,
            "metrics": self.metrics,
            "summary": table_to_dict(self.summary),
            "tracking_uri": redact_uri(self.tracking_uri),
            "ui_command": self.ui_command,
            "seconds": round(self.seconds, 2),
        }


def summarize_repeats(children: list[dict[str, float]]):
    """Table 2/3 layout: one row per quantity, columns ``mean``, ``std`` and each repeat.

    ``std`` is the sample standard deviation over repeats (ddof = 1; 0 for a single repeat).
    """
    import pandas as pd

    rows = {}
    for q in RMSE_QUANTITIES:
        values = np.array([c[rmse_metric_name("test", q)] for c in children], dtype=np.float64)
        rows[q] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            **{f"repeat_{i}": float(v) for i, v in enumerate(values)},
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "quantity"
    return frame


def region_summary(children: list[dict[str, float]]) -> dict[str, float]:
    """The repeats' per-region metrics on the parent: ``<name>_mean`` and ``<name>_std``
    (sample) of each ``test_rmse_<P>_<region>`` and lesion contrast metric every child logged,
    and the floor's per-region values (the same in every repeat: one split, one training mean)."""
    from oefray.tracking.names import (
        FLOOR_METRICS,
        LESION_CONTRAST_METRICS,
        TEST_METRICS,
    )

    if len(children) < 2:
        return {}
    common = set(children[0]).intersection(*children[1:])
    plain = set(TEST_METRICS) | set(FLOOR_METRICS)
    per_region = {
        k for k in common if k.startswith(("test_rmse_", "floor_rmse_")) and k not in plain
    }
    contrast = common & set(LESION_CONTRAST_METRICS.values())
    out: dict[str, float] = {}
    for name in sorted(per_region | contrast):
        values = np.array([c[name] for c in children], dtype=np.float64)
        if name.startswith("floor_"):
            out[name] = float(values[0])
        else:
            out[f"{name}_mean"] = float(values.mean())
            out[f"{name}_std"] = float(values.std(ddof=1))
    return out


def _summarize(parent, tracker, trials, state) -> RepeatsResult:
    """Table 2/3 on the parent run, the representative repeat, the ensemble maps
    (:mod:`oefray.orchestration.ensemble`, scan by scan on Ray Data)."""
    from oefray.orchestration.ensemble import run_ensemble

    failed = [t.error for t in trials if t.error is not None]
    if failed:
        raise OefrayError(None, f"{len(failed)} repeat(s) failed: {failed[0]}")
    results = [t.metrics for t in sorted(trials, key=lambda t: t.sampled["seed"])]
    child_ids = [m["run_id"] for m in results]
    summary = summarize_repeats(results)
    metrics = repeats_metrics(
        {q: float(summary.loc[q, "mean"]) for q in RMSE_QUANTITIES},
        {q: float(summary.loc[q, "std"]) for q in RMSE_QUANTITIES},
    )
    parent.log_metrics(metrics)
    regions = region_summary([tracker.get_run(c).data.metrics for c in child_ids])
    parent.log_metrics(regions)
    metrics = {**metrics, **regions}
    oef = np.array([m[rmse_metric_name("test", "OEF")] for m in results])
    representative = child_ids[int(np.argmin(np.abs(oef - oef.mean())))]
    parent.set_tags({REPRESENTATIVE_RUN_TAG: representative, CHILD_RUNS_TAG: ",".join(child_ids)})
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        summary.to_csv(tmp_path / "repeats_summary.csv")
        parent.log_artifact_file(tmp_path / "repeats_summary.csv")
        for name in ("oef_maps.png", "training_curves.png", "rmse_per_patient.csv"):
            try:  # the files alone: the representative's maps stay where they are
                path = tracker.download_artifacts(representative, name, tmp_path / "rep")
            except OefrayError:
                continue
            parent.log_artifact_file(Path(path), "representative")
        test = tracker.get_run(child_ids[0]).data.params.get("test_subjects", "")
        ensemble = run_ensemble(
            tracker.tracking_uri,
            child_ids,
            parent.run_id,
            state["features"],
            [s for s in test.split(",") if s],
            tmp_path,
        )
        parent.log_artifact_file(ensemble.figure)
        spread = ensemble.spread
        if len(spread):
            spread.to_csv(tmp_path / "ensemble_spread_per_region.csv", index=False)
            parent.log_artifact_file(tmp_path / "ensemble_spread_per_region.csv")
            spread_metrics = spread_metric_values(
                dict(zip(spread["region"], spread["mean"], strict=True))
            )
            parent.log_metrics(spread_metrics)
            metrics = {**metrics, **spread_metrics}
    return RepeatsResult(
        parent_run_id=parent.run_id,
        child_run_ids=child_ids,
        seeds=list(state["seeds"]),
        summary=summary,
        representative_run_id=representative,
        tracking_uri=tracker.tracking_uri,
        ui_command=tracker.ui_command(),
        seconds=0.0,
        metrics=metrics,
    )


def run_repeats(
    features: str | Path,
    config: TrainConfig | None = None,
    tune_config: TuneConfig | None = None,
    *,
    storage_path: str | Path | None = None,
    resume: str | None = None,
) -> RepeatsResult:
    """Train ``tune_config.repeats`` times with seeds ``config.seed + i`` on Ray Tune; summarise
    in MLflow.

    Parameters
    ----------
    features : path
        Features folder with ground truth.
    config : TrainConfig
        Everything but the seed is shared by the repeats.
    tune_config : TuneConfig, optional
        ``repeats`` (the number of seeds) and ``max_concurrent`` (a cap on repeats running at
        once; default: as many as resources allow).
    storage_path : path, optional
        Ray Train/Tune storage (default ``./ray_results``).
    resume : str, optional
        Parent run id of interrupted repeats: run the unfinished ones.
    """
    from ray import tune

    from oefray.orchestration.tuner import TrialsPlan, run_trials

    t0 = time.perf_counter()
    config = config or TrainConfig()
    repeats = (tune_config or TuneConfig()).repeats
    seeds = [config.seed + i for i in range(repeats)]
    plan = TrialsPlan(
        command="tune --repeats",
        run_name=f"repeats-{config.preset}-x{repeats}",
        params={"repeats": repeats, "seeds": seeds},
        # explicit repeats; nothing else is sampled
        trial=tune.grid_search(
            [{"sampled": {"seed": s}, "tags": {REPEAT_TAG: i}} for i, s in enumerate(seeds)]
        ),
        n_trials=repeats,
        extra_state={"seeds": seeds},
    )
    result = run_trials(
        features,
        config,
        plan,
        _summarize,
        storage_path=storage_path,
        resume=resume,
        max_concurrent=(tune_config or TuneConfig()).max_concurrent,
    )
    result.seconds = time.perf_counter() - t0
    return result
