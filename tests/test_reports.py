"""Report tables and figures: Table 1 CSV layout, Fig. 3 curves and Fig. 4 maps as PNG."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from oefray import reports
from oefray.physics.constants import YA

TEST_SUBJECTS = ("P6", "P11", "P12", "P13", "P15", "P17", "P23", "P26", "P27", "P31")


def _columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "S0": rng.uniform(0.004, 0.007, n),
        "R2": rng.uniform(0.5, 0.7, n),
        "Y": rng.uniform(0.045, 0.055, n),
        "v": rng.uniform(0.003, 0.004, n),
        "chi_nb": rng.uniform(0.004, 0.006, n),
    }


@pytest.mark.parametrize("n", [1, 10])
def test_rmse_csv_has_table1_layout_and_average(tmp_path, n):
    rng = np.random.default_rng(n)
    cols = _columns(n, rng)
    cols["OEF"] = 100 * cols["Y"] / YA
    df = reports.rmse_table_frame(list(TEST_SUBJECTS[:n]), cols)
    path = reports.write_rmse_csv(df, tmp_path / "out" / "rmse.csv")
    back = pd.read_csv(path, index_col="subject")
    assert list(back.columns) == ["S0", "R2", "Y", "v", "chi_nb", "OEF"]
    assert list(back.index) == [*TEST_SUBJECTS[:n], "Avg."]
    for name, values in cols.items():
        np.testing.assert_allclose(back.loc[list(TEST_SUBJECTS[:n]), name], values, rtol=1e-15)
        np.testing.assert_allclose(back.loc["Avg.", name], values.mean(), rtol=1e-12)
    assert not list(path.parent.glob(".*tmp"))


def test_oef_column_derived_from_y_when_absent():
    cols = _columns(3, np.random.default_rng(0))
    df = reports.rmse_table_frame(["P6", "P11", "P12"], cols)
    np.testing.assert_allclose(df["OEF"], 100 * df["Y"] / YA, rtol=1e-12)


@pytest.mark.parametrize(
    ("rows", "change", "match"),
    [
        ([], None, "at least one"),
        (["P6", "P6"], None, "unique"),
        (["P6", "P11"], ("extra", np.zeros(2)), "unknown column"),
        (["P6", "P11"], ("R2", None), "missing"),
        (["P6", "P11"], ("v", np.zeros(3)), "shape"),
    ],
)
def test_rmse_table_rejects_bad_input(rows, change, match):
    cols = _columns(max(len(rows), 1), np.random.default_rng(1))
    cols = {k: v[: len(rows)] for k, v in cols.items()}
    if change is not None:
        key, value = change
        if value is None:
            del cols[key]
        else:
            cols[key] = value
    with pytest.raises(ValueError, match=match):
        reports.rmse_table_frame(rows, cols)


def _png_size(path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 10_000, path.stat().st_size
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.std() > 0.01  # not a blank canvas
    return image.shape[1], image.shape[0]


@pytest.mark.parametrize("epochs", [1, 40])
def test_training_curves_png(tmp_path, epochs):
    t = np.arange(epochs)
    history = {
        "loss": list(0.3 * np.exp(-t / 10) + 0.02),
        "val_loss": list(0.32 * np.exp(-t / 10) + 0.025),
        "val_rmse_OEF": list(12 * np.exp(-t / 8) + 5.2),
    }
    width, height = _png_size(reports.plot_training_curves(history, tmp_path / "curves.png"))
    assert width > 1.5 * height > 0  # two panels side by side


def test_training_curves_without_validation(tmp_path):
    width, _ = _png_size(reports.plot_training_curves({"loss": [1.0, 0.5]}, tmp_path / "c.png"))
    assert width > 0
    with pytest.raises(ValueError, match="loss"):
        reports.plot_training_curves({"val_loss": [1.0]}, tmp_path / "d.png")


def _brain_slice(rng: np.random.Generator, shape=(48, 56)) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    inside = x**2 / 0.8 + y**2 / 0.9 < 1
    truth = np.where(inside, 38 + 6 * np.sin(3 * x) + rng.normal(0, 2, shape), np.nan)
    return truth, truth + np.where(inside, rng.normal(0, 5, shape), np.nan)


@pytest.mark.parametrize("n", [1, 10])
def test_oef_maps_png_one_row_per_subject(tmp_path, n):
    rng = np.random.default_rng(n)
    panels = []
    for label in TEST_SUBJECTS[:n]:
        truth, pred = _brain_slice(rng)
        rmse = float(np.sqrt(np.nanmean((truth - pred) ** 2)))
        panels.append((label, truth, pred, rmse))
    width, height = _png_size(reports.plot_oef_maps(panels, tmp_path / f"maps{n}.png"))
    if n == 10:
        assert height > 2.5 * width  # rows stack downwards
    # the background outside the brain is black, the brain coloured
    image = mpimg.imread(tmp_path / f"maps{n}.png")
    assert (image[..., :3].sum(axis=-1) < 0.05).mean() > 0.02


def test_oef_maps_reject_mismatched_slices(tmp_path):
    with pytest.raises(ValueError, match="one shape"):
        reports.plot_oef_maps([("P6", np.zeros((4, 5)), np.zeros((5, 4)), 1.0)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one"):
        reports.plot_oef_maps([], tmp_path / "x.png")


def test_import_selects_no_backend_and_loads_no_frameworks():
    import subprocess
    import sys

    code = (
        "import sys, oefray.reports\n"
        "mods = ['matplotlib.pyplot', 'matplotlib.backends', 'ray', 'mlflow', 'keras', 'tensorflow']\n"
        "print(' '.join(str(int(m in sys.modules)) for m in mods))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0"] * 6


def test_oef_maps_outline_a_lesion_in_white(tmp_path):
    """A lesion outline is drawn (white pixels appear where none were), and only where asked."""
    rng = np.random.default_rng(4)
    truth, pred = _brain_slice(rng)
    lesion = np.zeros(truth.shape, bool)
    lesion[10:20, 20:30] = True
    plain = mpimg.imread(reports.plot_oef_maps([("P31", truth, pred, 5.0)], tmp_path / "a.png"))
    drawn = mpimg.imread(
        reports.plot_oef_maps(
            [("P31", truth, pred, 5.0)], tmp_path / "b.png", outlines={"P31": lesion}
        )
    )
    white = lambda image: (image[..., :3].min(axis=-1) > 0.95).sum()  # noqa: E731
    assert white(drawn) > white(plain) + 50
