"""Image checks and operations (interfaces/images.py), without nipype."""
from __future__ import annotations

import gzip

import nibabel as nb
import numpy as np
import pytest

from harmonize_bids.interfaces import images as im


def _save(tmp_path, data, affine=None, name="img.nii.gz"):
    path = tmp_path / name
    nb.Nifti1Image(np.asarray(data), np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None
                   else affine).to_filename(path)
    return path


def _head(shape=(20, 22, 18)):
    """A smooth ellipsoid 'head' with mild noise (spatially correlated, like anatomy)."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) < 0.8
    return (np.where(inside, 100.0, 10.0) + rng.uniform(0, 5, shape)).astype(np.float32)


def test_good_image_loads_and_4d_singleton_is_squeezed(tmp_path):
    assert im.load_t1w(_save(tmp_path, _head())).shape == (20, 22, 18)
    assert im.load_t1w(_save(tmp_path, _head()[..., None], name="4d.nii.gz")).shape == (20, 22, 18)


@pytest.mark.parametrize("case,match", [
    ("4d", "3D"), ("2d", "3D"), ("nan", "NaN"), ("constant", "constant"),
    ("voxel", "voxel size"), ("affine", "affine"), ("tiny", "too small"),
    ("noise", "does not look like"),
])
def test_bad_images_are_refused_with_reason(tmp_path, case, match):
    data, affine = _head(), None
    if case == "4d":
        data = np.stack([data, data], -1)
    elif case == "2d":
        data = data[:, :, 0]
    elif case == "nan":
        data[3, 3, 3] = np.nan
    elif case == "constant":
        data = np.ones_like(data)
    elif case == "voxel":
        affine = np.diag([50.0, 50.0, 50.0, 1.0])
    elif case == "affine":  # a singular sform, as written by a broken converter
        hdr = nb.Nifti1Header()
        hdr.set_sform(np.diag([2.0, 2.0, 0.0, 1.0]), code=2)
        nb.Nifti1Image(data, None, hdr).to_filename(tmp_path / "img.nii.gz")
        with pytest.raises(im.ImageCheckError, match=match):
            im.load_t1w(tmp_path / "img.nii.gz")
        return
    elif case == "tiny":
        data = data[:4]
    elif case == "noise":  # e.g. a mislabelled calibration scan
        data = np.random.default_rng(0).random(data.shape).astype(np.float32) * 100
    with pytest.raises(im.ImageCheckError, match=match):
        im.load_t1w(_save(tmp_path, data, affine))


def test_truncated_and_non_nifti_files(tmp_path):
    good = _save(tmp_path, _head())
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(im.ImageCheckError, match="cannot read"):
        im.load_t1w(truncated)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"hello"))
    with pytest.raises(im.ImageCheckError):
        im.load_t1w(junk)


def test_reorient_to_ras_keeps_world_positions(tmp_path):
    data = _head()
    lps = np.array([[-2.0, 0, 0, 40], [0, -2.0, 0, 50], [0, 0, 2.0, -10], [0, 0, 0, 1]])
    out = im.reorient_to_ras(_save(tmp_path, data, lps), tmp_path / "ras.nii.gz")
    img = nb.load(out)
    assert nb.aff2axcodes(img.affine) == ("R", "A", "S")
    # the voxel at world (40, 50, -10) keeps its value
    ijk = np.round(np.linalg.inv(img.affine) @ [40, 50, -10, 1]).astype(int)[:3]
    assert np.isclose(img.get_fdata()[tuple(ijk)], data[0, 0, 0])


def test_refine_mask_keeps_largest_component_and_fills_holes(tmp_path):
    prob = np.zeros((30, 30, 30), np.float32)
    prob[5:20, 5:20, 5:20] = 0.9
    prob[10:12, 10:12, 10:12] = 0.1     # a hole
    prob[25:28, 25:28, 25:28] = 0.9     # a separate blob
    out = nb.load(im.refine_brain_mask(_save(tmp_path, prob), tmp_path / "m.nii.gz"))
    mask = np.asarray(out.dataobj)
    assert mask.dtype == np.uint8
    assert mask.sum() == 15 ** 3 and mask[11, 11, 11] == 1 and mask[26, 26, 26] == 0


def test_refine_mask_empty_fails(tmp_path):
    with pytest.raises(im.ImageCheckError, match="no brain"):
        im.refine_brain_mask(_save(tmp_path, np.zeros((10, 10, 10))), tmp_path / "m.nii.gz")


def test_normalize_maps_percentile_to_one(tmp_path):
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = np.zeros_like(data)
    mask[2:8, 2:8, 2:8] = 1
    out, scale = im.normalize_intensity(_save(tmp_path, data), _save(tmp_path, mask, name="m.nii.gz"),
                                        tmp_path / "n.nii.gz", percentile=99.0)
    norm = nb.load(out).get_fdata()
    assert np.isclose(scale, np.percentile(data[mask > 0], 99.0))
    assert np.isclose(np.percentile(norm[mask > 0], 99.0), 1.0, atol=1e-5)
    assert norm[mask == 0].max() == 0
