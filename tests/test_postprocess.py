import numpy as np

import pytest

from harmonize_bids.postprocess import level_slices, masked_gaussian, transfer_detail


def _brain(shape=(24, 20, 30), seed=0):
    rng = np.random.default_rng(seed)
    source = 0.5 + 0.3 * (rng.random(shape) > 0.5) + 0.05 * rng.standard_normal(shape)
    mask = np.zeros(shape, bool)
    mask[3:-3, 3:-3, 2:-4] = True
    return np.where(mask, source, 0), mask


def _slice_means(image, mask):
    return np.array([image[:, :, z][mask[:, :, z]].mean() for z in range(image.shape[2])
                     if mask[:, :, z].any()])


def test_level_slices_removes_jitter_and_keeps_the_trend_and_the_slices():
    """Per-slice offsets (what a slice-wise model adds) go; a smooth trend across
    slices and the content of each slice stay."""
    source, mask = _brain()
    z = np.arange(source.shape[2])
    trend = 0.004 * (z - z.mean())                                 # smooth, kept
    jitter = 0.06 * np.random.default_rng(1).standard_normal(z.size)  # jumps, removed
    model = np.where(mask, 1.5 * source ** 1.1 + 0.1 + trend + jitter, 0)
    wanted = np.where(mask, 1.5 * source ** 1.1 + 0.1 + trend, 0)
    out = level_slices(model, source, mask)
    before = _slice_means(model - wanted, mask)
    after = _slice_means(out - wanted, mask)
    assert np.std(np.diff(after)) < 0.2 * np.std(np.diff(before))
    # whatever was changed, it is one offset per slice: the slice's content is the model's
    change = out - model
    for k in np.nonzero(mask.any(axis=(0, 1)))[0]:
        values = change[:, :, k][mask[:, :, k]]
        assert np.ptp(values) < 1e-5
    # the trend survives in the slices away from the ends
    inner = _slice_means(out, mask)[4:-4] - _slice_means(wanted, mask)[4:-4]
    assert np.abs(inner - inner.mean()).max() < 0.02
    assert not out[~mask].any() and out.dtype == np.float32


def test_level_slices_leaves_a_consistent_volume_alone():
    source, mask = _brain(seed=2)
    model = np.where(mask, 0.8 * source + 0.2, 0)
    np.testing.assert_allclose(level_slices(model, source, mask), model, atol=1e-5)


def test_level_slices_checks_shapes_and_handles_an_empty_mask():
    source, mask = _brain()
    with pytest.raises(ValueError, match="shapes differ"):
        level_slices(source[:-1], source, mask)
    assert not level_slices(source, source, np.zeros_like(mask)).any()


def test_detail_comes_from_the_source_and_contrast_from_the_model():
    """The model's output has the target contrast but is blurred; the source is sharp
    with another site's (non-linear) intensities: the result is close to the truth."""
    rng = np.random.default_rng(0)
    truth = np.ones((40, 40, 40))
    truth[:, 20:] = 2.0                                        # two tissues
    truth += 0.8 * (rng.random(truth.shape) < 0.02)            # small structures
    mask = np.zeros_like(truth, bool)
    mask[4:-4, 4:-4, 4:-4] = True
    source = 3.0 * truth ** 1.2 + 5                            # another site's contrast
    harmonized = masked_gaussian(truth, mask, 1.5)             # right contrast, too smooth
    out = transfer_detail(harmonized, source, mask, sigma_vox=1.0)
    err_out = np.abs(out - truth)[mask].mean()
    err_model = np.abs(harmonized - truth)[mask].mean()
    assert err_out < 0.5 * err_model
    assert abs(out[mask].mean() - truth[mask].mean()) < 0.05
    assert not out[~mask].any()
