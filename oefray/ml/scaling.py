"""Per-feature standardisation of network inputs and targets, fitted on training samples only.

A :class:`Standardizer` holds the mean and standard deviation of every entry of the last axis
(each feature of the windows ``x`` of shape (n, L, F), pooled over samples and window positions;
each parameter of the targets ``y`` of shape (n, P)). It is a plain value: fitted once on the
training split, then saved with the model as JSON (:meth:`Standardizer.to_dict`) and applied
unchanged to validation, test and new subjects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Moments", "Standardizer"]

#: Rows (entries of the flattened leading axes) per chunk while fitting: bounds the float64
#: temporaries to a few MB however large the training set.
CHUNK_ROWS: int = 1 << 16


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Affine map ``z = (values - mean) / std`` along the last axis.

    Parameters
    ----------
    mean : ndarray of shape (F,), float64
        Mean of each entry of the last axis, in the values' units.
    std : ndarray of shape (F,), float64
        Scale of each entry, > 0 (see :meth:`fit` for constant features).
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(
                f"mean and std must be 1-D of one shape, got {mean.shape}, {std.shape}"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("mean must be finite and std finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(
        cls,
        values: npt.ArrayLike,
        axis: int | tuple[int, ...] | None = None,
        *,
        min_std: float = 1e-8,
    ) -> Standardizer:
        """Mean and standard deviation of each last-axis entry over all other axes.

        Parameters
        ----------
        values : array_like of shape (..., F)
            Training samples only: windows ``x`` (n, L, F) or targets ``y`` (n, P). Must be
            finite and hold at least one sample.
        axis : int or tuple of int, optional
            The axes to reduce over; accepted only as all axes but the last (the default, None),
            e.g. ``(0, 1)`` for ``x`` or ``0`` for ``y``, since the feature axis is always last.
        min_std : float
            A feature whose standard deviation is at most ``min_std`` is constant to within
            rounding; its scale is set to 1 (it is only centred, as in scikit-learn's
            ``StandardScaler``) instead of dividing by a near-zero number.

        Returns
        -------
        Standardizer

        Notes
        -----
        Two passes in float64 over chunks of ``CHUNK_ROWS`` rows: the mean, then the population
        standard deviation ``sqrt(mean((values - mean)**2))`` (ddof = 0).
        """
        arr = np.asarray(values)
        if arr.ndim < 1:
            raise ValueError("values need a feature axis (the last)")
        reduce_axes = tuple(range(arr.ndim - 1))
        if axis is not None:
            given = (axis,) if isinstance(axis, int | np.integer) else tuple(axis)
            if tuple(sorted(int(a) % arr.ndim for a in given)) != reduce_axes:
                raise ValueError(
                    f"axis must be all axes but the last ({reduce_axes}) for values of shape "
                    f"{arr.shape}, got {axis!r}: features are always on the last axis"
                )
        rows = arr.reshape(-1, arr.shape[-1])
        if rows.shape[0] == 0:
            raise ValueError("cannot fit a Standardizer to zero samples")
        total = np.zeros(rows.shape[1])
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            total += rows[start : start + CHUNK_ROWS].sum(axis=0, dtype=np.float64)
        mean = total / rows.shape[0]
        if not np.all(np.isfinite(mean)):
            raise ValueError("values must be finite to fit a Standardizer")
        squares = np.zeros(rows.shape[1])
        for start in range(0, rows.shape[0], CHUNK_ROWS):
            deviation = rows[start : start + CHUNK_ROWS].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", deviation, deviation)
        std = np.sqrt(squares / rows.shape[0])
        return cls(mean=mean, std=np.where(std > min_std, std, 1.0))

    @classmethod
    def from_moments(cls, moments: Moments, *, min_std: float = 1e-8) -> Standardizer:
        """The scaler of streamed :class:`Moments` (the same values as :meth:`fit` on the rows
        they summarise, up to rounding)."""
        if moments.n == 0:
            raise ValueError("cannot fit a Standardizer to zero samples")
        std = np.sqrt(moments.m2 / moments.n)
        return cls(mean=moments.mean, std=np.where(std > min_std, std, 1.0))

    def transform(self, values: npt.ArrayLike) -> np.ndarray:
        """Standardise: ``(values - mean) / std`` along the last axis.

        Parameters
        ----------
        values : array_like of shape (..., F)

        Returns
        -------
        ndarray of shape (..., F)
            float32 for float32 input (computed in float32, no float64 temporary), else float64.
        """
        arr, mean, std = self._operands(values)
        return (arr - mean) / std

    def inverse_transform(self, values: npt.ArrayLike) -> np.ndarray:
        """Undo :meth:`transform`: ``values * std + mean`` along the last axis.

        Takes and returns arrays of shape (..., F) with :meth:`transform`'s dtype policy.
        """
        arr, mean, std = self._operands(values)
        return arr * std + mean

    def _operands(self, values: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        arr = np.asarray(values)
        if arr.ndim < 1 or arr.shape[-1] != self.n_features:
            raise ValueError(
                f"values must have {self.n_features} entries on the last axis, got shape {arr.shape}"
            )
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
        return arr.astype(dtype, copy=False), self.mean.astype(dtype), self.std.astype(dtype)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable form: ``{"mean": [...], "std": [...]}`` (exact float64 values)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Standardizer:
        """Inverse of :meth:`to_dict`."""
        return cls(mean=np.asarray(data["mean"], dtype=np.float64), std=np.asarray(data["std"]))


@dataclass(frozen=True, eq=False)
class Moments:
    """Count, mean and summed squared deviations of each last-axis entry: an exact streaming
    mean and variance, computed per chunk and merged in any order (a distributed aggregate).

    Parameters
    ----------
    n : int
        Rows summarised (entries of the flattened leading axes).
    mean : ndarray of shape (F,), float64
        Mean of each entry (zeros when ``n == 0``).
    m2 : ndarray of shape (F,), float64
        Sum of squared deviations from ``mean``; the population variance is ``m2 / n``.

    Notes
    -----
    Two summaries ``(n_a, mean_a, m2_a)`` and ``(n_b, mean_b, m2_b)`` merge as (Chan, Golub and
    LeVeque 1979)::

        n = n_a + n_b,  d = mean_b - mean_a,
        mean = mean_a + d * n_b / n,  m2 = m2_a + m2_b + d**2 * n_a * n_b / n.

    Each chunk is summarised in two passes in float64 (:meth:`of`), so the merged variance does
    not suffer the cancellation of a one-pass sum of squares.
    """

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> Moments:
        return cls(0, np.zeros(n_features), np.zeros(n_features))

    @classmethod
    def of(cls, values: npt.ArrayLike) -> Moments:
        """The moments of ``values`` of shape (..., F) over all axes but the last."""
        arr = np.asarray(values)
        if arr.ndim < 1:
            raise ValueError("values need a feature axis (the last)")
        rows = arr.reshape(-1, arr.shape[-1])
        if rows.shape[0] == 0:
            return cls.empty(rows.shape[1])
        mean = rows.mean(axis=0, dtype=np.float64)
        if not np.all(np.isfinite(mean)):
            raise ValueError("values must be finite to summarise their moments")
        deviation = rows.astype(np.float64) - mean
        return cls(int(rows.shape[0]), mean, np.einsum("ij,ij->j", deviation, deviation))

    def merge(self, other: Moments) -> Moments:
        """The moments of both summaries' rows together."""
        if self.mean.shape != other.mean.shape:
            raise ValueError(f"cannot merge moments of {self.mean.shape} and {other.mean.shape}")
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        d = other.mean - self.mean
        return Moments(
            n, self.mean + d * (other.n / n), self.m2 + other.m2 + d**2 * (self.n * other.n / n)
        )

    @classmethod
    def combine(cls, parts: list[Moments], n_features: int) -> Moments:
        """All ``parts`` merged (in the given order)."""
        total = cls.empty(n_features)
        for part in parts:
            total = total.merge(part)
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON/Arrow-able form (exact float64 values)."""
        return {"n": int(self.n), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Moments:
        return cls(
            int(data["n"]), np.asarray(data["mean"], np.float64), np.asarray(data["m2"], np.float64)
        )
