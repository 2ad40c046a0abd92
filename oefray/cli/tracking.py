"""``oefray compare``, ``oefray report`` and ``oefray ui``: reading what MLflow tracked."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from oefray.cli.common import (
    FAILED,
    ConfigOption,
    ResultsOption,
    TrackingOption,
    app,
    err_console,
    fail,
    load,
    run,
    say,
    write_results,
)


@app.command()
def compare(
    refs: Annotated[list[str], typer.Argument(help="MLflow run ids and/or experiment names.")],
    format: Annotated[str | None, typer.Option("--format", help="md, csv or html.")] = None,
    regions_only: Annotated[
        bool,
        typer.Option(
            "--regions",
            help="Print only the per-region table (OEF RMSE per tissue class, lesion contrast); "
            "md and html print it after the RMSE table anyway, csv only with this flag.",
        ),
    ] = False,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """Per-parameter and OEF test RMSE of runs and experiments side by side (with the floor);
    where the test scans had a segmentation, OEF RMSE per tissue class and lesion contrast too."""
    from oefray.config import CompareConfig
    from oefray.orchestration.compare import (
        compare_runs,
        format_region_rows,
        format_rows,
        region_rows,
    )

    options = load(
        CompareConfig, "compare", config, {"format": format, "tracking_uri": tracking_uri}
    )
    rows = run(lambda: compare_runs(refs, tracking_uri=options.tracking_uri))
    regions = run(lambda: region_rows(refs, tracking_uri=options.tracking_uri))
    if regions_only:
        if not regions:
            fail("no run among these logged per-region metrics (no segmentation)", FAILED)
        text = format_region_rows(regions, options.format)
    else:
        text = format_rows(rows, options.format)
        if regions and options.format != "csv":  # one table per CSV stream
            text += "\n" + format_region_rows(regions, options.format)
    write_results(
        results, {"command": "compare", "refs": list(refs), "rows": rows, "regions": regions}
    )
    sys.stdout.write(text)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="MLflow experiment name.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="The HTML file to write (self-contained; default report.html)."),
    ] = None,
    tracking_uri: TrackingOption = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """A static HTML report of an experiment: test RMSE with the floor, tables, figures, params."""
    from oefray.config import ReportConfig
    from oefray.orchestration.report import write_report

    options = load(ReportConfig, "report", config, {"out": out, "tracking_uri": tracking_uri})
    result = run(lambda: write_report(experiment, options.out, tracking_uri=options.tracking_uri))
    write_results(results, result.to_dict())
    say(
        f"Wrote {result.path}: {len(result.run_ids)} run(s), {result.figures} figure(s), "
        f"{result.tables} table(s), {result.bytes / 1e3:,.0f} kB"
    )
    for note in result.notes:
        err_console.print(f"oefray: note: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def ui(
    tracking_uri: TrackingOption = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 5000).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (default: this machine only).")
    ] = None,
    config: ConfigOption = None,
    results: ResultsOption = Path("results.json"),
) -> None:
    """The MLflow UI and REST API over the project's store, until Ctrl-C."""
    from oefray.config import UIConfig
    from oefray.orchestration.ui import serve_ui

    options = load(
        UIConfig, "ui", config, {"tracking_uri": tracking_uri, "port": port, "host": host}
    )

    def start(url: str, store: str) -> None:
        say(f"starting the MLflow server on {store} at {url} ...")

    def ready(url: str) -> None:
        from oefray.tracking import experiments_url

        say(f"MLflow UI: {url}  (Ctrl-C stops it; jobs log to it with --tracking-uri {url})")
        say(f"runs tables (the UI's model-training view): {experiments_url(url)}")

    url = run(lambda: serve_ui(options, on_start=start, on_ready=ready))
    write_results(results, {"command": "ui", "url": url, "stopped": True})
    say(f"stopped the MLflow server at {url}")
