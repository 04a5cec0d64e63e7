"""Per-slice summaries of a volume (what a slice-wise model gets wrong one slice at a time)."""
from __future__ import annotations

import numpy as np


def slice_means(values: np.ndarray, mask: np.ndarray, axis: int = 2
                ) -> tuple[np.ndarray, np.ndarray]:
    """In-mask mean of ``values`` in every slice along ``axis``, and each slice's number of
    mask voxels (mean 0 where a slice holds none).

    >>> v = np.arange(8.0).reshape(2, 2, 2); m = np.ones_like(v, bool); m[0, 0, 1] = False
    >>> means, counts = slice_means(v, m)
    >>> means.tolist(), counts.tolist()
    ([3.0, 5.0], [4.0, 3.0])
    """
    mask = np.asarray(mask) > 0
    if not -values.ndim <= axis < values.ndim:
        raise ValueError(f"axis must be in [{-values.ndim}, {values.ndim - 1}], got {axis}")
    others = tuple(j for j in range(values.ndim) if j != axis % values.ndim)
    counts = mask.sum(axis=others).astype(np.float64)
    totals = np.where(mask, values, 0.0).sum(axis=others)
    return np.where(counts > 0, totals / np.maximum(counts, 1), 0.0), counts
