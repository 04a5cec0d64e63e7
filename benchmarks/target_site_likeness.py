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


def own_scans(out_dir: Path, target: str, through: str | None = None) -> dict[str, Path]:
    """Anatomy -> the target site's own scan of it: as acquired (``through`` None), or
    as the method ``through`` left it (``out_dir/{through}_{target}`` holding outputs
    of the target site's own scans, e.g. the app with ``--harmonize-target-site``)."""
    from harmonize_bids.evaluation import harmonized_outputs, read_simulated_dataset

    images = read_simulated_dataset(out_dir / "test_n4")
    if through is None:
        return {i.anatomy: i.t1w for i in images if i.site == target}
    return {img.anatomy: path
            for img, path, tgt in harmonized_outputs(images, out_dir / f"{through}_{target}")
            if img.site == target == tgt}


def own_through(methods: list[str], through: list[str] | None
                ) -> list[tuple[str, str | None]] | None:
    """``(method, the method its target site's own scans go through or None: as
    acquired)`` for each of ``methods``, from ``--own-scans-through`` (absent, one for
    all, or one per method; ``-``: as acquired); None if the counts do not fit.  A
    method may come twice, with its own scans as acquired and through a method.

    >>> own_through(["a", "b"], None), own_through(["a", "b"], ["s"])
    ([('a', None), ('b', None)], [('a', 's'), ('b', 's')])
    >>> own_through(["a", "a"], ["-", "t"]), own_through(["a", "b"], ["s", "t", "u"])
    ([('a', None), ('a', 't')], None)
    """
    if not through:
        through = ["-"]
    if len(through) == 1:
        through = through * len(methods)
    if len(through) != len(methods):
        return None
    return [(m, None if t == "-" else t) for m, t in zip(methods, through)]


def add_own_scans_argument(parser) -> None:
    """``--own-scans-through METHOD...``, read by :func:`own_through`."""
    parser.add_argument("--own-scans-through", metavar="METHOD", nargs="+", default=None,
                        help="the target site's own scans as METHOD left them (a folder "
                             "METHOD_TARGET of their outputs, e.g. the app with "
                             "--harmonize-target-site) instead of as acquired: one METHOD "
                             "for all --methods, or one per method ('-': as acquired)")


def method_row(out_dir: Path, method: str, target: str,
               through: str | None = None) -> tuple[dict, dict[str, float]]:
    """:func:`likeness` of ``method``'s outputs towards ``target`` and the target site's
    own scans of the same anatomies, as acquired or as ``through`` left them
    (:func:`own_scans`)."""
    own = own_scans(out_dir, target, through)
    images, masks, sites, genuine = [], [], [], {}
    for img, path, truth in sent_pairs(out_dir, method, target):
        mask = load(truth.brain_mask) > 0
        images.append(load(path))
        masks.append(mask)
        sites.append(img.site)
        genuine[truth.anatomy] = (own[truth.anatomy], mask)
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
    add_own_scans_argument(parser)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    through = own_through(args.methods, args.own_scans_through)
    if through is None:
        parser.error("--own-scans-through takes one METHOD or one per --methods")
    t0 = time.monotonic()
    rows, sources = [], None
    for method, own in through:
        together, each = method_row(args.out_dir, method, args.target, own)
        sources = sources or list(each)
        rows.append((method, own, together, each))
    lines = [f"| method | own scans | all classes (chance) | {' | '.join(sources)} "
             "| mean vs own scans |",
             "|---|---|---|" + "---|" * len(sources) + "---|"]
    for method, own, together, each in rows:
        lines.append(f"| {method} | {own or 'as acquired'} "
                     f"| {together['accuracy']:.2f} ± {together['accuracy_sd']:.2f} "
                     f"({together['chance']:.2f}) | "
                     + " | ".join(f"{each.get(s, float('nan')):.2f}" for s in sources)
                     + f" | {np.mean(list(each.values())):.2f} |")
    lines += ["", f"Ceiling: the target site's rescans against its scans "
                  f"{rescan_row(args.out_dir, args.target):.2f} (chance 0.50)."]
    write_results(args.results, f"Outputs against `{args.target}`'s own scans", sys.argv,
                  f"{time.monotonic() - t0:.0f} s. Per-source columns: that source's outputs "
                  "against the target site's own scans of the same anatomies (chance 0.50), "
                  "as acquired or as the method in 'own scans' left them; 'all classes': "
                  "every source's outputs and the own scans, one class each.",
                  "\n".join(lines))


if __name__ == "__main__":
    main()
