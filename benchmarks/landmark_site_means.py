#!/usr/bin/env python
"""The subject-kept landmark match with each source site's statistics taken from the dataset.

The default landmark match maps every output onto the target site's *mean* landmarks
and so erases the subject's part of them (session 24).  A dataset-level step keeps it:
each source site's landmark statistics (mean, spread) are estimated from the dataset's
own scans of that site (here: every harmonized source of that site in the test set,
the scan itself included), the target's landmarks are the model's.  ``--deviation``
says how a scan's deviation from its site is carried to the target:

- ``zscore`` (the app's ``--keep-subject-intensities`` since session 25,
  ``site_intensity.standardized_landmarks``): a z-score within its site, times the
  pooled spread;
- ``ratio`` (session 24, ``site_intensity.subject_landmarks``): the ratio to its
  site's mean, which carries each site's spread along.

It reads the outputs ``quality_vs_peers.py`` left as sampled (``--method``, default
``ours_s5_stop0_n2``: levelled, no landmark match) in its ``--out-dir``, matches each
for the sites in ``--sites`` (default: every source site; the others get the plain
match), writes ``{method}_{scheme}+dataset-{deviation}_{target}`` beside it and scores
it with the benchmark's ``evaluate`` (SSIM, PSNR, tissue Dice per pair, site
predictability).

``--scans-per-site K`` emulates smaller datasets: the anatomies are split into groups of
about K (``numpy.array_split``), each group a dataset of its own whose statistics come
from its scans only, and every scan keeps its subject part however few its site has
(the app's ``MIN_SITE_IMAGES`` is bypassed, to measure what it should be).

``--target-reference dataset`` places each scan within the target site's own scans
(``site_intensity.dataset_reference``, ComBat's reference batch; what the app does when
the dataset holds the target site) instead of the model's landmarks and the pooled
spread.  Here the target site's scans are the truths, so each scan's reference leaves
its own anatomy out: the other anatomies' truths (of its group) at the target site.

``--disjoint-sites`` emulates sites that scanned different people
(``brain_quantile_match.halves``): each scan's source-site statistics come from its
half of the anatomies, its target-site reference (with ``--target-reference dataset``)
from the other half.

    python benchmarks/landmark_site_means.py --out-dir /tmp/hb_q22 --target siemens3tmprage \\
        --results benchmarks/results/landmark_site_means.md
"""
from __future__ import annotations

import argparse
import datetime
import math
import shutil
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from brain_quantile_match import halves  # noqa: E402
from site_confusion import load, sent_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="ours_s5_stop0_n2")
    parser.add_argument("--sites", nargs="*", default=None,
                        help="source sites that get the subject-kept match (default: all)")
    parser.add_argument("--scheme", default="vigintiles")
    parser.add_argument("--deviation", choices=["zscore", "ratio"], default="zscore")
    parser.add_argument("--scans-per-site", type=int, default=None, metavar="K",
                        help="statistics from groups of about K anatomies (default: all)")
    parser.add_argument("--target-reference", choices=["model", "dataset"], default="model",
                        help="the target site's landmarks: the model's, or the dataset's "
                             "own scans of it (leaving the scan's anatomy out)")
    parser.add_argument("--disjoint-sites", action="store_true",
                        help="statistics from the scan's half of the anatomies, the target "
                             "reference from the other half (different people per site)")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--results", type=Path, default=None, help="append the table here")
    args = parser.parse_args()

    from harmonize_bids.diffusion.checkpoint import bundled_model, read_config
    from harmonize_bids.evaluation import evaluate
    from harmonize_bids.site_intensity import (MIN_SITE_IMAGES, SCHEMES, match_landmarks,
                                               scan_target_landmarks,
                                               site_statistics, subject_landmarks,
                                               target_landmarks, target_site_weight,
                                               tissue_landmarks)

    t0 = time.monotonic()
    model_file = args.model or bundled_model()
    target = target_landmarks(read_config(Path(model_file)), args.target, args.scheme)
    source_dir = args.out_dir / f"{args.method}_{args.target}"
    pairs = sent_pairs(args.out_dir, args.method, args.target)
    own = {img.participant: tissue_landmarks(load(img.t1w), load(img.brain_mask) > 0,
                                             SCHEMES[args.scheme]) for img, _, _ in pairs}
    anatomies = sorted({img.anatomy for img, _, _ in pairs})
    if args.disjoint_sites:
        if args.scans_per_site:
            raise SystemExit("--disjoint-sites and --scans-per-site do not combine")
        half = halves(anatomies)
        groups = [[a for a in anatomies if half[a] == h] for h in (0, 1)]
    else:
        groups = np.array_split(anatomies, math.ceil(len(anatomies) / (args.scans_per_site
                                                                        or len(anatomies))))
    group_of = {a: g for g, members in enumerate(groups) for a in members}
    by_site: list[dict[str, list]] = [{} for _ in groups]
    for img, _, _ in pairs:
        by_site[group_of[img.anatomy]].setdefault(img.site, []).append(own[img.participant])
    stats = [site_statistics(b) for b in by_site]
    fewest = min(len(g) for g in groups) if args.scans_per_site else MIN_SITE_IMAGES
    kept = set(stats[0]) if args.sites is None else set(args.sites) & set(stats[0])
    truth_own = {truth.anatomy: tissue_landmarks(load(truth.t1w), load(truth.brain_mask) > 0,
                                                 SCHEMES[args.scheme]) for _, _, truth in pairs}

    def statistics_for(anatomy: str) -> dict:
        """The scan's group's statistics; with ``--target-reference dataset`` the target
        site's from the other anatomies of the group (its own truth left out)."""
        group = stats[group_of[anatomy]]
        if args.target_reference == "model":
            return group
        reference_group = 1 - group_of[anatomy] if args.disjoint_sites else group_of[anatomy]
        others = [truth_own[b] for b in groups[reference_group] if b != anatomy]
        return {**group, **site_statistics({args.target: others})}

    size = f"-k{args.scans_per_site}" if args.scans_per_site else ""
    ref = ("-ref" if args.target_reference == "dataset" else "") \
        + ("-disjoint" if args.disjoint_sites else "")
    dest = args.out_dir / (f"{args.method}_{args.scheme}+dataset-{args.deviation}{size}{ref}_"
                           f"{args.target}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source_dir, dest)
    weights: list[float] = []
    for img, path, truth in pairs:
        if img.site not in kept:
            landmarks = target
        elif args.deviation == "ratio":
            landmarks = subject_landmarks(target, stats[group_of[img.anatomy]][img.site].mean,
                                          own[img.participant])
        else:
            choice = scan_target_landmarks(target, statistics_for(img.anatomy), img.site,
                                           own[img.participant], fewest,
                                           target_site=args.target)
            landmarks = choice.landmarks
            if choice.why_not_kept:
                print(f"{img.participant}: plain match ({choice.why_not_kept})")
            elif choice.reference != args.target_reference:
                if args.target_reference == "model":
                    raise SystemExit(f"{img.participant}: matched onto the "
                                     f"{choice.reference}'s landmarks")
                print(f"{img.participant}: the model's target landmarks (the dataset's "
                      "target scans are within their own noise of them)")
            if args.target_reference == "dataset":
                weights.append(target_site_weight(target, statistics_for(img.anatomy),
                                                  args.target, fewest) or 0.0)
        image = nb.load(path)
        matched = match_landmarks(load(path), load(truth.brain_mask) > 0, landmarks)
        nb.Nifti1Image(matched, image.affine, image.header).to_filename(
            dest / path.relative_to(source_dir))
    res = evaluate(args.out_dir / "test_n4", dest)
    lines = [f"### `{dest.name}`: subject kept for {sorted(kept)}; statistics from groups "
             f"of {[len(g) for g in groups]} anatomies; target site's landmarks from the "
             f"{args.target_reference}", "",
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
    if weights:
        lines[-1:] = [f"dataset reference's weight against the model's landmarks "
                      f"(`site_intensity.reference_weight`): {min(weights):.2f}-"
                      f"{max(weights):.2f}, mean {np.mean(weights):.2f}", ""]
    text = "\n".join(lines)
    print(text)
    if args.results:
        with open(args.results, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
