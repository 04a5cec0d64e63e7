#!/usr/bin/env python
"""Per-class tissue Dice and class shares of outputs kept by ``compare_models.py --save-dir``.

The tissue Dice of every table is the mean over CSF, GM and WM of the 3-class
segmentation of an image (``metrics.tissue_segmentation``) against the label map.
This splits it per class and prints the share of brain voxels each segmentation puts
in each class, for each saved output, its source ("none"), the true target image
("truth") and the label map itself ("labels"): a contrast that moves the GM/WM
boundary shows as a shifted share.

    python benchmarks/tissue_classes.py --out-dir /tmp/hb_q17 --target siemens3tmprage \\
        --saved /tmp/compare_outputs

``--renders DIR [DIR ...]`` instead scores the images of simulated datasets (e.g. a
training set's bias-free ``simulated/`` against its N4-corrected ``simulated_n4/``)
at ``--target``, first ``--n-anatomies`` label-map anatomies (no deformed variants):

    python benchmarks/tissue_classes.py --target siemens3tmprage \\
        --renders /tmp/hb_small/simulated /tmp/hb_small/simulated_n4
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_simulated import load_ras, ras_volumes  # noqa: E402


def class_row(image: np.ndarray | None, mask: np.ndarray, labels: np.ndarray) -> list[float]:
    """Dice CSF, GM, WM, their mean, then the shares of CSF, GM, WM (``image=None``:
    the label map's own shares, Dice 1).

    >>> m = np.ones((8, 8, 8), bool); lab = np.repeat([1, 2, 3, 3], 2)[:, None, None] * m
    >>> class_row(None, m, lab)
    [1.0, 1.0, 1.0, 1.0, 0.25, 0.25, 0.5]
    """
    from harmonize_bids import metrics

    if image is None:
        return [1.0] * 4 + [float(np.mean(labels[mask] == k)) for k in (1, 2, 3)]
    d = metrics.tissue_dice(image, mask, labels)
    seg = metrics.tissue_segmentation(image, mask)
    return [d["csf"], d["gm"], d["wm"], d["mean"],
            *[float(np.mean(seg[mask] == k)) for k in (1, 2, 3)]]


def print_renders(datasets: list[Path], site: str, n_anatomies: int) -> None:
    """One row per dataset: the mean class row of its ``site`` images."""
    from harmonize_bids.evaluation import read_simulated_dataset

    print("| dataset | images | Dice CSF | Dice GM | Dice WM | mean | share CSF | share GM "
          "| share WM |\n|" + "---|" * 9)
    for ds in datasets:
        images = [i for i in read_simulated_dataset(ds)
                  if i.site == site and "-v" not in i.anatomy][:n_anatomies]
        rows = [class_row(load_ras(i.t1w), load_ras(i.brain_mask) > 0, load_ras(i.dseg))
                for i in images]
        v = np.mean(rows, axis=0)
        print(f"| {ds} | {len(rows)} | " + " | ".join(f"{x:.3f}" for x in v) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path,
                        help="the quality_vs_peers.py --out-dir compare_models.py read")
    parser.add_argument("--target", required=True)
    parser.add_argument("--saved", type=Path,
                        help="compare_models.py --save-dir (MODEL/ANATOMY_from-SOURCE.nii.gz)")
    parser.add_argument("--renders", type=Path, nargs="+",
                        help="instead: simulated datasets whose --target images to score")
    parser.add_argument("--n-anatomies", type=int, default=6)
    args = parser.parse_args()

    from harmonize_bids.evaluation import read_simulated_dataset

    if args.renders:
        print_renders(args.renders, args.target, args.n_anatomies)
        return
    if not (args.out_dir and args.saved):
        parser.error("--out-dir and --saved are required (or --renders)")

    test = args.out_dir / "test_n4"
    vols, masks = ras_volumes(test)
    by: dict = defaultdict(dict)
    for img in read_simulated_dataset(test):
        by[img.anatomy][img.site] = img

    rows: dict[tuple[str, str], list] = defaultdict(list)
    done: set[tuple[str, str]] = set()
    for path in sorted(args.saved.glob("*/*_from-*.nii.gz")):
        anatomy, source = path.name[:-len(".nii.gz")].split("_from-")
        truth = by[anatomy][args.target]
        mask, labels = masks[anatomy], load_ras(truth.dseg)
        rows[(source, path.parent.name)].append(class_row(load_ras(path), mask, labels))
        if (anatomy, source) not in done:  # the references once per anatomy and source
            done.add((anatomy, source))
            rows[(source, "none")].append(class_row(vols[anatomy][source], mask, labels))
            rows[(source, "truth")].append(class_row(load_ras(truth.t1w), mask, labels))
            rows[(source, "labels")].append(class_row(None, mask, labels))
    print("| source | image | Dice CSF | Dice GM | Dice WM | mean | share CSF | share GM "
          "| share WM |\n|" + "---|" * 9)
    for (source, name), vals in sorted(rows.items()):
        v = np.mean(vals, axis=0)
        print(f"| {source} | {name} | " + " | ".join(f"{x:.3f}" for x in v) + " |")


if __name__ == "__main__":
    main()
