#!/usr/bin/env python
"""Build the demo anatomy shipped in ``harmonize_bids/data/templates``.

The demo (``harmonize_bids-demo``) renders a whole-head label map with the
package's MRI simulator under several scanner protocols.  A pip install has no
access to ``../shared``, so the package ships one label map of its own: the
**maximum-probability atlas** of the 16 SynthSeg label maps (Apache-2.0) in
MNI152NLin2009aSym space — every voxel takes the label most of the 16 warped
maps agree on.  It is a population summary (like the head template), not any
one subject's anatomy.

The warps are the ones ``scripts/build_head_template.py`` computed (stage 1,
kept with ``--cache``): each label map is resampled with ``genericLabel``
interpolation onto a 1.5 mm grid covering the head template's field of view.

    python scripts/build_demo_anatomy.py --labels-dir ../shared/data/synthseg-labels \
        --cache /tmp/head_template_cache

About 5 minutes on one core.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nb
import numpy as np

OUT_NAME = "tpl-MNI152NLin2009aSym_res-15_atlas-SynthSeg_dseg.nii.gz"
GRID_MIN = np.array([-100.0, -140.0, -110.0])
GRID_MAX = np.array([100.0, 110.0, 120.0])
SPACING = 1.5


def grid_affine() -> np.ndarray:
    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = GRID_MIN
    return aff


def main() -> None:
    import ants

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels-dir", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True,
                        help="build_head_template.py's cache (lab{i}_0GenericAffine.mat, "
                             "lab{i}_1Warp.nii.gz)")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parents[1] / "harmonize_bids/data/templates")
    args = parser.parse_args()

    shape = tuple(int(round(v)) for v in (GRID_MAX - GRID_MIN) / SPACING + 1)
    grid_file = args.cache / "grid_demo.nii.gz"
    nb.Nifti1Image(np.zeros(shape, np.float32), grid_affine()).to_filename(grid_file)
    grid = ants.image_read(str(grid_file))
    label_files = sorted(args.labels_dir.glob("training_seg_*.nii.gz"))
    label_values = None
    votes = None
    for i, lf in enumerate(label_files):
        warp, affine = args.cache / f"lab{i}_1Warp.nii.gz", args.cache / f"lab{i}_0GenericAffine.mat"
        if not (warp.is_file() and affine.is_file()):
            raise SystemExit(f"missing {warp} / {affine}: run build_head_template.py --cache")
        moving = ants.image_read(str(lf))
        warped = ants.apply_transforms(grid, moving, [str(warp), str(affine)],
                                       interpolator="genericLabel").numpy().astype(np.int16)
        if label_values is None:
            label_values = np.unique(np.asarray(nb.load(lf).dataobj).astype(np.int16))
            votes = np.zeros((len(label_values),) + shape, np.uint8)
        idx = np.searchsorted(label_values, warped)
        idx = np.clip(idx, 0, len(label_values) - 1)
        known = label_values[idx] == warped
        for k in range(len(label_values)):
            votes[k] += (idx == k) & known
        print(f"[{i + 1}/{len(label_files)}] {lf.name} warped", flush=True)
    atlas = label_values[np.argmax(votes, axis=0)].astype(np.int16)
    header = nb.Nifti1Header()
    header.set_xyzt_units("mm")
    img = nb.Nifti1Image(atlas, grid_affine(), header)
    img.header.set_qform(grid_affine(), code=4)
    img.header.set_sform(grid_affine(), code=4)
    args.out.mkdir(parents=True, exist_ok=True)
    img.to_filename(args.out / OUT_NAME)
    print(f"wrote {args.out / OUT_NAME} {shape}, {len(np.unique(atlas))} labels")


if __name__ == "__main__":
    main()
