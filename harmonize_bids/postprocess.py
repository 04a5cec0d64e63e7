"""Finish a harmonized volume with what the slice-wise model cannot see.

:func:`level_slices` removes slice-to-slice jumps in intensity level: the model
works on one axial slice at a time, so each slice's overall brightness is
estimated on its own and jitters along the slice axis.  The jitter is measured
against the source, mapped onto the harmonized intensities by a global linear
map ``f`` (fitted by least squares over the whole brain, so it carries the
contrast change and none of the jitter): with ``r_z`` the in-brain mean of
``harmonized - f(source)`` in slice ``z`` and ``R_z`` its (voxel-count weighted)
Gaussian smoothing across slices, every slice is shifted by ``-(r_z - R_z)``.
Only the jitter goes; the smooth trend across slices, the tissue contrast and
everything within a slice stay the model's.  A linear ``f`` cannot follow a
non-linear contrast change exactly, so where the tissue mix changes abruptly
from one slice to the next (the ventricles' ends) it leaves small shifts of its
own; measured on whole brains the levelled output is the closer one to the
truth (``docs/model.md``, "Decisions of session 17").

:func:`transfer_detail` keeps the source's fine anatomy in a harmonized image.

The model works at 2 mm and its output is smoother than a real scan: small
structures and sharp edges are partly re-synthesized rather than copied.
:func:`transfer_detail` keeps the model's coarse content (contrast, bias,
intensities at the target site) and takes the fine detail from the source,
after mapping the source's intensities onto the harmonized image's scale with
a smooth intensity map ``f`` (a low-degree polynomial fitted by least squares
from the smoothed source to the smoothed harmonized image, so it captures the
tissue contrast change, not the missing detail):

    out = G(harmonized) + (f(source) - G(f(source)))

where ``G`` is a Gaussian low-pass of width ``sigma_vox`` restricted to the brain
(normalized convolution, so the brain edge does not leak background in).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from harmonize_bids.utils.slices import slice_means


def masked_gaussian(image: np.ndarray, mask: np.ndarray, sigma_vox: float) -> np.ndarray:
    """Gaussian smoothing inside ``mask`` only (normalized convolution).

    >>> m = np.ones((9, 9), bool)
    >>> float(masked_gaussian(np.full((9, 9), 2.0), m, 1.5)[4, 4])
    2.0
    """
    mask = mask > 0
    num = ndi.gaussian_filter(np.where(mask, image, 0).astype(np.float64), sigma_vox)
    den = ndi.gaussian_filter(mask.astype(np.float64), sigma_vox)
    return np.where(mask, num / np.maximum(den, 1e-6), 0)


def intensity_map(source: np.ndarray, target: np.ndarray, mask: np.ndarray,
                  degree: int = 2, max_voxels: int = 200_000) -> np.poly1d:
    """Least-squares polynomial ``f`` with ``f(source) ~ target`` inside ``mask``.

    >>> x = np.linspace(0, 1, 100); f = intensity_map(x, 3 * x + 1, x >= 0, degree=1)
    >>> [round(float(c), 6) for c in f.coeffs]
    [3.0, 1.0]
    """
    x, y = source[mask > 0].ravel(), target[mask > 0].ravel()
    if x.size > max_voxels:  # a fixed, evenly spaced subsample: deterministic
        idx = np.linspace(0, x.size - 1, max_voxels).astype(int)
        x, y = x[idx], y[idx]
    return np.poly1d(np.polyfit(x.astype(np.float64), y.astype(np.float64), degree))


def level_slices(harmonized: np.ndarray, source: np.ndarray, mask: np.ndarray, *,
                 axis: int = 2, sigma_slices: float = 3.0,
                 fit_sigma_vox: float = 1.0) -> np.ndarray:
    """``harmonized`` with its slice-to-slice level jumps (relative to ``source``) removed.

    ``sigma_slices`` is the width (in slices) of the smoothing that defines the
    trend kept; ``fit_sigma_vox`` smooths both images before the linear map is
    fitted, so that noise in the source does not flatten it.  Slices without brain
    are left alone; the output is clipped at 0 and zero outside ``mask``.

    >>> m = np.ones((4, 4, 6), bool); src = np.random.default_rng(0).random((4, 4, 6))
    >>> jitter = np.array([0, .1, -.1, .1, -.1, 0])
    >>> out = level_slices(2 * src + 1 + jitter, src, m, sigma_slices=50)
    >>> bool(np.allclose(out, 2 * src + 1, atol=0.03))
    True
    """
    mask = mask > 0
    if harmonized.shape != source.shape or mask.shape != source.shape:
        raise ValueError(f"shapes differ: {harmonized.shape}, {source.shape}, {mask.shape}")
    if not -harmonized.ndim <= axis < harmonized.ndim:
        raise ValueError(f"axis must be in [{-harmonized.ndim}, {harmonized.ndim - 1}], "
                         f"got {axis}")
    axis %= harmonized.ndim
    if not mask.any():
        return np.zeros(harmonized.shape, np.float32)
    f = intensity_map(masked_gaussian(source, mask, fit_sigma_vox),
                      masked_gaussian(harmonized, mask, fit_sigma_vox), mask, degree=1)
    level, count = slice_means(harmonized - f(source), mask, axis)
    total = level * count
    # beyond the volume's ends the end slices repeat ("nearest"): where the brain touches
    # the first or last slice, that slice keeps a little of its jump (the setting the
    # session-17 benchmark measured; "constant" would remove more there)
    trend = ndi.gaussian_filter1d(total, sigma_slices, mode="nearest") / np.maximum(
        ndi.gaussian_filter1d(count, sigma_slices, mode="nearest"), 1e-6)
    shift = np.where(count > 0, level - trend, 0.0)
    shape = [1] * harmonized.ndim
    shape[axis] = -1
    out = harmonized - shift.reshape(shape)
    return np.where(mask, np.clip(out, 0, None), 0).astype(np.float32)


def transfer_detail(harmonized: np.ndarray, source: np.ndarray, mask: np.ndarray,
                    sigma_vox: float = 1.0, degree: int = 2) -> np.ndarray:
    """Harmonized coarse content + the source's detail finer than ``sigma_vox``."""
    mask = mask > 0
    f = intensity_map(masked_gaussian(source, mask, sigma_vox),
                      masked_gaussian(harmonized, mask, sigma_vox), mask, degree)
    mapped = np.where(mask, f(source), 0)
    out = masked_gaussian(harmonized, mask, sigma_vox) + \
        (mapped - masked_gaussian(mapped, mask, sigma_vox))
    return np.where(mask, np.clip(out, 0, None), 0).astype(np.float32)
