#!/usr/bin/env python
"""Is one method's site predictability really lower than another's? A paired bootstrap.

``quality_vs_peers.py`` reports site predictability with the sd of its repeated
cross-validation splits.  That sd says how much the *split* moves the score, not how
much the *test subjects* do: in session 30 the default match read 0.35, 0.44 and
0.34 at strengths 1, 0.8 and 0.7 towards ``ge15tspgr`` (within-run sd 0.04-0.05),
with no trend.  This script compares two methods' outputs of the same images (two
folders in one ``--out-dir``) by resampling the test *anatomies* with replacement
(all of an anatomy's source images together) and scoring both methods on each
resample with the same splits; the spread of the paired difference is the
uncertainty that matters when choosing between them.

Cross-validation here keeps a subject's images in one fold (``StratifiedGroupKFold``,
groups = label maps, as the benchmark's ``evaluate`` does since session 31; session
30 grouped by anatomy), so an anatomy drawn twice, or a deformed variant of a test
subject, never sits on the other side of a split.  The resampling unit is still the
anatomy: variants of one label map share their subject, so the intervals are if
anything too narrow (the track-A test set holds 4 real subjects).

    python benchmarks/site_predictability_paired.py --out-dir /tmp/hb_q22 \\
        --targets ge15tspgr --methods ours_s5_stop0_n2_vigintiles \\
        ours_s5_str0.8_stop0_n2_vigintiles --results F.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_file import write_results  # noqa: E402

FOLDS = 4  # grouped folds per repeat: the 4 held-out label maps give one subject per fold


def split_accuracy(features: np.ndarray, sites: Sequence,
                   splits: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean accuracy of ``metrics.site_classifier`` over the given (train, test) splits."""
    from sklearn.model_selection import cross_val_score

    from harmonize_bids import metrics

    return float(np.mean(cross_val_score(metrics.site_classifier(), features,
                                         np.asarray(sites), scoring="accuracy", cv=splits)))


def _splits(sites: np.ndarray, groups: np.ndarray, n_splits: int, n_repeats: int,
            seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    folds = min(n_splits, np.unique(groups).size)
    out = []
    for r in range(n_repeats):
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
        out.extend(cv.split(np.zeros(sites.size), sites, groups))
    return out


def paired_difference(features_a: np.ndarray, features_b: np.ndarray, sites: Sequence,
                      anatomies: Sequence, n_boot: int = 200, n_splits: int = FOLDS,
                      n_repeats: int = 5, seed: int = 0,
                      subjects: Sequence | None = None) -> dict[str, float]:
    """Site predictability of B minus that of A, with an anatomy bootstrap.

    ``features_a`` and ``features_b`` hold one row per image, the same images in the
    same order (``sites`` and ``anatomies`` label the rows; ``subjects``, default the
    anatomies, group the folds).  Returns ``a`` and ``b``
    (grouped cross-validated accuracy on all images), ``difference`` (b - a) and
    ``low``/``high``, the 2.5 and 97.5 percentiles of the difference over ``n_boot``
    resamples of the anatomies; ``p_b_lower``: the fraction of resamples in which B
    scored lower than A.

    >>> rng = np.random.default_rng(0)
    >>> sites = np.tile(["x", "y", "z"], 10); anatomies = np.repeat(np.arange(10), 3)
    >>> site_signal = (sites[:, None] == np.array(["x", "y", "z"])).astype(float)
    >>> noise = rng.normal(size=(30, 3))
    >>> res = paired_difference(noise + 3 * site_signal, noise, sites, anatomies,
    ...                         n_boot=20, n_repeats=2)
    >>> res["a"] > 0.9, res["b"] < 0.6, res["high"] < 0, res["p_b_lower"]
    (True, True, True, 1.0)
    """
    sites, anatomies = np.asarray(sites), np.asarray(anatomies)
    subjects = anatomies if subjects is None else np.asarray(subjects)
    fa, fb = np.asarray(features_a, float), np.asarray(features_b, float)
    if len({fa.shape[0], fb.shape[0], sites.size, anatomies.size, subjects.size}) != 1:
        raise ValueError("features_a, features_b, sites, anatomies and subjects must have "
                         "as many rows")
    splits = _splits(sites, subjects, n_splits, n_repeats, seed)
    a = split_accuracy(fa, sites, splits)
    b = split_accuracy(fb, sites, splits)
    rng = np.random.default_rng(seed)
    unique = np.unique(anatomies)
    rows_of = {u: np.flatnonzero(anatomies == u) for u in unique}
    diffs = []
    for i in range(n_boot):
        drawn = rng.choice(unique, size=unique.size, replace=True)
        rows = np.concatenate([rows_of[u] for u in drawn])
        groups = subjects[rows]  # an anatomy drawn twice stays in one fold
        if np.unique(groups).size < 2:
            continue
        s = _splits(sites[rows], groups, n_splits, n_repeats, seed + 1000 * (i + 1))
        diffs.append(split_accuracy(fb[rows], sites[rows], s)
                     - split_accuracy(fa[rows], sites[rows], s))
    diffs = np.asarray(diffs)
    return {"a": a, "b": b, "difference": b - a,
            "low": float(np.percentile(diffs, 2.5)), "high": float(np.percentile(diffs, 97.5)),
            "p_b_lower": float(np.mean(diffs < 0)), "n_boot": int(diffs.size)}


def method_features(out_dir: Path, method: str, target: str):
    """{(anatomy, source site): histogram features} of what ``method`` sent to ``target``."""
    from harmonize_bids import metrics
    from site_confusion import sent_pairs, load

    pairs = sent_pairs(out_dir, method, target)
    feats = metrics.site_histogram_features([load(p) for _, p, _ in pairs],
                                            [load(t.brain_mask) > 0 for _, _, t in pairs])
    return {(img.anatomy, img.site): f for (img, _, _), f in zip(pairs, feats)}


def main() -> None:
    from harmonize_bids.simulate.dataset import label_map_of

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_q22"))
    parser.add_argument("--targets", nargs="+", default=["ge15tspgr", "siemens3tmprage"])
    parser.add_argument("--methods", nargs=2, required=True, metavar=("A", "B"),
                        help="method folders (without _TARGET): the baseline, the candidate")
    parser.add_argument("--boot", type=int, default=200, help="anatomy resamples")
    parser.add_argument("--repeats", type=int, default=5, help="split repeats per resample")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    a, b = args.methods
    rows = ["| target | images | A | B | B - A [95% interval] | resamples with B < A |",
            "|---|---|---|---|---|---|"]
    for target in args.targets:
        fa = method_features(args.out_dir, a, target)
        fb = method_features(args.out_dir, b, target)
        keys = sorted(set(fa) & set(fb))
        if len(keys) < len(fa) or len(keys) < len(fb):
            print(f"warning: {target}: {len(fa)} vs {len(fb)} images; scoring the "
                  f"{len(keys)} both hold", file=sys.stderr)
        res = paired_difference(np.stack([fa[k] for k in keys]), np.stack([fb[k] for k in keys]),
                                [k[1] for k in keys], [k[0] for k in keys],
                                n_boot=args.boot, n_repeats=args.repeats,
                                subjects=[label_map_of(k[0]) for k in keys])
        rows.append(f"| {target} | {len(keys)} | {res['a']:.2f} | {res['b']:.2f} | "
                    f"{res['difference']:+.2f} [{res['low']:+.2f}, {res['high']:+.2f}] | "
                    f"{res['p_b_lower']:.2f} |")
    details = (f"A = `{a}`, B = `{b}` (folders in `{args.out_dir}`); grouped cross-validated "
               f"site accuracy (up to {FOLDS} folds by label map x {args.repeats} repeats), "
               f"{args.boot} anatomy resamples; lower is better.")
    write_results(args.results, "Site predictability, paired: B against A", sys.argv,
                  details, "\n".join(rows))


if __name__ == "__main__":
    main()
