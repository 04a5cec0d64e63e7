#!/usr/bin/env python
"""What N4 leaves behind: the participant level's N4 of a biased scan against the same
scan rendered without a bias field.

For each protocol, ``--n-anatomies`` held-out label maps (``training_seg_13..16``, never
used in training) are rendered twice by the simulator with the same seed, once with the
protocol's bias field and once without it (``bias_strength = 0``: the same anatomy and
the same noise, so the two differ by the bias field alone).  The biased render is then
N4-corrected with the participant level's settings, its field fitted on the whole head
(the app until session 20) and inside the brain mask (``AntsSettings.n4_in_brain``), and
each normalized brain is scored against the bias-free one: PSNR, label-map tissue Dice
and the share of the brain its 3-class segmentation puts in WM (what the N4 residue
moves; the bias-free render's own Dice and share are the ceiling).

    python benchmarks/n4_residue.py --results benchmarks/results/n4_residue.md
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_simulated import load_ras  # noqa: E402
from results_file import write_results  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HELD_OUT = ("training_seg_13", "training_seg_14", "training_seg_15", "training_seg_16")


def score(image: np.ndarray, reference: np.ndarray, mask: np.ndarray, labels: np.ndarray
          ) -> tuple[float, float, float]:
    """PSNR to the bias-free render (``inf`` for itself), label Dice, WM share.

    >>> labels = np.repeat([1, 2, 3, 3], 2)[:, None, None] * np.ones((8, 8, 8), int)
    >>> image = labels / 3 + np.random.default_rng(0).normal(0, 0.01, labels.shape)
    >>> psnr, dice, wm = score(image, image, labels > 0, labels)
    >>> psnr, round(dice, 3), wm
    (inf, 1.0, 0.5)
    >>> ramp = 0.05 * np.linspace(-1, 1, 8)[None, None, :]  # a smooth residue
    >>> bool(score(image + ramp, image, labels > 0, labels)[0] < 35)
    True
    """
    from harmonize_bids import metrics

    seg = metrics.tissue_segmentation(image, mask)
    dice = metrics.tissue_dice(image, mask, labels)["mean"]
    psnr = metrics.psnr(image, reference, mask) if image is not reference else float("inf")
    return psnr, dice, float(np.mean(seg[mask] == 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, default=SHARED / "synthseg-labels")
    parser.add_argument("--protocols", nargs="+", default=[
        "siemens3tmprage", "ge15tspgr", "philips3ttfe", "siemens15tlowsnr", "clinical15tthick"])
    parser.add_argument("--n-anatomies", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.interfaces.ants import n4_correct
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.training.data import normalize_brain
    from harmonize_bids.workflows.anatomical import AntsSettings

    settings = AntsSettings.for_run(sloppy=False)
    t0 = time.monotonic()
    lines = ["| protocol | image | PSNR to bias-free (dB) | label Dice | WM share |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        label_dir = tmp / "labels"
        label_dir.mkdir()
        for name in HELD_OUT[:args.n_anatomies]:
            (label_dir / f"{name}.nii.gz").symlink_to(args.labels / f"{name}.nii.gz")
        for proto_name in args.protocols:
            protocol = PROTOCOLS[proto_name]
            renders = {}
            for kind, p in (("biased", protocol),
                            ("free", dataclasses.replace(protocol, bias_strength=0.0))):
                renders[kind] = make_traveling_dataset(
                    label_dir, tmp / f"{proto_name}_{kind}", [p], n_anatomies=args.n_anatomies,
                    resolution_mm=2.0, seed=5, progress=lambda m: None)
            free = {i.anatomy: i for i in read_simulated_dataset(renders["free"])}
            rows: dict[str, list] = {}
            for img in read_simulated_dataset(renders["biased"]):
                mask = load_ras(img.brain_mask) > 0
                labels = load_ras(img.dseg)
                reference = normalize_brain(load_ras(free[img.anatomy].t1w), mask)
                images = {"bias-free render": reference,
                          "biased, no N4": normalize_brain(load_ras(img.t1w), mask)}
                for label, fit_mask in (("N4, field fitted on the head", None),
                                        ("N4, field fitted in the brain", img.brain_mask)):
                    out = n4_correct(img.t1w, tmp / "n4.nii.gz", grid_mm=settings.n4_grid_mm,
                                     iterations=settings.n4_iterations, mask=fit_mask,
                                     num_threads=args.threads)
                    images[label] = normalize_brain(load_ras(out), mask)
                for label, image in images.items():
                    rows.setdefault(label, []).append(score(image, reference, mask, labels))
            for label, vals in rows.items():
                v = np.mean(np.asarray(vals, float), axis=0)
                lines.append(f"| {proto_name} | {label} | {v[0]:.2f} | {v[1]:.3f} | {v[2]:.3f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    write_results(args.results, "What N4 leaves behind", sys.argv,
                  f"{args.threads} threads, {time.monotonic() - t0:.0f} s; anatomies: "
                  f"{', '.join(HELD_OUT[:args.n_anatomies])} (held out of training).", text)


if __name__ == "__main__":
    main()
