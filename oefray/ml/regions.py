"""Accuracy where tissue departs from normal: RMSE per tissue class, and lesion contrast.

An OEF map is read where OEF is abnormal (a stroke's infarct core, low OEF, and the penumbra
around it, high OEF). A pooled RMSE over the brain is dominated by normal tissue, where the
population prior is already close to the best a voxel-wise estimator does; these summaries say
what a reader of the map sees:

- :func:`per_region_rmse`: RMSE of every parameter and of OEF within each tissue class.
- :func:`mirror_region`: the lesion reflected across the mid-sagittal plane (world ``x`` =
  the brain's midline), restricted to normal tissue: the contralateral reference region.
- :func:`scan_mirror`: the same for one scan's voxels given as C-order indices.
- :func:`region_sums` / :func:`rmse_from_sums` / :func:`floor_from_sums`: the same RMSEs as
  :func:`per_region_rmse` from additive sums (squared errors, and the truth's sums and sums of
  squares), so that scans evaluated apart (on different workers) pool exactly, the floor of any
  training mean included.
- :func:`scan_region_sums` / :func:`scan_contrast` / :func:`report_from_sums`: one scan's sums
  (its tissue classes, ``lesion``, the pooled ``all``) and lesion contrast, computed where the
  scan is (a worker), and the :class:`RegionReport` of many scans from them: the same report as
  :func:`evaluate_regions` over their voxels gathered.
- :func:`lesion_contrast`: for a map and the truth on the same regions,
  ``CNR = |mean(lesion) - mean(mirror)| / sd(mirror)`` and the **contrast recovered**
  ``(mean_pred(lesion) - mean_pred(mirror)) / (mean_true(lesion) - mean_true(mirror))`` (1: the
  full contrast; 0: a flat map; CNR alone rewards a flat map, whose sd is small).

Pure NumPy: voxel arrays in, numbers out (the volumes of :func:`mirror_region` are (X, Y, Z)
boolean arrays with the grid's 4x4 voxel-to-world affine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oefray.ml.metrics import SUM_QUANTITIES, oef_percent, rmse
from oefray.physics.constants import PARAMETERS

__all__ = [
    "LesionContrast",
    "RegionReport",
    "evaluate_regions",
    "lesion_contrast",
    "mirror_region",
    "per_region_rmse",
    "floor_from_sums",
    "merge_sums",
    "region_sums",
    "report_from_sums",
    "rmse_from_sums",
    "scan_contrast",
    "scan_mirror",
    "scan_region_sums",
    "tissue_names",
]

#: The region of every voxel in :func:`scan_region_sums` (the pooled sums).
POOLED_REGION = "all"
#: The region of the lesion mask's voxels.
LESION_REGION = "lesion"


def per_region_rmse(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    region: npt.ArrayLike,
    names: Mapping[int, str],
) -> dict[str, dict[str, float]]:
    """RMSE of each parameter and of OEF (percent) within each region.

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Parameters in ``PARAMETERS`` order (Y, v, R2, S0, chi_nb), physical units.
    region : array_like of shape (n,), int
        Each voxel's region code (e.g. :class:`oefray.physics.anatomy.Tissue`).
    names : mapping of int to str
        The regions to report, by code; a region without voxels is left out.

    Returns
    -------
    dict of str to dict of str to float
        ``{region name: {"Y": ..., "v": ..., "R2": ..., "S0": ..., "chi_nb": ..., "OEF": ...,
        "voxels": n}}``, in the order of ``names``.
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    codes = np.asarray(region)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != len(PARAMETERS):
        raise ValueError(f"pred and true must be (n, {len(PARAMETERS)}), got {p.shape}, {t.shape}")
    if codes.shape != (p.shape[0],):
        raise ValueError(f"region must be (n,) with n = {p.shape[0]}, got {codes.shape}")
    y = PARAMETERS.index("Y")
    out: dict[str, dict[str, float]] = {}
    for code, name in names.items():
        sel = codes == code
        n = int(sel.sum())
        if n == 0:
            continue
        row = {k: float(v) for k, v in zip(PARAMETERS, rmse(p[sel], t[sel]), strict=True)}
        row["OEF"] = float(rmse(oef_percent(p[sel, y]), oef_percent(t[sel, y])))
        row["voxels"] = n
        out[name] = row
    return out


def _with_oef(x: np.ndarray) -> np.ndarray:
    """(n, 5) parameters -> (n, 6): the parameters, then OEF in percent."""
    return np.column_stack([x, oef_percent(x[:, PARAMETERS.index("Y")])])


def region_sums(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    region: npt.ArrayLike,
    names: Mapping[int, str],
    *,
    pooled: str | None = "all",
) -> dict[str, dict[str, list[float] | int]]:
    """Additive per-region sums of a method's errors and of the truth (JSON-able).

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Parameters (``PARAMETERS`` order), physical units.
    region : array_like of shape (n,), int
        Region codes.
    names : mapping of int to str
        The regions to sum, by code; a region without voxels is left out.
    pooled : str or None
        Also the sums over every voxel, under this name.

    Returns
    -------
    dict
        ``{region: {"n": voxels, "sse": [...], "sum": [...], "sumsq": [...]}}``, each list over
        :data:`SUM_QUANTITIES`: squared errors of ``pred``, and the truth's sums and squares.
    """
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    codes = np.asarray(region)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != len(PARAMETERS):
        raise ValueError(f"pred and true must be (n, {len(PARAMETERS)}), got {p.shape}, {t.shape}")
    if codes.shape != (p.shape[0],):
        raise ValueError(f"region must be (n,) with n = {p.shape[0]}, got {codes.shape}")
    p6, t6 = _with_oef(p), _with_oef(t)
    groups = [(name, codes == code) for code, name in names.items()]
    if pooled is not None:
        groups.append((pooled, np.ones(len(codes), bool)))
    out: dict[str, dict[str, list[float] | int]] = {}
    for name, sel in groups:
        if not sel.any():
            continue
        out[name] = {
            "n": int(sel.sum()),
            "sse": ((p6[sel] - t6[sel]) ** 2).sum(axis=0).tolist(),
            "sum": t6[sel].sum(axis=0).tolist(),
            "sumsq": (t6[sel] ** 2).sum(axis=0).tolist(),
        }
    return out


def merge_sums(*parts: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, object]]:
    """The sums of disjoint voxel sets (:func:`region_sums` results) added region by region."""
    out: dict[str, dict[str, object]] = {}
    for part in parts:
        for name, s in part.items():
            if name not in out:
                out[name] = {k: (list(v) if isinstance(v, list) else v) for k, v in s.items()}
                continue
            acc = out[name]
            acc["n"] = int(acc["n"]) + int(s["n"])  # type: ignore[call-overload]
            for k in ("sse", "sum", "sumsq"):
                acc[k] = (np.asarray(acc[k]) + np.asarray(s[k])).tolist()
    return out


def rmse_from_sums(sums: Mapping[str, Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """:func:`per_region_rmse`'s result from :func:`region_sums`."""
    return {
        name: {
            **dict(zip(SUM_QUANTITIES, np.sqrt(np.asarray(s["sse"]) / int(s["n"])), strict=True)),
            "voxels": int(s["n"]),  # type: ignore[call-overload]
        }
        for name, s in sums.items()
    }


def floor_from_sums(
    sums: Mapping[str, Mapping[str, object]], mean: npt.ArrayLike
) -> dict[str, dict[str, float]]:
    """The floor's per-region RMSE (``mean``, (5,) parameters, predicted everywhere) from the
    truth's sums: ``sum (t - m)^2 = sumsq - 2 m sum + n m^2``."""
    m = _with_oef(np.asarray(mean, np.float64).reshape(1, -1))[0]
    out = {}
    for name, s in sums.items():
        n = int(s["n"])  # type: ignore[call-overload]
        sse = np.asarray(s["sumsq"]) - 2 * m * np.asarray(s["sum"]) + n * m**2
        rmse = np.sqrt(np.clip(sse, 0, None) / n)
        out[name] = {**dict(zip(SUM_QUANTITIES, rmse.tolist(), strict=True)), "voxels": n}
    return out


def mirror_region(
    lesion: npt.ArrayLike,
    normal: npt.ArrayLike,
    affine: npt.ArrayLike,
    midline_x: float | None = None,
) -> np.ndarray:
    """The lesion reflected across the mid-sagittal plane, within normal tissue.

    Parameters
    ----------
    lesion, normal : array_like of shape (X, Y, Z), bool
        The lesion, and the normal tissue the mirror region may cover.
    affine : array_like of shape (4, 4)
        Voxel-to-world (mm, RAS: world ``x`` runs left-right).
    midline_x : float, optional
        World ``x`` of the mid-sagittal plane; by default the mean ``x`` of the brain
        (``lesion | normal``), which is the midline of a head centred in its field of view.

    Returns
    -------
    ndarray of shape (X, Y, Z), bool
        Voxels of ``normal`` whose reflection ``x -> 2 midline_x - x`` lands in the lesion (the
        reflection of every normal voxel is rounded to the nearest voxel of the grid).

    Notes
    -----
    The reflection is taken from the normal side (each normal voxel looks up its mirror image),
    so the region has no holes where the grid's spacing or an oblique affine would leave some.
    """
    les = np.asarray(lesion, dtype=bool)
    ok = np.asarray(normal, dtype=bool) & ~les
    if les.shape != ok.shape or les.ndim != 3:
        raise ValueError(
            f"lesion and normal must be one (X, Y, Z) shape, got {les.shape}, {ok.shape}"
        )
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {a.shape}")
    if not les.any():
        return np.zeros_like(les)
    if midline_x is None:
        brain = np.argwhere(les | ok)
        midline_x = float((brain @ a[:3, :3].T + a[:3, 3])[:, 0].mean())
    ijk = np.argwhere(ok)
    world = ijk @ a[:3, :3].T + a[:3, 3]
    world[:, 0] = 2.0 * midline_x - world[:, 0]
    back = np.rint((world - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T).astype(np.int64)
    inside = np.all((back >= 0) & (back < np.asarray(les.shape)), axis=1)
    hit = np.zeros(len(ijk), dtype=bool)
    hit[inside] = les[tuple(back[inside].T)]
    out = np.zeros_like(les)
    out[tuple(ijk[hit].T)] = True
    return out


def scan_mirror(
    idx: npt.ArrayLike,
    lesion: npt.ArrayLike,
    abnormal: npt.ArrayLike,
    shape: Sequence[int],
    affine: npt.ArrayLike,
) -> np.ndarray:
    """:func:`mirror_region` of one scan whose voxels are given by their C-order indices.

    Parameters
    ----------
    idx : array_like of shape (n,), int
        The voxels' flat indices in the scan's grid ``shape``.
    lesion, abnormal : array_like of shape (n,), bool
        Which voxels are the lesion, and which are not normal tissue (the lesion included).
    shape : sequence of 3 int
    affine : array_like of shape (4, 4)

    Returns
    -------
    ndarray of shape (n,), bool
        Which of the voxels lie in the lesion's mirror region.
    """
    idx = np.asarray(idx, dtype=np.int64)
    les, bad = np.asarray(lesion, dtype=bool), np.asarray(abnormal, dtype=bool)
    volume = tuple(int(n) for n in shape)
    les_vol = np.zeros(volume, bool).ravel()
    normal_vol = np.zeros(volume, bool).ravel()
    les_vol[idx[les]] = True
    normal_vol[idx[~(bad | les)]] = True
    mirror = mirror_region(les_vol.reshape(volume), normal_vol.reshape(volume), affine)
    return mirror.ravel()[idx]


@dataclass(frozen=True)
class LesionContrast:
    """A lesion's contrast against its mirror region, in a map and in the truth.

    Attributes
    ----------
    cnr, cnr_true : float
        ``|mean(lesion) - mean(mirror)| / sd(mirror)`` of the map and of the truth.
    recovered : float
        The map's lesion-minus-mirror difference over the truth's (1: all of it; NaN when the
        truth has no contrast).
    difference, difference_true : float
        ``mean(lesion) - mean(mirror)`` of the map and of the truth.
    lesion_voxels, mirror_voxels : int
    """

    cnr: float
    cnr_true: float
    recovered: float
    difference: float
    difference_true: float
    lesion_voxels: int
    mirror_voxels: int

    def to_dict(self) -> dict[str, float]:
        return {
            "cnr": self.cnr,
            "cnr_true": self.cnr_true,
            "contrast_recovered": self.recovered,
            "difference": self.difference,
            "difference_true": self.difference_true,
            "lesion_voxels": self.lesion_voxels,
            "mirror_voxels": self.mirror_voxels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, float]) -> LesionContrast:
        """The contrast of its :meth:`to_dict` form."""
        return cls(
            cnr=float(d["cnr"]),
            cnr_true=float(d["cnr_true"]),
            recovered=float(d["contrast_recovered"]),
            difference=float(d["difference"]),
            difference_true=float(d["difference_true"]),
            lesion_voxels=int(d["lesion_voxels"]),
            mirror_voxels=int(d["mirror_voxels"]),
        )


def _cnr(values: np.ndarray, lesion: np.ndarray, mirror: np.ndarray) -> tuple[float, float]:
    both = values[lesion | mirror]
    # a map constant over both regions has no contrast: exactly 0, not the rounding of two means
    flat = both.size > 0 and both.min() == both.max()
    difference = 0.0 if flat else float(values[lesion].mean() - values[mirror].mean())
    sd = float(values[mirror].std(ddof=1)) if mirror.sum() > 1 else np.nan
    return difference, abs(difference) / sd if sd > 0 else np.nan


def lesion_contrast(
    pred: npt.ArrayLike, true: npt.ArrayLike, lesion: npt.ArrayLike, mirror: npt.ArrayLike
) -> LesionContrast:
    """Contrast of the lesion against its mirror region, in ``pred`` and in ``true``.

    Parameters
    ----------
    pred, true : array_like of shape (n,)
        A map's values (e.g. OEF, percent) and the truth, at the same voxels.
    lesion, mirror : array_like of shape (n,), bool
        Which voxels are the lesion and which its mirror region (:func:`mirror_region`);
        disjoint, each non-empty.
    """
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    les, mir = np.asarray(lesion, dtype=bool), np.asarray(mirror, dtype=bool)
    if not (p.shape == t.shape == les.shape == mir.shape) or p.ndim != 1:
        raise ValueError("pred, true, lesion and mirror must be (n,) arrays of one n")
    if not les.any() or not mir.any():
        raise ValueError(f"need lesion and mirror voxels, got {les.sum()} and {mir.sum()}")
    if np.any(les & mir):
        raise ValueError("the lesion and the mirror region overlap")
    d, cnr = _cnr(p, les, mir)
    d_true, cnr_true = _cnr(t, les, mir)
    return LesionContrast(
        cnr=cnr,
        cnr_true=cnr_true,
        recovered=d / d_true if d_true != 0 else np.nan,
        difference=d,
        difference_true=d_true,
        lesion_voxels=int(les.sum()),
        mirror_voxels=int(mir.sum()),
    )


#: Segmentation classes that are not normal tissue (left out of the mirror region).
ABNORMAL_CLASSES: frozenset[str] = frozenset({"infarct core", "penumbra", "lesion"})


@dataclass(frozen=True)
class RegionReport:
    """Per-region accuracy of one method on the test scans.

    Attributes
    ----------
    rmse : dict
        :func:`per_region_rmse` of the method, by region name.
    floor : dict
        The same for the floor (the training mean predicted everywhere).
    contrast : dict of str to LesionContrast
        OEF contrast of each test scan with a lesion, by scan key.
    """

    rmse: dict[str, dict[str, float]]
    floor: dict[str, dict[str, float]]
    contrast: dict[str, LesionContrast]

    def contrast_summary(self) -> dict[str, float]:
        """Mean over the scans with a lesion: ``cnr``, ``cnr_true``, ``contrast_recovered``."""
        if not self.contrast:
            return {}
        rows = [c.to_dict() for c in self.contrast.values()]
        out = {}
        for k in ("cnr", "cnr_true", "contrast_recovered"):
            values = [r[k] for r in rows if np.isfinite(r[k])]  # NaN: a flat map's CNR
            out[k] = float(np.mean(values)) if values else float("nan")
        return out


def evaluate_regions(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    train_mean: npt.ArrayLike,
    subject: npt.ArrayLike,
    idx: npt.ArrayLike,
    labels: Mapping[str, npt.ArrayLike],
    grids: Mapping[str, tuple[Sequence[int], npt.ArrayLike]],
    names: Mapping[int, str],
) -> RegionReport:
    """Per-region RMSE (method and floor) and per-scan lesion contrast of test voxels.

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Parameters of the test voxels (physical units).
    train_mean : array_like of shape (5,)
        The floor's prediction.
    subject, idx : array_like of shape (n,)
        Each voxel's scan and C-order index in its grid.
    labels : mapping
        ``tissue`` (class codes) and/or ``lesion`` (1 in a lesion mask), each (n,).
    grids : mapping of str to (shape, affine)
        Each scan's grid (for the mirror region).
    names : mapping of int to str
        Class names of the ``tissue`` codes (``dseg.tsv``); a code without one is ``label <c>``.

    Returns
    -------
    RegionReport
        Regions: the tissue classes present, and ``lesion`` (the lesion mask) when given.
    """
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    floor = np.broadcast_to(np.asarray(train_mean, np.float64), t.shape)
    subject, idx = np.asarray(subject).astype(str), np.asarray(idx, np.int64)
    region = np.full(len(t), -1, dtype=np.int64)
    region_names: dict[int, str] = {}
    tissue = np.asarray(labels["tissue"], np.int64) if "tissue" in labels else None
    if tissue is not None:
        region = tissue.copy()
        region_names = {int(c): names.get(int(c), f"label {int(c)}") for c in np.unique(tissue)}
    rmse_by = per_region_rmse(p, t, region, region_names)
    floor_by = per_region_rmse(floor, t, region, region_names)
    lesion = np.asarray(labels["lesion"], bool) if "lesion" in labels else None
    contrast: dict[str, LesionContrast] = {}
    if lesion is not None and lesion.any():
        code = max(region_names, default=0) + 1
        les_region = np.where(lesion, code, -1)
        rmse_by.update(per_region_rmse(p, t, les_region, {code: "lesion"}))
        floor_by.update(per_region_rmse(floor, t, les_region, {code: "lesion"}))
        abnormal = lesion.copy()
        if tissue is not None:
            bad = [c for c, n in region_names.items() if n in ABNORMAL_CLASSES]
            abnormal |= np.isin(tissue, bad)
        y = PARAMETERS.index("Y")
        oef_pred, oef_true = oef_percent(p[:, y]), oef_percent(t[:, y])
        for key in dict.fromkeys(subject[lesion]):
            sel = subject == key
            shape, affine = grids[key]
            mirror = scan_mirror(idx[sel], lesion[sel], abnormal[sel], shape, affine)
            if not mirror.any():
                continue
            contrast[key] = lesion_contrast(oef_pred[sel], oef_true[sel], lesion[sel], mirror)
    return RegionReport(rmse=rmse_by, floor=floor_by, contrast=contrast)


def tissue_names(tissue: npt.ArrayLike, names: Mapping[int, str]) -> dict[int, str]:
    """The name of each class code present in ``tissue``, sorted by code (``label <c>`` for a
    code ``names`` does not name)."""
    return {int(c): names.get(int(c), f"label {int(c)}") for c in np.unique(np.asarray(tissue))}


def scan_region_sums(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    labels: Mapping[str, npt.ArrayLike],
    names: Mapping[int, str],
) -> dict[str, dict[str, list[float] | int]]:
    """:func:`region_sums` of one scan's voxels over the regions :func:`evaluate_regions`
    reports, plus the pooled :data:`POOLED_REGION`.

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        Parameters (``PARAMETERS`` order), physical units.
    labels : mapping of str to array_like of shape (n,)
        ``tissue`` (class codes) and/or ``lesion`` (nonzero in the lesion mask); may be empty.
    names : mapping of int to str
        Class names of the ``tissue`` codes (``label <c>`` for a code without one).

    Returns
    -------
    dict
        ``{region: {"n", "sse", "sum", "sumsq"}}``: each tissue class present, ``lesion`` where
        the lesion mask has voxels, and ``all`` (every voxel).
    """
    p = np.asarray(pred, np.float64)
    codes = np.full(len(p), -1, dtype=np.int64)
    region_names: dict[int, str] = {}
    if "tissue" in labels:
        codes = np.asarray(labels["tissue"], np.int64)
        region_names = tissue_names(codes, names)
    sums = region_sums(p, true, codes, region_names, pooled=POOLED_REGION)
    if "lesion" in labels:
        lesion = np.asarray(labels["lesion"]).astype(bool)
        if lesion.any():
            sums.update(
                region_sums(p, true, lesion.astype(np.int64), {1: LESION_REGION}, pooled=None)
            )
    return sums


def scan_contrast(
    pred: npt.ArrayLike,
    true: npt.ArrayLike,
    idx: npt.ArrayLike,
    labels: Mapping[str, npt.ArrayLike],
    names: Mapping[int, str],
    shape: Sequence[int],
    affine: npt.ArrayLike,
) -> LesionContrast | None:
    """OEF contrast of one scan's lesion against its mirror region (as :func:`evaluate_regions`).

    Parameters
    ----------
    pred, true : array_like of shape (n, 5)
        The scan's parameters (``PARAMETERS`` order), physical units.
    idx : array_like of shape (n,), int
        The voxels' C-order indices in the grid ``shape``.
    labels : mapping of str to array_like of shape (n,)
        ``lesion`` and, optionally, ``tissue``: classes named in :data:`ABNORMAL_CLASSES` are
        left out of the mirror region.
    names : mapping of int to str
        Class names of the ``tissue`` codes.
    shape : sequence of 3 int
    affine : array_like of shape (4, 4)

    Returns
    -------
    LesionContrast or None
        None for a scan without lesion voxels, or whose lesion has no mirror region.
    """
    if "lesion" not in labels:
        return None
    lesion = np.asarray(labels["lesion"]).astype(bool)
    if not lesion.any():
        return None
    abnormal = lesion.copy()
    if "tissue" in labels:
        tissue = np.asarray(labels["tissue"], np.int64)
        bad = [c for c, n in tissue_names(tissue, names).items() if n in ABNORMAL_CLASSES]
        abnormal |= np.isin(tissue, bad)
    mirror = scan_mirror(idx, lesion, abnormal, shape, affine)
    if not mirror.any():
        return None
    y = PARAMETERS.index("Y")
    p, t = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    return lesion_contrast(oef_percent(p[:, y]), oef_percent(t[:, y]), lesion, mirror)


def report_from_sums(
    sums: Mapping[str, Mapping[str, Mapping[str, object]]],
    train_mean: npt.ArrayLike,
    contrast: Mapping[str, LesionContrast],
) -> RegionReport:
    """The :class:`RegionReport` of scans from their :func:`scan_region_sums` and
    :func:`scan_contrast`: what :func:`evaluate_regions` gives over their voxels together.

    Parameters
    ----------
    sums : mapping of str to dict
        Each scan's :func:`scan_region_sums`, by scan key.
    train_mean : array_like of shape (5,)
        The floor's prediction.
    contrast : mapping of str to LesionContrast
        The lesion contrast of each scan that has one.

    Returns
    -------
    RegionReport
        Model and floor RMSE per region (the pooled ``all`` left out), and the contrasts.
    """
    pooled = merge_sums(*sums.values())
    rmse = {r: v for r, v in rmse_from_sums(pooled).items() if r != POOLED_REGION}
    floor = {r: v for r, v in floor_from_sums(pooled, train_mean).items() if r != POOLED_REGION}
    return RegionReport(rmse=rmse, floor=floor, contrast=dict(contrast))
