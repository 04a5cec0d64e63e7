#!/usr/bin/env python
"""Does the network render each tissue at the right *level*, slice by slice?

Scores, for one anatomy of a simulated dataset (``harmonize_bids-simulate`` layout:
the training renders of ``scripts/train_default_model.py`` or a benchmark test set),
the mean error of WM and GM (true label map) in six chunks of axial slices, inferior to
superior, in % of the truth's WM median, without any post-processing (no slice
levelling, no landmark match) in the model's own normalized units:

- the network's one-step clean-image estimate at several timesteps t, from the truth
  noised to t exactly as in training (at t = 999 the estimate from the source alone);
- the sampled chain (S steps x chains, the app's sampler), raw.

On a *training* anatomy a well-fitted network has no systematic level error; in session 23
the bundled model and its fine-tunes were 5-6 % too dark in the middle slices and
10-14 % at both ends already at t = 999 (``docs/model.md``, "Decisions of session 23").

    python benchmarks/prediction_level.py --data /tmp/hb_s22/simulated_n4 \\
        --models ctrl=/tmp/hb_s22/ft_ctrl.safetensors --source philips3ttfe \\
        --target siemens3tmprage --results benchmarks/results/prediction_level.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import parse_models  # noqa: E402
from error_bands import level_by_z  # noqa: E402
from train_simulated import load_ras  # noqa: E402
from results_file import write_results  # noqa: E402

TIMESTEPS = (50, 200, 400, 600, 800, 999)


def one_step_estimates(model, source: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                       site: int, timesteps: tuple[int, ...], seed: int = 0,
                       repeats: int = 2) -> dict[int, np.ndarray]:
    """{t: the network's clean-image estimate of every brain slice from the truth noised
    to t (as in training), averaged over ``repeats`` noise draws}."""
    import torch

    from harmonize_bids.diffusion.sampler import _pad_to
    from harmonize_bids.diffusion.schedule import NoiseSchedule
    from harmonize_bids.diffusion.volume import slice_stacks

    has = np.nonzero(mask.sum(axis=(0, 1)) > 0)[0]
    stacks, (h, w) = _pad_to(torch.from_numpy(slice_stacks(source, model.config.context_slices)[has]),
                             model.config.multiple)
    clean, _ = _pad_to(torch.from_numpy(np.ascontiguousarray(
        np.moveaxis(truth, -1, 0)[has]))[:, None], model.config.multiple)
    ab_all = torch.as_tensor(model.schedule().alphas_cumprod, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    sites = torch.full((len(has),), site)
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        cond = model.encode(stacks)
        for t in timesteps:
            acc = np.zeros(truth.shape, np.float32)
            for _ in range(repeats):
                noise = torch.randn(clean.shape, generator=generator)
                x_t = NoiseSchedule.q_sample(model.diffused(clean, stacks), noise, ab_all[t])
                pred = model(x_t, torch.full((len(has),), t), sites, cond, stacks)
                x0 = model.image(NoiseSchedule.x0_eps_from(
                    model.config.prediction, pred, x_t, ab_all[t])[0], stacks)
                acc[:, :, has] += np.moveaxis(x0[:, 0, :h, :w].numpy(), 0, -1) / repeats
            out[t] = np.where(mask, acc, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a simulated dataset")
    parser.add_argument("--models", nargs="+", required=True, help="bundled and/or NAME=PATH")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--anatomy", default=None, help="default: the first in the dataset")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    import torch

    from harmonize_bids.diffusion.checkpoint import bundled_model, load_model
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.training.data import normalize_brain

    torch.set_num_threads(args.threads)
    by: dict = {}
    for img in read_simulated_dataset(args.data):
        by.setdefault(img.anatomy, {})[img.site] = img
    anatomy = args.anatomy or sorted(by)[0]
    truth_img, source_img = by[anatomy][args.target], by[anatomy][args.source]
    mask = load_ras(truth_img.brain_mask) > 0
    truth = normalize_brain(load_ras(truth_img.t1w), mask)
    source = normalize_brain(load_ras(source_img.t1w), mask)
    tissue = load_ras(truth_img.dseg)
    reference = float(np.median(truth[mask & (tissue == 3)]))

    def row(name: str, method: str, image: np.ndarray) -> str:
        wm, gm = (level_by_z(image, truth, np.where(mask, tissue, 0), lab, reference)
                  for lab in (3, 2))
        return (f"| {name} | {method} | " + " ".join(f"{v:+.1f}" for v in wm) + " | "
                + " ".join(f"{v:+.1f}" for v in gm) + " |")

    t0 = time.monotonic()
    lines = ["| model | estimate | WM by slice chunk (inf -> sup), % | GM by slice chunk, % |",
             "|---|---|---|---|", row("-", "source (none)", source)]
    for name, path in parse_models(args.models).items():
        model, _ = load_model(path or bundled_model())
        model.eval()
        site = model.config.site_index(args.target)
        for t, est in one_step_estimates(model, source, truth, mask, site, TIMESTEPS).items():
            lines.append(row(name, f"one step, t = {t}", est))
        sampled = harmonize_volume(model, source, mask, site,
                                   SamplerSettings(steps=args.steps, samples=args.samples),
                                   seed=0, level=False)
        lines.append(row(name, f"sampled {args.steps} x {args.samples}, raw", sampled))
        print(f"[{time.monotonic() - t0:5.0f} s] {name}", flush=True)
    text = "\n".join(lines)
    write_results(args.results,
                  f"Prediction level by slice: `{anatomy}`, {args.source} -> {args.target}",
                  sys.argv, f"{args.threads} threads, {time.monotonic() - t0:.0f} s. Mean "
                  "error of the true label's voxels, % of the truth's WM median, normalized "
                  "units, no post-processing.", text)


if __name__ == "__main__":
    main()
