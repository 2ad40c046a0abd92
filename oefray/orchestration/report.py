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
from dataclasses import asdict, dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from oefray.errors import OefrayError
from oefray.orchestration.compare import (
    floor_row,
    format_region_rows,
    format_rows,
    rmse_rows,
    runs_region_rows,
)
from oefray.tracking.store import redact_uri

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
    ("rmse_per_region.csv", "Test RMSE per tissue class and in the lesion, beside the floor"),
    ("lesion_contrast.csv", "OEF lesion contrast per test scan (lesion vs mirror region)"),
    ("repeats_summary.csv", "Test RMSE over the seed repeats (Tables 2/3 layout)"),
    ("ensemble_spread_per_region.csv", "Spread of OEF across the seed repeats, per region"),
    ("te_shift.csv", "Test RMSE when the test data come with other echo schemes"),
    ("te_shift_regions.csv", "Per region, when the test data come with other echo schemes"),
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
        """The results JSON of ``oefray report``: ``command``, then the fields in order."""
        record = {"command": "report", **asdict(self)}
        record["seconds"] = round(self.seconds, 2)
        return record


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


def _rmse_table(rows: list[dict[str, Any]], floor: dict[str, Any] | None) -> str:
    """``oefray compare``'s HTML table of ``rows`` and the ``floor`` (if any), its row marked."""
    rows = rows + ([floor] if floor else [])
    html = format_rows(rows, "html")
    floors = [r for r in rows if r["kind"] == "floor"]
    if floors:  # format_rows writes the floor last
        marker = "<tr><td>" + escape(floors[0]["run"]) + "</td>"
        html = html.replace(marker, '<tr class="floor"><td>' + escape(floors[0]["run"]) + "</td>")
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


def _run_meta(info: Any, tags: dict[str, str]) -> str:
    """The run's meta line: id, status, start, duration and the tags worth a glance."""
    meta = [
        f"run id <code>{escape(info.run_id)}</code>",
        f'status <b class="status-{escape(info.status)}">{escape(info.status)}</b>',
        f"started {escape(_when(info.start_time))}",
    ]
    if _duration(info.start_time, info.end_time):
        meta.append(f"took {escape(_duration(info.start_time, info.end_time))}")
    if "oefray.epochs_run" in tags:
        meta.append(f"epochs run <code>{escape(tags['oefray.epochs_run'])}</code>")
    if tags.get("oefray.best_epoch", "").isdigit():  # the tag counts from 0, figures from 1
        meta.append(f"best epoch <code>{int(tags['oefray.best_epoch']) + 1}</code>")
    for tag, label in (
        ("oefray.representative_run", "representative repeat"),
        ("oefray.best_run", "best trial"),
    ):
        if tag in tags:
            meta.append(f"{label} <code>{escape(tags[tag])}</code>")
    return f'<p class="meta">{" · ".join(meta)}</p>'


def _run_values(tracker: Any, run: Any) -> list[str]:
    """The run's test RMSE table (with the floor), its other metrics and its parameters."""
    parts = []
    rows = rmse_rows([run])
    if rows:
        parts.append("<h3>Test RMSE over all test voxels (OEF in %)</h3>")
        parts.append(_rmse_table(rows, floor_row(tracker, [run])))
    skip = ("test_rmse_", "floor_rmse_")
    other = {k: v for k, v in sorted(run.data.metrics.items()) if not k.startswith(skip)}
    if other:
        parts.append("<h3>Other metrics (latest values)</h3>")
        parts.append(_params_block({k: _fmt(float(v)) for k, v in other.items()}))
    parts.append("<h3>Parameters</h3>")
    parts.append(_params_block(dict(run.data.params)))
    return parts


def _child_runs_table(children: list[Any]) -> list[str]:
    """Heading and table of a run's child runs (nothing if it has none)."""
    if not children:
        return []
    head = "<tr><th>run</th><th>status</th><th>seed</th><th>test OEF RMSE (%)</th></tr>"
    body = "".join(
        f"<tr><td>{escape((c.info.run_name or '') + ' ')}<code>{escape(c.info.run_id)}</code></td>"
        f'<td class="status-{escape(c.info.status)}">{escape(c.info.status)}</td>'
        f"<td>{escape(c.data.tags.get('oefray.seed', ''))}</td>"
        f"<td>{escape(_fmt(c.data.metrics.get('test_rmse_OEF')))}</td></tr>"
        for c in children
    )
    return [
        f"<h3>Child runs ({len(children)})</h3>",
        f"<table><thead>{head}</thead><tbody>{body}</tbody></table>",
    ]


def _list_artifacts(tracker: Any, info: Any, notes: list[str]) -> tuple[set[str], list[str]]:
    """The run's artifact paths, or none and a note saying why they cannot be read.

    Returns
    -------
    available : set of str
        Run-relative artifact paths; empty if the store cannot list them.
    parts : list of str
        The HTML note for the page (empty when the listing worked).
    """
    try:
        if info.artifact_uri.startswith("mlflow-artifacts:") and not (
            tracker.tracking_uri.startswith(("http://", "https://"))
        ):
            raise OefrayError(
                None,
                f"they were uploaded through an MLflow server ({info.artifact_uri}); report with "
                "--tracking-uri http://<that server> (e.g. the one `oefray ui` starts)",
            )
        return set(tracker.list_artifacts(info.run_id)), []
    except Exception as exc:  # an unreachable server, a missing folder
        message = " ".join(str(getattr(exc, "message", exc)).split())[:300]
        notes.append(f"run {info.run_id}: artifacts not readable ({message})")
        note = f'<p class="note">artifacts not readable from this store: {escape(message)}</p>'
        return set(), [note]


def _read_table(local: str | os.PathLike[str], path: str) -> Any:
    """A logged table as a pandas frame: a CSV with its index, or the search trials' JSON.

    ``local`` is the downloaded file, ``path`` its artifact path (whose suffix names the format).
    """
    import pandas as pd

    if path.endswith(".json"):
        frame = pd.DataFrame(json.loads(Path(local).read_text()))
        frame = frame.drop(columns=[c for c in ("sampled",) if c in frame.columns])
        return frame.set_index(frame.columns[0])
    return pd.read_csv(local, index_col=0)


def _artifact_tables(
    tracker: Any, run_id: str, available: set[str], folder: Path, counts: dict[str, int]
) -> list[str]:
    """The :data:`TABLES` the run logged, downloaded into ``folder``, as captioned HTML tables."""
    parts = []
    for path, caption in TABLES:
        if path not in available:
            continue
        frame = _read_table(tracker.download_artifacts(run_id, path, folder), path)
        parts.append(f"<h3>{escape(caption)} <span class='meta'>({escape(path)})</span></h3>")
        parts.append(_frame_table(frame))
        counts["tables"] += 1
    return parts


def _artifact_figures(
    tracker: Any,
    run_id: str,
    available: set[str],
    folder: Path,
    counts: dict[str, int],
    notes: list[str],
) -> list[str]:
    """The :data:`FIGURES` the run logged, downloaded into ``folder``, as embedded ``<figure>``s.

    A file that is not a PNG is left out, with a note.
    """
    parts = []
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
    return parts


def _run_section(
    tracker: Any, run: Any, tmp: Path, counts: dict[str, int], notes: list[str]
) -> str:
    """The HTML section of one top-level run (downloads its artifacts into ``tmp``).

    Parameters
    ----------
    tracker : oefray.tracking.Tracker
        The store, opened for reading.
    run : mlflow.entities.Run
        A top-level run of the experiment.
    tmp : Path
        Scratch folder; the run's artifacts go to ``tmp / run_id``.
    counts : dict of str to int
        ``"figures"`` and ``"tables"``, incremented by what the section embeds.
    notes : list of str
        Appended to: the run's artifacts that could not be read or shown.

    Returns
    -------
    str
        A ``<section>`` element.
    """
    info = run.info
    kind = run.data.tags.get("oefray.command", "run")
    name = info.run_name or info.run_id[:8]
    parts = [
        f'<section class="run" id="run-{escape(info.run_id)}" data-run-id="{escape(info.run_id)}">',
        f"<h2>{escape(name)} <span class='meta'>({escape(kind)})</span></h2>",
        _run_meta(info, run.data.tags),
    ]
    if "oefray.error" in run.data.tags:
        parts.append(f'<p class="error">error: {escape(run.data.tags["oefray.error"])}</p>')
    parts += _run_values(tracker, run)
    parts += _child_runs_table(tracker.child_runs(info.run_id))
    available, unreadable = _list_artifacts(tracker, info, notes)
    parts += unreadable
    folder = tmp / info.run_id
    parts += _artifact_tables(tracker, info.run_id, available, folder, counts)
    parts += _artifact_figures(tracker, info.run_id, available, folder, counts, notes)
    parts.append("</section>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

#: Under the experiment's RMSE table: what the numbers are and what to hold them against.
_RMSE_NOTE = (
    "<p class='meta'>Pooled over all test voxels; S0 echo-1-normalised, R2 in s⁻¹, Y and v "
    "fractions, chi_nb in ppm, OEF in %. Repeats show mean ± std over seeds. The floor gives "
    "every test voxel the training mean: a method is only as good as its margin over it. "
    "Paper (patient data): OEF 5.23 ± 0.035 % (LSTM) vs 5.35 % (CCM).</p>"
)


def _run_sections(tracker: Any, runs: list[Any]) -> tuple[list[str], dict[str, int], list[str]]:
    """The sections of ``runs``, their artifacts downloaded into a temporary folder.

    Returns
    -------
    sections : list of str
        One ``<section>`` per run, in the given order.
    counts : dict of str to int
        ``"figures"`` and ``"tables"`` embedded.
    notes : list of str
        What could not be read or shown.
    """
    import tempfile

    counts = {"figures": 0, "tables": 0}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="oefray-report-") as tmp:
        sections = [_run_section(tracker, r, Path(tmp), counts, notes) for r in runs]
    return sections, counts, notes


def _experiment_meta(tracker: Any, exp: Any) -> str:
    """The meta line under the title: experiment id, store, artifacts, when and by what."""
    from oefray import __version__

    generated = dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    items = [
        f"experiment id <code>{escape(exp.experiment_id)}</code>",
        f"store <code>{escape(str(redact_uri(tracker.tracking_uri)))}</code>",
        f"artifacts <code>{escape(exp.artifact_location)}</code>",
        f"generated {generated} by oefray {escape(__version__)}",
    ]
    return '<p class="meta">' + " · ".join(items) + "</p>"


def _status_summary(runs: list[Any]) -> str:
    """How many top-level runs the experiment has, by status."""
    if not runs:
        return "<p>The experiment has no runs yet.</p>"
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
    by_status = ", ".join(f"{n} {escape(s)}" for s, n in sorted(statuses.items()))
    return f"<p>{len(runs)} top-level run(s): {by_status}</p>"


def _runs_index(runs: list[Any]) -> str:
    """A list of links to the runs' sections, with their kind and status."""
    toc = "".join(
        f'<li><a href="#run-{escape(r.info.run_id)}">{escape(r.info.run_name or r.info.run_id)}</a>'
        f" ({escape(r.data.tags.get('oefray.command', 'run'))}, {escape(r.info.status)})</li>"
        for r in runs
    )
    return f"<h2>Runs</h2><ul>{toc}</ul>"


def _page_head(tracker: Any, exp: Any, runs: list[Any], notes: list[str]) -> list[str]:
    """What comes before the runs' sections: title, summary, the RMSE table, index and notes."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    rows = rmse_rows(finished)
    floor = floor_row(tracker, finished)
    head = [
        f"<h1>oefray report: {escape(exp.name)}</h1>",
        _experiment_meta(tracker, exp),
        _status_summary(runs),
        "<h2>Test RMSE of the finished runs</h2>",
        _RMSE_NOTE,
        _rmse_table(rows, floor)
        if rows
        else '<p class="note">no finished run with test metrics</p>',
    ]
    regions = runs_region_rows(tracker, finished)
    if regions:
        head += [
            "<h2>Where the disease is: OEF RMSE (%) per region and lesion contrast</h2>",
            format_region_rows(regions, "html"),
        ]
    if runs:
        head.append(_runs_index(runs))
    if notes:
        head.append("<ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in notes) + "</ul>")
    return head


def _html_document(title: str, body: str) -> str:
    """A complete HTML document around ``body``, with the page's stylesheet inline."""
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        "<body>\n" + body + "</body>\n</html>\n"
    )


def build_report(experiment: str, *, tracking_uri: str | None = None) -> tuple[str, ReportResult]:
    """The report page of ``experiment`` as HTML text (nothing is written).

    Parameters
    ----------
    experiment : str
        Name of the MLflow experiment.
    tracking_uri : str, optional
        The store (default: the configured one, see :meth:`oefray.tracking.Tracker.for_reading`).

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
    from oefray.tracking import Tracker

    t0 = time.perf_counter()
    tracker = Tracker.for_reading(tracking_uri)
    exp = tracker.get_experiment(experiment)
    runs = tracker.experiment_runs(experiment)
    sections, counts, notes = _run_sections(tracker, runs)
    head = _page_head(tracker, exp, runs, notes)
    body = "\n".join(head) + "\n" + "\n".join(sections)
    html = _html_document(f"oefray report: {exp.name}", body)
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
