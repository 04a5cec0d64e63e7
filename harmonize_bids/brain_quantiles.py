"""Whole-brain intensity quantiles, and the subject-kept match onto a reference site's scans.

The tissue landmarks of :mod:`harmonize_bids.site_intensity` are quantiles *within*
each tissue class, so a match onto them cannot move how much of the brain falls in
each class: the outputs keep most of the source's grey/white-matter split, which is
what tells them from genuine target-site scans (``docs/model.md``, "Decisions of
session 26").  Here a brain is described by quantiles of its whole in-brain histogram
(:data:`PERCENTILES`, in units of its own 99th percentile), which hold that split too.

A scan's quantiles are placed within its own site's scans (a z-score per quantile, as
:func:`~harmonize_bids.site_intensity.standardized_landmarks` does for landmarks) and
moved to the same place among the *reference* site's scans — the dataset's own scans of
the target site (ComBat's reference batch) — so every site's outputs share the
reference's quantile mean and spread while each brain keeps its place (its tissue mix)
among its site's brains.  Measured in session 26 on the bundled model's outputs
(``benchmarks/brain_quantile_match.py``): the best scores on traveling subjects, but
with different people at source and target it loses that gain, since whole-brain
quantiles carry the tissue mix (anatomy) too; so the app keeps the tissue landmarks and
this stays a benchmark and a peer (``docs/model.md``, "Decisions of session 26").
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from harmonize_bids.site_intensity import SiteLandmarks, piecewise_linear, within_site_z

#: the percentiles that describe a brain's histogram
PERCENTILES = np.linspace(0.5, 99.5, 100)


def brain_quantiles(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The in-mask :data:`PERCENTILES` of ``image`` divided by its 99th percentile.

    >>> image = np.arange(1, 201, dtype=float).reshape(10, 20)
    >>> q = brain_quantiles(image, image > 0)
    >>> len(q), round(float(q[0]), 4), round(float(q[-1]), 4)
    (100, 0.0101, 1.005)
    """
    values = np.asarray(image, dtype=np.float64)[np.asarray(mask) > 0]
    if values.size == 0:
        raise ValueError("no voxels in the mask")
    top = np.percentile(values, 99)
    if top <= 0:
        raise ValueError("the image's 99th percentile in the mask is not positive")
    return np.percentile(values, PERCENTILES) / top


def standardized_quantiles(reference: SiteLandmarks, source_site: SiteLandmarks,
                           source_own: Sequence[float], max_z: float = 3.0) -> np.ndarray:
    """The reference site's quantiles moved by where one scan stands within its own site:
    ``reference.mean + z * reference.sd`` with ``z`` the scan's z-score per quantile
    (clipped to ``max_z``; 0 where its site has no spread), made non-decreasing.

    >>> ref = SiteLandmarks(5, np.array([0.2, 0.5, 1.0]), np.array([0.02, 0.05, 0.0]))
    >>> site = SiteLandmarks(5, np.array([0.3, 0.6, 1.0]), np.array([0.01, 0.1, 0.0]))
    >>> standardized_quantiles(ref, site, [0.3, 0.6, 1.0]).tolist()
    [0.2, 0.5, 1.0]
    >>> standardized_quantiles(ref, site, [0.31, 0.7, 1.0]).round(3).tolist()
    [0.22, 0.55, 1.0]
    """
    own = np.asarray(source_own, dtype=np.float64)
    if not len(own) == len(reference.mean) == len(source_site.mean):
        raise ValueError(f"quantile vectors of different lengths: {len(own)}, "
                         f"{len(reference.mean)}, {len(source_site.mean)}")
    z = within_site_z(own, source_site, max_z)
    return np.maximum.accumulate(reference.mean + z * reference.sd)


def match_brain_quantiles(image: np.ndarray, mask: np.ndarray, target: Sequence[float]
                          ) -> np.ndarray:
    """``image`` with its in-mask quantiles mapped onto ``target`` (brain quantiles, in
    units of the 99th percentile) on the image's own scale (its 99th percentile is
    kept); monotone, >= 0, zero outside ``mask``.  Quantiles that tie (in the image or
    the target) are dropped from the map.

    >>> rng = np.random.default_rng(0)
    >>> image = rng.uniform(0.1, 1.0, (20, 20, 20)); mask = image > 0
    >>> target = brain_quantiles(image, mask) ** 2        # a darker grey scale
    >>> out = match_brain_quantiles(image, mask, target)
    >>> bool(np.abs(brain_quantiles(out, mask) - target).max() < 0.01)
    True
    """
    mask = np.asarray(mask) > 0
    values = np.asarray(image, dtype=np.float64)[mask]
    own = np.percentile(values, PERCENTILES)
    goal = np.asarray(target, dtype=np.float64) * np.percentile(values, 99)
    keep = np.ones(len(own), bool)
    keep[1:] = (np.diff(own) > 1e-9) & (np.diff(goal) > 1e-9)
    out = np.zeros(np.shape(image), dtype=np.float32)
    out[mask] = np.clip(piecewise_linear(values, own[keep], goal[keep]), 0, None)
    return out
