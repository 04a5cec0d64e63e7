"""Whole-brain quantiles and the subject-kept match onto a reference site's scans."""
from __future__ import annotations

import numpy as np
import pytest

from harmonize_bids import brain_quantiles as bq
from harmonize_bids.site_intensity import scan_statistics


def _brain(gm_share: float, contrast: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy two-tissue brain: a share ``gm_share`` of voxels at ``contrast`` x WM."""
    rng = np.random.default_rng(seed)
    gm = rng.random((16, 16, 16)) < gm_share
    image = np.where(gm, contrast, 1.0) + rng.normal(0, 0.03, gm.shape)
    return image.clip(0.01), np.ones(gm.shape, bool)


def test_the_match_moves_the_grey_white_split_a_tissue_landmark_match_keeps():
    """Matching onto another brain's whole-brain quantiles gives its histogram, split
    between tissues included, and keeps the order of the voxels (a monotone map)."""
    image, mask = _brain(0.3, 0.6, 0)
    other, _ = _brain(0.5, 0.7, 1)
    out = bq.match_brain_quantiles(image, mask, bq.brain_quantiles(other, mask))
    np.testing.assert_allclose(bq.brain_quantiles(out, mask),
                               bq.brain_quantiles(other, mask), atol=0.02)
    order = np.argsort(image[mask], kind="stable")
    assert np.all(np.diff(out[mask][order]) >= -1e-6)
    assert np.percentile(out[mask], 99) == pytest.approx(np.percentile(image[mask], 99),
                                                         rel=0.01)


def test_every_site_lands_on_the_reference_and_each_brain_keeps_its_place():
    """Two sites with different contrasts, the same five tissue mixes each: after the
    match both sites' outputs share the reference's mean quantiles, and a brain with
    more grey matter than its site's mean stays darker than one with less."""
    shares = [0.2, 0.3, 0.4, 0.5, 0.6]
    reference = scan_statistics(
        [bq.brain_quantiles(*_brain(s, 0.7, 100 + k)) for k, s in enumerate(shares)])
    outputs = {}
    for site, contrast in (("a", 0.5), ("b", 0.85)):
        scans = [_brain(s, contrast, 10 * ord(site) + k) for k, s in enumerate(shares)]
        stats = scan_statistics([bq.brain_quantiles(*scan) for scan in scans])
        outputs[site] = [bq.match_brain_quantiles(
            image, mask, bq.standardized_quantiles(reference, stats,
                                                   bq.brain_quantiles(image, mask)))
            for image, mask in scans]
    means = {site: np.mean([bq.brain_quantiles(o, o > 0) for o in outs], axis=0)
             for site, outs in outputs.items()}
    np.testing.assert_allclose(means["a"], reference.mean, atol=0.03)
    np.testing.assert_allclose(means["b"], reference.mean, atol=0.03)
    for outs in outputs.values():
        assert np.median(outs[-1]) < np.median(outs[0])   # most grey matter: darkest


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="no voxels"):
        bq.brain_quantiles(np.ones((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="99th percentile"):
        bq.brain_quantiles(np.zeros((2, 2)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="one row of values"):
        scan_statistics([])
    site = scan_statistics([[0.1, 1.0], [0.2, 1.0]])
    with pytest.raises(ValueError, match="different lengths"):
        bq.standardized_quantiles(site, site, [0.1, 0.5, 1.0])
