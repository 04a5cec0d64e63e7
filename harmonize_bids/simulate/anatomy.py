"""Anatomical variety from a few label maps: flips, rotations, smooth deformations."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from harmonize_bids.simulate.artifacts import smooth_random_field
from harmonize_bids.simulate.render import Anatomy
from harmonize_bids.simulate.tissues import LR_PAIRS


def flip_left_right(anatomy: Anatomy) -> Anatomy:
    """Mirror the head left-right (on the voxel axis closest to world x), swapping
    left and right structure labels so the result is a plausible brain."""
    axis = int(np.argmax(np.abs(anatomy.affine[0, :3])))
    labels = np.flip(anatomy.labels, axis=axis).copy()
    swapped = labels.copy()
    for left, right in LR_PAIRS:
        swapped[labels == left] = right
        swapped[labels == right] = left
    return Anatomy(swapped, anatomy.affine.copy(), anatomy.name + "-flip",
                   anatomy.texture_seed)


def deform(anatomy: Anatomy, rng: np.random.Generator, *, max_displacement_mm: float = 4.0,
           max_rotation_deg: float = 6.0, max_scale: float = 0.05,
           correlation_mm: float = 30.0) -> Anatomy:
    """Random small rotation + scaling about the centre and a smooth displacement field.

    Labels are resampled with nearest neighbour, so the output is still a label map.
    """
    shape = anatomy.labels.shape
    spacing = np.array(anatomy.spacing)
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
           @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
           @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
    linear = rot * (1 + rng.uniform(-max_scale, max_scale))
    centre = (np.array(shape) - 1) / 2
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = (linear @ (grid - centre[:, None])) + centre[:, None]
    corr_vox = correlation_mm / float(spacing.min())
    for k in range(3):
        disp = smooth_random_field(shape, rng, corr_vox).reshape(-1)
        coords[k] += disp * (max_displacement_mm / 3.0) / spacing[k]
    labels = ndi.map_coordinates(anatomy.labels, coords, order=0, mode="constant", cval=0)
    return Anatomy(labels.reshape(shape).astype(np.int16), anatomy.affine.copy(),
                   anatomy.name + "-deformed", anatomy.texture_seed)
