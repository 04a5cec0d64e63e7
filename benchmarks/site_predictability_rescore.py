#!/usr/bin/env python
"""Site predictability of every method in a quality benchmark's out-dir, re-scored.

``quality_vs_peers.py`` leaves each method's outputs on disk (one derivatives
folder per method and target).  This script scores them again with
:func:`harmonize_bids.metrics.site_predictability` over ``--repeats`` repeated
cross-validation splits (mean ± sd over the repeats), without re-running any
method, and writes a table.  Until session 11 the benchmark scored one split;
with 16 images per target that number moved by up to 0.25 with the split alone.

"no harmonization" here is per target (the N4-corrected sources that would be
sent to it), not the benchmark's one whole-dataset question.

    python benchmarks/site_predictability_rescore.py --out-dir /tmp/hb_quality \\
        --results benchmarks/results/site_predictability_rescored.md
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
from site_confusion import sent_to  # noqa: E402

PEERS = ("nyul", "whitestripe", "z-score", "ants")


def methods_in(out_dir: Path, targets: list[str]) -> list[str]:
    """Method folder names (without ``_TARGET``) present for every target, peers first."""
    found = None
    for target in targets:
        names = {p.name.removesuffix(f"_{target}") for p in out_dir.glob(f"*_{target}")
                 if p.is_dir()}
        found = names if found is None else found & names
    found = found or set()
    return [*[m for m in PEERS if m in found], *sorted(found - set(PEERS))]


def main() -> None:
    from harmonize_bids import metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"))
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    if not (args.out_dir / "test_n4").is_dir():
        parser.error(f"{args.out_dir} holds no quality benchmark (no test_n4/): "
                     "run benchmarks/quality_vs_peers.py first")
    rows, scores = [], {}
    for method in ["none", *methods_in(args.out_dir, args.targets)]:
        cells = []
        for target in args.targets:
            res = metrics.site_predictability(*sent_to(args.out_dir, method, target),
                                              n_repeats=args.repeats)
            scores[method, target] = res["accuracy"]
            cells.append(f"{res['accuracy']:.2f} ± {res['accuracy_sd']:.2f} "
                         f"({res['n_images']} images, chance {res['chance']:.2f})")
        mean = np.mean([scores[method, t] for t in args.targets])
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {mean:.2f} |")
    peers = [m for m in PEERS if (m, args.targets[0]) in scores]
    verdicts = []
    for method in sorted({m for m, _ in scores} - set(peers) - {"none"}):
        ok = [t for t in args.targets if scores[method, t] <= min(scores[p, t] for p in peers)]
        verdicts.append(f"- {method}: <= every peer's for {len(ok)}/{len(args.targets)} "
                        f"targets {ok}")
    text = "\n".join([
        "# Site predictability, re-scored with repeated cross-validation", "",
        f"- command: `python benchmarks/site_predictability_rescore.py "
        f"{' '.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
        f"- outputs: those in `{args.out_dir}` (written by quality_vs_peers.py; see the "
        "results file of that run for the model and sampler)",
        f"- cells: accuracy of telling the source site from the in-brain histogram, mean ± sd "
        f"over {args.repeats} repeated stratified splits; lower is better, chance is the floor",
        "", "| method | " + " | ".join(f"→ {t}" for t in args.targets) + " | mean |",
        "|---|" + "---|" * (len(args.targets) + 1), *rows, "", *verdicts, ""])
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
