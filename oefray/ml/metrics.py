"""RMSE of predicted QQ parameters and OEF, per patient and pooled (the paper's Tables 1–3).

Predictions and truth are ``(n, 5)`` arrays of voxels (window anchors) in ``PARAMETERS`` order
(Y, v, R2, S0, chi_nb) and physical units (after ``Standardizer.inverse_transform``). Results come
in the paper's Table 1 column order ``TABLE_COLUMNS`` = S0, R2, Y, v, chi_nb, OEF, with OEF in
percent. Two summaries, which differ when patients have different voxel counts:

- **Avg.** (row of :func:`per_subject_rmse`): the unweighted mean over patients of each patient's
  RMSE, as in the paper's Table 1.
- **pooled** (:func:`pooled_rmse`): one RMSE over all voxels of all patients together.

:func:`per_subject_rmse_from_sums` and :func:`pooled_rmse_from_sums` give the same two from
additive per-patient sums of squared errors (:data:`SUM_QUANTITIES`; e.g. the ``all`` entry of
:func:`oefray.ml.regions.region_sums`), so that patients evaluated apart (on different workers)
make the same table without their voxels ever being gathered.

To write a CSV: ``pandas.DataFrame(columns, index=rows)`` or ``csv.writer`` over ``zip(rows,
*columns.values())``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from oefray.physics.constants import PARAMETERS
from oefray.physics.qq import oef

__all__ = [
    "TABLE_COLUMNS",
    "AVERAGE_ROW",
    "SUM_QUANTITIES",
    "rmse",
    "oef_percent",
    "per_subject_rmse",
    "pooled_rmse",
    "per_subject_rmse_from_sums",
    "pooled_rmse_from_sums",
]

#: Columns of the per-patient RMSE table, in the paper's Table 1 order (OEF in percent).
TABLE_COLUMNS: tuple[str, ...] = ("S0", "R2", "Y", "v", "chi_nb", "OEF")

#: Label of the per-patient mean row.
AVERAGE_ROW: str = "Avg."

#: The quantities of additive sums of squared errors, in order: the five parameters
#: (``PARAMETERS`` order), then OEF (percent).
SUM_QUANTITIES: tuple[str, ...] = (*PARAMETERS, "OEF")


def rmse(pred: npt.ArrayLike, true: npt.ArrayLike, axis: int | None = 0) -> np.ndarray:
    """Root-mean-square error, ``sqrt(mean((pred - true)**2, axis))``, in float64.

    Parameters
    ----------
    pred, true : array_like of one shape, e.g. (n, P)
    axis : int or None
        Axis to average over (None: all).

    Returns
    -------
    ndarray
        The shape of `pred` without `axis` (a 0-d array for None); NaN where that axis is empty.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in shape: {p.shape} vs {t.shape}")
    if p.size == 0:
        return np.full(np.delete(p.shape, axis) if axis is not None else (), np.nan)
    return np.sqrt(np.mean((p - t) ** 2, axis=axis))


def oef_percent(Y: npt.ArrayLike) -> np.ndarray:
    """The physics layer's :func:`~oefray.physics.qq.oef` of `Y` (...), in percent, float64.

    The unit the paper's tables report OEF in: ``100 * (1 - Y / YA)``.
    """
    return 100.0 * oef(np.asarray(Y, dtype=np.float64))


def _table_values(pred: npt.ArrayLike, true: npt.ArrayLike) -> dict[str, np.ndarray]:
    """RMSE per table column for one group of voxels, as 0-d float64 arrays."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(PARAMETERS) or p.shape != t.shape:
        raise ValueError(
            f"pred and true must both be (n, {len(PARAMETERS)}) in PARAMETERS order, "
            f"got {p.shape} and {t.shape}"
        )
    per_parameter = rmse(p, t, axis=0)
    values = {name: per_parameter[PARAMETERS.index(name)] for name in TABLE_COLUMNS[:-1]}
    y = PARAMETERS.index("Y")
    # Closed form: OEF RMSE (%) = 100 * RMSE(Y) / YA (up to rounding).
    values["OEF"] = rmse(oef_percent(p[:, y]), oef_percent(t[:, y]), axis=0)
    return values


def per_subject_rmse(
    pred: npt.ArrayLike, true: npt.ArrayLike, subject: npt.ArrayLike
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Per-patient RMSE table in the paper's Table 1 layout, with an ``Avg.`` row.

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Predicted and true parameters in ``PARAMETERS`` order, physical units.
    subject : array_like of shape (n,)
        Patient label of each voxel.

    Returns
    -------
    rows : list of str
        The patients in order of first appearance, then ``"Avg."``.
    columns : dict of str to ndarray of shape (len(rows),), float64
        For each of ``TABLE_COLUMNS`` (S0, R2, Y, v, chi_nb, OEF in %), the RMSE over each
        patient's voxels; the last entry is the unweighted mean over patients.
    """
    labels = np.asarray(subject).astype(str)
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if labels.ndim != 1 or labels.shape[0] != p.shape[0]:
        raise ValueError(f"subject must be (n,) with n = {p.shape[0]}, got shape {labels.shape}")
    unique, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rows = [str(unique[k]) for k in order]
    table = {name: np.empty(len(rows) + 1) for name in TABLE_COLUMNS}
    for r, k in enumerate(order):
        members = inverse == k
        for name, value in _table_values(p[members], t[members]).items():
            table[name][r] = value
    for name in TABLE_COLUMNS:
        table[name][-1] = np.mean(table[name][:-1]) if rows else np.nan
    return rows + [AVERAGE_ROW], table


def pooled_rmse(pred: npt.ArrayLike, true: npt.ArrayLike) -> dict[str, float]:
    """RMSE over all voxels of all patients together, per ``TABLE_COLUMNS`` entry.

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Predicted and true parameters in ``PARAMETERS`` order, physical units.

    Returns
    -------
    dict of str to float
        Keys ``TABLE_COLUMNS`` (S0, R2, Y, v, chi_nb, OEF in %).
    """
    return {name: float(value) for name, value in _table_values(pred, true).items()}


def _sums_rmse(sums: Mapping[str, Any]) -> dict[str, float]:
    """RMSE per ``TABLE_COLUMNS`` entry from one group's ``{"n": ..., "sse": [...]}``."""
    n = int(sums["n"])
    sse = np.asarray(sums["sse"], dtype=np.float64)
    if sse.shape != (len(SUM_QUANTITIES),):
        raise ValueError(
            f"sse must hold {len(SUM_QUANTITIES)} sums ({', '.join(SUM_QUANTITIES)}), "
            f"got shape {sse.shape}"
        )
    if n <= 0:
        raise ValueError(f"a group of sums needs n >= 1 voxels, got {n}")
    values = dict(zip(SUM_QUANTITIES, np.sqrt(sse / n).tolist(), strict=True))
    return {name: values[name] for name in TABLE_COLUMNS}


def per_subject_rmse_from_sums(
    sums: Mapping[str, Mapping[str, Any]],
) -> tuple[list[str], dict[str, np.ndarray]]:
    """:func:`per_subject_rmse` from each patient's sums of squared errors.

    Parameters
    ----------
    sums : mapping of str to mapping
        By patient, in table order: ``{"n": voxels, "sse": [...]}``, the squared errors summed
        over the patient's voxels, one per :data:`SUM_QUANTITIES` entry (the parameters in
        ``PARAMETERS`` order, then OEF in percent). A patient without voxels is left out.

    Returns
    -------
    rows, columns
        As :func:`per_subject_rmse`: each patient's RMSE ``sqrt(sse / n)``, then the ``Avg.``
        row, the unweighted mean over patients.
    """
    rows = [label for label, s in sums.items() if int(s["n"]) > 0]
    table = {name: np.empty(len(rows) + 1) for name in TABLE_COLUMNS}
    for r, label in enumerate(rows):
        for name, value in _sums_rmse(sums[label]).items():
            table[name][r] = value
    for name in TABLE_COLUMNS:
        table[name][-1] = np.mean(table[name][:-1]) if rows else np.nan
    return rows + [AVERAGE_ROW], table


def pooled_rmse_from_sums(sums: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """:func:`pooled_rmse` from the patients' sums (as :func:`per_subject_rmse_from_sums`):
    ``sqrt(sum of sse / sum of n)`` over every patient.

    Raises
    ------
    ValueError
        When no patient has a voxel.
    """
    n = sum(int(s["n"]) for s in sums.values())
    sse = np.zeros(len(SUM_QUANTITIES))
    for s in sums.values():
        if int(s["n"]) > 0:
            sse += np.asarray(s["sse"], dtype=np.float64)
    return _sums_rmse({"n": n, "sse": sse})
