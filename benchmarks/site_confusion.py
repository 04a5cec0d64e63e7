#!/usr/bin/env python
"""Which source sites stay recognisable in harmonized outputs: a confusion matrix.

Reads what ``quality_vs_peers.py`` left in its ``--out-dir`` (the N4-corrected test
set and one derivatives folder per method and target) and cross-validates the
site-predictability classifier of :func:`harmonize_bids.metrics.site_predictability`
(the same 32-bin in-brain histograms, ``StandardScaler -> LogisticRegression``),
printing rows = true source site, columns = predicted source site.

    python benchmarks/site_confusion.py --out-dir /tmp/hb_quality \\
        --method ours_s5_stop0_n2_vigintiles --target siemens3tmprage
"""
from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nb
import numpy as np


def sent_pairs(out_dir: Path, method: str, target: str) -> list[tuple]:
    """(source image record, output path, truth record) for every image ``method``
    sent to ``target`` (``out_dir/{method}_{target}``; method ``"none"``: the
    N4-corrected sources themselves); the truth is the same anatomy at ``target``."""
    from harmonize_bids.evaluation import harmonized_outputs, read_simulated_dataset

    images = read_simulated_dataset(out_dir / "test_n4")
    truth = {(i.anatomy, i.site): i for i in images}
    if method == "none":
        found = [(i, i.t1w, target) for i in images
                 if i.site != target and (i.anatomy, target) in truth]
    else:
        found = harmonized_outputs(images, out_dir / f"{method}_{target}")
    return [(img, path, truth[(img.anatomy, tgt)]) for img, path, tgt in found]


def sent_to(out_dir: Path, method: str, target: str) -> tuple[list, list, list]:
    """(volumes, true brain masks, source sites) of the images ``method`` sent to
    ``target`` (see :func:`sent_pairs`)."""
    pairs = sent_pairs(out_dir, method, target)
    volumes = [load(path) for _, path, _ in pairs]
    masks = [load(truth.brain_mask) > 0 for _, _, truth in pairs]
    return volumes, masks, [img.site for img, _, _ in pairs]


def confusion(out_dir: Path, method: str, target: str, n_splits: int = 4):
    """(site labels, confusion matrix) for ``out_dir/{method}_{target}``."""
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    from harmonize_bids import metrics

    volumes, masks, sites = sent_to(out_dir, method, target)
    features = metrics.site_histogram_features(volumes, masks, 32)
    cv = StratifiedKFold(n_splits, shuffle=True, random_state=0)
    predicted = cross_val_predict(metrics.site_classifier(), features, sites, cv=cv)
    labels = sorted(set(sites))
    return labels, confusion_matrix(sites, predicted, labels=labels)


def load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"))
    parser.add_argument("--method", default="ours_s5_stop0_n2",
                        help="derivatives folder name without the _TARGET suffix")
    parser.add_argument("--target", default="siemens3tmprage")
    parser.add_argument("--n-splits", type=int, default=4)
    args = parser.parse_args()
    labels, matrix = confusion(args.out_dir, args.method, args.target, args.n_splits)
    print(f"{args.method} -> {args.target} (rows: true source, columns: predicted)\n")
    print("| source | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for label, row in zip(labels, matrix):
        print(f"| {label} | " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
