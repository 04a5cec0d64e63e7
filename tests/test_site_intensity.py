"""Tissue intensity landmarks and mapping an image onto a site's."""
import numpy as np
import pytest

from harmonize_bids import site_intensity as si
from harmonize_bids.diffusion.model import ModelConfig


def three_tissue_brain(means=(0.3, 0.6, 0.9), fractions=(0.2, 0.4, 0.4), noise=0.02, seed=0):
    """A 3D 'brain' of three tissues with the given means and volume fractions."""
    rng = np.random.default_rng(seed)
    shape = (40, 40, 20)
    n = int(np.prod(shape))
    labels = rng.choice(3, size=n, p=fractions)
    image = np.asarray(means)[labels] + rng.normal(0, noise, n)
    mask = np.ones(shape, bool)
    mask[:2] = False
    image = image.reshape(shape)
    return np.where(mask, image, 0), mask


def write_tiny_model_and_brain(tmp_path, sites, landmarks):
    """A random-weight model storing ``landmarks``, and a noisy three-tissue brain
    (``std.nii.gz``, ``mask.nii.gz``, 4 mm) beside it; returns the model file."""
    import nibabel as nb
    import torch

    from harmonize_bids.diffusion.checkpoint import save_model
    from harmonize_bids.diffusion.model import HarmonizationModel

    torch.manual_seed(0)
    config = ModelConfig(sites=tuple(sites), base_channels=8, channel_mults=(1, 2),
                         attention_levels=(), encoder_channels=8, cond_channels=2,
                         voxel_mm=4.0, site_landmarks=landmarks)
    model_file = save_model(HarmonizationModel(config), tmp_path / "m.safetensors")
    image, mask = three_tissue_brain(means=(0.3, 0.6, 0.9), noise=0.05)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    nb.Nifti1Image(image.astype(np.float32), affine).to_filename(tmp_path / "std.nii.gz")
    nb.Nifti1Image(mask.astype(np.uint8), affine).to_filename(tmp_path / "mask.nii.gz")
    return model_file


def test_landmarks_find_the_tissue_medians():
    image, mask = three_tissue_brain()
    lm = si.tissue_landmarks(image, mask)
    assert lm.shape == (5,)
    np.testing.assert_allclose(lm[1:4], [0.3, 0.6, 0.9], atol=0.01)
    assert lm[0] < lm[1] and lm[3] < lm[4]


def test_landmarks_do_not_depend_on_tissue_volumes():
    a = si.tissue_landmarks(*three_tissue_brain(fractions=(0.1, 0.3, 0.6)))
    b = si.tissue_landmarks(*three_tissue_brain(fractions=(0.4, 0.4, 0.2), seed=1))
    np.testing.assert_allclose(a[1:4], b[1:4], atol=0.01)


def test_piecewise_linear_hand_values():
    src, tgt = np.array([0.0, 1.0, 2.0]), np.array([0.0, 2.0, 3.0])
    out = si.piecewise_linear(np.array([-1.0, 0.5, 1.5, 3.0]), src, tgt)
    np.testing.assert_allclose(out, [-2.0, 1.0, 2.5, 4.0])


def test_match_moves_tissue_medians_to_the_target_and_keeps_order():
    image, mask = three_tissue_brain(means=(0.2, 0.5, 0.95))
    target = [0.1, 0.3, 0.65, 0.85, 1.0]
    out = si.match_landmarks(image, mask, target)
    np.testing.assert_allclose(si.tissue_landmarks(out, mask)[1:4], target[1:4], atol=0.01)
    assert np.all(out[~mask] == 0) and out.min() >= 0
    # monotone: the ordering of in-mask voxels is unchanged
    order = np.argsort(image[mask], kind="stable")
    assert np.all(np.diff(out[mask][order]) >= -1e-6)


def test_match_onto_own_landmarks_changes_nothing():
    image, mask = three_tissue_brain()
    out = si.match_landmarks(image, mask, si.tissue_landmarks(image, mask))
    np.testing.assert_allclose(out[mask], image[mask], atol=1e-5)


def test_flat_image_is_refused():
    mask = np.ones((8, 8, 4), bool)
    with pytest.raises(ValueError):
        si.match_landmarks(np.full(mask.shape, 0.5), mask, [0.1, 0.3, 0.6, 0.9, 1.0])


@pytest.mark.parametrize("bad", [[0.1, 0.3, 0.2, 0.9, 1.0], [0.1, 0.3, 0.6], [0, 1, 2, 3, np.nan]])
def test_bad_target_landmarks_are_refused(bad):
    with pytest.raises(ValueError):
        si.check_landmarks(bad)


def test_site_landmarks_average_per_site_and_skip_degenerate_images():
    a1, m = three_tissue_brain(means=(0.3, 0.6, 0.9))
    a2, _ = three_tissue_brain(means=(0.32, 0.62, 0.92), seed=3)
    flat = np.where(m, 0.5, 0.0)
    out = si.site_landmarks({"a": [(a1, m), (a2, m)], "b": [(flat, m)]}, per_tissue=1)
    assert set(out) == {"a"}
    np.testing.assert_allclose(out["a"][1:4], [0.31, 0.61, 0.91], atol=0.01)
    # the default stores the 5 % grid, which holds the medians and quartiles schemes
    stored = si.site_landmarks({"a": [(a1, m), (a2, m)]})["a"]
    assert len(stored) == 2 + 3 * si.STORED_PER_TISSUE == 59
    np.testing.assert_allclose(si.coarsen(stored, 1), out["a"], atol=2e-4)
    quartiles = si.site_landmarks({"a": [(a1, m), (a2, m)]}, per_tissue=3)["a"]
    np.testing.assert_allclose(si.coarsen(stored, 3), quartiles, atol=2e-4)


def test_scheme_names_and_levels():
    assert si.landmark_names(1) == si.LANDMARK_NAMES == (
        "p0.5", "csf_q50", "gm_q50", "wm_q50", "p99.5")
    assert si.landmark_names(3)[1:4] == ("csf_q25", "csf_q50", "csf_q75")
    assert si.landmark_names(9)[1:10] == tuple(f"csf_q{q}" for q in range(10, 100, 10))
    assert si.tissue_levels(19)[4::5] == (0.25, 0.5, 0.75)
    assert [si.per_tissue_of([0] * n) for n in (5, 8, 11)] == [1, 2, 3]
    for n in (3, 4, 6, 10):
        with pytest.raises(ValueError, match="2 \\+ 3 k"):
            si.per_tissue_of([0] * n)
    with pytest.raises(ValueError):
        si.tissue_levels(0)


def test_quartile_landmarks_measure_each_tissue_spread():
    noise = 0.03
    image, mask = three_tissue_brain(noise=noise)
    lm = si.tissue_landmarks(image, mask, per_tissue=3)
    assert lm.shape == (11,)
    half_iqr = 0.6745 * noise  # Gaussian quartiles sit at mean -+ 0.6745 sigma
    for t, mean in enumerate((0.3, 0.6, 0.9)):
        np.testing.assert_allclose(lm[1 + 3 * t:4 + 3 * t],
                                   [mean - half_iqr, mean, mean + half_iqr], atol=0.004)


def test_coarsen_takes_medians_out_of_quartiles_and_refuses_the_reverse():
    quartiles = np.linspace(0.1, 1.1, 11)
    np.testing.assert_allclose(si.coarsen(quartiles, 1), quartiles[[0, 2, 5, 8, 10]])
    np.testing.assert_allclose(si.coarsen(quartiles, 3), quartiles)
    with pytest.raises(ValueError, match="not among"):
        si.coarsen(quartiles[[0, 2, 5, 8, 10]], 3)


def test_the_stored_grid_holds_every_scheme():
    """Deciles, quartiles and medians all come out of the 5 % grid; deciles hold no quartiles."""
    grid = np.linspace(0.1, 1.1, 2 + 3 * si.STORED_PER_TISSUE)
    inner = grid[1:-1].reshape(3, si.STORED_PER_TISSUE)  # per tissue: 5 %, 10 %, ..., 95 %
    for name, k in si.SCHEMES.items():
        out = si.coarsen(grid, k)
        assert len(out) == 2 + 3 * k, name
        picked = inner[:, [round(20 * q) - 1 for q in si.tissue_levels(k)]]
        np.testing.assert_array_equal(out[1:-1], picked.ravel())
        assert out[0] == grid[0] and out[-1] == grid[-1]
    with pytest.raises(ValueError, match="not among"):
        si.coarsen(si.coarsen(grid, 9), 3)


def test_decile_match_gives_a_tissue_the_target_shape_and_quartiles_do_not():
    """Same median and quartiles, different tails: only deciles move the tails."""
    rng = np.random.default_rng(4)
    shape = (40, 40, 20)
    labels = rng.choice(3, size=shape, p=(0.2, 0.4, 0.4))
    means = np.array([0.3, 0.6, 0.9])[labels]
    mask = np.ones(shape, bool)
    # target: Gaussian tissue peaks; source: uniform peaks with the same quartiles
    sigma = 0.02
    gaussian = means + rng.normal(0, sigma, shape)
    half_width = 2 * 0.6745 * sigma  # uniform on [-w, w] has its quartiles at -+ w / 2
    uniform = means + rng.uniform(-half_width, half_width, shape)
    target = si.tissue_landmarks(gaussian, mask, per_tissue=9)

    def wm_tails(img):  # the 10th and 90th percentiles of white matter, around its median
        lm = si.tissue_landmarks(img, mask, per_tissue=9)
        return lm[19] - lm[23], lm[27] - lm[23]

    by_deciles = si.match_landmarks(uniform, mask, target)
    by_quartiles = si.match_landmarks(uniform, mask, si.coarsen(
        si.tissue_landmarks(gaussian, mask, per_tissue=si.STORED_PER_TISSUE), 3))
    want = np.array(wm_tails(gaussian))  # -+ 1.28 sigma
    np.testing.assert_allclose(wm_tails(by_deciles), want, rtol=0.05)
    # the quartile map only interpolates between quartiles (and the end percentiles),
    # so the tails come out wrong
    miss = np.abs(np.array(wm_tails(by_quartiles)) - want) / np.abs(want)
    assert miss.max() > 0.15, miss
    order = np.argsort(uniform[mask], kind="stable")
    assert np.all(np.diff(by_deciles[mask][order]) >= -1e-6)


def test_quartile_match_narrows_a_wide_tissue_peak_and_medians_do_not():
    """A noisy source's wide peaks are brought to the target's width only by quartiles."""
    wide, mask = three_tissue_brain(noise=0.05, seed=1)
    narrow, _ = three_tissue_brain(noise=0.02, seed=2)
    target = si.tissue_landmarks(narrow, mask, per_tissue=3)

    def wm_iqr(img):
        lm = si.tissue_landmarks(img, mask, per_tissue=3)
        return lm[9] - lm[7]

    by_quartiles = si.match_landmarks(wide, mask, target)
    by_medians = si.match_landmarks(wide, mask, si.coarsen(target, 1))
    assert wm_iqr(wide) > 2 * wm_iqr(narrow)
    np.testing.assert_allclose(wm_iqr(by_quartiles), wm_iqr(narrow), rtol=0.1)
    # the medians map narrows a little only through its end segments
    assert wm_iqr(by_medians) > 1.5 * wm_iqr(by_quartiles)
    # still one monotone map: the ordering of in-mask voxels is kept
    order = np.argsort(wide[mask], kind="stable")
    assert np.all(np.diff(by_quartiles[mask][order]) >= -1e-6)


def test_model_config_keeps_and_checks_site_landmarks():
    lm = [0.1, 0.3, 0.6, 0.9, 1.0]
    config = ModelConfig(sites=("a", "b"), site_landmarks={"a": lm})
    assert ModelConfig.from_dict(config.to_dict()).site_landmarks == {"a": lm}
    with pytest.raises(ValueError, match="does not know"):
        ModelConfig(sites=("a",), site_landmarks={"b": lm})
    with pytest.raises(ValueError, match="increase"):
        ModelConfig(sites=("a",), site_landmarks={"a": lm[::-1]})
    quartiles = [round(v, 2) for v in np.linspace(0.1, 1.1, 11)]
    config = ModelConfig(sites=("a",), site_landmarks={"a": quartiles})
    assert ModelConfig.from_dict(config.to_dict()).site_landmarks == {"a": quartiles}
    with pytest.raises(ValueError, match="2 \\+ 3 k"):
        ModelConfig(sites=("a",), site_landmarks={"a": quartiles[:-1]})


def test_end_percentile_tied_with_a_median_is_left_out():
    image, mask = three_tissue_brain(means=(0.0, 0.5, 0.9), noise=0.0)  # CSF all at 0
    image[mask & (image == 0)] = 0.0
    out = si.match_landmarks(image + 0.0, mask, [0.1, 0.3, 0.65, 0.85, 1.0])
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.unique(out[mask]), [0.3, 0.65, 0.85], atol=1e-6)


def test_end_percentile_inside_the_tissue_landmarks_is_allowed_and_left_out():
    """A fine scheme's CSF 5 % quantile can lie below the brain's 0.5th percentile: such
    landmarks are kept (site means of real brains look like that) and the map ignores
    the crossed end, in the target as in the image."""
    image, mask = three_tissue_brain(noise=0.03)
    own = si.tissue_landmarks(image, mask, per_tissue=1)
    crossed = own.copy()
    crossed[0] = own[1] + 0.01  # above the CSF median
    si.check_landmarks(crossed)
    out = si.match_landmarks(image, mask, crossed)
    np.testing.assert_allclose(out[mask], image[mask], atol=1e-9)  # the identity map, as
    np.testing.assert_allclose(si.match_landmarks(image, mask, own)[mask], image[mask],
                               atol=1e-9)  # with the end in place


def test_harmonize_step_matches_the_target_site_landmarks(tmp_path, monkeypatch):
    """The participant level's harmonization step ends with the target site's landmarks."""
    import nibabel as nb

    import harmonize_bids.diffusion.volume as volume

    # the network is not under test here: let it return a contrast-changed copy
    monkeypatch.setattr(volume, "harmonize_volume",
                        lambda model, low, mask, *a, **k: np.where(mask, 0.8 * low + 0.05, 0))

    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.interfaces.harmonize import harmonize_std_image

    target = [0.12, 0.3, 0.62, 0.86, 1.02]
    model_file = write_tiny_model_and_brain(tmp_path, ("a", "b"), {"a": target})
    _, mask = three_tissue_brain(means=(0.3, 0.6, 0.9), noise=0.05)
    sampler = SamplerSettings(steps=2)
    logged = []
    kwargs = dict(sampler=sampler, device="cpu", log=logged.append)
    meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz", model_file,
                               "a", tmp_path / "out.nii.gz", match_intensities="medians",
                               **kwargs)
    assert meta["TissueIntensitiesMatched"] is True, logged
    assert meta["TissueIntensityLandmarks"] == "medians"
    out = np.asarray(nb.load(tmp_path / "out.nii.gz").dataobj)
    np.testing.assert_allclose(si.tissue_landmarks(out, mask)[1:4], target[1:4], atol=0.02)
    # site b has no landmarks in this model: the output is kept as sampled, and we say so
    meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz", model_file,
                               "b", tmp_path / "out_b.nii.gz", match_intensities="medians",
                               **kwargs)
    assert meta["TissueIntensitiesMatched"] is False
    assert "TissueIntensityLandmarks" not in meta
    assert any("no tissue intensity landmarks for 'b'" in m for m in logged)
    # this model stores medians only: quartiles cannot be matched, and we say so
    meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz", model_file,
                               "a", tmp_path / "out_q.nii.gz", match_intensities="quartiles",
                               **kwargs)
    assert meta["TissueIntensitiesMatched"] is False
    assert any("stores 'medians' landmarks for 'a', not 'quartiles'" in m for m in logged)
    with pytest.raises(ValueError, match="match_intensities"):
        harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz", model_file,
                            "a", tmp_path / "out_x.nii.gz", match_intensities="yes", **kwargs)
    # off by default (--match-intensities is opt-in)
    meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz", model_file,
                               "a", tmp_path / "out_off.nii.gz", **kwargs)
    assert meta["TissueIntensitiesMatched"] is False
    off = np.asarray(nb.load(tmp_path / "out_off.nii.gz").dataobj)
    assert not np.allclose(off, out)


def test_harmonize_step_matches_every_stored_scheme(tmp_path, monkeypatch):
    """A model storing the 5 % grid serves every scheme; quartiles also set each tissue's
    spread, deciles its tails."""
    import nibabel as nb

    import harmonize_bids.diffusion.volume as volume

    monkeypatch.setattr(volume, "harmonize_volume",
                        lambda model, low, mask, *a, **k: np.where(mask, low, 0))

    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.interfaces.harmonize import harmonize_std_image

    narrow, mask = three_tissue_brain(means=(0.25, 0.55, 0.85), noise=0.02, seed=5)
    stored = [round(float(v), 4) for v in
              si.tissue_landmarks(narrow, mask, per_tissue=si.STORED_PER_TISSUE)]
    target = si.coarsen(stored, 3)
    model_file = write_tiny_model_and_brain(tmp_path, ("a",), {"a": stored})
    outs, deciles = {}, {}
    for scheme in si.SCHEMES:
        meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz",
                                   model_file, "a", tmp_path / f"{scheme}.nii.gz",
                                   sampler=SamplerSettings(steps=2), device="cpu",
                                   match_intensities=scheme, log=print)
        assert meta["TissueIntensityLandmarks"] == scheme
        out = np.asarray(nb.load(tmp_path / f"{scheme}.nii.gz").dataobj)
        outs[scheme] = si.tissue_landmarks(out, mask, per_tissue=3)
        deciles[scheme] = si.tissue_landmarks(out, mask, per_tissue=9)
    np.testing.assert_allclose(deciles["deciles"], si.coarsen(stored, 9), atol=0.01)
    np.testing.assert_allclose(outs["deciles"][1:10], target[1:10], atol=0.01)
    np.testing.assert_allclose(outs["quartiles"][1:10], target[1:10], atol=0.01)
    np.testing.assert_allclose(outs["medians"][[2, 5, 8]], np.asarray(target)[[2, 5, 8]],
                               atol=0.01)
    wm_iqr = {k: v[9] - v[7] for k, v in outs.items()}
    assert wm_iqr["medians"] > 1.5 * wm_iqr["quartiles"]


@pytest.mark.parametrize("per_tissue, expected", [(19, "vigintiles"), (9, "deciles"),
                                                  (3, "quartiles"), (1, "medians")])
def test_finest_scheme_is_the_finest_the_model_stores(per_tissue, expected):
    stored = np.linspace(0.1, 1.1, 2 + 3 * per_tissue).tolist()
    config = ModelConfig(sites=("a", "b"), site_landmarks={"a": stored})
    assert si.finest_scheme(config, "a") == expected
    assert si.finest_scheme(config, "b") == "none"  # no landmarks stored for b


def test_auto_resolves_before_any_work(tmp_path):
    """The CLI resolves --match-intensities auto once, from the model file."""
    from harmonize_bids.cli.run import check_target_site
    from harmonize_bids.exceptions import UsageError

    stored = np.linspace(0.1, 1.1, 2 + 3 * 3).tolist()
    model_file = write_tiny_model_and_brain(tmp_path, ("a", "b"), {"a": stored})
    assert check_target_site(model_file, "a", "auto") == "quartiles"
    assert check_target_site(model_file, "b", "auto") == "none"
    assert check_target_site(model_file, "a", "medians") == "medians"
    with pytest.raises(UsageError, match="not 'deciles'"):
        check_target_site(model_file, "a", "deciles")


def test_subject_landmarks_carry_the_scan_deviation_from_its_site():
    target = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
    site = np.array([0.2, 0.4, 0.7, 1.0, 1.2])
    # a scan on its site's mean (at any scale) is sent to the target site's mean
    np.testing.assert_allclose(si.subject_landmarks(target, site, 3 * site), target)
    # grey matter 5 % brighter than its site's (in white-matter units) stays 5 % brighter
    own = site.copy()
    own[2] *= 1.05
    out = si.subject_landmarks(target, site, own)
    np.testing.assert_allclose(out[[0, 1, 3, 4]], target[[0, 1, 3, 4]])
    assert out[2] == pytest.approx(0.6 * 1.05)
    # a source site identical to the target: the scan keeps its own landmarks (target scale)
    own = np.array([0.12, 0.33, 0.62, 0.8, 0.98])
    np.testing.assert_allclose(si.subject_landmarks(target, target, own), own)
    with pytest.raises(ValueError, match="different schemes"):
        si.subject_landmarks(target, site, np.linspace(0.1, 1.0, 11))


def test_standardized_landmarks_keep_where_a_scan_stands_among_its_site():
    """A scan on its site's mean gets the target's landmarks; one a standard deviation
    above its site in grey matter gets the target's grey matter moved by one pooled
    spread, whatever its site's own spread (the ratio of subject_landmarks carries
    that spread along: two sites, two answers); z is clipped; no spread, no move."""
    target = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
    mean = np.array([0.2, 0.4, 0.7, 1.0, 1.2])
    narrow = si.SiteLandmarks(8, mean, np.array([0.01, 0.01, 0.01, 0.0, 0.01]))
    wide = si.SiteLandmarks(8, mean, np.array([0.04, 0.04, 0.04, 0.0, 0.04]))
    spread = np.full(5, 0.05)
    np.testing.assert_allclose(si.standardized_landmarks(target, narrow, spread, 2 * mean),
                               target)
    for site in (narrow, wide):
        own = mean.copy()
        own[2] += site.sd[2]  # grey matter one of its site's SDs up
        out = si.standardized_landmarks(target, site, spread, own)
        np.testing.assert_allclose(out, [0.1, 0.3, 0.6 * 1.05, 0.8, 1.0])
    ratios = [si.subject_landmarks(target, mean, mean + [0, 0, s.sd[2], 0, 0])[2]
              for s in (narrow, wide)]
    assert ratios[1] - ratios[0] > 0.02
    far = mean + [0, 0, 0.1, 0, 0]  # 10 SDs of the narrow site
    assert si.standardized_landmarks(target, narrow, spread, far)[2] == pytest.approx(0.6 * 1.15)
    flat = si.SiteLandmarks(1, mean, np.zeros(5))
    np.testing.assert_allclose(si.standardized_landmarks(target, flat, spread, far), target)
    with pytest.raises(ValueError, match="different schemes"):
        si.standardized_landmarks(target, narrow, spread, np.linspace(0.1, 1.0, 11))


def test_site_statistics_and_the_pooled_spread():
    rows = {"a": [[0.2, 0.4, 0.6, 1.0, 1.2], [0.4, 0.8, 1.4, 2.0, 2.4]],
            "b": [[0.1, 0.3, 0.5, 1.0, 1.1]]}
    stats = si.site_statistics(rows)
    assert stats["a"].images == 2 and stats["b"].images == 1
    np.testing.assert_allclose(stats["a"].mean, [0.2, 0.4, 0.65, 1.0, 1.2])
    np.testing.assert_allclose(stats["a"].sd, [0, 0, np.std([0.6, 0.7], ddof=1), 0, 0])
    np.testing.assert_allclose(stats["b"].sd, 0)
    # only sites with enough scans count
    np.testing.assert_allclose(si.pooled_spread(stats, 2), stats["a"].sd / stats["a"].mean)
    with pytest.raises(ValueError, match="no site has 3"):
        si.pooled_spread(stats, 3)


def test_scan_target_landmarks_says_why_it_falls_back_to_the_plain_match():
    target = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
    own = np.array([0.2, 0.4, 0.75, 1.0, 1.2])
    mean = np.array([0.2, 0.4, 0.7, 1.0, 1.2])
    stats = {"a": si.SiteLandmarks(6, mean, np.full(5, 0.02)),
             "few": si.SiteLandmarks(2, mean, np.full(5, 0.02))}
    kept, why, reference = si.scan_target_landmarks(target, stats, "a", own)
    assert why is None and kept[2] > target[2] and reference == "model"
    for args, reason in [((None, "a", own), "no site statistics"),
                         ((stats, None, own), "not known"),
                         ((stats, "a", None), "could not be measured"),
                         ((stats, "elsewhere", own), "0 scan(s) of 'elsewhere'"),
                         ((stats, "few", own), "2 scan(s) of 'few', fewer than 3")]:
        out, why, reference = si.scan_target_landmarks(target, *args)
        np.testing.assert_array_equal(out, target)
        assert reason in why and reference == "model"


def test_the_dataset_own_target_site_scans_are_the_reference_when_there_are_enough():
    """ComBat's reference batch: a scan on its site's mean lands on the mean of the
    dataset's target-site scans (on the model's white-matter scale; shrunk towards the
    model's landmarks by the James-Stein weight), a scan above it by its z-score times
    the *target site's* spread, a scan from a site with too few scans on that mean; with
    too few target-site scans the model's landmarks and the pooled spread stay."""
    target = np.array([0.1, 0.3, 0.6, 0.8, 1.0])          # the model's, WM median 0.8
    mean_a = np.array([0.2, 0.4, 0.7, 1.0, 1.2])
    mean_t = np.array([0.25, 0.45, 0.65, 1.0, 1.3])       # the dataset's, WM units
    stats = {"a": si.SiteLandmarks(6, mean_a, np.full(5, 0.02)),
             "t": si.SiteLandmarks(4, mean_t, mean_t * 0.1),
             "few": si.SiteLandmarks(2, mean_t, mean_t * 0.1)}
    weight = si.reference_weight(target, mean_t * 0.8, mean_t * 0.1 * 0.8, 4)
    assert 0.5 < weight < 1
    reference = target + weight * (mean_t * 0.8 - target)
    on_mean, why, whose = si.scan_target_landmarks(target, stats, "a", mean_a,
                                                   target_site="t")
    assert why is None and whose == "dataset"
    np.testing.assert_allclose(on_mean, reference)
    above = mean_a + np.array([0, 0, 0.02, 0, 0])          # GM one sd above its site's mean
    moved, _, _ = si.scan_target_landmarks(target, stats, "a", above, target_site="t")
    assert moved[2] == pytest.approx(reference[2] * (1 + 0.1))
    for site in ("few", "elsewhere", None):
        out, why, whose = si.scan_target_landmarks(target, stats, "a", mean_a,
                                                   target_site=site)
        assert why is None and whose == "model"
        np.testing.assert_allclose(out, target)
    # a scan whose own site has too few scans (or is unknown) cannot keep its subject
    # part, but still lands on the dataset's reference, not the model's landmarks
    for args in [(stats, "few", mean_a), (stats, "elsewhere", mean_a), (stats, None, mean_a),
                 (stats, "a", None)]:
        out, why, whose = si.scan_target_landmarks(target, *args, target_site="t")
        assert why and whose == "dataset"
        np.testing.assert_allclose(out, reference)


def test_the_dataset_reference_shrinks_to_the_model_landmarks_within_its_noise():
    """Target-site scans whose mean is within its own sampling noise of the model's
    landmarks leave the model's (and the pooled spread); the more scans, the closer the
    reference moves to their mean; the weight stays within [0, 1)."""
    target = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
    close = target / 0.8 + np.array([0.005, -0.005, 0.005, 0, 0.005])  # WM units
    far = target / 0.8 + np.array([0.05, 0.05, -0.05, 0, 0.05])
    sd = np.full(5, 0.05)
    for n in (3, 10):
        stats = {"t": si.SiteLandmarks(n, close, sd)}
        assert si.dataset_reference(target, stats, "t") is None
        out, why, whose = si.scan_target_landmarks(target, stats, None, None, target_site="t")
        assert whose == "model"
        np.testing.assert_allclose(out, target)
    weights = [si.reference_weight(target, far * 0.8, sd * 0.8, n) for n in (3, 10, 1000)]
    assert 0 < weights[0] < weights[1] < weights[2] < 1
    assert weights[2] > 0.99


def test_harmonize_step_keeps_the_subject_part_with_the_dataset_site_landmarks(
        tmp_path, monkeypatch):
    """With the dataset's site landmarks and a source site it holds enough scans of, the
    output's grey matter keeps the scan's place above its site's mean; a site with too few
    scans gets the plain match; the log and the sidecar say which was done; a file
    measured at another voxel size is refused."""
    import nibabel as nb

    import harmonize_bids.diffusion.volume as volume
    from harmonize_bids.dataset_landmarks import write_site_landmarks
    from harmonize_bids.exceptions import InputError

    monkeypatch.setattr(volume, "harmonize_volume",
                        lambda model, low, mask, *a, **k: np.where(mask, low, 0))
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.interfaces.harmonize import harmonize_std_image

    # target site b stores a brain with grey matter at 0.55; site a's scans in the dataset
    # have it at 0.54..0.56; the brain on disk (write_tiny_model_and_brain) at 0.6
    target = si.tissue_landmarks(*three_tissue_brain(means=(0.3, 0.55, 0.9), noise=0.05),
                                 per_tissue=3).round(4).tolist()
    model_file = write_tiny_model_and_brain(tmp_path, ("a", "b"), {"b": target})
    site_a = [si.tissue_landmarks(*three_tissue_brain(means=(0.3, gm, 0.9), noise=0.05,
                                                      seed=k), per_tissue=3)
              for k, gm in enumerate(np.linspace(0.54, 0.56, 6))]
    stats = si.site_statistics({"a": site_a, "c": site_a[:2]})
    write_site_landmarks(tmp_path / "sites.json", stats, voxel_mm=4.0)
    image, mask = three_tissue_brain(means=(0.3, 0.6, 0.9), noise=0.05)
    gm = np.abs(image - 0.6) < 0.01
    logged = []

    def run(name, **kw):
        meta = harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz",
                                   model_file, "b", tmp_path / name,
                                   SamplerSettings(steps=2), device="cpu",
                                   match_intensities="quartiles", log=logged.append, **kw)
        return meta, np.asarray(nb.load(tmp_path / name).dataobj)

    meta, plain = run("plain.nii.gz", source_site="a")
    assert meta["TissueIntensitiesSubjectKept"] is False
    assert np.median(plain[gm]) == pytest.approx(0.55, abs=0.01)
    meta, kept = run("kept.nii.gz", source_site="a", site_landmarks=tmp_path / "sites.json")
    assert meta["TissueIntensitiesMatched"] and meta["TissueIntensitiesSubjectKept"], logged
    # the z-score is clipped at 3: grey matter moves up by 3 pooled spreads at most
    spread = si.pooled_spread(stats, si.MIN_SITE_IMAGES)[1 + 3 + 1]
    assert np.median(kept[gm]) - np.median(plain[gm]) > 0.01
    assert np.median(kept[gm]) <= np.median(plain[gm]) * (1 + 3 * spread) + 0.005
    assert meta["TissueIntensityReference"] == "model"
    # with enough scans of the target site b in the dataset, they are the reference:
    # their grey matter sits at 0.45 / 0.9 of white matter, the model's at 0.55 / 0.9
    site_b = [si.tissue_landmarks(*three_tissue_brain(means=(0.3, gm, 0.9), noise=0.05,
                                                      seed=k), per_tissue=3)
              for k, gm in enumerate(np.linspace(0.445, 0.455, 4))]
    write_site_landmarks(tmp_path / "with_b.json",
                         si.site_statistics({"a": site_a, "b": site_b}), voxel_mm=4.0)
    meta, onto_b = run("onto_b.nii.gz", source_site="a", site_landmarks=tmp_path / "with_b.json")
    assert meta["TissueIntensitiesSubjectKept"] and meta["TissueIntensityReference"] == "dataset"
    assert 0.45 < np.median(onto_b[gm]) < 0.5 < np.median(kept[gm])
    assert any("dataset's own scans of 'b'" in m for m in logged)
    meta, few = run("few.nii.gz", source_site="c", site_landmarks=tmp_path / "sites.json")
    assert meta["TissueIntensitiesSubjectKept"] is False
    np.testing.assert_allclose(few, plain)
    assert any("not kept per subject" in m and "'c'" in m for m in logged)
    write_site_landmarks(tmp_path / "sites2mm.json", stats, voxel_mm=2.0)
    with pytest.raises(InputError, match="2.0 mm"):
        run("refused.nii.gz", source_site="a", site_landmarks=tmp_path / "sites2mm.json")


def test_source_site_guidance_pushes_away_from_the_scans_own_site_only(tmp_path, monkeypatch):
    """--source-guidance: the model runs guided away from the scan's own site when the model
    knows it; a site it does not know, and the target's own scans, run unguided (the log
    says why); the sidecar names the site. Off (0): unguided."""
    import harmonize_bids.diffusion.volume as volume
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.interfaces.harmonize import guidance_site, harmonize_std_image

    seen = []

    def fake_volume(model, low, mask, site, sampler, **kwargs):
        seen.append(kwargs["source_site"])
        return np.where(mask, low, 0)

    monkeypatch.setattr(volume, "harmonize_volume", fake_volume)
    landmarks = {"a": [0.1, 0.25, 0.55, 1.0, 1.2], "b": [0.1, 0.15, 0.4, 1.0, 1.2],
                 "c": [0.1, 0.33, 0.66, 1.0, 1.1]}
    model_file = write_tiny_model_and_brain(tmp_path, ("a", "b", "c"), landmarks)
    logged = []

    def run(source_site, weight=1.0):
        return harmonize_std_image(tmp_path / "std.nii.gz", tmp_path / "mask.nii.gz",
                                   model_file, "a", tmp_path / "out.nii.gz",
                                   SamplerSettings(steps=2, source_guidance=weight),
                                   device="cpu", source_site=source_site, log=logged.append)

    meta = run("b")
    assert meta["SourceSiteGuidanceAwayFrom"] == "b" and seen[-1] == 1
    assert meta["SourceSiteGuidance"] == 1.0
    assert run("c")["SourceSiteGuidanceAwayFrom"] == "c" and seen[-1] == 2
    meta = run("scanner-x")
    assert "SourceSiteGuidanceAwayFrom" not in meta and seen[-1] is None
    assert "'scanner-x' is not one the model knows: no source-site guidance" in logged[-1]
    meta = run("b", weight=0.0)
    assert "SourceSiteGuidanceAwayFrom" not in meta and seen[-1] is None
    meta = run("a")
    assert "SourceSiteGuidanceAwayFrom" not in meta and seen[-1] is None
    config = ModelConfig(sites=("a", "b", "c"))
    assert guidance_site(config, "a", "a") is None
    assert guidance_site(config, "b", "a") == "b"
    assert guidance_site(config, None, "a", log=logged.append) is None
    assert "'(unknown)'" in logged[-1]
