#!/usr/bin/env python
"""Can harmonized outputs be told from the target site's own scans?

Site predictability (``quality_vs_peers.py``) asks whether the *source* site can be
read off the outputs; a method can pass it by giving every source the same wrong
look.  This asks the other half: whether the outputs look like scans genuinely
acquired at the target site.  For each method of a ``quality_vs_peers.py --out-dir``,
the same classifier (:func:`harmonize_bids.metrics.site_predictability`: 32-bin in-brain
histograms, logistic regression, repeated stratified splits) separates

- *all*: the outputs of each source site and the target site's own scans (the test
  set's target-site images of the same anatomies), one class each (chance 1 / classes);
- *per source*: one source site's outputs against the target site's own scans (chance
  0.5), then the mean over sources.

The target site's rescans against its scans give the ceiling (same site, other noise).
Same anatomies on both sides, so only intensities and texture can tell them apart.

    python benchmarks/target_site_likeness.py --out-dir /tmp/hb_q22 --target siemens3tmprage \\
        --methods none nyul ants ours_s5_stop0_n2_vigintiles
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_results  # noqa: E402
from site_confusion import load, sent_pairs  # noqa: E402

GENUINE = "(target site's own scans)"


def likeness(images: list, masks: list, sites: list[str]) -> tuple[dict, dict[str, float]]:
    """``(all-classes result, {source: accuracy against GENUINE})``; ``sites`` labels
    each image, the target site's own scans as :data:`GENUINE`.

    >>> rng = np.random.default_rng(0)
    >>> look = lambda a, b: rng.beta(a, b, (8, 8, 8))  # an intensity distribution
    >>> images = [look(2, 5) for _ in range(12)] + [look(5, 2) for _ in range(6)]
    >>> sites = ["alike"] * 6 + [GENUINE] * 6 + ["unlike"] * 6
    >>> together, each = likeness(images, [np.ones((8, 8, 8), bool)] * 18, sites)
    >>> round(together["chance"], 2), each["unlike"], each["alike"] < 0.9
    (0.33, 1.0, True)
    """
    from harmonize_bids.metrics import site_predictability

    together = site_predictability(images, masks, sites)
    each = {}
    for source in sorted(set(sites) - {GENUINE}):
        idx = [i for i, s in enumerate(sites) if s in (source, GENUINE)]
        each[source] = site_predictability([images[i] for i in idx], [masks[i] for i in idx],
                                           [sites[i] for i in idx])["accuracy"]
    return together, each


def method_row(out_dir: Path, method: str, target: str) -> tuple[dict, dict[str, float]]:
    """:func:`likeness` of ``method``'s outputs towards ``target`` and the truths."""
    images, masks, sites, genuine = [], [], [], {}
    for img, path, truth in sent_pairs(out_dir, method, target):
        mask = load(truth.brain_mask) > 0
        images.append(load(path))
        masks.append(mask)
        sites.append(img.site)
        genuine[truth.anatomy] = (truth.t1w, mask)
    for t1w, mask in genuine.values():
        images.append(load(t1w))
        masks.append(mask)
        sites.append(GENUINE)
    return likeness(images, masks, sites)


def rescan_row(out_dir: Path, target: str) -> float:
    """The ceiling: the target site's rescans against its scans (accuracy, chance 0.5)."""
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.metrics import site_predictability

    images, masks, sites = [], [], []
    for img in read_simulated_dataset(out_dir / "test_n4"):
        if img.site != target or img.rescan is None:
            continue
        mask = load(img.brain_mask) > 0
        images += [load(img.t1w), load(img.rescan)]
        masks += [mask, mask]
        sites += ["scan", "rescan"]
    return site_predictability(images, masks, sites)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir")
    parser.add_argument("--target", required=True)
    parser.add_argument("--methods", nargs="+", required=True,
                        help="derivatives folder names without the _TARGET suffix; 'none': "
                             "the sources themselves")
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    t0 = time.monotonic()
    rows, sources = [], None
    for method in args.methods:
        together, each = method_row(args.out_dir, method, args.target)
        sources = sources or list(each)
        rows.append((method, together, each))
    lines = [f"| method | all classes (chance) | {' | '.join(sources)} | mean vs own scans |",
             "|---|---|" + "---|" * len(sources) + "---|"]
    for method, together, each in rows:
        lines.append(f"| {method} | {together['accuracy']:.2f} ± {together['accuracy_sd']:.2f} "
                     f"({together['chance']:.2f}) | "
                     + " | ".join(f"{each.get(s, float('nan')):.2f}" for s in sources)
                     + f" | {np.mean(list(each.values())):.2f} |")
    lines += ["", f"Ceiling: the target site's rescans against its scans "
                  f"{rescan_row(args.out_dir, args.target):.2f} (chance 0.50)."]
    write_results(args.results, f"Outputs against `{args.target}`'s own scans", sys.argv,
                  f"{time.monotonic() - t0:.0f} s. Per-source columns: that source's outputs "
                  "against the target site's own scans of the same anatomies (chance 0.50).",
                  "\n".join(lines))


if __name__ == "__main__":
    main()
