"""``oefray report`` on a real experiment (a 1-epoch LSTM training, a CCM baseline and a failed
run, MLflow on sqlite), checked as text and in a real headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from oefray.cli import main
from oefray.config import CCMRunConfig, TrainConfig
from oefray.orchestration.baseline import run_ccm
from oefray.orchestration.train import train
from oefray.physics.constants import RMSE_QUANTITIES as QUANTITIES
from oefray.tracking import Tracker

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "report-test"
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def experiment(tiny_features, ray_local, tmp_path_factory):
    """A real experiment: one LSTM training (1 epoch), one CCM baseline, one failed run."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root}/mlruns/mlflow.db"
    lstm = train(
        tiny_features,
        TrainConfig(
            epochs=1, workers=1, seed=5, experiment=EXPERIMENT, tracking_uri=uri, learning_rate=1e-3
        ),
        storage_path=root / "ray_results",
    )
    ccm = run_ccm(tiny_features, CCMRunConfig(clusters=16, experiment=EXPERIMENT, tracking_uri=uri))
    tracker = Tracker(uri)
    with pytest.raises(RuntimeError), tracker.tracked_run(EXPERIMENT, run_name="broken"):
        raise RuntimeError("simulated failure <before any metric>")
    failed = tracker.experiment_runs(EXPERIMENT, status="FAILED")[0].info.run_id
    return {
        "uri": uri,
        "root": root,
        "db": root / "mlruns" / "mlflow.db",
        "lstm": lstm.run_id,
        "ccm": ccm["run_id"],
        "failed": failed,
    }


@pytest.fixture(scope="module")
def report(experiment):
    """The report, written through the CLI; the store's bytes before and after."""
    before = hashlib.sha256(experiment["db"].read_bytes()).hexdigest()
    out = experiment["root"] / "site" / "report.html"
    assert main(["report", EXPERIMENT, "--tracking-uri", experiment["uri"], "--out", str(out)]) == 0
    after = hashlib.sha256(experiment["db"].read_bytes()).hexdigest()
    return {"path": out, "html": out.read_text(), "db_before": before, "db_after": after}


def _cells(metrics: dict[str, float], prefix: str) -> list[str]:
    """Table cells as ``oefray compare`` formats them."""
    return [f"<td>{metrics[f'{prefix}{q}']:.4g}</td>" for q in QUANTITIES]


def test_report_holds_runs_numbers_and_figures_from_mlflow(experiment, report):
    tracker = Tracker(experiment["uri"])
    html = report["html"]
    assert report["db_before"] == report["db_after"]  # read-only on the store
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    # nothing is fetched from elsewhere: no scripts, stylesheets, fonts or remote images
    assert "<script" not in html and "<link" not in html and "http://" not in html
    assert "https://" not in html

    lstm = tracker.get_run(experiment["lstm"]).data
    ccm = tracker.get_run(experiment["ccm"]).data
    for run_id in (experiment["lstm"], experiment["ccm"], experiment["failed"]):
        assert f'data-run-id="{run_id}"' in html
    for cell in _cells(lstm.metrics, "test_rmse_") + _cells(ccm.metrics, "test_rmse_"):
        assert cell in html
    assert '<tr class="floor"><td>floor: training mean</td>' in html
    for cell in _cells(lstm.metrics, "floor_rmse_"):
        assert cell in html
    # the failed run is listed with its status and its error, escaped
    failed = html[html.index(f'data-run-id="{experiment["failed"]}"') :]
    assert "FAILED" in failed[:2000]
    assert "simulated failure &lt;before any metric&gt;" in failed[:2000]
    # params and Table 1 of the LSTM run, as logged
    section = html[html.index(f'data-run-id="{experiment["lstm"]}"') :]
    section = section[: section.index("</section>")]
    assert "<dt>seed</dt> = <dd>5</dd>" in section
    assert f"<dd>{lstm.params['train_subjects']}</dd>" in section
    table1 = tracker.download_artifacts(
        experiment["lstm"], "rmse_per_patient.csv", experiment["root"] / "dl"
    )
    avg = table1.read_text().splitlines()[-1].split(",")
    assert avg[0] == "Avg." and f"<td>{float(avg[-1]):.4g}</td>" in section
    # where the disease is: the per-region table of the runs (OEF RMSE per tissue class, lesion
    # contrast) beside the floor and the truth, and each run's per-region tables
    regions = html[html.index("<h2>Where the disease is") :]
    regions = regions[: regions.index("</table>")]
    for data in (lstm, ccm):
        for metric in ("test_rmse_OEF_infarct_core", "test_rmse_OEF_WM"):
            assert f"<td>{data.metrics[metric]:.4g}</td>" in regions
        assert f"<td>{data.metrics['test_lesion_contrast_recovered']:.4g}</td>" in regions
    assert f"<td>{lstm.metrics['floor_rmse_OEF_infarct_core']:.4g}</td>" in regions
    assert f"<td>{lstm.metrics['truth_lesion_cnr']:.4g}</td>" in regions
    assert "Test RMSE per tissue class and in the lesion" in section
    assert "OEF lesion contrast per test scan" in section

    # every figure the runs logged is embedded, and decodes to the very PNG in MLflow
    expected = [
        (run_id, name)
        for run_id in (experiment["lstm"], experiment["ccm"])
        for name in ("training_curves.png", "oef_maps.png")
        if name in tracker.list_artifacts(run_id)
    ]
    assert len(expected) == 3  # curves and maps of the LSTM, maps of CCM
    uris = DATA_URI.findall(html)
    assert len(uris) == len(expected)
    for (run_id, name), data in zip(expected, uris, strict=True):
        png = base64.b64decode(data)
        logged = tracker.download_artifacts(run_id, name, experiment["root"] / "dl" / run_id)
        assert png == logged.read_bytes()
        image = mpimg.imread(io.BytesIO(png), format="png")
        assert image.ndim == 3 and min(image.shape[:2]) > 100 and float(image.std()) > 0.05


def test_report_of_an_unknown_experiment_writes_nothing(experiment, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert (
        main(["report", "no-such-exp", "--tracking-uri", experiment["uri"], "--out", str(out)]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("oefray: error: unknown MLflow experiment 'no-such-exp'")
    assert f"'{EXPERIMENT}'" in err  # names the experiments that exist
    assert list(tmp_path.iterdir()) == []
    # a store that does not exist is reported, not created
    missing = tmp_path / "nowhere" / "mlflow.db"
    assert main(["report", EXPERIMENT, "--tracking-uri", f"sqlite:///{missing}"]) == 1
    assert "no MLflow store here" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_report_renders_in_headless_chromium(report, experiment, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "chromium is not installed, so the report cannot be checked in a browser: "
            "`apt-get install -y chromium` (.ci/run installs it when missing)"
        )
    png, dom = tmp_path / "report.png", tmp_path / "dom.html"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "render_report.sh"), str(report["path"]), str(png)]
        + ["--width", "1280", "--dom", str(dom)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rendered = dom.read_text()
    # the browser decoded every embedded figure (the probe counts naturalWidth > 0)
    n = report["html"].count("<img ")
    assert n == 3 and f'data-images-ok="{n}/{n}"' in rendered
    # the rendered DOM carries the run ids and MLflow's numbers
    tracker = Tracker(experiment["uri"])
    for run_id in (experiment["lstm"], experiment["ccm"], experiment["failed"]):
        assert run_id in rendered
    for run_id in (experiment["lstm"], experiment["ccm"]):
        for cell in _cells(tracker.get_run(run_id).data.metrics, "test_rmse_"):
            assert cell in rendered
    # the screenshot is the page: as wide as the window, as tall as the page, and not blank
    height = int(re.search(r'data-page-height="(\d+)"', rendered).group(1))
    image = mpimg.imread(png)
    assert image.shape[:2] == (min(max(height, 600), 16000), 1280)
    assert height > 2000  # three runs, tables and three figures
    rgb = image[..., :3]
    assert float(rgb.std()) > 0.1
    colours = np.unique((rgb.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200  # text, tables and colour-mapped figures
    top = rgb[:40]  # the page background at the top is white
    assert float(top.mean()) > 0.95
