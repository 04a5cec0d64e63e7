#!/usr/bin/env python
"""Site predictability of every method in a quality benchmark's out-dir, re-scored.

``quality_vs_peers.py`` leaves each method's outputs on disk (one derivatives
folder per method and target).  This script scores them again, without re-running
any method, over ``--repeats`` repeated cross-validation splits under three fold
protocols, and writes a table:

- **by subject** (the benchmark's protocol since session 31): folds grouped by
  label map, so a real subject and its deformed variants are never on both sides
  of a split; the classifier is scored on people it never saw;
- **by anatomy**: folds grouped by anatomy (a deformed variant of a test subject
  may be in training; ``site_predictability_paired.py`` used this in session 30);
- **plain**: stratified folds, an image's own anatomy at other sites in training
  (the benchmark's protocol until session 30).

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

PEERS = ("nyul", "whitestripe", "z-score", "ants", "brainq")


def methods_in(out_dir: Path, targets: list[str]) -> list[str]:
    """Method folder names (without ``_TARGET``) present for every target, peers first."""
    found = None
    for target in targets:
        names = {p.name.removesuffix(f"_{target}") for p in out_dir.glob(f"*_{target}")
                 if p.is_dir()}
        found = names if found is None else found & names
    found = found or set()
    return [*[m for m in PEERS if m in found], *sorted(found - set(PEERS))]


PROTOCOLS = ("by subject", "by anatomy", "plain")


def protocol_scores(features: np.ndarray, sites: list, anatomies: list,
                    repeats: int) -> dict[str, tuple[float, float]]:
    """{protocol: (mean, sd over repeats) accuracy} of telling ``sites`` from ``features``
    under each of :data:`PROTOCOLS`, and ``"subject folds"``: (lowest, highest) accuracy
    of one repeat's subject-grouped folds (with as many folds as subjects every repeat
    is the same leave-one-subject-out split, so its sd is 0 and this range is the
    spread that says something: how much the score depends on who is tested)."""
    from harmonize_bids import metrics
    from harmonize_bids.simulate.dataset import label_map_of

    subjects = [label_map_of(a) for a in anatomies]
    groups = {"by subject": subjects, "by anatomy": list(anatomies), "plain": None}
    out = {name: metrics.repeated_site_accuracy(features, sites, n_repeats=repeats,
                                                groups=groups[name])
           for name in PROTOCOLS}
    folds = metrics.site_fold_accuracies(features, sites, n_repeats=1, groups=subjects)[0]
    out["subject folds"] = (float(folds.min()), float(folds.max()))
    return out


def main() -> None:
    from harmonize_bids import metrics
    from site_confusion import load, sent_pairs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"))
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method folders (without _TARGET); default: every one present "
                             "for every target")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    if not (args.out_dir / "test_n4").is_dir():
        parser.error(f"{args.out_dir} holds no quality benchmark (no test_n4/): "
                     "run benchmarks/quality_vs_peers.py first")
    methods = args.methods or methods_in(args.out_dir, args.targets)
    rows, scores = [], {}
    for method in ["none", *methods]:
        cells = []
        for target in args.targets:
            pairs = sent_pairs(args.out_dir, method, target)
            features = metrics.site_histogram_features(
                [load(path) for _, path, _ in pairs],
                [load(truth.brain_mask) > 0 for _, _, truth in pairs])
            res = protocol_scores(features, [img.site for img, _, _ in pairs],
                                  [img.anatomy for img, _, _ in pairs], args.repeats)
            for name, (mean, _) in res.items():
                scores[method, target, name] = mean
            low, high = res["subject folds"]
            cells.append(f"{res[PROTOCOLS[0]][0]:.2f} [{low:.2f}-{high:.2f}] / " + " / ".join(
                f"{res[name][0]:.2f} ± {res[name][1]:.2f}" for name in PROTOCOLS[1:])
                + f" ({len(pairs)})")
        rows.append(f"| {method} | " + " | ".join(cells) + " | " + " / ".join(
            f"{np.mean([scores[method, t, name] for t in args.targets]):.2f}"
            for name in PROTOCOLS) + " |")
        print(rows[-1], flush=True)
    peers = [m for m in PEERS if m in methods]
    verdicts = []
    for method in [m for m in methods if m not in peers]:
        for name in PROTOCOLS:
            ok = [t for t in args.targets if peers and scores[method, t, name] <= min(
                scores[p, t, name] for p in peers)]
            verdicts.append(f"- {method}, folds {name}: <= every peer's ({', '.join(peers)}) "
                            f"for {len(ok)}/{len(args.targets)} targets {ok}")
    text = "\n".join([
        "# Site predictability, re-scored under three fold protocols", "",
        f"- command: `python benchmarks/site_predictability_rescore.py "
        f"{' '.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
        f"- outputs: those in `{args.out_dir}` (written by quality_vs_peers.py; see the "
        "results file of that run for the model and sampler)",
        f"- cells: accuracy of telling the source site from the in-brain histogram, folds "
        f"{' / '.join(PROTOCOLS)} (see the script's docstring): by subject with [lowest-highest "
        f"of its folds, one subject tested in each]; the others mean ± sd over {args.repeats} "
        "repeated splits; (images); lower is better, chance 1 / number of source sites",
        "", "| method | " + " | ".join(f"→ {t}" for t in args.targets) + " | mean |",
        "|---|" + "---|" * (len(args.targets) + 1), *rows, "", *verdicts, ""])
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
