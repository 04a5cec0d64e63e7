"""Scoring harmonization against the simulated truth (evaluation.py, the evaluate CLI)."""
from __future__ import annotations

import math

import pytest

from harmonize_bids.derivatives import init_derivatives, save_derivative
from harmonize_bids.evaluation import (
    bias_corrected_copy,
    evaluate,
    format_table,
    read_simulated_dataset,
    subject_groups,
)


def test_reads_simulated_dataset(toy_dataset):
    images = read_simulated_dataset(toy_dataset)
    assert len(images) == 6 and {i.site for i in images} == {"siemens3tmprage", "ge15tspgr"}
    assert all(i.rescan is not None and i.t1w.is_file() for i in images)


def test_baseline_scores_every_site_pair_with_ceiling(toy_dataset):
    result = evaluate(toy_dataset)
    assert set(result["pairs"]) == {("ge15tspgr", "siemens3tmprage"),
                                    ("siemens3tmprage", "ge15tspgr")}
    assert all(n == 3 for n in result["n"].values())
    for target, ceiling in result["ceiling"].items():
        # a rescan is closer to the scan than another site's image is
        src = next(s for s, t in result["pairs"] if t == target)
        assert ceiling["ssim"] > result["pairs"][(src, target)]["ssim"]
        assert ceiling["psnr"] > result["pairs"][(src, target)]["psnr"]
    table = format_table(result, "no harmonization")
    assert "ge15tspgr → siemens3tmprage" in table and "rescan" in table


def test_site_predictability_folds_keep_each_subject_together(toy_dataset):
    """Folds are grouped by label map: a deformed variant counts as its subject."""
    images = read_simulated_dataset(toy_dataset)
    groups = dict(zip((i.anatomy for i in images), subject_groups(images)))
    assert groups == {"toy_0": "toy_0", "toy_0-v2": "toy_0", "toy_1": "toy_1"}
    assert subject_groups([i for i in images if i.anatomy != "toy_1"]) is None  # 1 subject
    result = evaluate(toy_dataset)
    assert result["site_predictability_grouped"] == {"ge15tspgr": True,
                                                     "siemens3tmprage": True}
    low, high = result["site_predictability_folds"]["ge15tspgr"]
    assert 0.0 <= low <= result["site_predictability"]["ge15tspgr"] <= high <= 1.0
    assert f"[{low:.2f}-{high:.2f}] (0.50)" in format_table(result, "none")


def test_perfect_harmonization_scores_perfectly(toy_dataset, tmp_path):
    """A 'model' that returns the truth itself must get SSIM 1 and infinite PSNR."""
    images = read_simulated_dataset(toy_dataset)
    out = tmp_path / "derivatives"
    init_derivatives(out, toy_dataset)
    by = {(i.anatomy, i.site): i for i in images}
    for img in images:
        if img.site != "ge15tspgr":
            continue
        truth = by[(img.anatomy, "siemens3tmprage")]
        ents = {"subject": img.participant, "_relpath": f"sub-{img.participant}/anat/x"}
        save_derivative(out, ents, "harmonized", truth.t1w,
                        extra_metadata={"TargetSite": "siemens3tmprage",
                                        "SourceSite": "ge15tspgr"})
    # an image already at the target site is the app's unchanged reference: not scored
    kept = next(i for i in images if i.site == "siemens3tmprage")
    save_derivative(out, {"subject": kept.participant,
                          "_relpath": f"sub-{kept.participant}/anat/x"}, "harmonized", kept.t1w,
                    extra_metadata={"TargetSite": "siemens3tmprage",
                                    "SourceSite": "siemens3tmprage"})
    result = evaluate(toy_dataset, out)
    row = result["pairs"][("ge15tspgr", "siemens3tmprage")]
    assert row["ssim"] == pytest.approx(1.0) and math.isinf(row["psnr"]) and row["mae"] == 0
    assert row["flicker"] > 0  # the change from the source is not zero
    assert set(result["pairs"]) == {("ge15tspgr", "siemens3tmprage")}


def _reoriented_copy(dataset, dest, codes=("L", "I", "A")):
    """The dataset with every image stored in another orientation (same voxels in space),
    as N4 or a scanner may write them (the benchmark's N4-corrected test set is LIA)."""
    import shutil

    import nibabel as nb

    shutil.copytree(dataset, dest)
    for path in dest.rglob("*.nii.gz"):
        img = nb.load(path)
        ornt = nb.orientations.ornt_transform(nb.orientations.io_orientation(img.affine),
                                              nb.orientations.axcodes2ornt(codes))
        img.as_reoriented(ornt).to_filename(path)
    return dest


def test_slice_consistency_is_judged_across_axial_slices(toy_dataset, tmp_path):
    """Stored as LIA, a 'model' whose axial slices (RAS z) each get their own offset must
    show slice jumps and flicker; offsets across coronal slices must not."""
    import nibabel as nb
    import numpy as np

    from harmonize_bids.evaluation import axial_axis

    dataset = _reoriented_copy(toy_dataset, tmp_path / "lia")
    images = read_simulated_dataset(dataset)
    assert nb.aff2axcodes(nb.load(images[0].t1w).affine) == ("L", "I", "A")
    assert axial_axis(images[0].t1w) == 1
    rows = {}
    for name, ras_axis in (("axial", 2), ("coronal", 1)):
        out = tmp_path / name
        init_derivatives(out, dataset)
        for img in images:
            if img.site != "ge15tspgr":
                continue
            stored = nb.load(img.t1w)
            ras = nb.as_closest_canonical(stored)
            data = np.asarray(ras.dataobj, np.float32)
            shape = [1, 1, 1]
            shape[ras_axis] = -1
            bumps = np.resize([0.0, 0.25], data.shape[ras_axis]).reshape(shape)
            scale = np.percentile(data[data > 0], 99)
            bumped = nb.Nifti1Image(np.where(data > 0, data + scale * bumps, 0).astype(
                np.float32), ras.affine)
            back = bumped.as_reoriented(nb.orientations.ornt_transform(
                nb.orientations.io_orientation(ras.affine),
                nb.orientations.io_orientation(stored.affine)))
            tmp = tmp_path / f"{name}_{img.participant}.nii.gz"
            back.to_filename(tmp)
            ents = {"subject": img.participant, "_relpath": f"sub-{img.participant}/anat/x"}
            save_derivative(out, ents, "harmonized", tmp,
                            extra_metadata={"TargetSite": "siemens3tmprage",
                                            "SourceSite": "ge15tspgr"})
        rows[name] = evaluate(dataset, out)["pairs"][("ge15tspgr", "siemens3tmprage")]
    assert rows["axial"]["slice_jumps"] > 5 * rows["coronal"]["slice_jumps"]
    assert rows["axial"]["flicker"] > 2 * rows["coronal"]["flicker"]


def test_evaluate_cli(toy_dataset, tmp_path, capsys):
    from harmonize_bids.cli.evaluate import main

    assert main([str(toy_dataset), "-q", "--out", str(tmp_path / "t.md")]) == 0
    assert "no harmonization" in (tmp_path / "t.md").read_text()
    assert main([str(tmp_path), "-q"]) == 66
    empty = tmp_path / "empty_derivs"
    empty.mkdir()
    assert main([str(toy_dataset), str(empty), "-q"]) == 66


def test_bias_corrected_copy_flattens_bias_and_keeps_the_truth(toy_dataset, tmp_path):
    """N4 as the participant level runs it: the white matter of a strongly biased
    image gets flatter; masks and tissue maps are untouched; nothing half-written."""
    import nibabel as nb
    import numpy as np

    out = bias_corrected_copy(toy_dataset, tmp_path / "n4", sloppy=True)
    assert not (tmp_path / ".n4.partial").exists()
    before, after = read_simulated_dataset(toy_dataset), read_simulated_dataset(out)
    assert [i.participant for i in before] == [i.participant for i in after]

    def wm_spread(img):
        data = np.asarray(nb.load(img.t1w).dataobj, float)
        wm = np.asarray(nb.load(img.dseg).dataobj) == 3
        return data[wm].std() / data[wm].mean()

    assert np.mean([wm_spread(a) for a in after]) < np.mean([wm_spread(b) for b in before])
    for a, b in zip(after, before):
        assert a.dseg.read_bytes() == b.dseg.read_bytes()
        assert a.brain_mask.read_bytes() == b.brain_mask.read_bytes()
        assert a.t1w.read_bytes() != b.t1w.read_bytes() and a.rescan is not None
    assert bias_corrected_copy(toy_dataset, out) == out  # already there: reused



def test_n4_fitted_in_the_brain_leaves_less_residue(tmp_path):
    """A phantom head whose scalp brightens from left to right (anatomy, not bias) under
    a smooth bias field: N4 fitted on the whole head takes part of the scalp's gradient
    for bias and leaves it in the brain; fitted inside the brain mask (the participant
    level's second pass) it leaves a third as much.  A mask on another grid is refused."""
    import nibabel as nb
    import numpy as np
    import pytest

    from harmonize_bids.interfaces.ants import n4_correct

    n = 48
    grid = (np.indices((n, n, n)) - (n - 1) / 2) / (n / 2)
    radius = np.sqrt((grid ** 2).sum(0))
    brain, scalp = radius < 0.65, (radius > 0.75) & (radius < 0.92)
    true = np.zeros((n, n, n))
    true[brain] = 0.6
    true[radius < 0.4] = 1.0
    true[scalp] = 1.3 * (1 + 0.9 * grid[0][scalp])
    true += np.where(radius < 0.92, np.random.default_rng(0).normal(0, 0.02, true.shape), 0)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    biased = (true * np.exp(0.25 * grid[1])).astype(np.float32)
    nb.Nifti1Image(biased, affine).to_filename(tmp_path / "t1w.nii.gz")
    nb.Nifti1Image(brain.astype(np.uint8), affine).to_filename(tmp_path / "mask.nii.gz")

    def residue(mask):
        out = n4_correct(tmp_path / "t1w.nii.gz", tmp_path / "n4.nii.gz", grid_mm=6.0,
                         iterations=(50, 50, 30, 20), mask=mask)
        data = np.asarray(nb.load(out).dataobj, float)
        assert data.shape == true.shape and (data[scalp] > 0).all()  # whole head corrected
        return float(np.log(np.clip(data[brain], 1e-3, None) / true[brain]).std())

    before = float(np.log(biased[brain] / true[brain]).std())
    head, in_brain = residue(None), residue(tmp_path / "mask.nii.gz")
    assert in_brain < head < before
    assert in_brain < 0.5 * head
    nb.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine).to_filename(tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        n4_correct(tmp_path / "t1w.nii.gz", tmp_path / "bad.nii.gz", mask=tmp_path / "small.nii.gz")
