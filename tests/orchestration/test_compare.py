"""``oefray compare`` on the CCM baseline run (`ccm_run`, conftest.py) of the `tiny` cohort:
Markdown, CSV and HTML tables with the run's real numbers, and an unknown reference refused."""

from __future__ import annotations

import csv
import io

import pytest

from oefray.cli import main
from oefray.tracking import Tracker

pytestmark = pytest.mark.ray  # the run compared is made on the preprocessed `tiny_features`

QUANTITIES = ("S0", "R2", "Y", "v", "chi_nb", "OEF")


def test_compare_shows_the_real_numbers(ccm_run, capsys):
    run_id = ccm_run["results"]["run_id"]
    m = Tracker(ccm_run["uri"]).get_run(run_id).data.metrics
    assert main(["compare", "cmp", "--tracking-uri", ccm_run["uri"]]) == 0
    md = capsys.readouterr().out
    assert run_id[:8] in md and "floor: training mean" in md
    for q in QUANTITIES:
        assert f"{m[f'test_rmse_{q}']:.4g}" in md
    assert main(["compare", run_id, "--format", "csv", "--tracking-uri", ccm_run["uri"]]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kind"] for r in rows] == ["baseline ccm", "floor"]
    assert float(rows[0]["OEF"]) == pytest.approx(m["test_rmse_OEF"], rel=1e-12)
    assert float(rows[1]["Y"]) == pytest.approx(m["floor_rmse_Y"], rel=1e-12)
    assert main(["compare", run_id, "--format", "html", "--tracking-uri", ccm_run["uri"]]) == 0
    assert capsys.readouterr().out.startswith("<table>")


def test_compare_unknown_reference(ccm_run, capsys):
    assert main(["compare", "no-such-thing", "--tracking-uri", ccm_run["uri"]]) == 1
    err = capsys.readouterr().err
    assert "'no-such-thing' is neither an MLflow run id nor an experiment name" in err


def _row(name: str) -> dict:
    return {"run": name, "kind": "train", **{q: (1.25, None) for q in QUANTITIES}}


def test_csv_quotes_what_needs_quoting_and_md_escapes_markup():
    """A quote, a comma or a pipe in a run name never shifts columns (issue: a `"` in a run name
    shifted the CSV's columns); markdown shows the name as it is, not as markup."""
    from oefray.orchestration.compare import format_rows

    name = 'my "best", run | *bold* [x](y) <b>'
    rows = list(csv.reader(io.StringIO(format_rows([_row(name), _row("plain")], "csv"))))
    assert [len(r) for r in rows] == [14, 14, 14]
    assert rows[1][0] == name and rows[1][1] == "train" and float(rows[1][2]) == 1.25
    md = format_rows([_row(name)], "md").splitlines()[2]
    assert md.count(" | ") == 7  # the cell's own pipe is escaped: 8 cells
    assert r"\|" in md and r"\*bold\*" in md and r"\[x\](y)" in md and r"\<b\>" in md
