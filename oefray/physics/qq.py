"""QQ forward model: qBOLD magnitude decay and QSM susceptibility (DESIGN.md section 2).

All functions broadcast their parameter arrays against each other (shape ``(...)``); signals put
the echo axis last, ``(..., n_echoes)``. Units: Y, v as fractions; R2 in s^-1; S0 on the
echo-1-normalised scale; chi, chi_nb in ppm; echo times in seconds; frequencies in rad/s.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from oefray.physics.constants import (
    ALPHA,
    B0_T,
    CHI_BA,
    DCHI0,
    DCHI_HB,
    GAMMA,
    HCT,
    PSI_HB,
    YA,
)
from oefray.physics.echoes import validate_te
from oefray.physics.fs import f_s

__all__ = [
    "characteristic_frequency",
    "qbold_signal",
    "qsm_susceptibility",
    "oef",
    "venous_oxygenation",
]

#: Voxels per chunk in ``qbold_signal``: bounds the float64 temporaries to a few MB each.
CHUNK_VOXELS: int = 1 << 16


def _result_dtype(*arrays: npt.ArrayLike) -> np.dtype:
    """float32 if the array inputs promote to float32 (Python scalars don't count), else float64."""
    dtypes = [np.asarray(a).dtype for a in arrays if type(a) not in (int, float, bool)]
    if dtypes and np.result_type(*dtypes) == np.float32:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def characteristic_frequency(
    Y: npt.ArrayLike, chi_nb: npt.ArrayLike, b0_t: float = B0_T
) -> np.ndarray:
    """Characteristic frequency of the blood–tissue susceptibility difference.

    Parameters
    ----------
    Y : array_like of shape (...)
        Venous oxygenation, fraction.
    chi_nb : array_like of shape (...)
        Non-blood tissue susceptibility, ppm. Broadcast against `Y`.
    b0_t : float
        Main field strength, tesla.

    Returns
    -------
    dw : ndarray of shape (...)
        Characteristic frequency, rad/s; float32 for float32 inputs, else float64.

    Notes
    -----
    .. math::

        \\delta\\omega = \\tfrac13 \\gamma B_0
            \\left[\\mathrm{Hct}\\,\\Delta\\chi_0 (1 - Y) + \\chi_{ba} - \\chi_{nb}\\right]

    with ``gamma = GAMMA`` in rad s^-1 T^-1 ppm^-1.
    """
    dtype = _result_dtype(Y, chi_nb)
    y = np.asarray(Y, dtype=np.float64)
    chi = np.asarray(chi_nb, dtype=np.float64)
    dw = (GAMMA * b0_t / 3.0) * (HCT * DCHI0 * (1.0 - y) + CHI_BA - chi)
    return np.asarray(dw, dtype=dtype)


def qbold_signal(
    S0: npt.ArrayLike,
    R2: npt.ArrayLike,
    Y: npt.ArrayLike,
    v: npt.ArrayLike,
    chi_nb: npt.ArrayLike,
    te_s: npt.ArrayLike,
    b0_t: float = B0_T,
) -> np.ndarray:
    """qBOLD magnitude signal of the QQ model at the given echo times.

    Parameters
    ----------
    S0 : array_like of shape (...)
        Signal scale at t = 0 (echo-1-normalised scale).
    R2 : array_like of shape (...)
        Tissue transverse relaxation rate, s^-1.
    Y : array_like of shape (...)
        Venous oxygenation, fraction.
    v : array_like of shape (...)
        Venous blood volume fraction.
    chi_nb : array_like of shape (...)
        Non-blood tissue susceptibility, ppm.
    te_s : array_like of shape (E,)
        Echo times, seconds: at least one, finite, >= 0, distinct, any order and spacing.
    b0_t : float
        Main field strength, tesla.

    Returns
    -------
    S : ndarray of shape (..., E)
        Signal, where ``(...)`` is the broadcast shape of the five parameters; float32 when the
        parameters promote to float32 (Python scalars do not count, `te_s` does not count),
        otherwise float64. Computed in float64 in chunks of ``CHUNK_VOXELS`` voxels.

    Raises
    ------
    ValueError
        If `te_s` is invalid (:func:`oefray.physics.echoes.validate_te`).

    Notes
    -----
    .. math::

        S(t) = S_0\\, e^{-R_2 t}\\, e^{-v f_s(\\delta\\omega\\, t)},

    with ``dw = characteristic_frequency(Y, chi_nb, b0_t)`` and ``f_s`` the Yablonskiy–Haacke
    static-dephasing function (``oefray.physics.fs.f_s``); the macroscopic field-inhomogeneity
    factor G(t) is taken as 1.
    """
    te = validate_te(te_s)
    dtype = _result_dtype(S0, R2, Y, v, chi_nb)
    params = [np.asarray(p) for p in (S0, R2, Y, v, chi_nb)]
    shape = np.broadcast_shapes(*(p.shape for p in params))
    out = np.empty((*shape, te.size), dtype=dtype)
    flat_out = out.reshape(-1, te.size)  # a view: `out` is C-contiguous
    # Broadcast views (no copy); `.flat[a:b]` copies just one chunk of each.
    views = [np.broadcast_to(p, shape) for p in params]
    n_vox = flat_out.shape[0]
    for start in range(0, n_vox, CHUNK_VOXELS):
        stop = min(start + CHUNK_VOXELS, n_vox)
        s0, r2, y, vv, chi = (np.asarray(w.flat[start:stop], dtype=np.float64) for w in views)
        dw = characteristic_frequency(y, chi, b0_t)
        # Exponent -R2 t - v f_s(dw t), shape (chunk, E); f_s is even, so the sign of dw is moot.
        x = dw[:, None] * te
        exponent = f_s(x)
        exponent *= -vv[:, None]
        exponent -= r2[:, None] * te
        np.exp(exponent, out=exponent)
        exponent *= s0[:, None]
        flat_out[start:stop] = exponent
    return out


def qsm_susceptibility(Y: npt.ArrayLike, v: npt.ArrayLike, chi_nb: npt.ArrayLike) -> np.ndarray:
    """Bulk tissue susceptibility of the QSM part of the QQ model.

    Parameters
    ----------
    Y, v, chi_nb : array_like of shape (...)
        Venous oxygenation and venous blood volume (fractions), non-blood tissue susceptibility
        (ppm), as in :func:`qbold_signal`; broadcast against each other.

    Returns
    -------
    chi : ndarray of shape (...)
        Tissue susceptibility, ppm (broadcast shape of the inputs); float32 for float32 inputs,
        else float64.

    Notes
    -----
    Venous blood is a fraction ``alpha`` of all blood; arterial blood has oxygenation ``Ya``:

    .. math::

        \\chi = \\left[\\frac{\\chi_{ba}}{\\alpha} + \\psi_{Hb}\\,\\Delta\\chi_{Hb}
                \\left(\\frac{1 - (1 - \\alpha) Y_a}{\\alpha} - Y\\right)\\right] v
                + \\left(1 - \\frac{v}{\\alpha}\\right) \\chi_{nb}
    """
    dtype = _result_dtype(Y, v, chi_nb)
    y = np.asarray(Y, dtype=np.float64)
    vv = np.asarray(v, dtype=np.float64)
    chi = np.asarray(chi_nb, dtype=np.float64)
    blood = CHI_BA / ALPHA + PSI_HB * DCHI_HB * ((1.0 - (1.0 - ALPHA) * YA) / ALPHA - y)
    return np.asarray(blood * vv + (1.0 - vv / ALPHA) * chi, dtype=dtype)


def oef(Y: npt.ArrayLike) -> np.ndarray:
    """Oxygen extraction fraction from venous oxygenation.

    Parameters
    ----------
    Y : array_like of shape (...)
        Venous oxygenation, fraction.

    Returns
    -------
    ndarray of shape (...)
        OEF as a fraction (multiply by 100 for percent); float32 for float32 input, else float64.

    Notes
    -----
    .. math:: \\mathrm{OEF} = 1 - Y / Y_a
    """
    dtype = _result_dtype(Y)
    return np.asarray(1.0 - np.asarray(Y, dtype=np.float64) / YA, dtype=dtype)


def venous_oxygenation(chi_vein: npt.ArrayLike) -> np.ndarray:
    r"""Venous oxygenation from the susceptibility of pure venous blood (a venous sinus in QSM).

    Parameters
    ----------
    chi_vein : array_like of shape (...)
        Susceptibility of venous blood, ppm, on the QSM scale of the model (water = 0).

    Returns
    -------
    Y : ndarray of shape (...)
        Venous oxygenation, fraction (not clipped: a value outside [0, 1] says the ROI or the
        QSM reference is off).

    Notes
    -----
    Blood of oxygenation ``Y`` has the susceptibility of fully oxygenated blood plus that of its
    deoxyhaemoglobin (the QSM model of :func:`qsm_susceptibility` with all of a voxel blood,
    all of it venous):

    .. math::

        \chi_v = \chi_{ba} + \psi_{Hb}\,\Delta\chi_{Hb}\,(1 - Y)
        \quad\Rightarrow\quad
        Y = 1 - \frac{\chi_v - \chi_{ba}}{\psi_{Hb}\,\Delta\chi_{Hb}}
    """
    chi = np.asarray(chi_vein, dtype=np.float64)
    return 1.0 - (chi - CHI_BA) / (PSI_HB * DCHI_HB)
