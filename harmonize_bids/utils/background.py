"""What the model sees outside the brain.

The model's inputs and training targets are skull-stripped brains, zero outside
the mask, so the denoiser must draw an edge from tissue to zero in every slice;
the bundled model learned to darken tissue within a few voxels of that edge
(``docs/model.md``, "Decisions of session 18").  :func:`fill_background`
continues the brain outward instead (each background voxel within ``width``
voxels of the brain takes the value of the nearest brain voxel), so there is no
edge to draw; the output is masked again afterwards.  A model trained with a
fill (``ModelConfig.fill_background``) is run with the same fill.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def nearest_brain(mask: np.ndarray, width: int) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Where the fill goes (background within ``width`` voxels of ``mask``) and, for every
    voxel, the index of its nearest in-mask voxel: computed once, applied to any number of
    co-registered volumes (one anatomy at several sites).  Nothing to fill (``width``
    0, an empty or a full mask): an empty ring and no index."""
    mask = np.asarray(mask) > 0
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    if width == 0 or not mask.any() or mask.all():
        return np.zeros(mask.shape, bool), ()
    distance, nearest = ndi.distance_transform_edt(~mask, return_indices=True)
    return ~mask & (distance <= width), tuple(nearest)


def fill_background(volume: np.ndarray, mask: np.ndarray, width: int,
                    nearest: tuple[np.ndarray, tuple[np.ndarray, ...]] | None = None
                    ) -> np.ndarray:
    """``volume`` with the background within ``width`` voxels of ``mask`` set to the
    nearest in-mask value (3D Euclidean); farther background and ``width == 0``: 0.
    ``nearest``: :func:`nearest_brain` of the same mask and width, when already known.

    >>> v = np.zeros((1, 1, 6), np.float32); v[0, 0, 2:4] = [1, 2]
    >>> fill_background(v, v > 0, 2)[0, 0].tolist()
    [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    >>> fill_background(v, v > 0, 1)[0, 0].tolist()
    [0.0, 1.0, 1.0, 2.0, 2.0, 0.0]
    """
    mask = np.asarray(mask) > 0
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}")
    inside = np.where(mask, volume, 0).astype(np.float32)
    if width == 0:  # the zero background of the bundled model: no distance transform
        return inside
    ring, index = nearest if nearest is not None else nearest_brain(mask, width)
    if not ring.any():
        return inside
    return np.where(ring, volume[index], inside).astype(np.float32)
