"""3-D neighbourhood samples: a cube of voxels around each target voxel (beyond the paper).

The paper's samples are 5 consecutive voxels of the C-order flattening, which lie along one
image axis. A *patch* sample is the ``side x side x side`` cube of voxels centred on the target
voxel (``side`` odd; 3 gives 27 elements), so the network sees the tissue around the voxel in
all three directions, as a reader of the map does.

The rule, per scan (the voxel grid comes from the ``i, j, k`` columns):

1. Voxels with ``status != 0`` or a non-finite feature are dropped (``n_excluded``), as for the
   line windows; every other voxel is a target and gets exactly one sample (``n_no_window`` is 0).
2. Element ``e`` of a sample is the voxel at offset ``(di, dj, dk)``, the offsets in C order
   over ``-r..r`` (``r = side // 2``), so the centre (the target) is element ``length // 2``.
3. A neighbour that is not a kept voxel (outside the brain, a failed fit, beyond the grid) takes
   the target's own features: the sample stays finite and says "no information here" without a
   value the network could mistake for tissue.

Pure NumPy; the samples have the line windows' shape ``(n, length, 4)``, so scalers, Ray
datasets and the training loop take them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def patch_offsets(side: int) -> np.ndarray:
    """The ``(side**3, 3)`` voxel offsets of a patch, in C order (the centre in the middle)."""
    if side < 1 or side % 2 == 0:
        raise ValueError(f"a patch side must be odd and >= 1, got {side}")
    r = side // 2
    grid = np.arange(-r, r + 1)
    return np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)


def patch_side(length: int) -> int:
    """The side of a patch of ``length`` elements (``length`` must be an odd cube)."""
    side = int(round(length ** (1 / 3)))
    if side**3 != length or side % 2 == 0:
        raise ValueError(f"a patch has side**3 elements with an odd side (27, 125), got {length}")
    return side


def gather_patches(
    ijk: np.ndarray, features: np.ndarray, keep: np.ndarray, side: int
) -> tuple[np.ndarray, np.ndarray]:
    """Patch samples of the kept voxels of one scan.

    Parameters
    ----------
    ijk : ndarray of shape (m, 3), int
        Voxel indices of every row.
    features : ndarray of shape (m, F), float32
        Each row's features.
    keep : ndarray of shape (m,), bool
        Rows that are targets and may be neighbours.
    side : int
        Patch side (odd).

    Returns
    -------
    x : ndarray of shape (n, side**3, F), float32
        One sample per kept row, in row order.
    rows : ndarray of shape (n,), int64
        The kept rows (targets), in order.
    """
    ijk = np.asarray(ijk, dtype=np.int64)
    rows = np.flatnonzero(keep)
    offsets = patch_offsets(side)
    if rows.size == 0:
        return np.zeros((0, len(offsets), features.shape[1]), np.float32), rows
    r = side // 2
    lo = ijk[rows].min(axis=0) - r
    dims = ijk[rows].max(axis=0) - lo + r + 1
    # a lookup volume (padded by r): the row of each kept voxel, -1 elsewhere
    lookup = np.full(tuple(int(d) for d in dims), -1, dtype=np.int64)
    local = ijk[rows] - lo
    lookup[tuple(local.T)] = rows
    x = np.empty((rows.size, len(offsets), features.shape[1]), dtype=np.float32)
    for e, d in enumerate(offsets):
        neighbour = lookup[tuple((local + d).T)]
        missing = neighbour < 0
        neighbour[missing] = rows[missing]  # no neighbour: the target's own features
        x[:, e] = features[neighbour]
    return x, rows


def patch_columns_needed() -> tuple[str, ...]:
    """The columns a patch sample needs besides the features: the voxel indices."""
    return ("i", "j", "k")


def ijk_of(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``(m, 3)`` voxel indices of a scan's rows."""
    return np.stack([np.asarray(columns[c], dtype=np.int64) for c in ("i", "j", "k")], axis=1)
