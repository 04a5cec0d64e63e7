#!/usr/bin/env python
"""The subject-kept landmark match with each source site's mean taken from the dataset.

``--keep-subject-intensities`` moves the target site's landmarks by a scan's deviation
from its own site's mean *as stored in the model* (its training data).  Session 24 found
that this leaks the source site (the stored means differ systematically from a new
dataset's, and unseen sites get the plain match). This script tries the alternative a
dataset-level step could offer: the mean landmarks of each source site estimated from
the dataset's own scans of that site (every harmonized source of that site in the test
set), the target's mean still the model's.

It reads the outputs ``quality_vs_peers.py`` left as sampled (``--method``, default
``ours_s5_stop0_n2``: levelled, no landmark match) in its ``--out-dir``, matches each
onto ``subject_landmarks(stored target, dataset mean of its site, its source's own)``
for the sites in ``--sites`` (default: every source site; the others get the plain
match), writes ``{method}_vigintiles+dataset_{target}`` beside it and scores it with
the benchmark's ``evaluate`` (SSIM, PSNR, tissue Dice per pair, site predictability).

    python benchmarks/landmark_site_means.py --out-dir /tmp/hb_q22 --target siemens3tmprage \\
        --results benchmarks/results/landmark_site_means.md
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from site_confusion import load, sent_pairs  # noqa: E402


def dataset_site_means(own: dict[str, np.ndarray], site_of: dict[str, str]
                       ) -> dict[str, np.ndarray]:
    """Each site's mean landmarks, every scan's in units of its white-matter median.

    >>> own = {"s1": np.array([1., 2, 4, 8, 9]), "s2": np.array([2., 4, 8, 16, 20])}
    >>> dataset_site_means(own, {"s1": "a", "s2": "a"})["a"].tolist()
    [0.125, 0.25, 0.5, 1.0, 1.1875]
    """
    from harmonize_bids.site_intensity import per_tissue_of, wm_median_index

    by_site = defaultdict(list)
    for scan, landmarks in own.items():
        w = wm_median_index(per_tissue_of(landmarks))
        by_site[site_of[scan]].append(landmarks / landmarks[w])
    return {site: np.mean(rows, axis=0) for site, rows in by_site.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="ours_s5_stop0_n2")
    parser.add_argument("--sites", nargs="*", default=None,
                        help="source sites that get the subject-kept match (default: all)")
    parser.add_argument("--scheme", default="vigintiles")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--results", type=Path, default=None, help="append the table here")
    args = parser.parse_args()

    from harmonize_bids.diffusion.checkpoint import bundled_model, read_config
    from harmonize_bids.evaluation import evaluate
    from harmonize_bids.site_intensity import (SCHEMES, match_landmarks, subject_landmarks,
                                               target_landmarks, tissue_landmarks)

    t0 = time.monotonic()
    model_file = args.model or bundled_model()
    target = target_landmarks(read_config(Path(model_file)), args.target, args.scheme)
    source_dir = args.out_dir / f"{args.method}_{args.target}"
    pairs = sent_pairs(args.out_dir, args.method, args.target)
    own = {img.participant: tissue_landmarks(load(img.t1w), load(img.brain_mask) > 0,
                                             SCHEMES[args.scheme]) for img, _, _ in pairs}
    means = dataset_site_means(own, {img.participant: img.site for img, _, _ in pairs})
    kept = set(means) if args.sites is None else set(args.sites) & set(means)
    dest = args.out_dir / f"{args.method}_{args.scheme}+dataset_{args.target}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source_dir, dest)
    for img, path, truth in pairs:
        landmarks = subject_landmarks(target, means[img.site], own[img.participant]) \
            if img.site in kept else target
        image = nb.load(path)
        matched = match_landmarks(load(path), load(truth.brain_mask) > 0, landmarks)
        nb.Nifti1Image(matched, image.affine, image.header).to_filename(
            dest / path.relative_to(source_dir))
    res = evaluate(args.out_dir / "test_n4", dest)
    lines = [f"### `{dest.name}`: subject kept for {sorted(kept)}", "",
             f"`python benchmarks/landmark_site_means.py {' '.join(sys.argv[1:])}`; "
             f"{datetime.date.today()}, {time.monotonic() - t0:.0f} s; "
             f"model `{Path(model_file).name}`, {len(pairs)} outputs", "",
             "| source -> target | n | SSIM | PSNR (dB) | tissue Dice |", "|---|---|---|---|---|"]
    for (src, tgt), v in sorted(res["pairs"].items()):
        lines.append(f"| {src} -> {tgt} | {res['n'][(src, tgt)]} | {v['ssim']:.3f} | "
                     f"{v['psnr']:.2f} | {v['tissue_dice']:.3f} |")
    mean = {m: np.mean([v[m] for v in res["pairs"].values()])
            for m in ("ssim", "psnr", "tissue_dice")}
    lines += [f"| mean | | {mean['ssim']:.3f} | {mean['psnr']:.2f} | {mean['tissue_dice']:.3f} |",
              "", f"site predictability {res['site_predictability'][args.target]:.2f} ± "
              f"{res['site_predictability_sd'][args.target]:.2f} "
              f"(chance {res['chance'][args.target]:.2f})", ""]
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
