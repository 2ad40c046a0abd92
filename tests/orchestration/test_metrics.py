"""oefray's Ray application metrics (``oefray/orchestration/metrics.py``) and the Grafana dashboard over them
(``dashboards/oefray.json``): names, layering, recording without a runtime, and a dashboard whose
PromQL queries exactly the exported metrics. The real export is tested in
``tests/orchestration/test_metrics_export.py``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oefray.orchestration import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "oefray.json"

# --------------------------------------------------------------------------------------------
# A small PromQL reader: the metric names an expression selects
# --------------------------------------------------------------------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (``name{...}`` or ``{__name__="name"}``).

    Strings, label matchers, range/subquery brackets and ``by``/``without``/``on``/``ignoring``
    label lists are removed first; what is left that is an identifier, is not a keyword and is
    not a function call (an identifier followed by ``(``) is a metric name.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )  # label lists
    text = re.sub(  # durations (offset 5m) and numbers
        r"(?<![\w:])(?:(?:\d+(?:ms|s|m|h|d|w|y))+|\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?!\w)", " ", text
    )
    for match in _IDENT.finditer(text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if word.lower() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("ray_a_total", {"ray_a_total"}),
        (
            'sum by (subject) (rate(ray_a_total{x=~"$v", y="by (z)"}[$__rate_interval]))',
            {"ray_a_total"},
        ),
        (
            'histogram_quantile(0.95, sum by (le) (rate(ray_h_bucket{a="b"}[5m])))',
            {"ray_h_bucket"},
        ),
        (
            "sum(rate(ray_h_sum[1m])) / sum(rate(ray_h_count[1m])) > bool 0",
            {"ray_h_sum", "ray_h_count"},
        ),
        (
            'max without (WorkerId) (ray_g) offset 5m or on (run) {__name__="ray_x"}',
            {"ray_g", "ray_x"},
        ),
        ("max_over_time(ray_g2[10m:1m]) * 1e3", {"ray_g2"}),
    ],
)
def test_promql_reader(expr, expected):
    assert promql_metric_names(expr) == expected


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------


def test_names_are_prefixed_unique_and_valid():
    names = [m.name for m in metrics.METRICS]
    assert len(names) == len(set(names)) == len(metrics.SPECS)
    valid = re.compile(r"^[a-z_][a-z0-9_]*$")
    for m in metrics.METRICS:
        assert m.name.startswith(metrics.PREFIX) and valid.match(m.name), m.name
        assert not m.name.endswith("_total"), "the exporter adds _total to counters"
        assert m.kind in ("counter", "gauge", "histogram")
        assert m.description and m.tag_keys
        assert (m.kind == "histogram") == bool(m.boundaries)
        assert list(m.boundaries) == sorted(m.boundaries) and all(b > 0 for b in m.boundaries)
        for series in m.exported_series:
            assert series.startswith("ray_oefray_"), series
    # the module's named constants are exactly the registered metrics
    constants = {
        v
        for k, v in vars(metrics).items()
        if k.isupper() and isinstance(v, str) and k not in ("PREFIX", "EXPORT_PREFIX")
    }
    assert constants == set(names)
    assert metrics.SPECS[metrics.VOXELS_FITTED].exported_series == (
        "ray_oefray_voxels_fitted_total",
    )
    assert metrics.SPECS[metrics.SLAB_SECONDS].exported_series == (
        "ray_oefray_slab_seconds_bucket",
        "ray_oefray_slab_seconds_sum",
        "ray_oefray_slab_seconds_count",
    )
    assert metrics.SPECS[metrics.VAL_RMSE_OEF].exported_series == (
        "ray_oefray_val_rmse_oef_percent",
    )


def test_tags_are_low_cardinality():
    for m in metrics.METRICS:
        assert set(m.tag_keys) <= {"subject", "experiment", "run"}, m.name


def test_import_loads_no_ray_and_the_pure_layers_do_not_import_it():
    code = (
        "import sys\n"
        "import oefray.physics.decay, oefray.io.bids, oefray.io.features, oefray.ml.windows\n"
        "print(int('oefray.orchestration.metrics' in sys.modules))\n"
        "import oefray.orchestration.metrics\n"
        "print(int('ray' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]


def test_recording_without_a_ray_runtime_is_cheap_and_harmless():
    code = (
        "import time, ray.util.metrics\n"
        "from oefray.orchestration import metrics as m\n"
        "t = time.perf_counter(); made = m._instruments(); made_s = time.perf_counter() - t\n"
        "t = time.perf_counter()\n"
        "for _ in range(200):\n"
        "    m.record_slab('P3', voxels=1000, seconds=0.01)\n"
        "    m.record_slab('P3', voxels=0, seconds=0.0)\n"
        "    m.record_slab('P4', voxels=0, seconds=0.01, ok=False)\n"
        "    m.record_epoch({'experiment': 'e', 'run': 'r'}, {'epoch_seconds': 1.0,\n"
        "        'samples_per_second': 10.0, 'loss': float('nan'), 'val_loss': 0.5,\n"
        "        'val_rmse_OEF': 5.0})\n"
        "per_s = (time.perf_counter() - t) / 200\n"
        "import ray\n"
        "print(len(made), int(ray.is_initialized()), made_s, per_s)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    n, initialised, made_s, per_s = out.stdout.split()
    assert int(n) == len(metrics.METRICS) and initialised == "0"
    assert "could not record" not in out.stderr  # nothing raised inside the recorders
    assert float(made_s) < 0.5  # a few hundred microseconds here
    assert float(per_s) < 1e-3  # one slab or epoch: microseconds, against a slab's ~0.1 s


# --------------------------------------------------------------------------------------------
# The dashboard
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


def test_every_panel_queries_only_exported_oefray_metrics(dashboard):
    exported = metrics.exported_series()
    graphs = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert graphs
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in graphs:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = promql_metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = names - set(exported)
            assert not unknown, (
                f"panel {panel['title']!r} queries {unknown}, not in oefray.orchestration.metrics"
            )


def test_every_exported_metric_has_a_panel(dashboard):
    queried = {
        metrics.exported_series()[name]
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
        for name in promql_metric_names(target["expr"])
    }
    assert queried == set(metrics.SPECS), f"no panel for {set(metrics.SPECS) - queried}"


def test_template_variables_query_oefray_metrics(dashboard):
    exported = set(metrics.exported_series())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("SessionName", "subject", "experiment"):
        query = variables[name]["query"]["query"]
        selector = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
        assert selector and selector[2] == name, query
        names = promql_metric_names(selector[1])
        regex = re.findall(r'__name__=~"([^"]+)"', selector[1])
        assert (names and names <= exported) or regex == ["ray_oefray_.+"], query
