#!/usr/bin/env python
"""Build the head template shipped in ``harmonize_bids/data/templates``.

Brain extraction registers a *head* template to each subject and warps the
template's brain probability map back.  nilearn ships the skull-stripped
MNI152NLin2009aSym brain but no head, so we derive one:

1. Each SynthSeg whole-head label map (``--labels-dir``, Apache-2.0) is rendered
   as a crude T1-weighted head and its exact brain mask (all labels 1-499) is
   kept.  The rendered brain is registered (affine + SyN, 2 mm) to nilearn's
   MNI152NLin2009aSym brain; heads and masks are warped onto a 2 mm grid in
   MNI space that covers the whole head.  The mean mask is the brain
   probability map; the mean rendering is the first head template.
2. Real IXI Hammersmith heads (``--ixi-dir``, CC BY-SA 3.0) are bias-corrected
   and registered to that first template; their intensity-normalized mean
   replaces it, so the shipped head has real T1w texture.

Usage::

    python scripts/build_head_template.py --labels-dir ../shared/data/synthseg-labels \
        --ixi-dir ../shared/data/ixi-hh-t1w-2mm --n-ixi 12

Takes about 15 minutes on 2 CPU cores.  Sources and licences are recorded in
``harmonize_bids/data/templates/README.md``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import nibabel as nb

# Approximate T1w (MPRAGE-like) intensity per label: only the *layout* of
# tissues matters for the mutual-information registration of step 1.
_BRAIN_T1 = {
    2: 1.0, 41: 1.0, 7: 0.95, 46: 0.95, 16: 0.9, 28: 0.85, 60: 0.85, 85: 0.9,
    3: 0.6, 42: 0.6, 8: 0.6, 47: 0.6, 17: 0.58, 53: 0.58, 18: 0.6, 54: 0.6,
    10: 0.8, 49: 0.8, 11: 0.65, 50: 0.65, 12: 0.7, 51: 0.7, 13: 0.85, 52: 0.85,
    26: 0.62, 58: 0.62, 4: 0.15, 43: 0.15, 5: 0.15, 44: 0.15, 14: 0.15,
    15: 0.15, 24: 0.15, 72: 0.15, 30: 0.5, 62: 0.5,
}
_NONBRAIN_T1 = {515: 0.2, 511: 0.7, 507: 0.45, 514: 0.15, 516: 0.05}
_NONBRAIN_DEFAULT = 0.4

# Head grid: 2 mm, RAS, in MNI152NLin2009aSym millimetres.
HEAD_GRID_MIN = np.array([-100.0, -140.0, -110.0])
HEAD_GRID_SHAPE = (101, 126, 116)
HEAD_GRID_SPACING = 2.0


def head_grid_affine() -> np.ndarray:
    aff = np.eye(4) * HEAD_GRID_SPACING
    aff[3, 3] = 1.0
    aff[:3, 3] = HEAD_GRID_MIN
    return aff


def render_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return a crude T1w rendering and the exact brain mask of a label map."""
    out = np.zeros(labels.shape, dtype=np.float32)
    nonbrain = labels >= 500
    out[nonbrain] = _NONBRAIN_DEFAULT
    for lab, val in {**_BRAIN_T1, **_NONBRAIN_T1}.items():
        out[labels == lab] = val
    brain = (labels > 0) & (labels < 500)
    out[brain & (out == 0)] = 0.6
    return out, brain.astype(np.float32)


def _register_label_maps(label_files, tmp, grid, mni_brain):
    """Stage 1: render each label map, register its brain to MNI, warp to the head grid."""
    import ants
    from scipy import ndimage as ndi

    heads, masks = [], []
    for i, lf in enumerate(label_files):
        img = nb.load(lf)
        labels = np.asarray(img.dataobj).astype(np.int32)
        t1, brain = render_labels(labels)
        # smooth before ANTs resamples 1 mm -> 2 mm (anti-aliasing)
        t1 = ndi.gaussian_filter(t1, 0.8)
        for arr, name in ((t1, "t1"), (brain, "brain")):
            nb.Nifti1Image(arr, img.affine).to_filename(tmp / f"{name}_{i}.nii.gz")
        head = ants.resample_image(ants.image_read(str(tmp / f"t1_{i}.nii.gz")), (2, 2, 2), False, 0)
        mask = ants.resample_image(ants.image_read(str(tmp / f"brain_{i}.nii.gz")), (2, 2, 2), False, 0)
        reg = ants.registration(mni_brain, head * mask, "SyN", outprefix=str(tmp / f"lab{i}_"),
                                aff_iterations=(500, 250, 100, 0),
                                reg_iterations=(40, 20, 0))
        heads.append(ants.apply_transforms(grid, head, reg["fwdtransforms"]).numpy())
        masks.append(ants.apply_transforms(grid, mask, reg["fwdtransforms"]).numpy())
        print(f"[labels {i + 1}/{len(label_files)}] {lf.name} registered", flush=True)

    return heads, masks


def main() -> None:
    import ants
    from nilearn.datasets import load_mni152_template

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--ixi-dir", type=Path, required=True)
    parser.add_argument("--n-ixi", type=int, default=12)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parents[1] / "harmonize_bids/data/templates")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder to keep intermediate results in (reused on rerun)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["ANTS_RANDOM_SEED"] = str(args.seed)

    tmp = args.cache or Path(tempfile.mkdtemp(prefix="head_template_"))
    tmp.mkdir(parents=True, exist_ok=True)
    grid_file = tmp / "grid.nii.gz"
    nb.Nifti1Image(np.zeros(HEAD_GRID_SHAPE, np.float32), head_grid_affine()).to_filename(grid_file)
    grid = ants.image_read(str(grid_file))

    mni_file = tmp / "mni_brain_2mm.nii.gz"
    mni = load_mni152_template(resolution=2)
    nb.Nifti1Image(mni.get_fdata().astype(np.float32), mni.affine).to_filename(mni_file)
    mni_brain = ants.image_read(str(mni_file))

    label_files = sorted(args.labels_dir.glob("training_seg_*.nii.gz"))
    stage1 = tmp / "stage1.npz"
    if not stage1.exists():
        heads, masks = _register_label_maps(label_files, tmp, grid, mni_brain)
        np.savez_compressed(stage1, heads=np.mean(heads, axis=0), masks=np.mean(masks, axis=0))
    cached = np.load(stage1)
    brainprob = np.clip(cached["masks"], 0, 1)
    head_v0 = cached["heads"]
    nb.Nifti1Image(head_v0.astype(np.float32), head_grid_affine()).to_filename(tmp / "head_v0.nii.gz")
    head_v0_img = ants.image_read(str(tmp / "head_v0.nii.gz"))
    brain_core = brainprob > 0.5

    ixi_files = sorted(args.ixi_dir.glob("IXI*_T1.nii.gz"))
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(ixi_files), size=min(args.n_ixi, len(ixi_files)), replace=False))
    ixi = []
    for k, idx in enumerate(chosen):
        f = ixi_files[idx]
        img = ants.image_read(str(f)).clone("float")
        img = ants.n4_bias_field_correction(img, shrink_factor=4)
        reg = ants.registration(head_v0_img, img, "SyN", outprefix=str(tmp / f"ixi{k}_"),
                                aff_iterations=(500, 250, 100, 0),
                                reg_iterations=(40, 20, 0))
        warped = ants.apply_transforms(grid, img, reg["fwdtransforms"]).numpy()
        warped /= np.median(warped[brain_core])
        ixi.append(warped)
        print(f"[IXI {k + 1}/{len(chosen)}] {f.name} registered", flush=True)

    head = np.mean(ixi, axis=0)
    head = np.clip(head / np.percentile(head[brain_core], 99.5), 0, 1)
    header = nb.Nifti1Header()
    header.set_xyzt_units("mm")
    out_head = nb.Nifti1Image(np.round(head * 255).astype(np.uint8), head_grid_affine(), header)
    out_head.header.set_qform(head_grid_affine(), code=4)
    out_head.header.set_sform(head_grid_affine(), code=4)
    out_head.to_filename(args.out / "tpl-MNI152NLin2009aSym_res-02_desc-head_T1w.nii.gz")
    out_prob = nb.Nifti1Image(np.round(brainprob * 255).astype(np.uint8), head_grid_affine(), header)
    out_prob.header.set_qform(head_grid_affine(), code=4)
    out_prob.header.set_sform(head_grid_affine(), code=4)
    out_prob.to_filename(args.out / "tpl-MNI152NLin2009aSym_res-02_label-brain_probseg.nii.gz")
    print("IXI subjects used:", ", ".join(ixi_files[i].name for i in chosen))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
