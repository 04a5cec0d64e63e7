#!/usr/bin/env python
"""Tissue agreement with the true target image, for the outputs of quality_vs_peers.py.

``quality_vs_peers.py`` scores anatomy with *tissue Dice*: an intensity-only GMM
segmentation of the output against the true label map.  That rewards tissue
contrast as well as anatomy: towards a low-contrast 1.5 T target the true target
image itself (a rescan) scores lower than an unharmonized 3 T source.  This script
adds the question harmonization is for: does the output segment like the true
target-site image does?  *Tissue agreement* = mean Dice (CSF, GM, WM) of the GMM
segmentation of the output against the GMM segmentation of the true target image
(``metrics.tissue_dice`` with that segmentation as the reference); the ceiling is a
rescan at the target.  It reads the derivative folders that quality_vs_peers.py
left in ``--out-dir`` (nothing is harmonized again)::

    python benchmarks/tissue_agreement.py --out-dir /tmp/hb_quality
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nb
import numpy as np

PEERS = {"nyul": "Nyul (intensity-normalization)",
         "whitestripe": "WhiteStripe (intensity-normalization)",
         "z-score": "z-score (intensity-normalization)", "ants": "ANTs histogram matching"}


def load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(path).dataobj, np.float32)


def method_dirs(out_dir: Path, targets: list[str], ours: list[str]) -> dict[str, dict[str, Path]]:
    """method name -> {target: derivative folder} (``None``: the unharmonized source)."""
    methods = {"no harmonization": {t: None for t in targets}}
    for key, name in PEERS.items():
        methods[name] = {t: out_dir / f"{key}_{t}" for t in targets}
    for tag in ours:
        methods[f"ours {tag}"] = {t: out_dir / f"ours_{tag}_{t}" for t in targets}
    return {m: d for m, d in methods.items()
            if all(p is None or p.is_dir() for p in d.values())}


def main() -> None:
    from harmonize_bids import metrics
    from harmonize_bids.derivatives import derivative_path
    from harmonize_bids.evaluation import read_simulated_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"))
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--ours", nargs="+", default=["s5_stop0_n2", "s5_stop0_n2_matched"],
                        help="tags of ours_<tag>_<target> folders to score")
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "tissue_agreement.md")
    args = parser.parse_args()
    t0 = time.monotonic()
    test = args.out_dir / "test_n4"
    images = read_simulated_dataset(test)
    by = {(i.anatomy, i.site): i for i in images}
    truth_seg: dict[tuple[str, str], np.ndarray] = {}

    def seg_of_truth(anatomy: str, site: str) -> np.ndarray:
        if (anatomy, site) not in truth_seg:
            img = by[(anatomy, site)]
            truth_seg[(anatomy, site)] = metrics.tissue_segmentation(
                load(img.t1w), load(img.brain_mask) > 0)
        return truth_seg[(anatomy, site)]

    rows: dict[str, dict[tuple[str, str], list[tuple[float, float]]]] = {}
    for name, dirs in method_dirs(args.out_dir, args.targets, args.ours).items():
        rows[name] = defaultdict(list)
        for target, folder in dirs.items():
            for img in images:
                if img.site == target or (img.anatomy, target) not in by:
                    continue
                path = img.t1w if folder is None else \
                    derivative_path(folder, {"subject": img.participant}, "harmonized")
                if not Path(path).is_file():
                    continue
                truth = by[(img.anatomy, target)]
                mask = load(truth.brain_mask) > 0
                out = load(path)
                agree = metrics.tissue_dice(out, mask, seg_of_truth(img.anatomy, target))["mean"]
                label = metrics.tissue_dice(out, mask, load(truth.dseg))["mean"]
                rows[name][(img.site, target)].append((agree, label))
        print(f"{name} done", flush=True)
    ceiling = {}
    for target in args.targets:
        vals = [metrics.tissue_dice(load(i.rescan), load(i.brain_mask) > 0,
                                    seg_of_truth(i.anatomy, target))["mean"]
                for i in images if i.site == target and i.rescan is not None]
        ceiling[target] = float(np.mean(vals)) if vals else float("nan")

    pairs = sorted({k for r in rows.values() for k in r})
    lines = ["# Tissue agreement with the true target image", "",
             f"- command: `python benchmarks/tissue_agreement.py {' '.join(sys.argv[1:])}`",
             f"- date: {datetime.date.today()}; {(time.monotonic() - t0) / 60:.0f} min; inputs: "
             f"the derivative folders of `quality_vs_peers.py` in `{args.out_dir}`",
             "- agreement: mean Dice of the output's 3-class intensity GMM against the GMM of "
             "the true target image; label Dice: against the true label map (the "
             "benchmark's tissue Dice); rescan: the target's rescan scored the same way", "",
             "## Means over pairs", "",
             "| method | agreement | label Dice | pairs with agreement >= no harmonization |",
             "|---|---|---|---|"]
    base = rows["no harmonization"]
    for name, r in rows.items():
        agree = [np.mean([a for a, _ in r[k]]) for k in pairs if r.get(k)]
        label = [np.mean([b for _, b in r[k]]) for k in pairs if r.get(k)]
        ok = sum(np.mean([a for a, _ in r[k]]) >= np.mean([a for a, _ in base[k]])
                 for k in pairs if r.get(k))
        lines.append(f"| {name} | {np.mean(agree):.3f} | {np.mean(label):.3f} | "
                     f"{ok}/{len(agree)} |")
    lines += ["", "## Per pair (agreement / label Dice)", "",
              "| source → target | rescan agreement | " + " | ".join(rows) + " |",
              "|---|---|" + "---|" * len(rows)]
    for src, tgt in pairs:
        cells = []
        for r in rows.values():
            vals = r.get((src, tgt))
            cells.append(f"{np.mean([a for a, _ in vals]):.3f} / {np.mean([b for _, b in vals]):.3f}"
                         if vals else "-")
        lines.append(f"| {src} → {tgt} | {ceiling[tgt]:.3f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text + "\n")


if __name__ == "__main__":
    main()
