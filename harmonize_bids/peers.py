"""Classical harmonization peers, for benchmarks beside the model.

- :func:`histogram_match`: piecewise-linear quantile mapping of the source's
  in-mask intensities onto a reference image's (Nyul-style landmarks at every
  percentile);
- :func:`zscore`: (x - mean) / std inside the mask.
"""
from __future__ import annotations

import numpy as np


def histogram_match(source: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                    reference_mask: np.ndarray, n_quantiles: int = 101) -> np.ndarray:
    """Map source intensities so their quantiles equal the reference's (zero outside mask).

    >>> x = np.arange(10.0); m = np.ones(10, bool)
    >>> histogram_match(x, m, 2 * x + 1, m)[[0, 9]].tolist()
    [1.0, 19.0]
    """
    mask, reference_mask = mask > 0, reference_mask > 0
    q = np.linspace(0, 100, n_quantiles)
    src_q = np.percentile(source[mask], q)
    ref_q = np.percentile(reference[reference_mask], q)
    src_q, idx = np.unique(src_q, return_index=True)
    out = np.interp(source, src_q, ref_q[idx])
    return np.where(mask, out, 0).astype(np.float32)


def zscore(source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Z-score inside the mask (zero outside)."""
    mask = mask > 0
    vals = source[mask]
    return np.where(mask, (source - vals.mean()) / (vals.std() + 1e-12), 0).astype(np.float32)
