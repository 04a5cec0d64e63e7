#!/usr/bin/env python
"""Where the harmonized image puts the tissue boundaries, by source site.

Session 11 found what still identifies the source site after tissue-landmark
matching: the output's tissue fractions (mostly where the GM/WM boundary falls)
depend on the source, e.g. +0.026 WM for ``ge15tspgr`` sources and -0.040 for
``philips3ttfe`` ones.  A harmonizer that preserves anatomy should give the
truth's fractions whatever the source.

For every method folder that ``quality_vs_peers.py`` left in ``--out-dir``
(and ``none``: the N4-corrected sources), this prints the mean over anatomies of
(output - truth) CSF/GM/WM fractions per source site, both from
:func:`harmonize_bids.metrics.tissue_segmentation` inside the truth's brain mask,
then two summaries over sources: the spread (sd of the per-source means; what a
site classifier can use) and the mean absolute bias.  Lower is better for both.
The last column asks whether those three numbers alone identify the source: the
accuracy of :func:`harmonize_bids.metrics.site_classifier` on each output's
fractions (repeated stratified splits, as
:func:`harmonize_bids.metrics.site_predictability` does with the histogram); near
chance means the tissue boundaries carry no site.

    python benchmarks/tissue_fraction_bias.py --out-dir /tmp/hb_quality \\
        --targets siemens3tmprage --results benchmarks/results/tissue_fraction_bias.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from site_confusion import load, sent_pairs  # noqa: E402
from site_predictability_rescore import methods_in  # noqa: E402
from target_site_likeness import (GENUINE, add_own_scans_argument, own_scans,  # noqa: E402
                                  own_through)

TISSUES = ("CSF", "GM", "WM")


def fractions(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """CSF, GM, WM fractions of ``mask`` by the metrics module's tissue classes."""
    from harmonize_bids import metrics

    classes = metrics.tissue_segmentation(image, mask)[mask]
    return np.array([(classes == k).mean() for k in (1, 2, 3)])


def fraction_rows(pairs: list[tuple], truth_fractions: dict[Path, np.ndarray]
                  ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(source site, output fractions, truth fractions) for every output.

    ``truth_fractions`` caches each truth's fractions by path: every method of a
    target is scored against the same truths, so each is segmented once.
    """
    rows = []
    for img, path, truth in pairs:
        mask = load(truth.brain_mask) > 0
        if truth.t1w not in truth_fractions:
            truth_fractions[truth.t1w] = fractions(load(truth.t1w), mask)
        rows.append((img.site, fractions(load(path), mask), truth_fractions[truth.t1w]))
    return rows


def own_rows(out_dir: Path, target: str, pairs: list[tuple],
             truth_fractions: dict[Path, np.ndarray], through: str | None = None
             ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """:func:`fraction_rows` of the target site's own scans of the anatomies in
    ``pairs``, labelled :data:`GENUINE`: as acquired (zero bias by construction) or as
    the method ``through`` left them (``target_site_likeness.own_scans``)."""
    scans = own_scans(out_dir, target, through)
    truths = {truth.anatomy: truth for _, _, truth in pairs}
    own = [(truth, scans[a], truth) for a, truth in sorted(truths.items()) if a in scans]
    return [(GENUINE, out, ref) for _, out, ref in fraction_rows(own, truth_fractions)]


def bias_by_source(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """source site -> mean (output - truth) fractions over its anatomies."""
    per_source: dict[str, list] = {}
    for site, out, truth in rows:
        per_source.setdefault(site, []).append(out - truth)
    return {site: np.mean(diffs, axis=0) for site, diffs in sorted(per_source.items())}


def fraction_site_accuracy(rows: list[tuple[str, np.ndarray, np.ndarray]],
                           n_repeats: int = 20) -> tuple[float, float]:
    """(mean, sd) accuracy of telling the source site from the output's fractions alone."""
    from harmonize_bids import metrics

    return metrics.repeated_site_accuracy([out for _, out, _ in rows],
                                          [site for site, _, _ in rows], n_repeats=n_repeats)


def summarize(bias: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sd over sources, mean |bias| over sources), per tissue."""
    table = np.array(list(bias.values()))
    return table.std(axis=0), np.abs(table).mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"))
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method folder names without _TARGET (default: all found)")
    add_own_scans_argument(parser)
    parser.add_argument("--results", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    if not (args.out_dir / "test_n4").is_dir():
        parser.error(f"{args.out_dir} holds no quality benchmark (no test_n4/): "
                     "run benchmarks/quality_vs_peers.py first")
    methods = args.methods or ["none", *methods_in(args.out_dir, args.targets)]
    through = own_through(methods, args.own_scans_through)
    if through is None:
        parser.error("--own-scans-through takes one METHOD or one per --methods")
    lines = ["# Tissue-fraction bias by source site", "",
             f"- command: `python benchmarks/tissue_fraction_bias.py {' '.join(sys.argv[1:])}`",
             f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
             f"- outputs: those in `{args.out_dir}` (written by quality_vs_peers.py)",
             "- cells: mean over anatomies of output minus truth CSF / GM / WM fraction of "
             "the truth's brain mask (metrics.tissue_segmentation on both); spread = sd of "
             "the per-source means, |bias| = their mean absolute value; pooled spread GM: "
             "the same sd with the target site's own scans as one more group (as acquired, "
             "zero bias, or as the method in 'own scans' left them), i.e. the site effect "
             "on GM volume left in a pooled study", ""]
    for target in args.targets:
        truth_fractions: dict[Path, np.ndarray] = {}
        pairs = {m: sent_pairs(args.out_dir, m, target) for m in methods}
        rows = {m: fraction_rows(p, truth_fractions) for m, p in pairs.items()}
        bias = {m: bias_by_source(r) for m, r in rows.items()}
        own = {(m, t): bias_by_source(own_rows(args.out_dir, target, pairs[m], truth_fractions,
                                               t))[GENUINE] for m, t in through}
        sources = sorted({s for b in bias.values() for s in b})
        lines += [f"## → {target}", "",
                  "| method | own scans | " + " | ".join(sources)
                  + f" | {GENUINE} | spread WM | spread GM | pooled spread GM | |bias| WM "
                  f"| site acc. from fractions (chance {1 / len(sources):.2f}) |",
                  "|---|---|" + "---|" * (len(sources) + 6)]
        for method, own_method in through:
            b = bias[method]
            spread, size = summarize(b)
            pooled, _ = summarize({**b, GENUINE: own[method, own_method]})
            acc, acc_sd = fraction_site_accuracy(rows[method])
            cells = [" / ".join(f"{v:+.3f}" for v in b[s]) if s in b else "—"
                     for s in sources] + [" / ".join(f"{v:+.3f}" for v in own[method, own_method])]
            lines.append(f"| {method} | {own_method or 'as acquired'} | "
                         + " | ".join(cells)
                         + f" | {spread[2]:.3f} | {spread[1]:.3f} | {pooled[1]:.3f} "
                         f"| {size[2]:.3f} | {acc:.2f} ± {acc_sd:.2f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
