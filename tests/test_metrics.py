"""Known answers and directions for harmonize_bids.metrics (tiny arrays, < 5 s)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from harmonize_bids import metrics as M

SHAPE = (16, 16, 16)


def _ball_mask(shape=SHAPE, radius=6.5):
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, float) - 1) / 2
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return r2 <= radius**2


def _smooth_image(rng, shape=SHAPE, sigma=2.0):
    """A positive, smoothly varying 'anatomy' (isotropic structure)."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return 100.0 + 20.0 * noise / noise.std()


def _three_class_phantom(shape=SHAPE):
    """Concentric shells: WM core (3), GM shell (2), CSF rim (1), inside a ball mask."""
    mask = _ball_mask(shape, 7.0)
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, float) - 1) / 2
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    tissue = np.zeros(shape, int)
    tissue[mask] = 1
    tissue[mask & (r <= 5.5)] = 2
    tissue[mask & (r <= 3.5)] = 3
    return tissue, mask


# --------------------------------------------------------------------------- #
# robust_normalize
# --------------------------------------------------------------------------- #
def test_robust_normalize_maps_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    img = rng.gamma(3.0, 50.0, SHAPE)
    mask = _ball_mask()
    img[~mask] = 1e6  # outside values must not influence anything
    out = M.robust_normalize(img, mask)
    p1, p99 = np.percentile(out[mask], [1, 99])
    assert p1 == pytest.approx(0.0, abs=1e-12)
    assert p99 == pytest.approx(1.0, abs=1e-12)
    assert np.all(out[~mask] == 0.0)
    # same percentiles as computed by hand on the in-mask values
    lo, hi = np.percentile(img[mask], [1, 99])
    np.testing.assert_allclose(out[mask], (img[mask] - lo) / (hi - lo))


def test_robust_normalize_custom_percentiles():
    out = M.robust_normalize(np.arange(11.0), np.ones(11, bool), low=10, high=90)
    assert out[1] == pytest.approx(0.0) and out[9] == pytest.approx(1.0)
    assert out[0] == pytest.approx(-0.125)  # not clipped


def test_robust_normalize_bad_inputs():
    img = np.ones(SHAPE)
    with pytest.raises(ValueError):
        M.robust_normalize(img, np.zeros(SHAPE, bool))  # empty mask
    with pytest.raises(ValueError):
        M.robust_normalize(img, np.ones(SHAPE, bool))  # constant: p_high == p_low
    with pytest.raises(ValueError):
        M.robust_normalize(np.arange(8.0), np.ones(8, bool), low=50, high=50)
    with pytest.raises(ValueError):
        M.robust_normalize(np.arange(8.0), np.ones(7, bool))  # shape mismatch


# --------------------------------------------------------------------------- #
# voxel-wise metrics
# --------------------------------------------------------------------------- #
def test_identical_images_are_perfect():
    rng = np.random.default_rng(0)
    img = _smooth_image(rng)
    mask = _ball_mask()
    assert M.ssim3d(img, img.copy(), mask) == pytest.approx(1.0, abs=1e-9)
    assert M.psnr(img, img.copy(), mask) == math.inf
    assert M.mae(img, img.copy(), mask) == 0.0
    assert M.correlation(img, img.copy(), mask) == pytest.approx(1.0, abs=1e-12)
    assert M.intensity_wasserstein(img, img.copy(), mask) == 0.0
    res = M.compare(img, img.copy(), mask)
    assert res["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert res["psnr"] == math.inf
    assert res["mae"] == 0.0 and res["wasserstein"] == 0.0
    assert res["correlation"] == pytest.approx(1.0)


def test_hand_computed_mae_psnr():
    a = np.zeros((2, 2, 1))
    b = np.array([[0.1, 0.2], [0.3, 0.4]])[..., None]
    mask = np.ones(a.shape, bool)
    # |d| = .1 .2 .3 .4 -> MAE .25 ; d^2 = .01 .04 .09 .16 -> MSE .075
    assert M.mae(a, b, mask, normalize=False) == pytest.approx(0.25)
    assert M.psnr(a, b, mask, normalize=False) == pytest.approx(10 * math.log10(1 / 0.075))
    assert M.psnr(a, b, mask, data_range=2.0, normalize=False) == pytest.approx(
        10 * math.log10(4 / 0.075)
    )
    # drop the 0.4 voxel: MAE .2, MSE 14/300
    mask[1, 1, 0] = False
    assert M.mae(a, b, mask, normalize=False) == pytest.approx(0.2)
    assert M.psnr(a, b, mask, normalize=False) == pytest.approx(10 * math.log10(300 / 14))


def test_normalization_ignores_global_gain_and_offset():
    rng = np.random.default_rng(0)
    img = _smooth_image(rng)
    mask = _ball_mask()
    other = 7.5 * img - 30.0
    assert M.mae(img, other, mask) == pytest.approx(0.0, abs=1e-12)
    assert M.ssim3d(img, other, mask) == pytest.approx(1.0, abs=1e-9)
    assert M.mae(img, other, mask, normalize=False) > 1.0


def test_metrics_worsen_monotonically_with_noise():
    rng = np.random.default_rng(0)
    truth = _smooth_image(rng)
    mask = _ball_mask()
    noise = rng.standard_normal(SHAPE)
    results = [M.compare(truth + s * noise, truth, mask) for s in (1.0, 4.0, 10.0, 25.0)]
    ssim = [r["ssim"] for r in results]
    psnr = [r["psnr"] for r in results]
    mae = [r["mae"] for r in results]
    corr = [r["correlation"] for r in results]
    assert all(x > y for x, y in zip(ssim, ssim[1:])), ssim
    assert all(x > y for x, y in zip(psnr, psnr[1:])), psnr
    assert all(x < y for x, y in zip(mae, mae[1:])), mae
    assert all(x > y for x, y in zip(corr, corr[1:])), corr
    assert ssim[0] > 0.9 and ssim[-1] < 0.7


def test_correlation_sign_and_constant():
    rng = np.random.default_rng(0)
    img = _smooth_image(rng)
    mask = _ball_mask()
    assert M.correlation(img, -img, mask) == pytest.approx(-1.0)
    assert math.isnan(M.correlation(img, np.ones(SHAPE), mask, normalize=False))


def test_comparison_bad_inputs():
    a = np.random.default_rng(0).random(SHAPE)
    mask = _ball_mask()
    with pytest.raises(ValueError):
        M.mae(a, a[:-1], mask[:-1])  # shape mismatch between images
    with pytest.raises(ValueError):
        M.psnr(a, a, mask[:-1])  # mask shape mismatch
    with pytest.raises(ValueError):
        M.ssim3d(a, a, np.zeros(SHAPE, bool))  # empty mask
    with pytest.raises(ValueError):
        M.psnr(a, a, mask, data_range=0.0)
    with pytest.raises(ValueError):
        M.ssim3d(a, a, mask, sigma=0.0)
    b = a.copy()
    b[8, 8, 8] = np.nan
    with pytest.raises(ValueError):
        M.mae(a, b, mask)


# --------------------------------------------------------------------------- #
# Wasserstein
# --------------------------------------------------------------------------- #
def test_wasserstein_known_values():
    assert M.wasserstein([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]) == 0.0
    assert M.wasserstein([0.0, 1.0], [3.0, 4.0]) == pytest.approx(3.0)  # pure shift
    assert M.wasserstein(np.zeros((2, 2)), np.ones(5)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        M.wasserstein([], [1.0])


def test_intensity_wasserstein_linear_invariance_not_gamma():
    rng = np.random.default_rng(0)
    img = rng.gamma(4.0, 25.0, SHAPE)
    mask = _ball_mask()
    rescaled = 3.0 * img + 40.0
    assert M.intensity_wasserstein(img, rescaled, mask) == pytest.approx(0.0, abs=1e-12)
    assert M.intensity_wasserstein(img, rescaled, mask, normalize=False) > 10.0
    gamma = img**0.5
    assert M.intensity_wasserstein(img, gamma, mask) > 0.02


def test_intensity_wasserstein_different_grids():
    rng = np.random.default_rng(0)
    a = rng.normal(100.0, 10.0, (10, 10, 10))
    b = rng.normal(500.0, 50.0, (6, 12, 8))  # other grid, same shape of distribution
    ma = np.ones(a.shape, bool)
    mb = np.ones(b.shape, bool)
    assert M.intensity_wasserstein(a, b, ma, mb) < 0.03
    c = rng.exponential(1.0, (6, 12, 8))  # skewed: a different distribution
    assert M.intensity_wasserstein(a, c, ma, mb) > 3 * M.intensity_wasserstein(a, b, ma, mb)
    with pytest.raises(ValueError):
        M.intensity_wasserstein(a, b, ma)  # mask_b defaults to mask_a: wrong shape


# --------------------------------------------------------------------------- #
# Dice and tissue segmentation
# --------------------------------------------------------------------------- #
def test_dice_known_overlaps():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert M.dice(a, b) == 1.0  # both empty
    a[:2] = True  # 32 voxels
    assert M.dice(a, b) == 0.0
    assert M.dice(a, a) == 1.0
    b[1:3] = True  # 32 voxels, 16 shared -> 2*16/64
    assert M.dice(a, b) == pytest.approx(0.5)
    b[:] = False
    b[0, :, :2] = True  # 8 voxels, all inside a -> 2*8/40
    assert M.dice(a, b) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        M.dice(a, b[:-1])


def test_tissue_segmentation_recovers_three_classes():
    rng = np.random.default_rng(0)
    tissue, mask = _three_class_phantom()
    means = {1: 30.0, 2: 70.0, 3: 110.0}  # T1w: CSF < GM < WM
    img = np.zeros(SHAPE)
    for k, mu in means.items():
        img[tissue == k] = mu
    img += rng.normal(0.0, 6.0, SHAPE)
    seg = M.tissue_segmentation(img, mask, random_state=0)
    assert seg.dtype.kind == "i"
    assert set(np.unique(seg[mask])) == {1, 2, 3}
    assert np.all(seg[~mask] == 0)
    for k in (1, 2, 3):
        assert M.dice(seg == k, tissue == k) > 0.9
    scores = M.tissue_dice(img, mask, tissue)
    assert set(scores) == {"csf", "gm", "wm", "mean"}
    assert scores["mean"] > 0.9
    assert scores["mean"] == pytest.approx(np.mean([scores["csf"], scores["gm"], scores["wm"]]))
    # deterministic for a given random_state
    np.testing.assert_array_equal(seg, M.tissue_segmentation(img, mask, random_state=0))
    # compare() bundles the tissue Dice
    res = M.compare(img, img.copy(), mask, tissue_map=tissue)
    assert res["tissue_dice"] == pytest.approx(scores["mean"])


def test_tissue_segmentation_subsamples_large_masks(monkeypatch):
    """The GMM is fitted on a random subset when the mask is large (cap lowered here)."""
    rng = np.random.default_rng(0)
    tissue, mask = _three_class_phantom()
    img = np.choose(tissue, [0.0, 30.0, 70.0, 110.0]) + rng.normal(0.0, 6.0, SHAPE)
    monkeypatch.setattr(M, "_MAX_GMM_SAMPLES", 300)
    seg = M.tissue_segmentation(img, mask, random_state=1)
    assert np.all(seg[~mask] == 0)
    for k in (1, 2, 3):
        assert M.dice(seg == k, tissue == k) > 0.9


@pytest.mark.parametrize("cap", [None, 300])
def test_tissue_segmentation_ignores_voxel_order(monkeypatch, cap):
    """The same brain stored in another orientation gets the same classes."""
    if cap:
        monkeypatch.setattr(M, "_MAX_GMM_SAMPLES", cap)
    rng = np.random.default_rng(4)
    tissue, mask = _three_class_phantom()
    img = np.choose(tissue, [0.0, 30.0, 55.0, 80.0]) + rng.normal(0.0, 12.0, SHAPE)
    seg = M.tissue_segmentation(img, mask)
    turned = M.tissue_segmentation(np.flip(img, 0).transpose(2, 0, 1),
                                   np.flip(mask, 0).transpose(2, 0, 1))
    np.testing.assert_array_equal(np.flip(seg, 0).transpose(2, 0, 1), turned)


def test_tissue_segmentation_bad_inputs():
    mask = _ball_mask()
    with pytest.raises(ValueError):
        M.tissue_segmentation(np.ones(SHAPE), mask)  # constant
    with pytest.raises(ValueError):
        M.tissue_segmentation(np.random.default_rng(0).random(SHAPE), np.zeros(SHAPE, bool))
    with pytest.raises(ValueError):
        M.tissue_dice(np.random.default_rng(0).random(SHAPE), mask, np.zeros((2, 2, 2)))


# --------------------------------------------------------------------------- #
# flicker
# --------------------------------------------------------------------------- #
def test_flicker_smooth_vs_slicewise_offsets():
    rng = np.random.default_rng(0)
    source = _smooth_image(rng)
    mask = _ball_mask()
    change = 5.0 * ndi.gaussian_filter(rng.standard_normal(SHAPE), 3.0)
    change /= np.abs(change).max()
    smooth = source + 5.0 * change
    f_smooth = M.flicker(source, smooth, mask, axis=2)
    assert 0.5 < f_smooth < 1.5  # isotropic change: about 1
    offsets = rng.normal(0.0, 2.0, SHAPE[2])[None, None, :]
    jumpy = smooth + offsets
    f_jumpy = M.flicker(source, jumpy, mask, axis=2)
    assert f_jumpy > 2.0 * f_smooth
    # offsets along axis 2 do not flicker along axis 0
    assert M.flicker(source, jumpy, mask, axis=0) < f_jumpy / 2


def test_flicker_zero_change_and_bad_inputs():
    rng = np.random.default_rng(0)
    source = _smooth_image(rng)
    mask = _ball_mask()
    assert M.flicker(source, source.copy(), mask) == 0.0
    assert M.flicker(source, 2.0 * source + 1.0, mask) == 0.0  # removed by normalization
    with pytest.raises(ValueError):
        M.flicker(source[0], source[0], mask[0])  # 2D
    with pytest.raises(ValueError):
        M.flicker(source, source, mask, axis=3)


def test_slice_jumps_see_level_offsets_that_flicker_misses():
    """Small per-slice offsets on top of voxel noise: flicker stays near 1 (the noise
    dominates voxel differences), slice_jumps reports the offsets' size."""
    rng = np.random.default_rng(0)
    source = _smooth_image(rng)
    mask = _ball_mask()
    noisy = source + 0.5 * rng.standard_normal(SHAPE)
    offsets = rng.normal(0.0, 0.3, SHAPE[2])[None, None, :]
    jumpy = noisy + offsets
    assert M.flicker(source, jumpy, mask) < 1.2 * M.flicker(source, noisy, mask)
    calm = M.slice_jumps(source, noisy, mask, normalize=False)
    jumps = M.slice_jumps(source, jumpy, mask, normalize=False)
    inside = mask.any(axis=(0, 1))
    expected = np.sqrt(np.mean(np.diff(offsets[0, 0, inside]) ** 2))
    assert jumps > 3 * calm
    assert abs(jumps - expected) < 0.25 * expected
    # a change with the same level in every slice, or none at all, has no jumps
    assert M.slice_jumps(source, source + 0.7, mask, normalize=False) == pytest.approx(0.0)
    assert M.slice_jumps(source, source.copy(), mask) == 0.0
    with pytest.raises(ValueError):
        M.slice_jumps(source[0], source[0], mask[0])


# --------------------------------------------------------------------------- #
# site predictability
# --------------------------------------------------------------------------- #
def _site_images(rng, n, gamma=1.0, shape=(8, 8, 8)):
    mask = np.ones(shape, bool)
    images = []
    for _ in range(n):
        img = rng.gamma(4.0, 25.0, shape) + 20.0
        img = (img / img.max()) ** gamma
        images.append(img)
    return images, [mask] * n


def test_site_predictability_detects_gamma_site_effect():
    rng = np.random.default_rng(0)
    a, ma = _site_images(rng, 20, gamma=1.0)
    b, mb = _site_images(rng, 20, gamma=2.0)
    res = M.site_predictability(a + b, ma + mb, ["A"] * 20 + ["B"] * 20, random_state=0)
    assert res["accuracy"] >= 0.95
    assert res["chance"] == 0.5 and res["n_images"] == 40 and res["n_sites"] == 2


def test_site_predictability_near_chance_without_site_effect():
    rng = np.random.default_rng(0)
    images, masks = _site_images(rng, 40)
    sites = rng.permutation(["A"] * 20 + ["B"] * 20)
    res = M.site_predictability(images, masks, list(sites), random_state=0)
    assert res["accuracy"] < 0.8


def test_site_predictability_averages_repeated_splits():
    """n_repeats splits, seeded random_state, random_state + 1, ...: their mean and spread."""
    rng = np.random.default_rng(3)
    images, masks = _site_images(rng, 12)
    sites = list(rng.permutation(["A"] * 6 + ["B"] * 6))
    singles = [M.site_predictability(images, masks, sites, n_splits=3, random_state=r,
                                     n_repeats=1)["accuracy"] for r in range(5, 9)]
    res = M.site_predictability(images, masks, sites, n_splits=3, random_state=5, n_repeats=4)
    assert res["n_repeats"] == 4
    assert res["accuracy"] == pytest.approx(np.mean(singles))
    assert res["accuracy_sd"] == pytest.approx(np.std(singles))
    assert len(set(singles)) > 1  # the split alone moves one repeat's accuracy
    with pytest.raises(ValueError, match="n_repeats"):
        M.site_predictability(images, masks, sites, n_repeats=0)


def test_site_histogram_features_are_in_mask_densities():
    """One density histogram per image, of the masked voxels only, on [0, 1.2]."""
    rng = np.random.default_rng(5)
    images, masks = _site_images(rng, 3)
    masks = [m.copy() for m in masks]
    masks[1][:4] = False
    images[1][:4] = 1e6  # outside the mask: must not count
    feats = M.site_histogram_features(images, masks, n_bins=12)
    assert feats.shape == (3, 12)
    np.testing.assert_allclose(feats.sum(axis=1) * (1.2 / 12), 1.0)
    inside = M.site_histogram_features([images[1][4:]], [masks[1][4:]], n_bins=12)
    np.testing.assert_allclose(feats[1], inside[0])


def test_repeated_site_accuracy_on_any_features():
    """Separable features are told apart in every split; shuffled labels are not."""
    rng = np.random.default_rng(4)
    sites = ["A"] * 8 + ["B"] * 8 + ["C"] * 8
    features = np.repeat(np.eye(3), 8, axis=0) + rng.normal(0, 0.05, (24, 3))
    assert M.repeated_site_accuracy(features, sites, n_repeats=3) == (1.0, 0.0)
    noise = rng.normal(size=(24, 3))
    accuracy, sd = M.repeated_site_accuracy(noise, sites, n_repeats=5)
    assert accuracy < 0.6 and sd >= 0.0


def test_site_splits_grouped_keep_a_subject_on_one_side():
    """Grouped folds: no subject's images on both sides, every site in every test fold."""
    subjects = np.repeat(["s1", "s2", "s3", "s4", "s5"], 3)
    sites = np.tile(["A", "B", "C"], 5)
    cv = M.site_splits(sites, n_splits=4, random_state=1, groups=subjects)
    splits = list(cv.split(np.zeros(sites.size), sites, subjects))
    assert len(splits) == 4
    for train, test in splits:
        assert not set(subjects[train]) & set(subjects[test])
        assert set(sites[test]) == {"A", "B", "C"}
    assert len(list(M.site_splits(sites, n_splits=9, groups=subjects)
                    .split(np.zeros(sites.size), sites, subjects))) == 5  # one per subject
    with pytest.raises(ValueError, match="2 subjects"):
        M.site_splits(sites, groups=["s1"] * sites.size)


def test_site_predictability_with_groups():
    """The gamma site effect is found by subject-grouped folds too; the flag says which."""
    rng = np.random.default_rng(0)
    a, ma = _site_images(rng, 12, gamma=1.0)
    b, mb = _site_images(rng, 12, gamma=2.0)
    subjects = [f"s{k}" for k in range(12)] * 2
    res = M.site_predictability(a + b, ma + mb, ["A"] * 12 + ["B"] * 12, groups=subjects,
                                n_repeats=3)
    assert res["accuracy"] >= 0.95 and res["grouped"]
    assert res["fold_min"] <= res["accuracy"] <= res["fold_max"] <= 1.0
    plain = M.site_predictability(a + b, ma + mb, ["A"] * 12 + ["B"] * 12, n_repeats=3)
    assert not plain["grouped"]
    with pytest.raises(ValueError, match="same length"):
        M.site_predictability(a + b, ma + mb, ["A"] * 12 + ["B"] * 12, groups=subjects[:5])


def test_site_predictability_bad_inputs():
    rng = np.random.default_rng(0)
    images, masks = _site_images(rng, 4)
    with pytest.raises(ValueError):
        M.site_predictability(images, masks, ["A"] * 4)  # one site
    with pytest.raises(ValueError):
        M.site_predictability(images, masks, ["A", "A", "A", "B"])  # site B has 1 image
    with pytest.raises(ValueError):
        M.site_predictability(images, masks[:3], ["A", "A", "B", "B"])  # lengths
    # smallest site has 2 images: n_splits reduced to 2, still runs
    res = M.site_predictability(images, masks, ["A", "A", "B", "B"], n_splits=5)
    assert 0.0 <= res["accuracy"] <= 1.0
