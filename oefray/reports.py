"""Tables and figures of the paper's kind (DESIGN.md §1.6 and §5, "Reports").

- :func:`rmse_table_frame` / :func:`write_rmse_csv`: per-patient RMSE in the layout of Table 1.
- :func:`plot_training_curves`: Fig. 3, loss and validation OEF RMSE per epoch.
- :func:`plot_oef_maps`: Fig. 4, OEF maps of the test subjects, truth vs prediction, with RMSE.

Every function is pure: arrays in, one file out (written to a temporary name, then renamed).
Figures use matplotlib's object-oriented API on an Agg canvas created inside the function, so
no backend is selected at import time, no global pyplot state is touched and no figure leaks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from oefray.io.files import atomic_path
from oefray.physics.constants import YA

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Columns of Table 1 (per-patient RMSE), in the paper's order; OEF in percent.
TABLE1_COLUMNS: tuple[str, ...] = ("S0", "R2", "Y", "v", "chi_nb", "OEF")

#: Index label of the row that averages the subjects.
AVERAGE_ROW = "Avg."

_DPI = 150


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------


def rmse_table_frame(rows: Sequence[str], columns: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per-patient RMSE in the layout of the paper's Table 1.

    Parameters
    ----------
    rows : sequence of str, length n_subjects
        Subject labels (e.g. ``P6``), one per table row.
    columns : mapping of str to (n_subjects,) array-like of float
        RMSE per subject, keyed by ``S0, R2, Y, v, chi_nb`` (units of each parameter: S0
        echo-1-normalised, R2 in s^-1, Y and v fractions, chi_nb in ppm) and ``OEF`` (percent).
        ``OEF`` may be left out; it is then derived as ``100 * RMSE(Y) / Ya`` (exact, since
        OEF = 100 (1 - Y/Ya) is affine in Y).

    Returns
    -------
    pandas.DataFrame of shape (n_subjects + 1, 6)
        Index ``subject``: the labels, then ``"Avg."`` (mean over the subjects); columns exactly
        ``S0, R2, Y, v, chi_nb, OEF``; float64.

    Raises
    ------
    ValueError
        On no rows, repeated labels, a missing or unknown column, or a column of the wrong length.
    """
    labels = [str(r) for r in rows]
    if not labels:
        raise ValueError("rmse_table_frame needs at least one subject row")
    if len(set(labels)) != len(labels) or AVERAGE_ROW in labels:
        raise ValueError(f"subject labels must be unique and not {AVERAGE_ROW!r}: {labels}")
    unknown = sorted(set(columns) - set(TABLE1_COLUMNS))
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; Table 1 has {', '.join(TABLE1_COLUMNS)}")
    data: dict[str, np.ndarray] = {}
    for name in TABLE1_COLUMNS:
        if name in columns:
            values = np.asarray(columns[name], dtype=np.float64)
        elif name == "OEF" and "Y" in columns:
            values = 100.0 * np.asarray(columns["Y"], dtype=np.float64) / YA
        else:
            raise ValueError(f"column {name!r} is missing; Table 1 has {', '.join(TABLE1_COLUMNS)}")
        if values.shape != (len(labels),):
            raise ValueError(
                f"column {name!r} has shape {values.shape}, expected ({len(labels)},) "
                "(one value per subject)"
            )
        data[name] = np.append(values, values.mean())
    index = pd.Index([*labels, AVERAGE_ROW], name="subject")
    return pd.DataFrame(data, index=index, columns=list(TABLE1_COLUMNS))


def write_rmse_csv(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a Table 1 frame (see :func:`rmse_table_frame`) as CSV, atomically.

    The first column is ``subject``; floats keep full precision (``repr``), so the CSV reads back
    to the same numbers.

    Returns
    -------
    Path
        The written file.
    """
    missing = [c for c in TABLE1_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a Table 1 frame: missing column(s) {missing}")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=True, index_label="subject", lineterminator="\n")
    return Path(path)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor="white")
    return Path(path)


def plot_training_curves(
    history: Mapping[str, Sequence[float]], path: str | os.PathLike[str]
) -> Path:
    """Training curves in the style of the paper's Fig. 3, as PNG.

    Left: training ``loss`` and ``val_loss`` (Huber, on scaled targets) per epoch, with the best
    validation epoch marked. Right: validation OEF RMSE (%) per epoch (``val_rmse_OEF``).

    Parameters
    ----------
    history : mapping of str to sequence of float
        Per-epoch values as in a Keras ``History.history``; needs ``loss``; ``val_loss`` and
        ``val_rmse_OEF`` are drawn when present (the right panel says so when absent).
    path : path-like
        Destination PNG.

    Returns
    -------
    Path
        The written file.
    """
    if "loss" not in history or len(history["loss"]) == 0:
        raise ValueError("history needs a non-empty 'loss' series")
    fig = _new_figure(11.0, 4.2)
    ax_loss, ax_oef = fig.subplots(1, 2)
    loss = np.asarray(history["loss"], dtype=np.float64)
    epochs = np.arange(1, loss.size + 1)
    ax_loss.plot(epochs, loss, marker=".", label="training loss")
    if "val_loss" in history and len(history["val_loss"]):
        val = np.asarray(history["val_loss"], dtype=np.float64)
        val_epochs = np.arange(1, val.size + 1)
        ax_loss.plot(val_epochs, val, marker=".", label="validation loss")
        if np.any(np.isfinite(val)):
            best = int(np.nanargmin(val))
            ax_loss.axvline(
                val_epochs[best], color="grey", ls="--", lw=1, label=f"best epoch {best + 1}"
            )
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("Huber loss")
    ax_loss.set_title("Loss")
    if np.all(loss[np.isfinite(loss)] > 0):
        ax_loss.set_yscale("log")
    ax_loss.grid(True, alpha=0.3)
    ax_loss.legend()

    if "val_rmse_OEF" in history and len(history["val_rmse_OEF"]):
        rmse = np.asarray(history["val_rmse_OEF"], dtype=np.float64)
        r_epochs = np.arange(1, rmse.size + 1)
        ax_oef.plot(r_epochs, rmse, marker=".", color="tab:red", label="validation")
        if np.any(np.isfinite(rmse)):
            best = int(np.nanargmin(rmse))
            ax_oef.annotate(
                f"min {rmse[best]:.2f} % (epoch {best + 1})",
                xy=(r_epochs[best], rmse[best]),
                xytext=(0.45, 0.85),
                textcoords="axes fraction",
                arrowprops={"arrowstyle": "->", "color": "grey"},
            )
        ax_oef.legend()
    else:
        ax_oef.text(0.5, 0.5, "no val_rmse_OEF recorded", ha="center", va="center")
    ax_oef.set_xlabel("epoch")
    ax_oef.set_ylabel("OEF RMSE (%)")
    ax_oef.set_title("Validation OEF RMSE")
    ax_oef.grid(True, alpha=0.3)
    for ax in (ax_loss, ax_oef):
        ax.set_xlim(0.5, max(epochs[-1], 2) + 0.5)
    fig.tight_layout()
    return _save_png(fig, path)


def _draw_slice(ax, data, cmap, vmin: float, vmax: float, title: str, fontsize: int):
    """One map slice ``[x, y]`` drawn with x to the right and y up, NaN as black background."""
    image = ax.imshow(
        np.ma.masked_invalid(np.asarray(data, dtype=np.float64).T),
        origin="lower",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    ax.set_facecolor("black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize)
    return image


def _check_map_panels(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    """The panels of :func:`plot_oef_maps` as ``(label, truth, prediction, rmse)`` of float64.

    Raises
    ------
    ValueError
        On no panels, or a slice that is not 2-D or whose truth and prediction shapes differ.
    """
    if len(panels) == 0:
        raise ValueError("plot_oef_maps needs at least one subject panel")
    slices = []
    for label, truth, pred, rmse in panels:
        t = np.asarray(truth, dtype=np.float64)
        p = np.asarray(pred, dtype=np.float64)
        if t.ndim != 2 or t.shape != p.shape:
            raise ValueError(
                f"subject {label}: truth and prediction must be 2-D of one shape, "
                f"got {t.shape} and {p.shape}"
            )
        slices.append((str(label), t, p, float(rmse)))
    return slices


@dataclass(frozen=True)
class _MapLayout:
    """Sizes (inches) of :func:`plot_oef_maps`' grid: one row of two panels per subject."""

    panel_w: float
    panel_h: float
    gap_h: float  # between rows (room for the titles)
    top_h: float
    bottom_h: float
    fig_h: float

    @classmethod
    def of(cls, shape: tuple[int, ...], n_rows: int) -> _MapLayout:
        """The layout of ``n_rows`` rows of two panels, each a slice of ``shape`` (M, N)."""
        m, n = shape
        panel_w = 2.6
        panel_h = float(np.clip(panel_w * m / n, 1.2, 4.0)) if n else panel_w
        gap_h, top_h, bottom_h = 0.4, 0.35, 0.1
        fig_h = n_rows * panel_h + (n_rows - 1) * gap_h + top_h + bottom_h
        return cls(panel_w, panel_h, gap_h, top_h, bottom_h, fig_h)


def _print_rmse(ax, rmse: float) -> None:
    """The subject's OEF RMSE (percent), white on black, in the panel's lower left corner."""
    ax.text(
        0.03,
        0.04,
        f"RMSE {rmse:.2f} %",
        transform=ax.transAxes,
        color="white",
        fontsize=9,
        fontweight="bold",
        bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "edgecolor": "none"},
    )


def _place_maps(fig: Figure, layout: _MapLayout, image) -> None:
    """Fit the panels to ``layout`` and put the shared colour bar of ``image`` on their right."""
    fig.subplots_adjust(
        left=0.03,
        right=0.80,
        top=1 - layout.top_h / layout.fig_h,
        bottom=layout.bottom_h / layout.fig_h,
        wspace=0.05,
        hspace=layout.gap_h / layout.panel_h,
    )
    bar_h = min(0.8, 3.0 / layout.fig_h)  # a colour bar of at most 3 inches, centred
    cax = fig.add_axes((0.84, 0.5 - bar_h / 2, 0.035, bar_h))
    fig.colorbar(image, cax=cax, label="OEF (%)")


def plot_oef_maps(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
    path: str | os.PathLike[str],
    *,
    vmin: float = 0.0,
    vmax: float = 60.0,
    cmap: str = "jet",
    outlines: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """OEF maps in the style of the paper's Fig. 4: truth vs prediction per test subject, as PNG.

    One row per subject: ground-truth OEF (left), predicted OEF (right) with the subject's OEF
    RMSE printed on it; one colour scale shared by every panel; NaN (outside the brain) drawn as
    black background.

    Parameters
    ----------
    panels : sequence of (label, truth, prediction, rmse)
        ``label`` the subject label (str); ``truth`` and ``prediction`` (M, N) arrays of OEF in
        percent on the same slice (e.g. the mid axial slice ``volume[:, :, Z // 2]``, indexed
        ``[x, y]``), NaN outside the brain; ``rmse`` that subject's OEF RMSE in percent.
    path : path-like
        Destination PNG.
    vmin, vmax : float
        Colour scale limits, percent.
    cmap : str
        Matplotlib colour map name.
    outlines : mapping of str to (M, N) bool array, optional
        A lesion mask on the slice of a subject (by label), drawn as a white outline on both of
        its panels.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        On no panels, or a slice that is not 2-D or whose truth and prediction shapes differ.
    """
    slices = _check_map_panels(panels)
    outlines = outlines or {}
    import matplotlib as mpl

    colours = mpl.colormaps[cmap].with_extremes(bad="black")
    # Image [x, y] drawn with x to the right and y up (transpose + origin="lower").
    layout = _MapLayout.of(slices[0][1].shape, len(slices))
    fig = _new_figure(2 * layout.panel_w + 1.3, layout.fig_h)
    axes = np.atleast_2d(fig.subplots(len(slices), 2, squeeze=False))
    image = None
    for row, (label, t, p, rmse) in enumerate(slices):
        for col, (data, title) in enumerate(((t, "truth"), (p, "prediction"))):
            image = _draw_slice(axes[row, col], data, colours, vmin, vmax, f"{label} {title}", 9)
            outline = outlines.get(label)
            if outline is not None and np.any(outline):
                # the mask's edge, in the slice's drawing convention (transposed, origin lower)
                axes[row, col].contour(
                    np.asarray(outline, dtype=float).T, levels=[0.5], colors="white",
                    linewidths=0.8, origin="lower",
                )  # fmt: skip
        _print_rmse(axes[row, 1], rmse)
    assert image is not None  # at least one panel was drawn
    _place_maps(fig, layout, image)
    return _save_png(fig, path)


def plot_uncertainty_maps(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    vmax_mean: float = 60.0,
) -> Path:
    """Ensemble OEF per test subject: mean over seed repeats (left) and their spread (right), PNG.

    Parameters
    ----------
    panels : sequence of (label, mean, std)
        ``mean`` and ``std`` (M, N) slices of OEF in percent, NaN outside the brain.
    path : path-like
        Destination PNG.
    vmax_mean : float
        Upper limit of the mean's colour scale (percent); the spread's scale is its own maximum.
    """
    if len(panels) == 0:
        raise ValueError("plot_uncertainty_maps needs at least one subject panel")
    import matplotlib as mpl

    stds = [np.asarray(s, dtype=np.float64) for _, _, s in panels]
    top = max(float(np.nanmax(s)) if np.isfinite(s).any() else 0.0 for s in stds) or 1.0
    fig = _new_figure(7.0, 2.8 * len(panels) + 0.4)
    axes = np.atleast_2d(fig.subplots(len(panels), 2, squeeze=False))
    scales = (
        ("ensemble mean OEF (%)", mpl.colormaps["jet"].with_extremes(bad="black"), 0.0, vmax_mean),
        ("spread across seeds (%)", mpl.colormaps["magma"].with_extremes(bad="black"), 0.0, top),
    )
    for row, (label, mean, std) in enumerate(panels):
        for col, data in enumerate((mean, std)):
            title, cmap, lo, hi = scales[col]
            ax = axes[row, col]
            image = _draw_slice(ax, data, cmap, lo, hi, f"{label}: {title}", 8)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    return _save_png(fig, path)


def table_to_dict(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """A table frame (rows: subjects or quantities) as ``{row: {column: value}}`` for JSON."""
    return {str(k): {str(c): float(v) for c, v in row.items()} for k, row in frame.iterrows()}
