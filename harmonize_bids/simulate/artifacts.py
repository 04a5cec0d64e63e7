"""One function per acquisition artifact: array in, array out, randomness injected.

>>> rng = np.random.default_rng(0)
>>> field = bias_field((8, 8, 8), rng, strength=0.2)
>>> bool(field.min() > 0)
True
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def smooth_random_field(shape: tuple[int, ...], rng: np.random.Generator,
                        correlation_vox: float = 8.0) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field with a correlation length in voxels.

    Drawn on a coarse grid and interpolated up, which is cheap for large volumes.
    """
    step = max(1, int(correlation_vox // 2))
    coarse_shape = tuple(max(2, int(np.ceil(n / step)) + 1) for n in shape)
    coarse = ndi.gaussian_filter(rng.standard_normal(coarse_shape), 1.0)
    field = ndi.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape)], order=1)
    field = field[tuple(slice(0, n) for n in shape)]
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def bias_field(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.15
               ) -> np.ndarray:
    """Smooth multiplicative bias field exp(strength * f), f a very smooth unit-std field."""
    coarse = rng.standard_normal((3, 3, 3))
    field = ndi.zoom(coarse, [n / 3 for n in shape], order=3)[tuple(slice(0, n) for n in shape)]
    field = (field - field.mean()) / (field.std() + 1e-12)
    return np.exp(strength * field).astype(np.float32)


def blur_to_resolution(image: np.ndarray, spacing_mm: tuple[float, ...],
                       voxel_mm: tuple[float, ...], extra_fwhm_mm: float = 0.0) -> np.ndarray:
    """Blur by the point spread of an acquired voxel (Gaussian of FWHM = voxel size).

    The blur already present at ``spacing_mm`` is accounted for:
    sigma^2 = (voxel^2 - spacing^2 + extra^2) * (FWHM->sigma)^2, per axis, in voxels.
    """
    sigmas = []
    for sp, vox in zip(spacing_mm, voxel_mm):
        fwhm2 = max(vox ** 2 - sp ** 2, 0.0) + extra_fwhm_mm ** 2
        sigmas.append(np.sqrt(fwhm2) * FWHM_TO_SIGMA / sp)
    if max(sigmas) < 0.05:
        return image
    return ndi.gaussian_filter(image, sigmas)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: |S + n1 + i n2|."""
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.hypot(real, imag).astype(np.float32)


def vendor_mapping(image: np.ndarray, reference_level: float, *, gain: float, gamma: float,
                   offset: float, clip_percentile: float, dtype: str) -> np.ndarray:
    """Scanner-specific storage: gain * (image/ref)^gamma + offset, clipped, cast.

    Integer types are rounded and clipped to their range; the top
    ``100 - clip_percentile`` % of values is clipped (vendor windowing).
    """
    scaled = gain * np.clip(image / reference_level, 0, None) ** gamma + offset
    top = np.percentile(scaled, clip_percentile)
    scaled = np.clip(scaled, 0, top)
    if dtype == "float32":
        return scaled.astype(np.float32)
    info = np.iinfo(dtype)
    if top > info.max:
        scaled = scaled * (info.max / top)
    return np.clip(np.round(scaled), info.min, info.max).astype(dtype)
