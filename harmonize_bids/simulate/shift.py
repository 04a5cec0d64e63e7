"""Apply a protocol *shift* to a real image, keeping its real texture.

The real image's tissues (CSF/GM/WM from a given map, or a 3-class Gaussian
mixture inside the brain mask) get soft memberships p_k (one-hot maps smoothed
by ``membership_sigma`` voxels).  Each voxel is rescaled by
sum_k p_k (t_k / m_k) / (t_WM / m_WM), where m_k are the image's tissue means
and t_k the target protocol's tissue signals from the signal equations, so
contrast between tissues becomes the target's while within-tissue variation
stays real.  Voxels outside the brain scale like WM.  Then the target's bias
field, point spread, added Rician noise and vendor mapping are applied.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from harmonize_bids.simulate import artifacts
from harmonize_bids.simulate.protocols import Protocol
from harmonize_bids.simulate.render import signal_equation
from harmonize_bids.simulate.tissues import TISSUES

_CLASSES = ("csf", "gm", "wm")


def target_tissue_signals(protocol: Protocol) -> np.ndarray:
    """Signal of CSF, GM and WM under ``protocol`` (relative units)."""
    t = [TISSUES[n] for n in _CLASSES]
    field = protocol.field_strength
    return signal_equation(protocol, np.array([x.pd for x in t]),
                           np.array([x.t1(field) for x in t]), np.array([x.t2s(field) for x in t]))


def shift_real_image(image: np.ndarray, brain_mask: np.ndarray, protocol: Protocol,
                     rng: np.random.Generator, *, spacing_mm=(1.0, 1.0, 1.0),
                     tissue_map: np.ndarray | None = None, membership_sigma: float = 1.0,
                     add_noise: bool = True) -> np.ndarray:
    """Re-render a real T1w image as if acquired with ``protocol`` (see module doc)."""
    image = np.asarray(image, dtype=np.float32)
    brain = np.asarray(brain_mask) > 0
    if tissue_map is None:
        from harmonize_bids.metrics import tissue_segmentation

        tissue_map = tissue_segmentation(image, brain, 3, random_state=int(rng.integers(1 << 30)))
    tissue_map = np.asarray(tissue_map)
    means = np.array([image[tissue_map == k + 1].mean() if (tissue_map == k + 1).any() else np.nan
                      for k in range(3)])
    if not np.all(np.isfinite(means)) or means[2] <= 0:
        raise ValueError("cannot estimate CSF/GM/WM intensities of the image")
    target = target_tissue_signals(protocol)
    ratio = (target / means) / (target[2] / means[2])
    members = np.stack([ndi.gaussian_filter((tissue_map == k + 1).astype(np.float32),
                                            membership_sigma) for k in range(3)])
    inside = members.sum(0)
    scale = (members * ratio[:, None, None, None]).sum(0) + np.clip(1 - inside, 0, 1) * 1.0
    shifted = image * scale
    wm_level = float(np.median(shifted[tissue_map == 3]))
    shifted = artifacts.blur_to_resolution(shifted, spacing_mm, tuple(
        max(v, s) for v, s in zip(protocol.voxel_mm, spacing_mm)), protocol.blur_fwhm_mm)
    shifted = shifted * artifacts.bias_field(shifted.shape, rng, protocol.bias_strength)
    if add_noise:
        shifted = artifacts.rician_noise(shifted, wm_level / protocol.snr, rng)
    return artifacts.vendor_mapping(shifted, wm_level, gain=protocol.gain, gamma=protocol.gamma,
                                    offset=protocol.offset,
                                    clip_percentile=protocol.clip_percentile, dtype=protocol.dtype)
