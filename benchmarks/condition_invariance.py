#!/usr/bin/env python
"""Does the anatomical condition carry anatomy and not the site?

For a trained model (default: the bundled one) and a simulated traveling-subject
dataset (e.g. the test set `quality_vs_peers.py` writes to `OUT_DIR/test_n4`),
computes on axial slices of every image:
- the correlation between the condition maps c of the same anatomy and slice at two
  sites (near 1 = invariant), beside the correlation between the normalized *images*
  themselves (the starting point), overall and per pair of sites;
- the cross-validated accuracy of the site classifier of `metrics.site_classifier` on
  per-slice condition features (per-channel histograms inside the brain), beside the
  same classifier on image histograms; chance = 1 / number of sites. Folds are grouped
  by subject (label map; `metrics.site_splits`), so the classifier is asked about
  people it never saw; plain stratified folds (which let the same slice of the same
  person at another site into training) are shown as well, for comparison with the
  first measurement of session 1.

    python benchmarks/condition_invariance.py /tmp/hb_q22/test_n4 --results F
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


PROBES = {"value histograms": False, "value + gradient histograms": True}


def brain_slices(mask: np.ndarray, step: int, min_voxels: int = 500) -> np.ndarray:
    """Every ``step``-th axial slice index with more than ``min_voxels`` brain voxels.

    >>> mask = np.zeros((4, 4, 6), bool); mask[..., 1:5] = True
    >>> brain_slices(mask, 2, min_voxels=10).tolist()
    [1, 3]
    """
    return np.nonzero(mask.sum(axis=(0, 1)) > min_voxels)[0][::step]


def condition_maps(model, volume: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """The model's condition ``[len(zs) x C x X x Y]`` of the axial slices ``zs``."""
    from harmonize_bids.diffusion.volume import slice_stacks

    stacks = torch.from_numpy(slice_stacks(volume, model.config.context_slices)[zs])
    pad = [(-s) % model.config.multiple for s in stacks.shape[-2:]]
    stacks = torch.nn.functional.pad(stacks, (0, pad[1], 0, pad[0]))
    with torch.no_grad():
        return model.encode(stacks).numpy()[..., :volume.shape[0], :volume.shape[1]]


def _histogram(values: np.ndarray, bins: int, upper: float, lower: float = 0.0) -> np.ndarray:
    """Density histogram of ``values`` clipped into ``[lower, upper]``."""
    return np.histogram(np.clip(values, lower, upper), bins, (lower, upper))[0] / values.size


def _gradient(plane: np.ndarray) -> np.ndarray:
    """In-plane gradient magnitude of one slice."""
    gx, gy = np.gradient(plane)
    return np.hypot(gx, gy)


def slice_features(cond: np.ndarray, image: np.ndarray, inside: np.ndarray,
                   texture: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice features of the condition and of the image inside the brain
    ``inside`` [Z x X x Y]: histograms of the values (16 bins per channel on [-1, 1]
    for c, 32 on [0, 1.3] for the image) and, with ``texture``, of the in-plane
    gradient magnitude too (16 bins per channel; noise and blur show there).

    >>> rng = np.random.default_rng(0)
    >>> cond, image = rng.uniform(-1, 1, (2, 4, 8, 8)), rng.uniform(0, 1, (2, 8, 8))
    >>> inside = np.ones((2, 8, 8), bool)
    >>> [f.shape for f in slice_features(cond, image, inside)]
    [(2, 64), (2, 32)]
    >>> fc, fx = slice_features(cond, image, inside, texture=True)
    >>> fc.shape, fx.shape, np.allclose(fc.sum(axis=1), 8), np.allclose(fx.sum(axis=1), 2)
    ((2, 128), (2, 48), True, True)
    """
    fc, fx = [], []
    for j in range(len(inside)):
        m = inside[j]
        row_c = [_histogram(cond[j, ch][m], 16, 1.0, -1.0) for ch in range(cond.shape[1])]
        row_x = [_histogram(image[j][m], 32, 1.3)]
        if texture:
            row_c += [_histogram(_gradient(cond[j, ch])[m], 16, 0.5)
                      for ch in range(cond.shape[1])]
            row_x += [_histogram(_gradient(image[j])[m], 16, 0.3)]
        fc.append(np.concatenate(row_c))
        fx.append(np.concatenate(row_x))
    return np.array(fc), np.array(fx)


def channel_correlation(a: np.ndarray, b: np.ndarray, inside: np.ndarray) -> float:
    """Mean over channels of the in-brain correlation of two condition stacks.

    >>> a = np.random.default_rng(0).normal(size=(3, 2, 5, 5))
    >>> inside = np.ones((3, 5, 5), bool)
    >>> [round(channel_correlation(a, b, inside), 6) for b in (2 * a + 1, -a)]
    [1.0, -1.0]
    """
    return float(np.mean([np.corrcoef(a[:, ch][inside], b[:, ch][inside])[0, 1]
                          for ch in range(a.shape[1])]))


def site_recalls(features: np.ndarray, sites: list[str], groups: list[str]) -> dict[str, float]:
    """Per site, the share of its rows the site classifier names correctly when each
    row is predicted by the model of the one fold (grouped by subject) that left it out."""
    from sklearn.model_selection import cross_val_predict

    from harmonize_bids.metrics import site_classifier, site_splits

    labels = np.asarray(sites)
    predicted = cross_val_predict(site_classifier(), features, labels, groups=groups,
                                  cv=site_splits(labels, groups=groups))
    return {site: float(np.mean(predicted[labels == site] == site))
            for site in np.unique(labels)}


def main() -> None:
    from harmonize_bids.diffusion.checkpoint import bundled_model, load_model
    from harmonize_bids.metrics import repeated_site_accuracy
    from harmonize_bids.simulate.dataset import label_map_of
    from harmonize_bids.utils.cpu import configure_cpu
    from real_anatomy_sites import cached_renders
    from results_file import write_results
    from train_simulated import ras_volumes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path,
                        help="simulated traveling-subject dataset, or track C's render cache "
                             "(real_anatomy_sites.py --cache)")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--slice-step", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    configure_cpu(args.threads)
    model, _ = load_model(args.model or bundled_model())
    model.eval()
    is_cache = any(args.dataset.glob("sub-*_seed*.npz"))
    volumes, masks = (cached_renders if is_cache else ras_volumes)(args.dataset)

    feats: dict[tuple[str, str], list[np.ndarray]] = {}
    pair_c: dict[tuple[str, str], list[float]] = {}
    pair_x: dict[tuple[str, str], list[float]] = {}
    sites, groups = [], []
    for anat, by_site in sorted(volumes.items()):
        zs = brain_slices(masks[anat], args.slice_step)
        inside = np.moveaxis(masks[anat][:, :, zs], -1, 0)
        conds, images = {}, {}
        for site, vol in sorted(by_site.items()):
            conds[site] = condition_maps(model, vol, zs)
            images[site] = np.moveaxis(vol[:, :, zs], -1, 0)
            for probe, texture in PROBES.items():
                fc, fx = slice_features(conds[site], images[site], inside, texture)
                feats.setdefault((probe, "c"), []).append(fc)
                feats.setdefault((probe, "image"), []).append(fx)
            sites += [site] * len(zs)
            groups += [label_map_of(anat)] * len(zs)
        for s1, s2 in itertools.combinations(sorted(by_site), 2):
            pair_c.setdefault((s1, s2), []).append(
                channel_correlation(conds[s1], conds[s2], inside))
            pair_x.setdefault((s1, s2), []).append(
                float(np.corrcoef(images[s1][inside], images[s2][inside])[0, 1]))
        print(f"{anat}: {len(by_site)} sites, {len(zs)} slices", flush=True)

    chance = 1 / len(set(sites))
    lines = ["| what | condition c | normalized image |", "|---|---|---|",
             f"| correlation, same anatomy and slice at two sites (mean over pairs) | "
             f"{np.mean([np.mean(v) for v in pair_c.values()]):.3f} | "
             f"{np.mean([np.mean(v) for v in pair_x.values()]):.3f} |"]
    for probe in PROBES:
        for name, grouping in (("grouped by subject", groups), ("plain", None)):
            cells = [repeated_site_accuracy(np.concatenate(feats[(probe, what)]), sites,
                                            n_repeats=5, groups=grouping)
                     for what in ("c", "image")]
            lines.append(f"| site classifier on {probe}, folds {name} (chance {chance:.2f}) | "
                         + " | ".join(f"{a:.2f} ± {sd:.2f}" for a, sd in cells) + " |")
    probe = "value + gradient histograms"
    recalls = {what: site_recalls(np.concatenate(feats[(probe, what)]), sites, groups)
               for what in ("c", "image")}
    lines += ["", f"Which sites the classifier finds ({probe}, folds grouped by subject): "
              "the share of each site's slices it names correctly (chance "
              f"{chance:.2f}):", "", "| site | condition c | normalized image |", "|---|---|---|"]
    lines += [f"| {site} | {recalls['c'][site]:.2f} | {recalls['image'][site]:.2f} |"
              for site in sorted(recalls["c"])]
    lines += ["", "Same-anatomy correlation per pair of sites (mean over anatomies):", "",
              "| sites | condition c | normalized image |", "|---|---|---|"]
    lines += [f"| {s1} / {s2} | {np.mean(cs):.3f} | {np.mean(pair_x[(s1, s2)]):.3f} |"
              for (s1, s2), cs in sorted(pair_c.items())]
    details = (f"model {args.model or 'bundled'}; {len(volumes)} anatomies of "
               f"{len(set(groups))} subjects x {len(set(sites))} sites, every "
               f"{args.slice_step}th axial slice with brain ({len(sites)} slices); "
               f"{args.threads} threads.")
    write_results(args.results, "Is the anatomical condition site-invariant?", sys.argv,
                  details, "\n".join(lines))


if __name__ == "__main__":
    main()
