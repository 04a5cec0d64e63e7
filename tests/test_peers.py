"""The classical peers map a source onto a target site's intensities."""
import numpy as np
import pytest

from harmonize_bids import peers


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    source = rng.gamma(3.0, 1.0, (24, 24, 24)).astype(np.float32)
    mask = np.zeros(source.shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    return source, mask


@pytest.mark.parametrize("method", [peers.zscore_to, peers.whitestripe])
def test_linear_peers_recover_an_affine_site_difference(pair, method):
    source, mask = pair
    reference = 3.0 * source + 7.0  # the same anatomy at a site with another gain/offset
    out = method(source, mask, reference, mask)
    assert np.allclose(out[mask], reference[mask], atol=1e-3)
    assert not out[~mask].any()


def test_linear_peers_cannot_change_contrast(pair):
    source, mask = pair
    reference = source ** 2  # a non-linear (contrast) difference
    out = peers.zscore_to(source, mask, reference, mask)
    assert np.abs(out[mask] - reference[mask]).mean() > 0.5


def test_nyul_learns_a_monotonic_site_mapping(pair):
    source, mask = pair
    references = [np.sqrt(source) * 10, np.sqrt(source) * 10 + 0.01]
    for ref in references:
        ref[~mask] = 500.0  # a bright skull outside the brain must not matter
    out = peers.nyul(source, mask, references, [mask, mask])
    err = np.abs(out[mask] - references[0][mask]).mean()
    assert err < 0.05 * references[0][mask].mean()


def test_ants_histogram_match_moves_towards_the_reference(pair):
    source, mask = pair
    reference = np.sqrt(source) * 10
    out = peers.ants_histogram_match(source, mask, reference, mask)
    before = np.abs(source[mask] - reference[mask]).mean()
    after = np.abs(out[mask] - reference[mask]).mean()
    assert after < 0.2 * before
