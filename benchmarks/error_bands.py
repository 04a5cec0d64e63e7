#!/usr/bin/env python
"""Where the error to the true target image lives: spatial scales and slice levels.

Reads the outputs a quality benchmark left on disk (``quality_vs_peers.py
--out-dir``: one derivatives folder per method and target) and splits each
method's squared error to the truth (both images robust-normalized, as every
score is) inside the brain into

- three spatial bands, with ``G_s`` a Gaussian of width ``s`` voxels restricted
  to the brain (:func:`harmonize_bids.postprocess.masked_gaussian`):
  coarse ``G_8(e)`` (beyond ~16 mm at 2 mm voxels: bias-like), middle
  ``G_1.5(e) - G_8(e)`` and fine ``e - G_1.5(e)`` (noise and detail);
- ``slice levels``: the part carried by each axial slice's mean error (the
  voxel-weighted mean of its square); ``slice jumps``: the mean square of that
  mean's change from one slice to the next (not a share of the total: it can
  exceed it), the signature of a slice-wise model whose slices each find their
  own brightness.

Values are mean squared errors x 10^4 (so PSNR = 40 - 10 log10(value)); the
bands add up to about the total (they are not exactly orthogonal).  The rescan
(same site, new noise) is the floor.

    python benchmarks/error_bands.py --out-dir /tmp/hb_q17 --target siemens3tmprage \\
        --methods ours_s5_stop0_n2_unlevelled_vigintiles ours_s5_stop0_n2_vigintiles
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

COLUMNS = ("total", "coarse", "middle", "fine", "slice levels", "slice jumps")


def error_parts(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The squared error of ``image`` to ``truth`` split as in the module docstring
    (axis 2 is the slice axis; arrays in RAS).

    >>> m = np.ones((6, 6, 4), bool); t = np.random.default_rng(0).random(m.shape)
    >>> error_parts(t, t, m)["total"]
    0.0
    >>> e = error_parts(t + np.array([0, .1, 0, .1]), t, m)   # slice offsets
    >>> bool(e["slice levels"] > 0.8 * e["total"] and e["slice jumps"] > e["total"])
    True
    """
    from harmonize_bids.metrics import robust_normalize, slice_jumps
    from harmonize_bids.postprocess import masked_gaussian
    from harmonize_bids.utils.slices import slice_means

    mask = mask > 0
    err = np.where(mask, robust_normalize(image, mask) - robust_normalize(truth, mask), 0.0)
    coarse = masked_gaussian(err, mask, 8.0)
    smooth = masked_gaussian(err, mask, 1.5)
    level, count = slice_means(err, mask, axis=2)
    return {
        "total": float(np.mean(err[mask] ** 2)),
        "coarse": float(np.mean(coarse[mask] ** 2)),
        "middle": float(np.mean((smooth - coarse)[mask] ** 2)),
        "fine": float(np.mean((err - smooth)[mask] ** 2)),
        "slice levels": float(np.sum(count * level ** 2) / count.sum()),
        # the error's change from slice to slice is image minus truth: metrics.slice_jumps
        "slice jumps": slice_jumps(truth, image, mask) ** 2,
    }


def main() -> None:
    from harmonize_bids.evaluation import harmonized_outputs, read_simulated_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir (test_n4/ and method folders)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--methods", nargs="+", required=True,
                        help="method folder names without the _TARGET suffix")
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    test = args.out_dir / "test_n4"
    images = read_simulated_dataset(test)
    by_anatomy: dict[str, dict] = defaultdict(dict)
    for img in images:
        by_anatomy[img.anatomy][img.site] = img

    def ras(path: Path) -> np.ndarray:
        return np.asarray(nb.as_closest_canonical(nb.load(path)).dataobj, np.float32)

    parts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    jobs = [("none", img, img.t1w) for img in images if img.site != args.target]
    jobs += [("rescan", img, img.rescan) for img in images
             if img.site == args.target and img.rescan is not None]
    for method in args.methods:
        folder = args.out_dir / f"{method}_{args.target}"
        if not folder.is_dir():
            parser.error(f"no folder {folder}")
        jobs += [(method, img, path) for img, path, _ in harmonized_outputs(images, folder)]
    for method, img, path in jobs:
        truth = by_anatomy[img.anatomy][args.target]
        source = "rescan" if method == "rescan" else img.site
        parts[method, source].append(
            error_parts(ras(path), ras(truth.t1w), ras(truth.brain_mask) > 0))
    lines = ["| method | source | n | " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for method in ["rescan", "none", *args.methods]:
        for (m, source), rows in sorted(parts.items()):
            if m == method:
                cells = " | ".join(f"{1e4 * np.mean([r[c] for r in rows]):.1f}" for c in COLUMNS)
                lines.append(f"| {method} | {source} | {len(rows)} | {cells} |")
    text = "\n".join([
        f"# Error to the true {args.target} image by spatial scale and slice level", "",
        f"- command: `python benchmarks/error_bands.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
        "- mean squared error x 10^4 of robust-normalized images inside the brain "
        "(PSNR = 40 - 10 log10(value)); coarse: > ~16 mm, middle: ~3-16 mm, fine: < ~3 mm; "
        "slice levels: the error carried by each axial slice's mean; slice jumps: mean "
        "square of that mean's change from one slice to the next (not a share of the total)",
        "", *lines, ""])
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
