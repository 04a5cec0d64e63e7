#!/usr/bin/env python
"""Does the anatomical condition carry anatomy and not the site?

For a trained model and a simulated traveling-subject dataset (e.g. the held-out
set written by train_simulated.py), computes on axial slices of every image:
- the correlation between the condition maps c of the same anatomy and slice at
  two different sites (near 1 = invariant), beside the correlation between the
  normalized *images* themselves (the starting point);
- the cross-validated accuracy of a logistic-regression site classifier on
  pooled condition features (per-channel histograms), beside the same classifier on
  image histograms; chance = 1 / number of sites.
Writes benchmarks/results/condition_invariance.md.

    python benchmarks/condition_invariance.py /tmp/hb_train/model.safetensors /tmp/hb_train/test
"""
from __future__ import annotations

import argparse
import datetime
import itertools
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from harmonize_bids.diffusion.checkpoint import load_model
    from harmonize_bids.diffusion.volume import slice_stacks

    sys_path = Path(__file__).resolve().parent
    import sys
    sys.path.insert(0, str(sys_path))
    from train_simulated import ras_volumes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "condition_invariance.md")
    args = parser.parse_args()
    from harmonize_bids.utils.cpu import configure_cpu
    configure_cpu(2)
    model, _ = load_model(args.model)
    volumes, masks = ras_volumes(args.dataset)
    k = model.config.context_slices

    conds, feats_c, feats_x, labels = {}, [], [], []
    for anat, by_site in volumes.items():
        zs = np.nonzero(masks[anat].sum(axis=(0, 1)) > 500)[0][::4]
        for site, vol in by_site.items():
            stacks = torch.from_numpy(slice_stacks(vol, k)[zs])
            pad = [(-s) % model.config.multiple for s in stacks.shape[-2:]]
            stacks = torch.nn.functional.pad(stacks, (0, pad[1], 0, pad[0]))
            with torch.no_grad():
                c = model.encode(stacks).numpy()[..., :vol.shape[0], :vol.shape[1]]
            conds[(anat, site)] = c
            inside = np.moveaxis(masks[anat][:, :, zs], -1, 0)
            for j in range(len(zs)):
                m = inside[j]
                feats_c.append(np.concatenate([np.histogram(c[j, ch][m], 16, (-1, 1))[0] / m.sum()
                                               for ch in range(c.shape[1])]))
                feats_x.append(np.histogram(vol[:, :, zs[j]][m], 32, (0, 1.3))[0] / m.sum())
                labels.append(site)

    def corr(a, b, m):
        return float(np.corrcoef(a[m], b[m])[0, 1])

    same_c, same_x = [], []
    for anat, by_site in volumes.items():
        zs = np.nonzero(masks[anat].sum(axis=(0, 1)) > 500)[0][::4]
        inside = np.moveaxis(masks[anat][:, :, zs], -1, 0)
        for s1, s2 in itertools.combinations(sorted(by_site), 2):
            c1, c2 = conds[(anat, s1)], conds[(anat, s2)]
            same_c.append(np.mean([corr(c1[:, ch], c2[:, ch], inside)
                                   for ch in range(c1.shape[1])]))
            x1 = np.moveaxis(by_site[s1][:, :, zs], -1, 0)
            x2 = np.moveaxis(by_site[s2][:, :, zs], -1, 0)
            same_x.append(corr(x1, x2, inside))

    labels = np.array(labels)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc_c = cross_val_score(clf, np.array(feats_c), labels, cv=cv).mean()
    acc_x = cross_val_score(clf, np.array(feats_x), labels, cv=cv).mean()
    chance = 1 / len(set(labels))
    text = "\n".join([
        "# Is the anatomical condition site-invariant?", "",
        f"- command: `python benchmarks/condition_invariance.py {args.model} {args.dataset}`",
        f"- date: {datetime.date.today()}; {len(volumes)} held-out anatomies x "
        f"{len(set(labels))} sites, every 4th axial slice with brain ({len(labels)} slices)", "",
        "| what | condition c | normalized image |", "|---|---|---|",
        f"| correlation, same anatomy at two sites (mean over pairs) | {np.mean(same_c):.3f} "
        f"| {np.mean(same_x):.3f} |",
        f"| site classifier accuracy (5-fold CV; chance {chance:.2f}) | {acc_c:.2f} | {acc_x:.2f} |",
        ""])
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
