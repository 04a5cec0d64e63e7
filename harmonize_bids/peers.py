"""Classical harmonization peers, for benchmarks beside the model.

- :func:`histogram_match`: piecewise-linear quantile mapping of the source's
  in-mask intensities onto a reference image's (Nyul-style landmarks at every
  percentile);
- :func:`zscore`: (x - mean) / std inside the mask;
- :func:`nyul`, :func:`whitestripe`, :func:`zscore_to` (the implementations of the
  ``intensity-normalization`` package, an optional dependency) and
  :func:`ants_histogram_match` (antspyx), each mapping a source onto a target
  site's intensity scale given target-site reference images.
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


# ---------------------------------------------------------------------------
# Peers as users would run them: intensity-normalization (PyPI) and ANTs.
# Each maps a source image onto the intensity scale of a *target site*, given
# one or more target-site reference images, and returns zeros outside the mask.
# ---------------------------------------------------------------------------

def _intensity_normalization():
    try:
        import intensity_normalization as inorm
    except ImportError as err:  # an optional, benchmark-only dependency
        raise ImportError("the peer methods need 'intensity-normalization' "
                          "(pip install 'harmonize_bids[benchmarks]')") from err
    return inorm


def _masked(source: np.ndarray, mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(mask > 0, values, 0).astype(np.float32)


def nyul(source: np.ndarray, mask: np.ndarray, references: list[np.ndarray],
         reference_masks: list[np.ndarray]) -> np.ndarray:
    """Nyúl & Udupa piecewise-linear landmark matching (intensity-normalization's
    ``NyulNormalizer``), its standard scale learned from the target site's references."""
    inorm = _intensity_normalization()
    img = inorm.create_image
    normalizer = inorm.NyulNormalizer()
    normalizer.fit_population([img(r.astype(np.float64)) for r in references],
                              [img((m > 0).astype(np.float64)) for m in reference_masks])
    out = normalizer.transform(img(source.astype(np.float64)), img((mask > 0).astype(np.float64)))
    # back from Nyul's arbitrary standard scale to the target site's intensity units
    q = normalizer.percentiles
    std_values = np.concatenate([
        normalizer.transform(img(r.astype(np.float64)),
                             img((m > 0).astype(np.float64))).get_data()[m > 0]
        for r, m in zip(references, reference_masks)])
    ref_values = np.concatenate([r[m > 0] for r, m in zip(references, reference_masks)])
    std_q, idx = np.unique(np.percentile(std_values, q), return_index=True)
    units = np.interp(out.get_data(), std_q, np.percentile(ref_values, q)[idx])
    return _masked(source, mask, units)


def _fit_and_invert(normalizer_cls, source, mask, reference, reference_mask, **kwargs):
    """Normalize ``source`` with a per-image normalizer, then undo the same
    normalizer fitted on the reference: ``(x - m_s) / s_s * s_r + m_r``."""
    inorm = _intensity_normalization()
    img = inorm.create_image
    src = normalizer_cls(**kwargs).fit(img(source.astype(np.float64)),
                                       img((mask > 0).astype(np.float64)))
    ref = normalizer_cls(**kwargs).fit(img(reference.astype(np.float64)),
                                       img((reference_mask > 0).astype(np.float64)))
    return _masked(source, mask, (source - src.mean) / src.std * ref.std + ref.mean)


def whitestripe(source: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                reference_mask: np.ndarray) -> np.ndarray:
    """WhiteStripe (intensity-normalization), mapped onto the reference's white-matter
    stripe mean and SD (a linear map: it cannot change contrast, only scale)."""
    return _fit_and_invert(_intensity_normalization().WhiteStripeNormalizer, source, mask,
                           reference, reference_mask)


def zscore_to(source: np.ndarray, mask: np.ndarray, reference: np.ndarray,
              reference_mask: np.ndarray) -> np.ndarray:
    """Z-score (intensity-normalization), mapped onto the reference's brain mean and SD."""
    return _fit_and_invert(_intensity_normalization().ZScoreNormalizer, source, mask,
                           reference, reference_mask)


def ants_histogram_match(source: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                         reference_mask: np.ndarray) -> np.ndarray:
    """ANTs ``HistogramMatchImageFilter`` (antspyx), brains only."""
    import ants

    src = ants.from_numpy(np.where(mask > 0, source, 0).astype(np.float32))
    ref = ants.from_numpy(np.where(reference_mask > 0, reference, 0).astype(np.float32))
    out = ants.histogram_match_image(src, ref, number_of_histogram_bins=255,
                                     number_of_match_points=64,
                                     use_threshold_at_mean_intensity=True)
    return _masked(source, mask, out.numpy())
