"""``oefray report``: one static, self-contained HTML page of an MLflow experiment.

For people who do not run the MLflow UI or Grafana: the page carries the test RMSE table of the
experiment's runs with the floor (the rows of ``oefray compare``, one place for them), then per
top-level run (trainings, CCM baselines, ``tune --repeats`` parents, searches, studies) its
status, parameters, tables logged as artifacts (Table 1, the repeats summary, TE shift, search
trials), its child runs and its figures (training curves, OEF maps, uncertainty), embedded as
``data:image/png;base64`` URIs. No script, no stylesheet or font from elsewhere: the file is the
report and opens anywhere, offline.

The store is only read (:meth:`oefray.tracking.Tracker.for_reading`); the page is built in memory
and written to a temporary name that is renamed into place, so a failure writes nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from oefray.errors import OefrayError
from oefray.orchestration.compare import floor_row, format_rows, rmse_rows

#: Figures a run may have logged, in page order: (run-relative artifact path, caption).
FIGURES: tuple[tuple[str, str], ...] = (
    ("training_curves.png", "Training curves: loss and validation OEF RMSE per epoch (Fig. 3)"),
    ("oef_maps.png", "OEF maps of the test subjects, truth vs prediction (Fig. 4)"),
    ("uncertainty.png", "Ensemble mean and spread of OEF across the seed repeats"),
    ("representative/training_curves.png", "Representative repeat: training curves"),
    ("representative/oef_maps.png", "Representative repeat: OEF maps"),
)

#: Tables a run may have logged: (run-relative artifact path, caption).
TABLES: tuple[tuple[str, str], ...] = (
    ("rmse_per_patient.csv", "Test RMSE per patient (Table 1 layout; OEF in %)"),
    ("repeats_summary.csv", "Test RMSE over the seed repeats (Tables 2/3 layout)"),
    ("te_shift.csv", "Test RMSE when the test data come with other echo schemes"),
    ("trials.json", "Search trials"),
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #1d2228; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
.meta { color: #57606a; font-size: 0.9em; }
code { background: #f3f4f6; padding: 0 0.25em; border-radius: 3px; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f4f6; }
td:first-child, th:first-child { text-align: left; }
tr.floor td { font-style: italic; color: #57606a; }
.status-FINISHED { color: #1a7f37; } .status-FAILED, .status-KILLED { color: #cf222e; }
.status-RUNNING, .status-SCHEDULED { color: #9a6700; }
dl.params { columns: 3 18em; font-size: 0.85em; margin: 0.3em 0; }
dl.params div { break-inside: avoid; padding: 0.1em 0; }
dl.params dt { display: inline; color: #57606a; } dl.params dd { display: inline; margin: 0; }
figure { margin: 0.6em 0 1.2em; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 0.85em; color: #57606a; }
.note { color: #57606a; font-style: italic; }
.error { color: #cf222e; }
"""


@dataclass
class ReportResult:
    """What ``oefray report`` wrote."""

    path: str
    experiment: str
    tracking_uri: str
    run_ids: list[str]
    figures: int
    tables: int
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": "report",
            "path": self.path,
            "experiment": self.experiment,
            "tracking_uri": self.tracking_uri,
            "run_ids": self.run_ids,
            "figures": self.figures,
            "tables": self.tables,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
        }


# --------------------------------------------------------------------------------------------
# HTML pieces (pure)
# --------------------------------------------------------------------------------------------


def png_data_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes.

    Raises
    ------
    ValueError
        If ``data`` is not a PNG file.
    """
    if not data.startswith(_PNG_MAGIC):
        raise ValueError("not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"  # NaN -> empty cell
    return "" if value is None else str(value)


def _frame_table(frame: Any) -> str:
    """A pandas frame as an HTML table (index as the first column, floats to 4 digits)."""
    index_name = escape(str(frame.index.name or ""))
    head = f"<th>{index_name}</th>" + "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for label, row in frame.iterrows():
        cells = "".join(f"<td>{escape(_fmt(v))}</td>" for v in row.tolist())
        rows.append(f"<tr><td>{escape(str(label))}</td>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{''.join(rows)}</tbody>\n</table>\n"


def _rmse_table(rows: list[dict[str, Any]]) -> str:
    """``oefray compare``'s HTML table, with the floor's row marked."""
    html = format_rows(rows, "html")
    floor = [r for r in rows if r["kind"] == "floor"]
    if floor:  # format_rows writes the floor last
        marker = "<tr><td>" + escape(floor[0]["run"]) + "</td>"
        html = html.replace(marker, '<tr class="floor"><td>' + escape(floor[0]["run"]) + "</td>")
    return html


def _params_block(params: dict[str, str]) -> str:
    checksums = sorted(k for k in params if k.startswith("features_checksums."))
    shown = {k: v for k, v in sorted(params.items()) if k not in checksums}
    if checksums:
        shown["features_checksums"] = f"{len(checksums)} subjects (in MLflow)"
    if not shown:
        return '<p class="note">no parameters logged</p>\n'
    items = "".join(
        f"<div><dt>{escape(k)}</dt> = <dd>{escape(v if len(v) <= 160 else v[:157] + '...')}</dd></div>"
        for k, v in shown.items()
    )
    return f'<dl class="params">{items}</dl>\n'


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(start: int | None, end: int | None) -> str:
    if not start or not end:
        return ""
    seconds = (end - start) / 1000
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------------------------
# Reading one run
# --------------------------------------------------------------------------------------------


def _run_section(
    tracker: Any, run: Any, tmp: Path, counts: dict[str, int], notes: list[str]
) -> str:
    """The HTML section of one top-level run (downloads its artifacts into ``tmp``)."""
    import pandas as pd

    info, data = run.info, run.data
    run_id = info.run_id
    kind = data.tags.get("oefray.command", "run")
    name = info.run_name or run_id[:8]
    parts = [f'<section class="run" id="run-{escape(run_id)}" data-run-id="{escape(run_id)}">']
    parts.append(f"<h2>{escape(name)} <span class='meta'>({escape(kind)})</span></h2>")
    meta = [
        f"run id <code>{escape(run_id)}</code>",
        f'status <b class="status-{escape(info.status)}">{escape(info.status)}</b>',
        f"started {escape(_when(info.start_time))}",
    ]
    if _duration(info.start_time, info.end_time):
        meta.append(f"took {escape(_duration(info.start_time, info.end_time))}")
    if "oefray.epochs_run" in data.tags:
        meta.append(f"epochs run <code>{escape(data.tags['oefray.epochs_run'])}</code>")
    if data.tags.get("oefray.best_epoch", "").isdigit():  # the tag counts from 0, figures from 1
        meta.append(f"best epoch <code>{int(data.tags['oefray.best_epoch']) + 1}</code>")
    for tag, label in (
        ("oefray.representative_run", "representative repeat"),
        ("oefray.best_run", "best trial"),
    ):
        if tag in data.tags:
            meta.append(f"{label} <code>{escape(data.tags[tag])}</code>")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    if "oefray.error" in data.tags:
        parts.append(f'<p class="error">error: {escape(data.tags["oefray.error"])}</p>')

    rows = rmse_rows([run])
    if rows:
        floor = floor_row(tracker, [run])
        parts.append("<h3>Test RMSE over all test voxels (OEF in %)</h3>")
        parts.append(_rmse_table(rows + ([floor] if floor else [])))
    skip = ("test_rmse_", "floor_rmse_")
    other = {k: v for k, v in sorted(data.metrics.items()) if not k.startswith(skip)}
    if other:
        parts.append("<h3>Other metrics (latest values)</h3>")
        parts.append(_params_block({k: _fmt(float(v)) for k, v in other.items()}))
    parts.append("<h3>Parameters</h3>")
    parts.append(_params_block(dict(data.params)))

    children = tracker.child_runs(run_id)
    if children:
        parts.append(f"<h3>Child runs ({len(children)})</h3>")
        head = "<tr><th>run</th><th>status</th><th>seed</th><th>test OEF RMSE (%)</th></tr>"
        body = "".join(
            f"<tr><td>{escape((c.info.run_name or '') + ' ')}<code>{escape(c.info.run_id)}</code></td>"
            f'<td class="status-{escape(c.info.status)}">{escape(c.info.status)}</td>'
            f"<td>{escape(c.data.tags.get('oefray.seed', ''))}</td>"
            f"<td>{escape(_fmt(c.data.metrics.get('test_rmse_OEF')))}</td></tr>"
            for c in children
        )
        parts.append(f"<table><thead>{head}</thead><tbody>{body}</tbody></table>")

    try:
        if info.artifact_uri.startswith("mlflow-artifacts:") and not (
            tracker.tracking_uri.startswith(("http://", "https://"))
        ):
            raise OefrayError(
                None,
                f"they were uploaded through an MLflow server ({info.artifact_uri}); report with "
                "--tracking-uri http://<that server> (e.g. the one `oefray ui` starts)",
            )
        available = set(tracker.list_artifacts(run_id))
    except Exception as exc:  # an unreachable server, a missing folder
        message = " ".join(str(getattr(exc, "message", exc)).split())[:300]
        notes.append(f"run {run_id}: artifacts not readable ({message})")
        parts.append(
            f'<p class="note">artifacts not readable from this store: {escape(message)}</p>'
        )
        available = set()
    folder = tmp / run_id
    for path, caption in TABLES:
        if path not in available:
            continue
        local = tracker.download_artifacts(run_id, path, folder)
        if path.endswith(".json"):
            frame = pd.DataFrame(json.loads(Path(local).read_text()))
            frame = frame.drop(columns=[c for c in ("sampled",) if c in frame.columns])
            frame = frame.set_index(frame.columns[0])
        else:
            frame = pd.read_csv(local, index_col=0)
        parts.append(f"<h3>{escape(caption)} <span class='meta'>({escape(path)})</span></h3>")
        parts.append(_frame_table(frame))
        counts["tables"] += 1
    for path, caption in FIGURES:
        if path not in available:
            continue
        local = tracker.download_artifacts(run_id, path, folder)
        try:
            uri = png_data_uri(Path(local).read_bytes())
        except ValueError:
            notes.append(f"run {run_id}: {path} is not a PNG file")
            continue
        parts.append(
            f'<figure><img src="{uri}" alt="{escape(caption)}" data-artifact="{escape(path)}">'
            f"<figcaption>{escape(caption)} <code>{escape(path)}</code></figcaption></figure>"
        )
        counts["figures"] += 1
    parts.append("</section>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def build_report(experiment: str, *, tracking_uri: str | None = None) -> tuple[str, ReportResult]:
    """The report page of ``experiment`` as HTML text (nothing is written).

    Returns
    -------
    html : str
        A complete, self-contained HTML document.
    result : ReportResult
        What the page holds (``path`` and ``bytes`` are filled in by :func:`write_report`).

    Raises
    ------
    OefrayError
        If the store does not exist or holds no experiment ``experiment``.
    """
    import tempfile

    from oefray import __version__
    from oefray.tracking import Tracker

    t0 = time.perf_counter()
    tracker = Tracker.for_reading(tracking_uri)
    exp = tracker.get_experiment(experiment)
    runs = tracker.experiment_runs(experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    counts = {"figures": 0, "tables": 0}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="oefray-report-") as tmp:
        sections = [_run_section(tracker, r, Path(tmp), counts, notes) for r in runs]

    rows = rmse_rows(finished)
    floor = floor_row(tracker, finished)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
    generated = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = [
        f"<h1>oefray report: {escape(exp.name)}</h1>",
        '<p class="meta">'
        + " · ".join(
            [
                f"experiment id <code>{escape(exp.experiment_id)}</code>",
                f"store <code>{escape(tracker.tracking_uri)}</code>",
                f"artifacts <code>{escape(exp.artifact_location)}</code>",
                f"generated {generated} by oefray {escape(__version__)}",
            ]
        )
        + "</p>",
        "<p>"
        + (
            f"{len(runs)} top-level run(s): "
            + ", ".join(f"{n} {escape(s)}" for s, n in sorted(statuses.items()))
            if runs
            else "The experiment has no runs yet."
        )
        + "</p>",
        "<h2>Test RMSE of the finished runs</h2>",
        "<p class='meta'>Pooled over all test voxels; S0 echo-1-normalised, R2 in s⁻¹, Y and v "
        "fractions, chi_nb in ppm, OEF in %. Repeats show mean ± std over seeds. The floor gives "
        "every test voxel the training mean: a method is only as good as its margin over it. "
        "Paper (patient data): OEF 5.23 ± 0.035 % (LSTM) vs 5.35 % (CCM).</p>",
        _rmse_table(rows + ([floor] if floor else []))
        if rows
        else '<p class="note">no finished run with test metrics</p>',
    ]
    if runs:
        toc = "".join(
            f'<li><a href="#run-{escape(r.info.run_id)}">{escape(r.info.run_name or r.info.run_id)}</a>'
            f" ({escape(r.data.tags.get('oefray.command', 'run'))}, {escape(r.info.status)})</li>"
            for r in runs
        )
        head.append(f"<h2>Runs</h2><ul>{toc}</ul>")
    if notes:
        head.append("<ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in notes) + "</ul>")
    html = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>oefray report: {escape(exp.name)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n" + "\n".join(head) + "\n" + "\n".join(sections) + "</body>\n</html>\n"
    )
    result = ReportResult(
        path="",
        experiment=exp.name,
        tracking_uri=tracker.tracking_uri,
        run_ids=[r.info.run_id for r in runs],
        figures=counts["figures"],
        tables=counts["tables"],
        bytes=len(html.encode()),
        seconds=time.perf_counter() - t0,
        notes=notes,
    )
    return html, result


def write_report(
    experiment: str, out: str | os.PathLike[str], *, tracking_uri: str | None = None
) -> ReportResult:
    """Build the report of ``experiment`` and write it to ``out`` atomically.

    Nothing is written unless the whole page could be built (temporary name, then rename).

    Raises
    ------
    OefrayError
        As :func:`build_report`, or if ``out`` cannot be written.
    """
    html, result = build_report(experiment, tracking_uri=tracking_uri)
    from oefray.io.files import write_text_atomic

    path = Path(out).resolve()
    try:
        write_text_atomic(path, html)
    except OSError as exc:
        raise OefrayError(path, f"cannot write the report: {exc.strerror or exc}") from None
    result.path = str(path)
    return result
