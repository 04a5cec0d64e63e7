"""Bringing a template-space brain to the model's voxel size."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi


def to_model_grid(data: np.ndarray, mask: np.ndarray, spacing, voxel_mm: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A brain and its mask resampled to the model's voxel size: ``(brain, mask, zoom)``.

    Linear interpolation; the mask is the resampled mask above one half, and the brain
    is zero outside it.  ``zoom`` (old spacing / new, per axis) maps back.  Every place
    that hands a brain to the model or compares its intensities with the model's (the
    harmonize step, the group level's training data and site statistics) goes through
    here, so they see the same voxels.

    >>> brain, mask, zoom = to_model_grid(np.ones((4, 4, 4)), np.ones((4, 4, 4)), (1, 1, 1), 2.0)
    >>> brain.shape, bool(mask.all()), zoom.tolist()
    ((2, 2, 2), True, [0.5, 0.5, 0.5])
    """
    zoom = np.asarray(spacing, dtype=float)[:3] / float(voxel_mm)
    low = ndi.zoom(np.asarray(data, np.float32), zoom, order=1)
    low_mask = ndi.zoom(np.asarray(mask, np.float32), zoom, order=1) > 0.5
    return np.where(low_mask, low, 0).astype(np.float32), low_mask, zoom


def preprocessed_brain(output_dir: Path, entities: dict[str, Any], voxel_mm: float
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """The participant level's template-space brain and mask of a T1w (its BIDS
    ``entities``) on the model's grid (:func:`to_model_grid`), or ``None`` when either
    file is missing (the participant level has not run for it)."""
    from harmonize_bids.derivatives import derivative_path

    std = derivative_path(output_dir, entities, "std_t1w")
    msk = derivative_path(output_dir, entities, "std_mask")
    if not (std.is_file() and msk.is_file()):
        return None
    img = nb.load(std)
    brain, mask, _ = to_model_grid(np.asarray(img.dataobj), np.asarray(nb.load(msk).dataobj),
                                   img.header.get_zooms()[:3], voxel_mm)
    return brain, mask
