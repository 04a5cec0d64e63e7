"""Steady-state signal equations of T1-weighted sequences (pure numpy, vectorized).

Times in ms, angles in degrees; every function broadcasts over tissue arrays.
"""
from __future__ import annotations

import numpy as np


def spgr_signal(pd, t1, t2s, *, tr: float, te: float, flip_deg: float):
    """Spoiled gradient echo (SPGR/FLASH) steady state.

    S = PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE/T2*),  E1 = exp(-TR/T1)

    >>> round(float(spgr_signal(1.0, 1000.0, 50.0, tr=20.0, te=0.0, flip_deg=90.0)), 4)
    0.0198
    """
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / np.asarray(t1, dtype=np.float64))
    s = np.asarray(pd) * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
    return s * np.exp(-te / np.asarray(t2s, dtype=np.float64))


def ernst_angle(tr: float, t1: float) -> float:
    """Flip angle (degrees) that maximizes the SPGR signal: arccos(exp(-TR/T1))."""
    return float(np.rad2deg(np.arccos(np.exp(-tr / t1))))


def mprage_signal(pd, t1, t2s, *, tr: float, ti: float, te: float, flip_deg: float,
                  echo_spacing: float, n_readout: int, inversion_efficiency: float = 0.96,
                  n_cycles: int = 8):
    """MPRAGE (and inversion-prepared TFE) signal at the centre of k-space.

    One cycle of length ``tr``: inversion (Mz -> -eff Mz), free recovery until the
    readout train, ``n_readout`` pulses of ``flip_deg`` spaced by ``echo_spacing``
    whose centre pulse is at ``ti`` after the inversion, then recovery until the
    next inversion.  Between pulses Mz relaxes as Mz <- 1 - (1 - Mz) exp(-dt/T1).
    The cycle is iterated ``n_cycles`` times to reach the steady state (exact for
    practical T1/TR); the signal is PD Mz_centre sin(a) exp(-TE/T2*).

    With a tiny flip angle and full recovery it reduces to inversion recovery,
    PD (1 - (1 + eff) exp(-TI/T1)).
    """
    t1 = np.asarray(t1, dtype=np.float64)
    a = np.deg2rad(flip_deg)
    before = ti - (n_readout // 2) * echo_spacing
    after = tr - ti - (n_readout - n_readout // 2) * echo_spacing
    if before < 0 or after < 0:
        raise ValueError("MPRAGE timing impossible: TI or TR too short for the readout train")
    e_pulse = np.exp(-echo_spacing / t1)
    e_before = np.exp(-before / t1)
    e_after = np.exp(-after / t1)
    mz = np.ones_like(t1)
    centre = mz
    for _ in range(n_cycles):
        mz = -inversion_efficiency * mz
        mz = 1 - (1 - mz) * e_before
        for k in range(n_readout):
            if k == n_readout // 2:
                centre = mz.copy()
            mz = mz * np.cos(a)
            mz = 1 - (1 - mz) * e_pulse
        mz = 1 - (1 - mz) * e_after
    return np.asarray(pd) * centre * np.sin(a) * np.exp(-te / np.asarray(t2s, dtype=np.float64))
