"""Render a label map as a given protocol would image it.

``render_clean`` does the physics (tissue parameters, texture, signal
equation, point spread, resampling, bias field) and returns a noise-free
:class:`Rendering`; ``acquire`` adds Rician noise and the vendor's intensity
mapping.  Calling ``acquire`` twice on one rendering gives a scan and its
rescan (same session: only the thermal noise differs).

The tissue *texture* (smooth variation of T1 and PD within a tissue) belongs to
the subject, not to the scanner: its pattern comes from ``Anatomy.texture_seed``
and is the same under every protocol (only its amplitude, ``texture_std``, is
the protocol's).  The bias field and the noise are the acquisition's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

from harmonize_bids.simulate import artifacts
from harmonize_bids.simulate.protocols import Protocol
from harmonize_bids.simulate.signal import mprage_signal, spgr_signal
from harmonize_bids.simulate.tissues import (
    TISSUE_NAMES,
    is_brain_label,
    parameter_maps,
    three_class_map,
    tissue_index_map,
)


@dataclass
class Anatomy:
    """A whole-head label map on its voxel grid."""

    labels: np.ndarray
    affine: np.ndarray
    name: str = "anatomy"
    #: seeds the subject's tissue texture (the same pattern under every protocol)
    texture_seed: int = 0

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def load_anatomy(path: Path, margin_mm: float = 10.0, name: str | None = None) -> Anatomy:
    """Load a label map, cropped to the head plus a margin of background."""
    img = nb.load(str(path))
    labels = np.asarray(img.dataobj).astype(np.int16)
    nz = np.nonzero(labels)
    if not nz[0].size:
        raise ValueError(f"{path}: empty label map")
    spacing = np.linalg.norm(img.affine[:3, :3], axis=0)
    lo = [max(0, int(ax.min() - margin_mm / sp)) for ax, sp in zip(nz, spacing)]
    hi = [min(n, int(ax.max() + margin_mm / sp) + 1) for ax, n, sp in zip(nz, labels.shape, spacing)]
    crop = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ np.array(lo) + img.affine[:3, 3]
    return Anatomy(np.ascontiguousarray(crop), affine,
                   name or Path(path).name.split(".")[0])


def signal_equation(protocol: Protocol, pd: np.ndarray, t1: np.ndarray, t2s: np.ndarray
                    ) -> np.ndarray:
    """Magnitude signal of every voxel under ``protocol``.

    The steady-state equation is evaluated on a fine log-spaced T1 grid and
    interpolated (exact to < 0.1 %), which keeps MPRAGE's pulse-train
    recursion cheap on millions of voxels.
    """
    t1_grid = np.geomspace(20.0, 8000.0, 600)
    if protocol.sequence == "mprage":
        s_grid = mprage_signal(1.0, t1_grid, np.inf, tr=protocol.tr, ti=protocol.ti, te=0.0,
                               flip_deg=protocol.flip_deg, echo_spacing=protocol.echo_spacing,
                               n_readout=protocol.n_readout,
                               inversion_efficiency=protocol.inversion_efficiency)
    else:
        s_grid = spgr_signal(1.0, t1_grid, np.inf, tr=protocol.tr, te=0.0,
                             flip_deg=protocol.flip_deg)
    s = np.interp(np.clip(t1, 20.0, 8000.0), t1_grid, s_grid)
    return np.abs(pd * s * np.exp(-protocol.te / np.maximum(t2s, 1e-3))).astype(np.float32)


@dataclass
class Rendering:
    """A noise-free image on the output grid, with its truth."""

    clean: np.ndarray
    reference_level: float  # median white-matter signal (sets noise and vendor scale)
    affine: np.ndarray
    brain_mask: np.ndarray
    dseg: np.ndarray


def output_grid(anatomy: Anatomy, spacing_mm: float) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Shape, affine and (label-voxel) sampling matrix of a grid of ``spacing_mm``."""
    factors = np.array([spacing_mm / sp for sp in anatomy.spacing])
    shape = tuple(int(np.ceil(n / f)) for n, f in zip(anatomy.labels.shape, factors))
    sample = np.eye(4)
    sample[:3, :3] = np.diag(factors)
    sample[:3, 3] = (factors - 1) / 2
    return shape, anatomy.affine @ sample, sample


def tissue_texture(anatomy: Anatomy, correlation_mm: float = 4.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Unit-std smooth fields modulating T1 and PD: the subject's own microstructure,
    drawn from ``anatomy.texture_seed`` (independent of the protocol and its stream)."""
    rng = np.random.default_rng([int(anatomy.texture_seed), 104729])
    corr = correlation_mm / min(anatomy.spacing)
    shape = anatomy.labels.shape
    return (artifacts.smooth_random_field(shape, rng, corr),
            artifacts.smooth_random_field(shape, rng, corr))


def render_clean(anatomy: Anatomy, protocol: Protocol, rng: np.random.Generator, *,
                 spacing_mm: float = 1.0) -> Rendering:
    """Physics of one acquisition, without noise (see module docstring)."""
    tissue_idx = tissue_index_map(anatomy.labels)
    t1, t2s, pd = parameter_maps(tissue_idx, protocol.field_strength)
    if protocol.texture_std > 0:
        t1_texture, pd_texture = tissue_texture(anatomy)
        t1 *= 1 + protocol.texture_std * t1_texture
        pd *= 1 + protocol.texture_std * pd_texture
    signal = signal_equation(protocol, pd, t1, t2s)
    wm = tissue_idx == TISSUE_NAMES.index("wm")
    reference = float(np.median(signal[wm])) if wm.any() else float(np.percentile(signal, 99))
    # protocol voxel sizes are (x, y, z) in world space; map them onto voxel axes
    world_axis = np.argmax(np.abs(anatomy.affine[:3, :3]), axis=0)
    out_voxel = tuple(max(protocol.voxel_mm[a], spacing_mm) for a in world_axis)
    signal = artifacts.blur_to_resolution(signal, anatomy.spacing, out_voxel,
                                          protocol.blur_fwhm_mm)

    shape, affine, sample = output_grid(anatomy, spacing_mm)
    resample = dict(matrix=sample[:3, :3], offset=sample[:3, 3], output_shape=shape)
    clean = ndi.affine_transform(signal, order=1, **resample).astype(np.float32)
    brain = ndi.affine_transform(is_brain_label(anatomy.labels).astype(np.float32),
                                 order=1, **resample) >= 0.5
    dseg = ndi.affine_transform(three_class_map(anatomy.labels), order=0, **resample)
    dseg[~brain] = 0
    clean *= artifacts.bias_field(shape, rng, protocol.bias_strength)
    return Rendering(clean, reference, affine, brain.astype(np.uint8), dseg.astype(np.uint8))


def acquire(rendering: Rendering, protocol: Protocol, rng: np.random.Generator) -> np.ndarray:
    """Thermal (Rician) noise at the protocol's SNR, then the vendor's storage mapping."""
    sigma = rendering.reference_level / protocol.snr
    noisy = artifacts.rician_noise(rendering.clean, sigma, rng)
    return artifacts.vendor_mapping(
        noisy, rendering.reference_level, gain=protocol.gain, gamma=protocol.gamma,
        offset=protocol.offset, clip_percentile=protocol.clip_percentile, dtype=protocol.dtype)


def to_nifti(data: np.ndarray, affine: np.ndarray) -> nb.Nifti1Image:
    """A NIfTI image with sform/qform set (scanner coordinates) and mm units."""
    img = nb.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def render(anatomy: Anatomy, protocol: Protocol, rng: np.random.Generator, *,
           spacing_mm: float = 1.0) -> tuple[nb.Nifti1Image, nb.Nifti1Image, nb.Nifti1Image]:
    """T1w image, brain mask and CSF/GM/WM map (1/2/3) of ``anatomy`` under ``protocol``."""
    rendering = render_clean(anatomy, protocol, rng, spacing_mm=spacing_mm)
    image = acquire(rendering, protocol, rng)
    return (to_nifti(image, rendering.affine), to_nifti(rendering.brain_mask, rendering.affine),
            to_nifti(rendering.dseg, rendering.affine))
