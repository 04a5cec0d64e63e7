#!/usr/bin/env python
"""The subject-kept match on whole-brain quantiles, onto the target site's own scans.

Re-matches the outputs ``quality_vs_peers.py`` left as sampled (``--method``, default
``ours_s5_stop0_n2``: levelled, no landmark match; ``none``: the N4-corrected sources
themselves, i.e. the match alone, as a peer) with :mod:`harmonize_bids.brain_quantiles`:
each output's whole in-brain histogram (100 quantiles) is mapped onto the target site's
scans' quantiles moved by where its source stands among its own site's scans.  Each
source site's statistics come from its scans in the test set (the scan included, as
``landmark_site_means.py``); the target site's scans are the truths, so each scan's
reference leaves its own anatomy out (the other anatomies' truths).  Writes
``{method}_brainq-ref_{target}`` beside it and scores it: SSIM, PSNR, tissue Dice per
pair, site predictability, and how often its outputs are told from the target site's
own scans (``target_site_likeness.py``).

``--disjoint-sites`` emulates sites that scanned *different* people: the anatomies are
split in two halves by label map (a label map and its deformed variant stay together);
a scan's source-site statistics come from its own half only and its reference from the
target site's scans of the other half, so no subject is on both sides.

    python benchmarks/brain_quantile_match.py --out-dir /tmp/hb_q22 --target ge15tspgr \\
        --results benchmarks/results/brain_quantile_match.md
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402
from site_confusion import load, sent_pairs  # noqa: E402
from target_site_likeness import method_row  # noqa: E402


def halves(anatomies: list[str]) -> dict[str, int]:
    """Anatomy -> 0 or 1: the label maps (name before ``-v``) split in two halves in
    sorted order, each with its deformed variants.

    >>> halves(["s13", "s13-v4", "s14", "s15", "s15-v6", "s16"])
    {'s13': 0, 's13-v4': 0, 's14': 0, 's15': 1, 's15-v6': 1, 's16': 1}
    """
    bases = sorted({a.split("-v")[0] for a in anatomies})
    first = set(bases[:len(bases) // 2])
    return {a: 0 if a.split("-v")[0] in first else 1 for a in anatomies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", default="ours_s5_stop0_n2",
                        help="the as-sampled outputs' folder name without the _TARGET suffix")
    parser.add_argument("--disjoint-sites", action="store_true",
                        help="source statistics and reference from disjoint halves of the "
                             "anatomies (different people at the two sites)")
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    from harmonize_bids.brain_quantiles import (brain_quantiles, match_brain_quantiles,
                                                standardized_quantiles)
    from harmonize_bids.site_intensity import scan_statistics
    from harmonize_bids.derivatives import derivative_path, sidecar_path
    from harmonize_bids.evaluation import evaluate

    t0 = time.monotonic()
    pairs = sent_pairs(args.out_dir, args.method, args.target)
    half = halves(sorted({truth.anatomy for _, _, truth in pairs})) if args.disjoint_sites \
        else {}
    source_q, truth_q, by_site = {}, {}, {}
    for img, _, truth in pairs:
        mask = load(truth.brain_mask) > 0
        source_q[img.participant] = brain_quantiles(load(img.t1w), mask)
        truth_q[truth.anatomy] = brain_quantiles(load(truth.t1w), mask)
        by_site.setdefault((img.site, half.get(img.anatomy)), []).append(
            source_q[img.participant])
    sites = {key: scan_statistics(rows) for key, rows in by_site.items()}
    name = f"{args.method}_brainq-ref{'-disjoint' if args.disjoint_sites else ''}"
    dest = args.out_dir / f"{name}_{args.target}"
    if dest.exists():
        shutil.rmtree(dest)
    for img, path, truth in pairs:
        reference = scan_statistics([
            q for a, q in truth_q.items() if a != truth.anatomy
            and (not half or half[a] != half[truth.anatomy])])
        goal = standardized_quantiles(reference, sites[(img.site, half.get(img.anatomy))],
                                      source_q[img.participant])
        image = nb.load(path)
        matched = match_brain_quantiles(load(path), load(truth.brain_mask) > 0, goal)
        out = derivative_path(dest, {"subject": img.participant}, "harmonized")
        out.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(matched, image.affine, image.header).to_filename(out)
        sidecar_path(out).write_text(json.dumps({"TargetSite": args.target}))
    res = evaluate(args.out_dir / "test_n4", dest)
    together, each = method_row(args.out_dir, name, args.target)
    lines = ["| source -> target | n | SSIM | PSNR (dB) | tissue Dice | told from own scans |",
             "|---|---|---|---|---|---|"]
    for (src, tgt), v in sorted(res["pairs"].items()):
        lines.append(f"| {src} -> {tgt} | {res['n'][(src, tgt)]} | {v['ssim']:.3f} | "
                     f"{v['psnr']:.2f} | {v['tissue_dice']:.3f} | {each[src]:.2f} |")
    mean = {m: np.mean([v[m] for v in res["pairs"].values()])
            for m in ("ssim", "psnr", "tissue_dice")}
    lines += [f"| mean | | {mean['ssim']:.3f} | {mean['psnr']:.2f} | {mean['tissue_dice']:.3f} "
              f"| {np.mean(list(each.values())):.2f} |", "",
              f"Site predictability {res['site_predictability'][args.target]:.2f} ± "
              f"{res['site_predictability_sd'][args.target]:.2f} (chance "
              f"{res['chance'][args.target]:.2f}); outputs and the target site's own scans, "
              f"all classes: {together['accuracy']:.2f} (chance {together['chance']:.2f})."]
    write_results(args.results, f"Whole-brain quantile match towards `{args.target}`", sys.argv,
                  f"{time.monotonic() - t0:.0f} s; {len(pairs)} outputs of `{args.method}`; "
                  "'told from own scans': that source's outputs against the target site's "
                  "own scans (chance 0.50).", "\n".join(lines))


if __name__ == "__main__":
    main()
