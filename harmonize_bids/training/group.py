"""The group level: train a dataset-specific model on the preprocessed participants.

Inputs are the participant level's template-space brains
(``…_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz`` and masks), resampled
to the model's voxel size; sites come from the site table.  Each participant
is the target at its own site; randomly protocol-shifted copies of it act as
extra sources (see :mod:`harmonize_bids.training.data`).  Training state is
saved every ``checkpoint_every`` steps in the work directory and resumed.

By default training starts from an earlier model (``GroupOptions.start_from``, the
bundled one unless ``--model`` names another): its network, its loss terms, and for
each of the dataset's sites the learned rows of a donor site
(:func:`harmonize_bids.training.warm_start.site_donors`); ``start_from=None``
trains a new network (``--from-scratch``).
"""
from __future__ import annotations

import datetime
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harmonize_bids import __version__
from harmonize_bids.exceptions import InputError, UsageError
from harmonize_bids.utils.bids import T1wRecord
from harmonize_bids.utils.cpu import configure_cpu
from harmonize_bids.utils.grid import preprocessed_brain


@dataclass(frozen=True)
class GroupOptions:
    train_steps: int = 2000
    batch_size: int = 12
    patch_size: int = 64
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    shifted_copies: int = 3
    base_channels: int = 24
    checkpoint_every: int = 200
    voxel_mm: float = 2.0
    device: str = "auto"
    num_threads: int = 1
    seed: int = 0
    gradient_checkpointing: bool = False
    #: the model to fine-tune; None: a new network (``base_channels``, ``voxel_mm``)
    start_from: Path | None = None


#: loss terms a fine-tune takes over from the card of the model it starts from
RECIPE_FIELDS = ("output_consistency_weight", "distribution_weight", "max_loss_weight",
                 "edge_weight", "edge_width")


def recipe_from_card(card: dict) -> dict:
    """The loss-term settings (:data:`RECIPE_FIELDS`) a model card records.

    >>> recipe_from_card({"training": {"output_consistency_weight": 1.0, "steps": 9}})
    {'output_consistency_weight': 1.0}
    """
    training = card.get("training", {})
    return {key: training[key] for key in RECIPE_FIELDS if key in training}


def starting_model(start_from: Path, sites: tuple[str, ...], landmarks: dict,
                   log: Callable[[str], None] = print):
    """The earlier model's network for the dataset's ``sites``: ``(model, card, start)``.

    Every site's learned rows are copied from its donor (the same site when the
    earlier model knows it, else the one with the most alike tissue landmarks);
    ``start`` is what the new card records about it.
    """
    import dataclasses

    from harmonize_bids.diffusion.checkpoint import file_sha256, load_model
    from harmonize_bids.diffusion.model import HarmonizationModel
    from harmonize_bids.training.warm_start import FIRST_KNOWN, donor_choices, with_sites

    earlier, card = load_model(start_from)
    if not card:
        log(f"WARNING: {start_from} has no model card beside it: the fine-tune cannot "
            "take over its loss terms and uses the group level's own")
    known = earlier.config.site_landmarks
    choices = donor_choices(known, {site: landmarks.get(site) for site in sites},
                            earlier.config.sites)
    donors = {site: donor for site, (donor, _) in choices.items()}
    basis = {site: why for site, (_, why) in choices.items()}
    for site, why in basis.items():
        if why == FIRST_KNOWN:
            log(f"WARNING: site '{site}' starts from '{donors[site]}', the starting model's "
                "first site: there are no tissue intensity landmarks (of its brains, or of "
                "the starting model's sites) to choose a donor by")
    config = dataclasses.replace(earlier.config, sites=sites, site_landmarks=landmarks)
    model = HarmonizationModel(config)
    model.load_state_dict(with_sites(earlier.state_dict(), earlier.config.sites, donors,
                                     earlier.per_site_tensors()))
    training = card.get("training", {})
    start = {"file": Path(start_from).name, "sha256": file_sha256(start_from),
             "sites": list(earlier.config.sites),
             # None when the earlier model's card does not say
             "steps": training.get("total_steps_including_initialization",
                                   training.get("steps")),
             "site_donors": donors, "site_donor_basis": basis,
             "training_data": card.get("training_data", {})}
    log("Starting from " + str(start_from) + "; each site's rows from: "
        + ", ".join(f"{site} <- {donor}" for site, donor in donors.items()))
    return model, card, start


def load_training_volumes(records: list[T1wRecord], output_dir: Path, voxel_mm: float
                          ) -> tuple[dict, dict, list[str]]:
    """Template-space brains of every record, at ``voxel_mm``: (volumes, masks, used)."""
    volumes, masks, used, missing = {}, {}, [], []
    for rec in records:
        brain = preprocessed_brain(output_dir, rec.entities, voxel_mm)
        if brain is None:
            missing.append(rec.label)
            continue
        data, mask = brain
        volumes[rec.label] = {rec.site: data}
        masks[rec.label] = mask
        used.append(rec.label)
    if missing and not used:
        raise InputError("No preprocessed participants found in the output directory: run the "
                         "participant level first (missing: " + ", ".join(missing[:10]) + ")")
    return volumes, masks, used


def init_distributed(device: str) -> None:
    """Join the torchrun process group when launched by torchrun."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")


def loss_figure(history: list[dict], path: Path) -> Path:
    """Loss curve (diffusion and total, moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("diffusion", "loss"):
        vals = np.array([h[key] for h in history])
        width = max(1, len(vals) // 50)
        smooth = np.convolve(vals, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1:], smooth, label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def total_steps(steps: int, start: dict | None) -> int | None:
    """Optimizer steps behind a model: this run's plus its starting model's; None
    when the starting model's card does not say.

    >>> total_steps(2000, None), total_steps(2000, {"steps": 8300}), total_steps(5, {"steps": None})
    (2000, 10300, None)
    """
    if start is None:
        return steps
    return None if start.get("steps") is None else steps + start["steps"]


def check_same_start(record: Path, start: dict, resuming: bool, write: bool = True) -> None:
    """Refuse to resume a training begun from other weights; record the start otherwise.

    Two starting models of one configuration (e.g. ``--model`` A, then B, or a new
    bundled model after an upgrade) pass the checkpoint's config check, so the start
    is recorded beside the checkpoint.  A checkpoint from before this record is resumed.
    """
    import json

    from harmonize_bids.utils.io import atomic_write_json

    if resuming and record.is_file():
        try:
            before = json.loads(record.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            before = None
        if before != start:
            raise UsageError(
                f"{record.parent} holds a training begun from other weights ({before}, "
                f"now {start}): remove that folder or use another work directory (-w)")
    elif not resuming and write:
        atomic_write_json(start, record)


def model_voxel_mm(options: GroupOptions) -> float:
    """The voxel size the group model works at: its starting model's, else ``options``'."""
    if options.start_from is None:
        return options.voxel_mm
    from harmonize_bids.diffusion.checkpoint import read_config

    return read_config(options.start_from).voxel_mm


def train_group_model(records: list[T1wRecord], output_dir: Path, work_dir: Path,
                      options: GroupOptions, log: Callable[[str], None] = print) -> Path:
    """Train, save ``OUTPUT_DIR/models/harmonize_bids_model.safetensors`` + card + figure.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), every process trains on its own
    batches with gradients averaged across processes (gloo on CPU, NCCL on GPUs);
    process 0 writes the checkpoints and the model.
    """
    init_distributed(options.device)
    configure_cpu(options.num_threads)
    volumes, masks, used = load_training_volumes(records, output_dir, model_voxel_mm(options))
    return fit_group_model(volumes, masks, used, Path(output_dir) / "models", work_dir,
                           options, log)


def fit_group_model(volumes: dict, masks: dict, used: list[str], models_dir: Path,
                    work_dir: Path, options: GroupOptions,
                    log: Callable[[str], None] = print) -> Path:
    """Train on ``{participant: {site: brain}}`` (on the model's grid) and their masks;
    write ``MODELS_DIR/harmonize_bids_model.safetensors`` + card + loss figure."""
    import torch

    from harmonize_bids.diffusion.checkpoint import save_model
    from harmonize_bids.diffusion.model import HarmonizationModel, ModelConfig
    from harmonize_bids.interfaces.harmonize import resolve_device
    from harmonize_bids.site_intensity import site_landmarks
    from harmonize_bids.training.data import PairedSlices, add_shifted_copies
    from harmonize_bids.training.loop import (
        TrainConfig,
        TrainLoop,
        load_state,
        save_state,
        use_bf16,
    )

    if options.shifted_copies < 1:
        raise UsageError("--shifted-copies must be at least 1: each participant is scanned "
                         "at one site only, so its shifted copies are the only sources")
    torch.manual_seed(options.seed)
    volumes = {sub: dict(per_site) for sub, per_site in volumes.items()}  # copies get added
    sites = tuple(sorted({next(iter(v)) for v in volumes.values()}))
    # the participants' own preprocessed brains: each site's tissue intensities (before
    # shifted copies are added: those are not images of any site)
    by_site: dict[str, list] = {}
    for sub, per_site in volumes.items():
        for site, vol in per_site.items():
            by_site.setdefault(site, []).append((vol, masks[sub]))
    landmarks = site_landmarks(by_site)
    log(f"Training on {len(used)} image(s) from {len(sites)} site(s): {', '.join(sites)}")
    if len(sites) == 1:
        log(f"WARNING: every image is at one site ({sites[0]}): the model learns that site "
            "only, and the site adversary has nothing to tell apart. Check the site table "
            "(--site-column, participants.tsv) if the dataset holds several scanners.")
    recipe, start, licences = {}, None, {}
    if options.start_from is None:
        model = HarmonizationModel(ModelConfig(sites=sites, base_channels=options.base_channels,
                                               voxel_mm=options.voxel_mm,
                                               site_landmarks=landmarks))
    else:
        model, start_card, start = starting_model(options.start_from, sites, landmarks, log)
        recipe = recipe_from_card(start_card)
        # the weights derive from the earlier model's training data: keep its credits
        licences = start_card.get("licences", {})
    config = model.config
    rng = np.random.default_rng(options.seed)
    log(f"Rendering {options.shifted_copies} protocol-shifted copies per image ...")
    add_shifted_copies(volumes, masks, options.shifted_copies, rng, (config.voxel_mm,) * 3)
    data = PairedSlices(volumes, list(sites), context_slices=config.context_slices,
                        crop=(options.patch_size, options.patch_size),
                        fill_background=config.fill_background)
    device = resolve_device(options.device)
    # bf16 mixed precision where it is fast (GPUs that support it, CPUs with native bf16)
    bf16 = use_bf16(device)
    train_config = TrainConfig(steps=options.train_steps, batch_size=options.batch_size,
                               lr=options.learning_rate, warmup_steps=options.warmup_steps,
                               seed=options.seed, bf16=bf16,
                               log_every=50,
                               gradient_checkpointing=options.gradient_checkpointing, **recipe)
    loop = TrainLoop(model, lambda r: data.sample(options.batch_size, r), train_config,
                     device=device)
    if loop.world_size > 1:
        log(f"Data-parallel training: process {loop.rank} of {loop.world_size}")
    state = Path(work_dir) / "group_training" / "state.safetensors"
    state.parent.mkdir(parents=True, exist_ok=True)
    check_same_start(state.parent / "initialized_from.json",
                     {"sha256": start["sha256"]} if start else {"from_scratch": True},
                     resuming=state.is_file(), write=loop.rank == 0)
    try:
        resumed = load_state(loop, state)
    except ValueError as err:
        raise UsageError(
            f"{state.parent} holds a training of another model (another starting model, "
            f"--from-scratch or not, or other sites): remove that folder or use another "
            f"work directory (-w) to start this one ({err})") from err
    if resumed:
        log(f"Resuming from step {loop.step} ({state})")
        if loop.step > options.train_steps:
            log(f"WARNING: the saved training is at step {loop.step}, past --train-steps "
                f"{options.train_steps}: the model is written as it is, with {loop.step} steps")
    started = time.monotonic()
    while loop.step < options.train_steps:
        todo = min(options.checkpoint_every, options.train_steps - loop.step)
        loop.run(todo)
        if loop.rank == 0:
            save_state(loop, state)
        recent = np.mean([h["diffusion"] for h in loop.history[-todo:]])
        rate = (time.monotonic() - started) / max(1, len(loop.history))
        log(f"step {loop.step}/{options.train_steps}: diffusion loss {recent:.4f} "
            f"(~{rate * (options.train_steps - loop.step) / 60:.0f} min left)")
    models = Path(models_dir)
    out = models / "harmonize_bids_model.safetensors"
    if loop.rank != 0:
        return out
    models.mkdir(parents=True, exist_ok=True)
    hist = loop.history
    card = {
        "name": "harmonize_bids group-level model",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "harmonize_bids_version": __version__, "torch_version": torch.__version__,
        "python": platform.python_version(), "device": device, "bf16": bf16,
        **({"licences": licences} if licences else {}),
        "training_data": {"images": used, "n_images": len(used),
                          "shifted_copies_per_image": options.shifted_copies},
        "training": {"steps": loop.step, "batch_size": options.batch_size,
                     "patch_size": options.patch_size, "learning_rate": options.learning_rate,
                     "warmup_steps": options.warmup_steps, "seed": options.seed,
                     "seconds": round(time.monotonic() - started, 1),
                     **recipe, "initialized_from": start,
                     "total_steps_including_initialization": total_steps(loop.step, start)},
        "losses": {"first_50": float(np.mean([h["diffusion"] for h in hist[:50]])),
                   "last_50": float(np.mean([h["diffusion"] for h in hist[-50:]]))},
    }
    save_model(loop.ema, out, card=card)
    loss_figure(hist, models / "harmonize_bids_model_loss.png")
    log(f"Model written to {out}")
    return out
