#!/usr/bin/env python
"""Train the harmonization model on simulated traveling subjects and judge it on
held-out anatomies (and two protocols it never saw), beside the peers.

1. Renders training anatomies (SynthSeg label maps 1..N_TRAIN) under the target
   sites and a few random protocols (source-only, domain randomization), and
   held-out anatomies under the target sites plus two unseen protocols.
2. Trains on CPU for --minutes (1 thread by default, bf16 autocast).
3. Harmonizes every held-out image to each target site, writes the outputs as
   derivatives and scores them with harmonize_bids.evaluation, beside no
   harmonization, histogram matching to a target-site reference of another
   held-out anatomy, and the target's scan-rescan ceiling.

    python benchmarks/train_simulated.py --minutes 35 --out-dir /tmp/hb_train
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "synthseg-labels"
TARGETS = ["siemens3tmprage", "ge15tspgr", "philips3ttfe"]
UNSEEN = ["siemens15tlowsnr", "clinical15tthick"]


def subset_dir(labels: Path, names: list[str], dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        link = dest / n
        if not link.exists():
            link.symlink_to(labels / n)
    return dest


def load_ras(path) -> np.ndarray:
    """An image's data in RAS orientation (``nb.as_closest_canonical``), float32."""
    return np.asarray(nb.as_closest_canonical(nb.load(str(path))).dataobj, np.float32)


def ras_volumes(bids_dir: Path):
    """{anatomy: {site: normalized RAS brain}}, plus RAS masks and the raw records."""
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.training.data import normalize_brain

    vols, masks = {}, {}
    for img in read_simulated_dataset(bids_dir):
        t1 = nb.as_closest_canonical(nb.load(img.t1w))
        m = nb.as_closest_canonical(nb.load(img.brain_mask))
        mask = np.asarray(m.dataobj) > 0
        vols.setdefault(img.anatomy, {})[img.site] = normalize_brain(
            np.asarray(t1.dataobj, np.float32), mask)
        masks[img.anatomy] = mask
    return vols, masks


def to_native(volume_ras: np.ndarray, like: Path) -> np.ndarray:
    """Undo as_closest_canonical: back to the stored orientation of ``like``."""
    img = nb.load(like)
    ornt = nb.orientations.ornt_transform(nb.orientations.axcodes2ornt(("R", "A", "S")),
                                          nb.orientations.io_orientation(img.affine))
    return nb.orientations.apply_orientation(volume_ras, ornt)


def save_harmonized(deriv: Path, img, data: np.ndarray, metadata: dict) -> Path:
    """Write one harmonized volume (on ``img``'s grid) as a derivative of ``img``."""
    from harmonize_bids.derivatives import save_derivative

    tmp = deriv / ".tmp_harmonized.nii.gz"
    nb.Nifti1Image(data, nb.load(img.t1w).affine).to_filename(tmp)
    try:
        return save_derivative(deriv, {"subject": img.participant,
                                       "_relpath": f"sub-{img.participant}/anat/x"},
                               "harmonized", tmp, extra_metadata=metadata)
    finally:
        tmp.unlink(missing_ok=True)


def merge_results(a: dict | None, b: dict) -> dict:
    """Combine evaluate() results of several target sites."""
    if a is None:
        return b
    for key in ("pairs", "n", "ceiling", "site_predictability", "site_predictability_sd",
                "site_predictability_grouped", "site_predictability_folds", "chance"):
        a.setdefault(key, {}).update(b.get(key, {}))
    return a


def main() -> None:
    from harmonize_bids.derivatives import init_derivatives
    from harmonize_bids.diffusion.checkpoint import load_model, save_model
    from harmonize_bids.diffusion.model import HarmonizationModel, ModelConfig
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.evaluation import evaluate, format_table, read_simulated_dataset
    from harmonize_bids.peers import histogram_match
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS, random_protocol
    from harmonize_bids.training.data import PairedSlices
    from harmonize_bids.training.loop import TrainConfig, TrainLoop

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=35)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--n-random", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[10])
    parser.add_argument("--base-channels", type=int, default=24)
    parser.add_argument("--model", type=Path, default=None,
                        help="skip training: evaluate this model file instead")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="sampler start: 1 = pure noise, < 1 = noised source")
    parser.add_argument("--eval-targets", nargs="+", default=TARGETS,
                        help="target sites to harmonize the held-out images to")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_train"))
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "train_simulated.md")
    args = parser.parse_args()
    model_arg = args.model
    from harmonize_bids.utils.cpu import configure_cpu
    configure_cpu(args.threads)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"{time.strftime('%H:%M:%S')} {m}", flush=True)  # noqa: E731

    names = sorted(p.name for p in LABELS.glob("training_seg_*.nii.gz"))
    train_names, test_names = names[:args.n_train], names[args.n_train:args.n_train + args.n_test]
    rng = np.random.default_rng(123)
    randoms = [random_protocol(rng, f"random{i}") for i in range(args.n_random)]
    train_ds, test_ds = out / "train", out / "test"
    t0 = time.monotonic()
    if not train_ds.exists():
        make_traveling_dataset(subset_dir(LABELS, train_names, out / "labels_train"), train_ds,
                               [PROTOCOLS[n] for n in TARGETS] + randoms,
                               n_anatomies=len(train_names), resolution_mm=2.0, seed=1,
                               progress=log)
    if not test_ds.exists():
        make_traveling_dataset(subset_dir(LABELS, test_names, out / "labels_test"), test_ds,
                               [PROTOCOLS[n] for n in TARGETS + UNSEEN],
                               n_anatomies=len(test_names), resolution_mm=2.0, seed=2,
                               rescan=True, progress=log)
    t_sim = time.monotonic() - t0

    if args.model is None:
        volumes, _ = ras_volumes(train_ds)
        data = PairedSlices(volumes, TARGETS, context_slices=1, crop=(64, 64))
        config = ModelConfig(sites=tuple(TARGETS), base_channels=args.base_channels)
        loop = TrainLoop(HarmonizationModel(config), lambda r: data.sample(12, r),
                         TrainConfig(lr=2e-4, bf16=True, log_every=200, seed=0))
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.minutes * 60:
            loop.run(50, log=log)
        t_train = time.monotonic() - t0
        hist = loop.history
        first = float(np.mean([h["diffusion"] for h in hist[:200]]))
        last = float(np.mean([h["diffusion"] for h in hist[-200:]]))
        save_model(loop.ema, out / "model.safetensors", card={
            "training": {"steps": loop.step, "minutes": t_train / 60, "data": "simulated",
                         "anatomies": train_names, "random_protocols": len(randoms)},
            "losses": {"first200_diffusion": first, "last200_diffusion": last}})
        (out / "history.json").write_text(json.dumps(hist))
        log(f"trained {loop.step} steps in {t_train / 60:.1f} min; loss {first:.4f} -> {last:.4f}")
        args.model = out / "model.safetensors"
    ema, card = load_model(args.model)
    config = ema.config
    steps_done, t_train = card["training"]["steps"], card["training"]["minutes"] * 60
    first, last = card["losses"]["first200_diffusion"], card["losses"]["last200_diffusion"]

    # ---- harmonize the held-out set with the model and with histogram matching
    torch.set_num_threads(2)  # the allocator was tuned by configure_cpu above
    images = read_simulated_dataset(test_ds)
    test_vols, test_masks = ras_volumes(test_ds)
    anats = sorted(test_vols)
    tables = []
    for steps in args.steps:
        merged = None
        t0 = time.monotonic()
        n_vol = 0
        for target in args.eval_targets:
            deriv = out / f"ours_s{steps}_{args.strength:g}_{target}"
            init_derivatives(deriv, test_ds)
            for img in images:
                if target == img.site:
                    continue
                res = harmonize_volume(ema, test_vols[img.anatomy][img.site],
                                       test_masks[img.anatomy], config.site_index(target),
                                       SamplerSettings(steps=steps, strength=args.strength),
                                       seed=0)
                save_harmonized(deriv, img, to_native(res, img.t1w), {
                    "TargetSite": target, "SourceSite": img.site, "Steps": steps})
                n_vol += 1
            merged = merge_results(merged, evaluate(test_ds, deriv))
        sec = (time.monotonic() - t0) / max(n_vol, 1)
        log(f"S={steps}: {sec:.1f} s per volume")
        tables.append((f"ours (S={steps}, strength {args.strength:g}, {sec:.0f} s/vol)", merged))

    merged = None
    for target in args.eval_targets:
        deriv = out / f"histmatch_{target}"
        init_derivatives(deriv, test_ds)
        for img in images:
            if target == img.site:
                continue
            other = anats[(anats.index(img.anatomy) + 1) % len(anats)]  # another anatomy
            ref_img = next(i for i in images if i.anatomy == other and i.site == target)
            src = np.asarray(nb.load(img.t1w).dataobj, np.float32)
            mask = np.asarray(nb.load(img.brain_mask).dataobj) > 0
            ref = np.asarray(nb.load(ref_img.t1w).dataobj, np.float32)
            rmask = np.asarray(nb.load(ref_img.brain_mask).dataobj) > 0
            save_harmonized(deriv, img, histogram_match(src, mask, ref, rmask),
                            {"TargetSite": target, "SourceSite": img.site})
        merged = merge_results(merged, evaluate(test_ds, deriv))
    tables.append(("histogram matching", merged))

    base = evaluate(test_ds)
    base["pairs"] = {k: v for k, v in base["pairs"].items() if k[1] in args.eval_targets}
    tables.insert(0, ("no harmonization", base))
    lines = ["# Harmonization on held-out simulated anatomies", "",
             f"- command: `python benchmarks/train_simulated.py --minutes {args.minutes:g} "
             f"--threads {args.threads} --n-train {args.n_train} --n-test {args.n_test} "
             f"--n-random {args.n_random} --steps {' '.join(map(str, args.steps))} "
             f"--base-channels {args.base_channels} --strength {args.strength:g} --eval-targets "
             f"{' '.join(args.eval_targets)}" + (f" --model {model_arg}`" if model_arg else "`"),
             f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}; no GPU",
             f"- training: anatomies {train_names[0]}..{train_names[-1]} under {TARGETS} + "
             f"{len(randoms)} random protocols; {steps_done} steps in {t_train / 60:.1f} min "
             f"({args.threads} thread, bf16, batch 12, 64x64 crops); EMA weights; "
             f"{sum(p.numel() for p in ema.parameters()) / 1e6:.2f} M parameters; diffusion "
             f"loss {first:.4f} (first 200 steps) -> {last:.4f} (last 200); simulation "
             f"{t_sim:.0f} s",
             f"- test: held-out anatomies {test_names} under {TARGETS} and the unseen "
             f"protocols {UNSEEN}; every image sent to every other target site",
             "- histogram matching uses the same target site's image of another held-out "
             "anatomy as reference", ""]
    for name, res in tables:
        lines += [format_table(res, name), ""]
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
