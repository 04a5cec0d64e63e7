#!/usr/bin/env python
"""Train the bundled default model (``harmonize_bids/data/models/``) on ../shared/data.

One command, resumable stage by stage (every stage skips when its output exists)::

    python scripts/train_default_model.py --minutes 60 --work /tmp/hb_default

Stages
1. **Real site ``ixi-hh``**: the first ``--n-ixi`` IXI Hammersmith heads (sorted by
   participant id, plus ``--n-ixi-test`` more kept for the benchmark) become a BIDS
   dataset of symlinks and go through the participant level (N4, brain extraction,
   MNI registration), exactly as users' data would.  Their template-space brains are
   the *targets* for ``ixi-hh``; randomly protocol-shifted copies of each
   (:func:`~harmonize_bids.training.data.add_shifted_copies`) are the *sources*.
   With ``--ixi-site-copies`` each is also re-rendered under the protocols of the
   simulated sites as an image *of* those sites (sources and targets: real anatomy
   at the named sites; :func:`~harmonize_bids.training.data.add_protocol_copies`).
2. **Simulated sites**: SynthSeg label maps ``training_seg_01..--n-labels`` (the rest
   are held out for the benchmark) plus deformed/flipped variants of them, rendered
   under the protocols ``siemens3tmprage``, ``ge15tspgr`` and ``philips3ttfe`` (sites of
   the model, named after the simulator's protocols so
   ``harmonize_bids-simulate --protocols SITE`` renders their ground truth) and under
   ``--n-random`` random protocols (sources only: domain randomization).  They are
   rendered without a bias field: the model sees N4-corrected images in the app, so
   its targets are bias-free, and the training sources get a small random residual
   bias instead (:class:`~harmonize_bids.training.data.PairedSlices`).  But N4 leaves
   a radial residue that a bias-free render lacks (``docs/model.md``, "Decisions of
   session 18"): ``--n4-renders`` renders with the protocols' bias fields and
   N4-corrects every render with the participant level's settings instead, so that
   sources and targets are what the app sees (``work/simulated_n4``).
3. **Target-site tissue landmarks** (:mod:`harmonize_bids.site_intensity`): for
   each site of the model, the mean CSF/GM/WM intensity quantiles on the 5 % grid (the
   medians, quartiles and deciles among them) of what the app sees from that site: the
   preprocessed IXI brains, and N4-corrected renders of every third training anatomy
   (``site_landmarks_q19.json``).  ``--landmarks-only``
   writes them into an existing ``--output`` model (weights unchanged) and stops.
4. **Training** for ``--minutes`` (``--threads``; bf16 autocast only where the CPU or
   GPU computes bf16 natively), EMA weights, then the model and its card are written
   into the package.  ``--init-from MODEL`` starts from an earlier model's weights
   (:mod:`~harmonize_bids.training.warm_start`: with ``--source-input`` the
   denoiser's first layer gains zero-initialized channels for the source stack);
   ``--run-name`` keeps each run's resumable state in its own folder of ``--work``
   while the stages above are shared.

IXI is CC BY-SA 3.0: the card acknowledges it, and so must anyone redistributing it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MODEL_SITES = ("ge15tspgr", "ixi-hh", "philips3ttfe", "siemens3tmprage")
SIM_TARGETS = ["siemens3tmprage", "ge15tspgr", "philips3ttfe"]
IXI_SITE = "ixi-hh"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def ixi_subjects(ixi_dir: Path) -> list[tuple[str, str]]:
    """(participant label, file name) of the IXI heads, sorted by participant id."""
    rows = (ixi_dir / "participants.tsv").read_text().splitlines()[1:]
    return sorted((r.split("\t")[0][4:], r.split("\t")[1]) for r in rows if r.strip())


def make_ixi_bids(ixi_dir: Path, subjects: list[tuple[str, str]], dest: Path) -> Path:
    """A minimal BIDS dataset of symlinks to the IXI heads, site ``ixi-hh``."""
    from harmonize_bids.utils.io import atomic_write_json, atomic_write_text

    for label, fname in subjects:
        anat = dest / f"sub-{label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        link = anat / f"sub-{label}_T1w.nii.gz"
        if not link.exists():
            link.symlink_to((ixi_dir / fname).resolve())
    atomic_write_json({"Name": "IXI Hammersmith (2 mm) subset", "BIDSVersion": "1.10.0",
                       "License": "CC BY-SA 3.0",
                       "Acknowledgements": "IXI dataset, brain-development.org"},
                      dest / "dataset_description.json")
    atomic_write_text("participant_id\tsite\n" + "".join(f"sub-{s}\t{IXI_SITE}\n"
                                                         for s, _ in subjects),
                      dest / "participants.tsv")
    return dest


def preprocess_ixi(bids_dir: Path, out: Path, work: Path, nprocs: int) -> None:
    """The participant level (no harmonization) on the IXI subset, as a user would run it."""
    cmd = [sys.executable, "-m", "harmonize_bids.cli.run", str(bids_dir), str(out),
           "participant", "-w", str(work), "--nprocs", str(nprocs), "--omp-nthreads", "1",
           "--skip-bids-validation"]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True)


def ixi_volumes(bids_dir: Path, out: Path, labels: list[str], voxel_mm: float):
    """Template-space brains of the preprocessed IXI participants."""
    from harmonize_bids.training.group import load_training_volumes
    from harmonize_bids.utils.bids import T1wRecord

    records = [T1wRecord(path=bids_dir / f"sub-{s}/anat/sub-{s}_T1w.nii.gz",
                         entities={"subject": s},
                         site=IXI_SITE, site_source="participants.tsv") for s in labels]
    return load_training_volumes(records, out, voxel_mm)


def simulated_volumes(sim_dir: Path):
    """{anatomy: {site: RAS normalized brain}} and RAS masks of a simulated dataset."""
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.training.data import normalize_brain

    vols, masks = {}, {}
    for img in read_simulated_dataset(sim_dir):
        t1 = nb.as_closest_canonical(nb.load(img.t1w))
        mask = np.asarray(nb.as_closest_canonical(nb.load(img.brain_mask)).dataobj) > 0
        vols.setdefault(img.anatomy, {})[img.site] = normalize_brain(
            np.asarray(t1.dataobj, np.float32), mask)
        masks[img.anatomy] = mask
    return vols, masks


def n4_brain(t1w: Path, mask: np.ndarray, mask_file: Path) -> np.ndarray:
    """The participant level's N4 of a whole-head image (its field fitted inside
    ``mask_file`` when the participant level does so), then its normalized brain."""
    import tempfile

    from harmonize_bids.training.data import normalize_brain
    from harmonize_bids.workflows.anatomical import participant_n4

    with tempfile.TemporaryDirectory() as tmp:
        out = participant_n4(t1w, Path(tmp) / "n4.nii.gz", mask_file, num_threads=2)
        return normalize_brain(np.asarray(nb.load(out).dataobj, np.float32), mask)


def target_landmarks(work: Path, sim_dir: Path, ixi_vols: dict, ixi_masks: dict,
                     every: int = 3, corrected: bool = False) -> dict[str, list[float]]:
    """Tissue landmarks of every model site, on the stored grid (cached in
    ``work/site_landmarks_q19.json``; ``corrected``: the renders are N4-corrected
    already, cached in ``work/site_landmarks_q19_n4renders.json``)."""
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.site_intensity import STORED_PER_TISSUE, site_landmarks
    from harmonize_bids.training.data import normalize_brain

    cache = work / f"site_landmarks_q{STORED_PER_TISSUE}{'_n4renders' if corrected else ''}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    images = {IXI_SITE: [(v[IXI_SITE], ixi_masks[s]) for s, v in ixi_vols.items()]}
    renders = read_simulated_dataset(sim_dir)
    chosen = sorted({img.anatomy for img in renders})[::every]
    todo = [img for img in renders if img.site in SIM_TARGETS and img.anatomy in chosen]
    for k, img in enumerate(todo):
        mask = np.asarray(nb.load(img.brain_mask).dataobj) > 0
        brain = (normalize_brain(np.asarray(nb.load(img.t1w).dataobj, np.float32), mask)
                 if corrected else n4_brain(img.t1w, mask, img.brain_mask))
        images.setdefault(img.site, []).append((brain, mask))
        log(f"landmarks: {'' if corrected else 'N4 '}{k + 1}/{len(todo)} ({img.anatomy}, {img.site})")
    landmarks = site_landmarks(images, STORED_PER_TISSUE)
    cache.write_text(json.dumps(landmarks, indent=1))
    return landmarks


def write_landmarks(model_path: Path, landmarks: dict[str, list[float]]) -> None:
    """Rewrite a model file with ``landmarks`` in its config (weights and card kept)."""
    from harmonize_bids.diffusion.checkpoint import load_model, save_model

    model, card = load_model(model_path)
    model.config = dataclasses.replace(model.config, site_landmarks=landmarks)
    card = {k: v for k, v in card.items() if k not in ("config", "sites", "sha256", "weights")}
    card.setdefault("training", {})["site_landmarks"] = (
        "tissue quantiles on the 5 % grid, added after training by --landmarks-only "
        "(weights unchanged)")
    save_model(model, model_path, card=card)
    log(f"wrote tissue landmarks of {sorted(landmarks)} into {model_path}")


def stage_seconds(marker: Path) -> float:
    """Seconds a finished stage took (recorded in its marker file; 0 if unknown)."""
    try:
        return float(marker.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def training_crop(patch_size: int, volumes: dict[str, dict[str, np.ndarray]], multiple: int
                  ) -> tuple[int, int]:
    """The training crop: ``patch_size`` squared, or (0) the largest axial slice of
    ``volumes`` padded to the network's ``multiple`` as inference pads it, so that every
    training slice is whole.

    >>> vols = {"a": {"s": np.zeros((101, 126, 4))}, "b": {"s": np.zeros((90, 107, 4))}}
    >>> training_crop(0, vols, 8), training_crop(64, vols, 8)
    ((104, 128), (64, 64))
    """
    if patch_size > 0:
        return patch_size, patch_size
    h = max(v.shape[0] for by_site in volumes.values() for v in by_site.values())
    w = max(v.shape[1] for by_site in volumes.values() for v in by_site.values())
    return h + (-h) % multiple, w + (-w) % multiple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hb_default"))
    parser.add_argument("--minutes", type=float, default=60, help="training time budget")
    parser.add_argument("--steps", type=int, default=None,
                        help="also stop at this many optimizer steps of this run (a multiple "
                             "of 100; for runs that must match another's steps, e.g. a "
                             "control run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to train ('auto': a GPU when one is available)")
    parser.add_argument("--nprocs", type=int, default=2, help="processes for preprocessing")
    parser.add_argument("--n-ixi", type=int, default=30, help="IXI heads used for training")
    parser.add_argument("--n-ixi-test", type=int, default=4,
                        help="further IXI heads preprocessed for the benchmark (not trained on)")
    parser.add_argument("--n-labels", type=int, default=12,
                        help="label maps used for training (01..N); the rest are held out")
    parser.add_argument("--n-anatomies", type=int, default=24,
                        help="simulated anatomies: the label maps, then deformed variants")
    parser.add_argument("--n-random", type=int, default=5, help="random source protocols")
    parser.add_argument("--shifted-copies", type=int, default=5,
                        help="protocol-shifted copies of each IXI brain (sources)")
    parser.add_argument("--ixi-site-copies", action="store_true",
                        help="also re-render each IXI brain under the protocols of the "
                             "simulated sites (simulate.shift, bias-free) as images *of* those "
                             "sites, targets included: real anatomy and texture at the named "
                             "sites, which label-map renders alone do not teach "
                             "(docs/model.md, 'Decisions of session 32')")
    parser.add_argument("--base-channels", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--patch-size", type=int, default=64,
                        help="side of the random square training crops; 0: whole axial "
                             "slices padded as at inference, so training sees the app's "
                             "field of view (docs/model.md, session 22)")
    parser.add_argument("--source-input", action="store_true",
                        help="the denoiser also reads the source slice stack (the detail "
                             "path, ModelConfig.source_input)")
    parser.add_argument("--fill-background", type=int, default=0, metavar="VOXELS",
                        help="continue the brain this many voxels into the background in "
                             "training and at inference (ModelConfig.fill_background; 0: "
                             "zero background, as the bundled model; docs/model.md, session 18)")
    parser.add_argument("--norm-in-brain", action="store_true",
                        help="normalize inside the brain only (ModelConfig.norm_in_brain), so "
                             "the output does not depend on the background around it "
                             "(docs/model.md, session 22)")
    parser.add_argument("--residual-scale", type=float, default=0.0, metavar="R",
                        help="diffuse R * (target - source) instead of the target "
                             "(ModelConfig.residual_scale; 0: the image, as the bundled model)")
    parser.add_argument("--n4-renders", action="store_true",
                        help="render the simulated sites with their bias fields and N4-correct "
                             "them as the app does (work/simulated_n4), instead of bias-free "
                             "renders (docs/model.md, session 18)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this model's weights (same sites and network; "
                             "--source-input may add the source channels)")
    parser.add_argument("--distribution-weight", type=float, default=0.0,
                        help="weight of the in-brain intensity-distribution term "
                             "(TrainConfig.distribution_weight; 0: off)")
    parser.add_argument("--output-consistency-weight", type=float, default=0.0,
                        help="weight of the output-consistency term: the predictions from "
                             "the same anatomy at two source sites must agree "
                             "(TrainConfig.output_consistency_weight; 0: off)")
    parser.add_argument("--source-noise", type=float, default=0.0, metavar="SHARE",
                        help="share of training sources given extra Rician noise "
                             "(PairedSlices.source_noise; 0: off, as the bundled model), so "
                             "the condition-consistency loss teaches c to ignore a scanner's "
                             "SNR (docs/model.md, session 34)")
    parser.add_argument("--noise-sigma", type=float, default=0.1,
                        help="that noise's largest sigma, in normalized units (the brain's "
                             "99th percentile is 1); each source draws U(0, this)")
    parser.add_argument("--sampler-share", type=float, default=0.0, metavar="SHARE",
                        help="share of training timesteps drawn from the app's 5-step "
                             "chain (TrainConfig.sampler_share; 0: all uniform, as the "
                             "bundled model; docs/model.md, session 35)")
    parser.add_argument("--learning-rate", type=float, default=2e-4, metavar="LR",
                        help="AdamW learning rate (TrainConfig.lr)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the network's initial weights and of the training "
                             "streams (batches, timesteps, noise; TrainConfig.seed). Runs "
                             "before session 36 seeded the streams with 0 but left the "
                             "initial weights unseeded")
    parser.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                        help="optimizer steps over which the learning rate rises linearly "
                             "to --learning-rate (TrainConfig.warmup_steps; 0: none, as the "
                             "bundled model; docs/model.md, session 36)")
    parser.add_argument("--edge-weight", type=float, default=0.0,
                        help="extra weight of the diffusion loss in the brain's outer band "
                             "(TrainConfig.edge_weight; 0: off)")
    parser.add_argument("--edge-width", type=int, default=3,
                        help="width of that band in voxels (TrainConfig.edge_width)")
    parser.add_argument("--run-name", default="",
                        help="keep this run's training state in WORK/RUN_NAME (the data "
                             "stages stay shared)")
    parser.add_argument("--landmarks-from", type=Path, default=None,
                        help="take the target-site tissue landmarks from this model instead "
                             "of computing them (skips their N4 stage; keeps a fine-tune's "
                             "--match-intensities targets identical to that model's)")
    parser.add_argument("--landmarks-only", action="store_true",
                        help="compute the target-site tissue landmarks, write them into the "
                             "existing --output model (weights unchanged) and stop")
    parser.add_argument("--output", type=Path,
                        default=REPO / "harmonize_bids" / "data" / "models" /
                        "harmonize_bids_default.safetensors")
    args = parser.parse_args()
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    # 1. real site
    ixi_dir = SHARED / "ixi-hh-t1w-2mm"
    subjects = ixi_subjects(ixi_dir)[:args.n_ixi + args.n_ixi_test]
    ixi_bids, ixi_out = work / "ixi_bids", work / "ixi_derivatives"
    make_ixi_bids(ixi_dir, subjects, ixi_bids)
    if not (work / "ixi_done").exists():
        preprocess_ixi(ixi_bids, ixi_out, work / "ixi_work", args.nprocs)
        (work / "ixi_done").write_text(f"{time.monotonic() - t_start:.0f}\n")
    t_ixi = stage_seconds(work / "ixi_done")

    # 2. simulated sites
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS, random_protocol

    sim_dir = work / ("simulated_n4" if args.n4_renders else "simulated")
    labels = sorted(p for p in (SHARED / "synthseg-labels").glob("training_seg_*.nii.gz"))
    train_labels = labels[:args.n_labels]
    rng = np.random.default_rng(2024)
    randoms = [random_protocol(rng, f"random{i}") for i in range(args.n_random)]
    # bias-free renderings, or (--n4-renders) biased ones N4-corrected below (docstring)
    protocols = [PROTOCOLS[n] for n in SIM_TARGETS] + randoms
    rendered = protocols if args.n4_renders else [
        dataclasses.replace(p, bias_strength=0.0) for p in protocols]
    t0 = time.monotonic()
    if not sim_dir.exists():
        label_dir = work / "labels_train"
        label_dir.mkdir(exist_ok=True)
        for p in train_labels:
            if not (label_dir / p.name).exists():
                (label_dir / p.name).symlink_to(p)
        raw_dir = work / "simulated_biased" if args.n4_renders else sim_dir
        if not raw_dir.exists():
            make_traveling_dataset(label_dir, raw_dir, rendered,
                                   n_anatomies=args.n_anatomies, resolution_mm=2.0, seed=11,
                                   progress=log)
        if args.n4_renders:  # as the app sees scans: biased, then its own N4
            from harmonize_bids.evaluation import bias_corrected_copy

            bias_corrected_copy(raw_dir, sim_dir, num_threads=args.threads, progress=log)
        (work / f"{sim_dir.name}_done").write_text(f"{time.monotonic() - t0:.0f}\n")
    t_sim = stage_seconds(work / f"{sim_dir.name}_done")

    # 3. target-site tissue landmarks (before the shifted copies: those are no site's images)
    train_ixi = [s for s, _ in subjects[:args.n_ixi]]
    volumes, masks, used = ixi_volumes(ixi_bids, ixi_out, train_ixi, 2.0)
    if args.landmarks_from:
        from harmonize_bids.diffusion.checkpoint import load_model

        landmarks = load_model(args.landmarks_from)[0].config.site_landmarks
        log(f"tissue landmarks of {sorted(landmarks)} from {args.landmarks_from}")
    else:
        landmarks = target_landmarks(work, sim_dir, volumes, masks, corrected=args.n4_renders)
    if args.landmarks_only:
        write_landmarks(args.output, landmarks)
        return

    # 4. training
    import torch

    from harmonize_bids import __version__
    from harmonize_bids.diffusion.checkpoint import file_sha256, save_model
    from harmonize_bids.diffusion.model import HarmonizationModel, ModelConfig
    from harmonize_bids.interfaces.harmonize import resolve_device
    from harmonize_bids.training.data import (PairedSlices, add_protocol_copies,
                                              add_shifted_copies)
    from harmonize_bids.training.loop import (
        TrainConfig,
        TrainLoop,
        load_state,
        save_state,
        use_bf16,
    )

    from harmonize_bids.utils.cpu import configure_cpu

    configure_cpu(args.threads)
    log(f"{len(used)} IXI brains; rendering {args.shifted_copies} shifted copies of each ...")
    add_shifted_copies(volumes, masks, args.shifted_copies, np.random.default_rng(7))
    if args.ixi_site_copies:
        log(f"re-rendering each IXI brain under {SIM_TARGETS} as images of those sites ...")
        add_protocol_copies(volumes, masks, [PROTOCOLS[n] for n in SIM_TARGETS],
                            np.random.default_rng(8))
    sim_vols, _ = simulated_volumes(sim_dir)
    volumes.update({f"sim-{k}": v for k, v in sim_vols.items()})
    log(f"{len(sim_vols)} simulated anatomies x {len(next(iter(sim_vols.values())))} protocols")
    config = ModelConfig(sites=MODEL_SITES, base_channels=args.base_channels, voxel_mm=2.0,
                         site_landmarks=landmarks, source_input=args.source_input,
                         fill_background=args.fill_background,
                         norm_in_brain=args.norm_in_brain,
                         residual_scale=args.residual_scale)
    torch.manual_seed(args.seed)  # the initial weights
    model = HarmonizationModel(config)
    init = None
    if args.init_from:
        from harmonize_bids.diffusion.checkpoint import load_model
        from harmonize_bids.training.warm_start import warm_start

        earlier, earlier_card = load_model(args.init_from)
        if dataclasses.replace(earlier.config, source_input=config.source_input,
                               site_landmarks=landmarks,
                               fill_background=config.fill_background,
                               norm_in_brain=config.norm_in_brain,
                               residual_scale=config.residual_scale) != config:
            raise SystemExit(f"{args.init_from}: another network or site list; cannot start "
                             "from it")
        widened = warm_start(model, earlier.state_dict())
        earlier_training = earlier_card.get("training", {})
        init = {"file": args.init_from.name, "sha256": file_sha256(args.init_from),
                "steps": earlier_training.get("steps"),
                "total_steps": earlier_training.get("total_steps_including_initialization",
                                                    earlier_training.get("steps")),
                "widened": widened}
        log(f"starting from {args.init_from} ({init['steps']} steps); widened {widened}")
    crop = training_crop(args.patch_size, volumes, config.multiple)
    log(f"training crops {crop[0]} x {crop[1]}")
    data = PairedSlices(volumes, list(MODEL_SITES), context_slices=config.context_slices,
                        crop=crop, augment=1.5, fill_background=config.fill_background,
                        source_noise=args.source_noise, noise_sigma=args.noise_sigma)
    device = resolve_device(args.device)
    train_config = TrainConfig(lr=args.learning_rate, warmup_steps=args.warmup_steps,
                               bf16=use_bf16(device), log_every=200, seed=args.seed,
                               distribution_weight=args.distribution_weight,
                               output_consistency_weight=args.output_consistency_weight,
                               edge_weight=args.edge_weight, edge_width=args.edge_width,
                               sampler_share=args.sampler_share)
    loop = TrainLoop(model, lambda r: data.sample(args.batch_size, r),
                     train_config, device=device)
    run_dir = work / args.run_name if args.run_name else work
    run_dir.mkdir(parents=True, exist_ok=True)
    state = run_dir / "training_state.safetensors"
    trained_s = 0.0
    if load_state(loop, state):
        trained_s = json.loads((run_dir / "training_time.json").read_text())["seconds"]
        log(f"resuming at step {loop.step} ({trained_s / 60:.1f} min done)")
    while trained_s < args.minutes * 60 and (args.steps is None or loop.step < args.steps):
        t0 = time.monotonic()
        loop.run(100, log=log)
        trained_s += time.monotonic() - t0
        if loop.step % 500 == 0:
            save_state(loop, state)
            (run_dir / "training_time.json").write_text(json.dumps({"seconds": trained_s}))
    # the final state too, so a larger --minutes later resumes exactly where this run ended
    save_state(loop, state)
    (run_dir / "training_time.json").write_text(json.dumps({"seconds": trained_s}))
    hist = loop.history
    held_out = {"held_out_label_maps": [p.name for p in labels[args.n_labels:]],
                "held_out_ixi_participants": [s for s, _ in subjects[args.n_ixi:]]}
    if init:  # the earlier weights saw what their card does not hold out
        from harmonize_bids.training.warm_start import still_unseen

        earlier_data = earlier_card.get("training_data", {})
        held_out = {"held_out_label_maps": still_unseen(
                        earlier_data.get("held_out_label_maps"),
                        [p.name for p in train_labels]),
                    "held_out_ixi_participants": still_unseen(
                        earlier_data.get("held_out_ixi_participants"), train_ixi)}
    card = {
        "name": "harmonize_bids default model",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "harmonize_bids_version": __version__, "torch_version": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s), "
                   f"device {device}",
        "command": "python scripts/train_default_model.py " + " ".join(sys.argv[1:]),
        "sites": {
            "ixi-hh": "real: IXI Hammersmith Hospital, Philips Intera 3T (targets: the "
                      "preprocessed brains; sources: protocol-shifted copies of them)",
            **{s: f"simulated: harmonize_bids-simulate --protocols {s}"
                  + ("; and the IXI brains re-rendered under that protocol "
                     "(simulate.shift)" if args.ixi_site_copies else "")
               for s in SIM_TARGETS}},
        "training_data": {
            "ixi_participants": used,
            "ixi_shifted_copies_per_image": args.shifted_copies,
            "ixi_site_copies": SIM_TARGETS if args.ixi_site_copies else [],
            "simulated_label_maps": [p.name for p in train_labels],
            "simulated_anatomies": len(sim_vols),
            "random_source_protocols": [r.name for r in randoms],
            **held_out},
        "licences": {
            "IXI": "Trained in part on IXI data (brain-development.org), CC BY-SA 3.0: "
                   "acknowledge the IXI dataset when redistributing these weights.",
            "SynthSeg label maps": "Apache-2.0 (SynthSeg project)"},
        "training": {"steps": loop.step, "batch_size": args.batch_size, "patch_size": list(crop),
                     "learning_rate": train_config.lr,
                     "warmup_steps": train_config.warmup_steps, "seed": args.seed,
                     "minutes": round(trained_s / 60, 1),
                     "bf16": train_config.bf16, "threads": args.threads,
                     "max_loss_weight": train_config.max_loss_weight,
                     "distribution_weight": train_config.distribution_weight,
                     "output_consistency_weight": train_config.output_consistency_weight,
                     "edge_weight": train_config.edge_weight,
                     "edge_width": train_config.edge_width,
                     "sampler_timesteps": {"share": train_config.sampler_share,
                                           "steps": train_config.sampler_steps},
                     "simulated_bias_field": (
                         "the protocols' own, then N4-corrected (--n4-renders)"
                         if args.n4_renders else "none (bias-free renders)")
                     + f"; sources get a residual bias up to {data.residual_bias}",
                     "source_input": config.source_input,
                     "fill_background": config.fill_background,
                     "thick_slice_blur": data.slice_blur,
                     "source_noise": {"share": data.source_noise,
                                      "max_sigma": data.noise_sigma},
                     **({"initialized_from": init,
                         "total_steps_including_initialization":
                             (init["total_steps"] or 0) + loop.step} if init else {}),
                     **({"site_landmarks": f"from {args.landmarks_from.name} (sha256 "
                                           f"{file_sha256(args.landmarks_from)[:12]})"}
                        if args.landmarks_from else {}),
                     "preprocessing_minutes": round(t_ixi / 60, 1),
                     "simulation_minutes": round(t_sim / 60, 1)},
        "losses": {"first_200": float(np.mean([h["diffusion"] for h in hist[:200]])),
                   "last_200": float(np.mean([h["diffusion"] for h in hist[-200:]]))},
        "metrics": "benchmarks/results/quality_vs_peers.md",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(loop.ema, args.output, card=card)
    (run_dir / "history.json").write_text(json.dumps(hist))
    log(f"wrote {args.output} ({loop.step} steps, {trained_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
