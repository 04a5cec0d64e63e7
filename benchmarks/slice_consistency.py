#!/usr/bin/env python
"""Slice consistency of every method in a quality benchmark's out-dir, re-scored.

``flicker`` and ``slice_jumps`` (:mod:`harmonize_bids.metrics`) compare the change
each method made across the slices a slice-wise model stacks: the axial ones.
Until session 17 the evaluation took array axis 2, which in the benchmark's test
images (stored LIA) runs anterior-posterior, so every flicker in
``benchmarks/results/`` before it was measured across coronal slices.  This
script scores the outputs left on disk along the axial axis
(:func:`harmonize_bids.evaluation.axial_axis`) without re-running any method.

    python benchmarks/slice_consistency.py --out-dir /tmp/hb_q17 \\
        --targets siemens3tmprage ge15tspgr --results benchmarks/results/x.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from collections import defaultdict
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from site_predictability_rescore import methods_in  # noqa: E402


def main() -> None:
    from harmonize_bids import metrics
    from harmonize_bids.evaluation import axial_axis, harmonized_outputs, read_simulated_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    images = read_simulated_dataset(args.out_dir / "test_n4")
    truth = {(i.anatomy, i.site): i for i in images}

    def load(path: Path) -> np.ndarray:
        return np.asarray(nb.load(path).dataobj, np.float32)

    rows = ["| method | target | n | flicker (axial) | flicker (axis 2, as before) | "
            "slice jumps (%, axial) |", "|---|---|---|---|---|---|"]
    for method in methods_in(args.out_dir, args.targets):
        for target in args.targets:
            scores = defaultdict(list)
            for img, path, _ in harmonized_outputs(images, args.out_dir / f"{method}_{target}"):
                mask = load(truth[img.anatomy, target].brain_mask) > 0
                src, out = load(img.t1w), load(path)
                axis = axial_axis(img.t1w)
                scores["axial"].append(metrics.flicker(src, out, mask, axis=axis))
                scores["axis2"].append(metrics.flicker(src, out, mask, axis=2))
                scores["jumps"].append(metrics.slice_jumps(src, out, mask, axis=axis))
            if scores:
                rows.append(f"| {method} | {target} | {len(scores['axial'])} | "
                            f"{np.mean(scores['axial']):.2f} | {np.mean(scores['axis2']):.2f} | "
                            f"{100 * np.mean(scores['jumps']):.2f} |")
                print(rows[-1], flush=True)
    text = "\n".join([
        "# Slice consistency along the axial axis (re-scored)", "",
        f"- command: `python benchmarks/slice_consistency.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
        "- flicker: mean |change difference| across slices / within slices (about 1: as "
        "smooth across slices as within); slice jumps: RMS change of each slice's mean "
        "change from one slice to the next, in % of the robust intensity range "
        "(0 for no harmonization)", "", *rows, ""])
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
