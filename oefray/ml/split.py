"""The training/validation split as a hash of ``(scan, centre idx, seed)`` (no global permutation).

A window belongs to validation when the hash of its scan key, its anchor voxel's C-order index
``idx`` and the seed, mapped to ``[0, 1)``, is below the validation fraction. The decision for
one window depends on nothing else: not on the other windows, their order, the number of
blocks or workers, or which machine cuts the windows, so a cohort split scan by scan on any
cluster gives the same split as one split on a laptop, and the expected validation share is the
fraction (each window independently; for ``n`` windows the validation count is binomial, with
standard deviation ``sqrt(n f (1 - f))``).

The same hash, with another salt, subsamples windows (``max_train_windows``) and orders a
worker's cached shard (a deterministic order whatever order its blocks arrive in).

The mixing function is SplitMix64's finaliser (Steele, Lea and Flood, "Fast splittable
pseudorandom number generators", OOPSLA 2014), applied to ``scan hash + idx`` and the seed; the
scan's hash is the first 8 bytes of its key's BLAKE2b digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Split", "scan_hash", "window_hash", "unit_interval", "TRAIN", "VAL", "DROPPED"]

#: Part codes of :meth:`Split.assign`.
TRAIN, VAL, DROPPED = 0, 1, -1

#: Salts of the independent hash streams.
SPLIT_SALT, SUBSAMPLE_SALT, ORDER_SALT = 0, 1, 2

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def scan_hash(key: str) -> int:
    """A scan key's 64-bit hash: the first 8 bytes (little-endian) of its UTF-8 BLAKE2b digest."""
    return int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def window_hash(key: str, idx: npt.ArrayLike, seed: int, salt: int = SPLIT_SALT) -> np.ndarray:
    """64-bit hash of each window of one scan.

    Parameters
    ----------
    key : str
        The scan key (``<L>`` or ``<L>_ses-<S>``).
    idx : array_like of shape (n,), int
        C-order flat index of each window's anchor voxel.
    seed : int
        The split's seed (any integer; taken modulo 2**64).
    salt : int
        Selects an independent stream (:data:`SPLIT_SALT`, :data:`SUBSAMPLE_SALT`,
        :data:`ORDER_SALT`).

    Returns
    -------
    ndarray of shape (n,), uint64
        ``mix(mix(scan_hash(key) + idx * golden) + seed * golden + salt)``.
    """
    with np.errstate(over="ignore"):
        i = np.asarray(idx, dtype=np.int64).astype(np.uint64)
        base = np.uint64(scan_hash(key)) + i * _GOLDEN
        s = np.uint64(int(seed) % 2**64) * _GOLDEN + np.uint64(int(salt) % 2**64)
        return _mix(_mix(base) + s)


def unit_interval(h: np.ndarray) -> np.ndarray:
    """uint64 hashes → float64 in [0, 1): the top 53 bits over 2**53."""
    return (np.asarray(h, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class Split:
    """Which part each window of a scan goes to: training, validation, or neither.

    Parameters
    ----------
    seed : int
        Seed of the hash.
    val_fraction : float
        Share of windows for validation, in [0, 1) (the paper's 8:2 split is 0.2).
    train_keep, val_keep : float
        Share of each part kept (subsampling for quick runs), in (0, 1]; 1 keeps all.
    """

    seed: int = 0
    val_fraction: float = 0.2
    train_keep: float = 1.0
    val_keep: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("train_keep", "val_keep"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")

    def assign(self, key: str, idx: npt.ArrayLike) -> np.ndarray:
        """Part code of each window: :data:`TRAIN`, :data:`VAL` or :data:`DROPPED`.

        Parameters
        ----------
        key : str
            The scan key.
        idx : array_like of shape (n,), int
            Anchor voxel of each window.

        Returns
        -------
        ndarray of shape (n,), int8
        """
        u = unit_interval(window_hash(key, idx, self.seed, SPLIT_SALT))
        part = np.where(u < self.val_fraction, VAL, TRAIN).astype(np.int8)
        if self.train_keep < 1.0 or self.val_keep < 1.0:
            keep = np.where(part == VAL, self.val_keep, self.train_keep)
            kept = unit_interval(window_hash(key, idx, self.seed, SUBSAMPLE_SALT)) < keep
            part[~kept] = DROPPED
        return part

    def order(self, key: str, idx: npt.ArrayLike) -> np.ndarray:
        """A sort key of each window (uint64) independent of the split: sorting a shard by it
        gives one order whatever order its rows arrived in."""
        return window_hash(key, idx, self.seed, ORDER_SALT)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "seed": int(self.seed),
            "val_fraction": float(self.val_fraction),
            "train_keep": float(self.train_keep),
            "val_keep": float(self.val_keep),
        }
