#!/usr/bin/env python
"""How far each method moves the tissue contrast towards the target site's, by the truth's labels.

Tissue landmarks and fractions come from each image's own intensity classes, whose
GM/WM boundary moves with the contrast.  This reads the contrast through the truth's
label map instead: the GM and CSF medians over the WM median inside the brain, per
source site, for the sources as acquired, a method's outputs, the target site's own
scans as acquired (the goal) and, with ``--own-scans-through``, those scans as a method
left them (``target_site_scans.py``).  "Moved" is the share of the way from the
sources' GM/WM ratio to the genuine scans' that the outputs went (1 = all of it; not
given where the sources are within 0.02 of the goal).

    python benchmarks/tissue_contrast.py --out-dir /tmp/hb_q22 --target ge15tspgr \\
        --method ours_s5_stop0_n2_vigintiles+subject \\
        --own-scans-through ours_self_vigintiles+subject
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
from target_site_likeness import own_scans  # noqa: E402


def contrast(image: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(GM / WM, CSF / WM) medians inside ``mask`` by ``labels`` (1 CSF, 2 GM, 3 WM).

    >>> labels = np.repeat([1, 2, 3], 4).reshape(3, 4)
    >>> image = np.where(labels == 3, 1.0, np.where(labels == 2, 0.8, 0.3))
    >>> contrast(image, labels, np.ones_like(labels, bool))
    (0.8, 0.3)
    """
    values, classes = image[mask], labels[mask]
    wm = float(np.median(values[classes == 3]))
    return (round(float(np.median(values[classes == 2])) / wm, 6),
            round(float(np.median(values[classes == 1])) / wm, 6))


def moved(source: float, output: float, goal: float, least: float = 0.02) -> float:
    """Share of the way from ``source`` to ``goal`` that ``output`` went; NaN when the
    source is within ``least`` of the goal (the share would be noise).

    >>> moved(0.77, 0.78, 0.83), moved(0.83, 0.78, 0.77), moved(0.769, 0.759, 0.767)
    (0.17, 0.83, nan)
    """
    if abs(goal - source) < least:
        return float("nan")
    return round((output - source) / (goal - source), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir")
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", nargs="+", default=["ours_s5_stop0_n2_vigintiles+subject"],
                        help="output folders without the _TARGET suffix")
    parser.add_argument("--own-scans-through", metavar="METHOD", default=None,
                        help="also the target site's own scans as METHOD left them")
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    t0 = time.monotonic()
    truths, sources = {}, {}
    for img, path, truth in sent_pairs(args.out_dir, "none", args.target):
        labels, mask = load(truth.dseg), load(truth.brain_mask) > 0
        truths[truth.anatomy] = (truth, labels, mask)
        sources.setdefault(img.site, []).append(contrast(load(path), labels, mask))
    genuine = np.mean([contrast(load(t.t1w), lab, m) for t, lab, m in truths.values()], axis=0)
    lines = ["| images | GM / WM | CSF / WM | GM / WM minus the goal's | moved (GM / WM) |",
             "|---|---|---|---|---|",
             f"| `{args.target}`'s own scans, as acquired (the goal) | {genuine[0]:.3f} "
             f"| {genuine[1]:.3f} | | |"]
    if args.own_scans_through:
        own = np.mean([contrast(load(p), *truths[a][1:]) for a, p in
                       own_scans(args.out_dir, args.target, args.own_scans_through).items()],
                      axis=0)
        lines.append(f"| `{args.target}`'s own scans through `{args.own_scans_through}` "
                     f"| {own[0]:.3f} | {own[1]:.3f} | {own[0] - genuine[0]:+.3f} | |")
    outputs: dict[tuple[str, str], list] = {}
    for method in args.method:
        for img, path, truth in sent_pairs(args.out_dir, method, args.target):
            outputs.setdefault((method, img.site), []).append(
                contrast(load(path), *truths[truth.anatomy][1:]))
    for site, rows in sorted(sources.items()):
        before = np.mean(rows, axis=0)
        lines.append(f"| `{site}` sources, as acquired | {before[0]:.3f} | {before[1]:.3f} "
                     f"| {before[0] - genuine[0]:+.3f} | |")
        for method in args.method:
            after = np.mean(outputs[method, site], axis=0)
            share = moved(before[0], after[0], genuine[0])
            lines.append(f"| `{site}` through `{method}` | {after[0]:.3f} | {after[1]:.3f} "
                         f"| {after[0] - genuine[0]:+.3f} "
                         f"| {'—' if np.isnan(share) else f'{share:.2f}'} |")
    write_results(args.results, f"Tissue contrast towards `{args.target}`, by the truth's labels",
                  sys.argv, f"{time.monotonic() - t0:.0f} s; medians inside the truth's brain "
                  "mask by its label map, means over anatomies.", "\n".join(lines))


if __name__ == "__main__":
    main()
