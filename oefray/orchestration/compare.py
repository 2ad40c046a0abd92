"""``oefray compare``: per-parameter and OEF test RMSE of runs and experiments, side by side.

Each argument is a run id or an experiment name. A repeats parent run (``tune --repeats``) shows
``mean ± std`` over its repeats; a single run shows its values; an experiment expands to its
top-level runs. The floor (every test voxel gets the training mean) is added from the first run
that logged it, since a simulated cohort's RMSE means little without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from oefray.config import COMPARE_FORMATS
from oefray.errors import OefrayError
from oefray.physics.constants import RMSE_QUANTITIES
from oefray.tracking.names import CHILD_RUNS_TAG, COMMAND_TAG, FLOOR_METRICS, rmse_metric_name


def _row(run) -> dict[str, Any] | None:
    m, tags = run.data.metrics, run.data.tags
    name = run.info.run_name or run.info.run_id[:8]
    label = f"{name} ({run.info.run_id[:8]})"
    if all(rmse_metric_name("test", q, "mean") in m for q in RMSE_QUANTITIES):
        return {
            "run": label,
            "kind": tags.get(COMMAND_TAG, "repeats"),
            **{
                q: (
                    m[rmse_metric_name("test", q, "mean")],
                    m.get(rmse_metric_name("test", q, "std"), 0.0),
                )
                for q in RMSE_QUANTITIES
            },
        }
    if all(rmse_metric_name("test", q) in m for q in RMSE_QUANTITIES):
        return {
            "run": label,
            "kind": tags.get(COMMAND_TAG, "run"),
            **{q: (m[rmse_metric_name("test", q)], None) for q in RMSE_QUANTITIES},
        }
    return None


def rmse_rows(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows ``{"run", "kind", <quantity>: (value, std or None)}`` of the runs with test metrics
    (a repeats parent: mean and std over its repeats), in the given order."""
    return [row for row in map(_row, runs) if row is not None]


def floor_row(tracker: Any, runs: Sequence[Any]) -> dict[str, Any] | None:
    """The floor's row (every test voxel gets the training mean), from the first run that logged
    it (a repeats parent's first child for a parent); None if no run did."""
    for run in runs:
        m = run.data.metrics
        child_ids = run.data.tags.get(CHILD_RUNS_TAG, "")
        if not all(name in m for name in FLOOR_METRICS) and child_ids:
            m = tracker.get_run(child_ids.split(",")[0]).data.metrics
        if all(name in m for name in FLOOR_METRICS):
            return {
                "run": "floor: training mean",
                "kind": "floor",
                **{q: (m[rmse_metric_name("floor", q)], None) for q in RMSE_QUANTITIES},
            }
    return None


def compare_runs(refs: Sequence[str], *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Rows (one per run, plus the floor) of ``{"run", "kind", <quantity>: (value, std or None)}``.

    An experiment contributes its FINISHED top-level runs, oldest first.

    Raises
    ------
    OefrayError
        If a reference is neither a run id nor an experiment, or nothing has test metrics.
    """
    from oefray.tracking import Tracker

    tracker = Tracker.for_reading(tracking_uri)
    runs = _runs(tracker, refs)
    rows = rmse_rows(runs)
    if not rows:
        raise OefrayError(None, "no run with test metrics among: " + ", ".join(refs))
    floor = floor_row(tracker, runs)
    return rows + ([floor] if floor is not None else [])


def format_rows(rows: list[dict[str, Any]], fmt: str = "md") -> str:
    """The comparison as a markdown table, CSV, or an HTML table."""
    if fmt not in COMPARE_FORMATS:
        raise OefrayError(None, f"unknown format {fmt!r}; choose from {', '.join(COMPARE_FORMATS)}")
    headers = ["run", "kind", *[("OEF (%)" if q == "OEF" else q) for q in RMSE_QUANTITIES]]
    if fmt == "csv":
        return _csv(rows)

    def cell(v: tuple[float, float | None]) -> str:
        value, std = v
        return f"{value:.4g}" if std is None else f"{value:.4g} ± {std:.2g}"

    body = [[r["run"], r["kind"], *[cell(r[q]) for q in RMSE_QUANTITIES]] for r in rows]
    if fmt == "md":
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(_md_cell(c) for c in b) + " |" for b in body]
        return "\n".join(out) + "\n"
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in b) + "</tr>" for b in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{trs}</tbody>\n</table>\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    """RFC 4180 CSV (the csv module quotes a field with a comma, quote or newline)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "kind", *[c for q in RMSE_QUANTITIES for c in (q, f"{q}_std")]])
    for r in rows:
        cells = [r["run"], r["kind"]]
        for q in RMSE_QUANTITIES:
            value, std = r[q]
            cells += [repr(float(value)), "" if std is None else repr(float(std))]
        writer.writerow(cells)
    return buffer.getvalue()


_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\|*_`[]<>#"})


def _md_cell(text: str) -> str:
    """A markdown table cell showing ``text`` as it is: markup characters and pipes escaped,
    line breaks as spaces."""
    return " ".join(str(text).split()).translate(_MD_SPECIAL)


# --------------------------------------------------------------------------------------------
# Per region: OEF RMSE per tissue class and lesion contrast, beside the floor and the truth
# --------------------------------------------------------------------------------------------

_OEF_PREFIX = {split: rmse_metric_name(split, "OEF") + "_" for split in ("test", "floor")}


def _region_metrics(tracker: Any, run: Any) -> list[dict[str, float]]:
    """The metrics of a run, or of each child of a repeats parent (the parent's own per-region
    metrics are their ``_mean``/``_std``; the rows take both from the children)."""
    child_ids = [c for c in run.data.tags.get(CHILD_RUNS_TAG, "").split(",") if c]
    if child_ids:
        return [tracker.get_run(c).data.metrics for c in child_ids]
    return [run.data.metrics]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    import numpy as np

    if len(values) == 1:
        return values[0], None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def region_rows(refs: Sequence[str], *, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per run with per-region metrics, then the floor and the truth:
    ``{"run", "kind", "regions": {region: (OEF RMSE, std)}, "contrast_recovered": (v, std),
    "cnr": (v, std)}`` (a repeats parent: mean ± std over its repeats). Empty when no run
    logged regions (its test scans had no segmentation)."""
    from oefray.tracking import Tracker

    tracker = Tracker.for_reading(tracking_uri)
    return runs_region_rows(tracker, _runs(tracker, refs))


def runs_region_rows(tracker: Any, runs: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`region_rows` of MLflow runs already fetched from ``tracker``."""
    from oefray.tracking.names import LESION_CONTRAST_METRICS

    rows: list[dict[str, Any]] = []
    floor = truth = None
    for run in runs:
        per_run = [m for m in _region_metrics(tracker, run) if m]
        regions = sorted(
            {k[len(_OEF_PREFIX["test"]) :] for m in per_run for k in m}
            - {"patient_mean", "mean", "std"}
            if per_run
            else set()
        )
        regions = [r for r in regions if all(_OEF_PREFIX["test"] + r in m for m in per_run)]
        if not regions:
            continue
        name = run.info.run_name or run.info.run_id[:8]
        row: dict[str, Any] = {
            "run": f"{name} ({run.info.run_id[:8]})",
            "kind": run.data.tags.get(COMMAND_TAG, "run"),
            "regions": {
                r: _mean_std([m[_OEF_PREFIX["test"] + r] for m in per_run]) for r in regions
            },
        }
        for key in ("contrast_recovered", "cnr"):
            metric = LESION_CONTRAST_METRICS[key]
            if all(metric in m for m in per_run):
                row[key] = _mean_std([m[metric] for m in per_run])
        rows.append(row)
        first = per_run[0]
        if floor is None and all(_OEF_PREFIX["floor"] + r in first for r in regions):
            floor = {
                "run": "floor: training mean",
                "kind": "floor",
                "regions": {r: (first[_OEF_PREFIX["floor"] + r], None) for r in regions},
                "contrast_recovered": (0.0, None),
            }
        if truth is None and LESION_CONTRAST_METRICS["cnr_true"] in first:
            truth = {
                "run": "truth",
                "kind": "truth",
                "regions": {},
                "contrast_recovered": (1.0, None),
                "cnr": (first[LESION_CONTRAST_METRICS["cnr_true"]], None),
            }
    return rows + [r for r in (floor, truth) if r is not None]


def _runs(tracker: Any, refs: Sequence[str]) -> list[Any]:
    """The runs the references name: a run id, or an experiment's FINISHED top-level runs."""
    runs = []
    for ref in refs:
        if tracker.client.get_experiment_by_name(ref) is not None:
            runs += tracker.experiment_runs(ref, status="FINISHED")
            continue
        try:
            runs.append(tracker.get_run(ref))
        except OefrayError:
            raise OefrayError(
                None, f"{ref!r} is neither an MLflow run id nor an experiment name"
            ) from None
    return runs


def format_region_rows(rows: list[dict[str, Any]], fmt: str = "md") -> str:
    """The per-region comparison: OEF RMSE (%) of each region, lesion contrast recovered, CNR."""
    regions = list(dict.fromkeys(r for row in rows for r in row["regions"]))
    headers = ["run", "kind", *[f"OEF {r}" for r in regions], "contrast recovered", "lesion CNR"]

    def cell(v: tuple[float, float | None] | None) -> str:
        if v is None:
            return "–"
        value, std = v
        return f"{value:.4g}" if std is None else f"{value:.4g} ± {std:.2g}"

    body = [
        [
            row["run"],
            row["kind"],
            *[cell(row["regions"].get(r)) for r in regions],
            cell(row.get("contrast_recovered")),
            cell(row.get("cnr")),
        ]
        for row in rows
    ]
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([headers, *body])
        return buffer.getvalue()
    if fmt == "html":
        from html import escape

        head = "".join(f"<th>{escape(h)}</th>" for h in headers)
        trs = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in b) + "</tr>" for b in body)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{trs}</tbody>\n</table>\n"
    out = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_md_cell(c) for c in b) + " |" for b in body]
    return "\n".join(out) + "\n"
