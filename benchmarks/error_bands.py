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

A second table asks *where in the brain* the error sits: the mean error per
tissue of the true label map (GM, WM) at each depth below the brain's surface
(3D distance to the mask's edge, in voxels), in percent of the normalized
range; ``depth x tissue``, the part of the squared error those means carry
(what an oracle that knew the truth could remove with one number per tissue and
depth); and ``sharpness``, the mean gradient magnitude inside the brain relative
to the truth's (< 1: smoother than a real scan).

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

import numpy as np

COLUMNS = ("total", "coarse", "middle", "fine", "slice levels", "slice jumps")
#: depth bins below the brain's surface, in voxels (upper edges; the last is open)
DEPTH_EDGES = (1.5, 2.5, 3.5, 5.0, 8.0, 12.0)
DEPTH_NAMES = ("<=1.5", "1.5-2.5", "2.5-3.5", "3.5-5", "5-8", "8-12", ">12")


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


def level_by_z(image: np.ndarray, truth: np.ndarray, tissue: np.ndarray, label: int,
               reference: float, n_chunks: int = 6) -> list[float]:
    """Mean ``image - truth`` over the voxels of ``tissue == label``, per slice, averaged
    over ``n_chunks`` runs of consecutive slices (axis 2, those holding the label), in %
    of ``reference``.

    >>> truth = np.ones((4, 4, 6)); tissue = np.full(truth.shape, 3)
    >>> image = truth.copy(); image[:, :, -1] = 0.9   # the top slice 10 % dark
    >>> level_by_z(image, truth, tissue, 3, 1.0, n_chunks=3)
    [0.0, 0.0, -5.0]
    """
    from harmonize_bids.utils.slices import slice_means

    means, counts = slice_means(image - truth, tissue == label, axis=2)
    held = means[counts > 0]  # the slices holding the label, inferior to superior
    return [round(100 * float(chunk.mean()) / reference, 6)
            for chunk in np.array_split(held, n_chunks)]


def depth_parts(image: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                tissue: np.ndarray) -> dict:
    """Mean error (image minus truth, robust-normalized) per tissue and depth bin,
    the squared error those means carry, and the gradient-magnitude ratio.

    ``tissue`` is the true label map (1 CSF, 2 GM, 3 WM); depth is the Euclidean
    distance to the outside of ``mask`` in voxels, binned by :data:`DEPTH_EDGES`.
    Returns ``{"gm": [...], "wm": [...]}`` (one mean per bin, NaN where empty),
    ``"depth x tissue"`` (a mean square, like :func:`error_parts`) and
    ``"sharpness"``.

    >>> m = np.zeros((24, 24, 24), bool); m[2:-2, 2:-2, 2:-2] = True
    >>> t = np.where(m, 1.0, 0.0); lab = np.where(m, 3, 0)
    >>> from scipy import ndimage as ndi
    >>> darker_edge = t - 0.2 * (ndi.distance_transform_edt(m) <= 1.5) * m
    >>> p = depth_parts(darker_edge, t + 0.01 * np.random.default_rng(0).random(t.shape), m, lab)
    >>> bool(p["wm"][0] < p["wm"][4]), bool(p["depth x tissue"] > 0), bool(np.isnan(p["wm"][-1]))
    (True, True, True)
    """
    from scipy import ndimage as ndi

    from harmonize_bids.metrics import robust_normalize

    mask = mask > 0
    truth_n = robust_normalize(truth, mask)
    err = np.where(mask, robust_normalize(image, mask) - truth_n, 0.0)
    bins = np.digitize(ndi.distance_transform_edt(mask), DEPTH_EDGES, right=True)
    explained = np.zeros_like(err)
    out: dict = {}
    for label in (1, 2, 3):
        sel = mask & (tissue == label)
        count = np.bincount(bins[sel], minlength=len(DEPTH_NAMES))
        total = np.bincount(bins[sel], weights=err[sel], minlength=len(DEPTH_NAMES))
        means = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        explained[sel] = np.nan_to_num(means)[bins[sel]]
        if label in (2, 3):
            out[{2: "gm", 3: "wm"}[label]] = means.tolist()
    out["depth x tissue"] = float(np.mean(explained[mask] ** 2))

    def grad(x: np.ndarray) -> float:
        return float(np.sqrt(sum(g ** 2 for g in np.gradient(x)))[mask].mean())
    out["sharpness"] = grad(np.where(mask, robust_normalize(image, mask), 0.0)) / grad(
        np.where(mask, truth_n, 0.0))
    return out


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

    from train_simulated import load_ras as ras

    parts: dict[tuple[str, str], list[dict]] = defaultdict(list)
    depths: dict[tuple[str, str], list[dict]] = defaultdict(list)
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
        image, truth_image = ras(path), ras(truth.t1w)
        mask = ras(truth.brain_mask) > 0
        parts[method, source].append(error_parts(image, truth_image, mask))
        depths[method, source].append(depth_parts(image, truth_image, mask, ras(truth.dseg)))
    lines = ["| method | source | n | " + " | ".join(COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 3)]
    for method in ["rescan", "none", *args.methods]:
        for (m, source), rows in sorted(parts.items()):
            if m == method:
                cells = " | ".join(f"{1e4 * np.mean([r[c] for r in rows]):.1f}" for c in COLUMNS)
                lines.append(f"| {method} | {source} | {len(rows)} | {cells} |")
    depth_lines = ["| method | source | tissue | " + " | ".join(DEPTH_NAMES)
                   + " | depth x tissue | sharpness |", "|" + "---|" * (len(DEPTH_NAMES) + 5)]
    for method in ["rescan", "none", *args.methods]:
        for (m, source), rows in sorted(depths.items()):
            if m != method:
                continue
            for tissue in ("gm", "wm"):
                means = np.nanmean([r[tissue] for r in rows], axis=0)
                cells = " | ".join(f"{100 * v:+.1f}" for v in means)
                tail = (f"{1e4 * np.mean([r['depth x tissue'] for r in rows]):.1f} | "
                        f"{np.mean([r['sharpness'] for r in rows]):.3f}")
                depth_lines.append(f"| {method} | {source} | {tissue.upper()} | {cells} | {tail} |")
    text = "\n".join([
        f"# Error to the true {args.target} image by spatial scale and slice level", "",
        f"- command: `python benchmarks/error_bands.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs",
        "- mean squared error x 10^4 of robust-normalized images inside the brain "
        "(PSNR = 40 - 10 log10(value)); coarse: > ~16 mm, middle: ~3-16 mm, fine: < ~3 mm; "
        "slice levels: the error carried by each axial slice's mean; slice jumps: mean "
        "square of that mean's change from one slice to the next (not a share of the total)",
        "", *lines, "",
        "## Mean error by tissue and depth below the brain's surface", "",
        "- mean of image minus truth (robust-normalized, % of the range) per tissue of the "
        "true label map and per depth bin (voxels to the outside of the brain mask); "
        "depth x tissue: the mean squared error x 10^4 those means carry (what one number "
        "per tissue and depth could remove, knowing the truth); sharpness: mean gradient "
        "magnitude relative to the truth's (the rows' two values repeat per tissue)",
        "", *depth_lines, ""])
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
