"""Losses and the training loop (collaborators passed in, small methods).

Loss = diffusion loss (MSE of the v/eps/x0 prediction of the *target-site*
slice, conditioned on the *source-site* condition; each sample weighted by
:func:`~harmonize_bids.diffusion.schedule.loss_weight`, so nearly clean inputs
do not take most of the gradient; with ``edge_weight`` the pixels of the brain
within ``edge_width`` pixels of its edge count ``1 + edge_weight`` times, see
:func:`edge_band_weights`)
+ ``consistency_weight`` * MSE(c(source), c(same anatomy at another site))
+ ``adversary_weight`` * cross-entropy of a site classifier on c, whose
gradient is reversed into the encoder (so c stops carrying the site)
+ ``distribution_weight`` * :func:`distribution_loss` of the predicted clean
slice (its in-brain intensity distribution against the target's, so that the
output's histogram is the target site's whatever the source: the mean-seeking
MSE alone lets noisy sources give wider and blurred ones narrower peaks)
+ ``output_consistency_weight`` * weighted MSE between the network's predictions
from the source and from the same anatomy at another site (same noisy target,
timestep and target site): the *output*, not only c, must not depend on the
source's scanner, which also covers what reaches the denoiser through the
detail path (``ModelConfig.source_input``).

A residual model (``ModelConfig.residual_scale``) diffuses ``target - source``
instead of the target: every term above is unchanged in what it asks of the clean
*image* (:func:`output_consistency` says how the output term follows).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from harmonize_bids.diffusion.model import HarmonizationModel
from harmonize_bids.diffusion.schedule import (
    NoiseSchedule,
    SamplerSettings,
    loss_weight,
    respace,
)
from harmonize_bids.training.data import Batch


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    consistency_weight: float = 1.0
    adversary_weight: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    bf16: bool = False
    #: gradient checkpointing in the denoiser and condition UNets (saves memory)
    gradient_checkpointing: bool = False
    #: cap of the clean-image error weight (1 + SNR) of the diffusion loss; None: plain
    max_loss_weight: float | None = 5.0
    #: weight of :func:`distribution_loss` (0: off, as in models before session 7)
    distribution_weight: float = 0.0
    #: weight of the output-consistency term (0: off, as in models up to session 11)
    output_consistency_weight: float = 0.0
    #: extra weight of the diffusion loss in the brain's outer band (0: off, as before
    #: session 23) and the band's width in pixels (:func:`edge_band_weights`)
    edge_weight: float = 0.0
    edge_width: int = 3
    #: share of each batch's timesteps drawn from the skip sampler's own chain
    #: (``respace(T, sampler_steps)`` without t = 0; :class:`SamplerTimesteps`), the rest
    #: uniform; 0: all uniform, as before session 35
    sampler_share: float = 0.0
    sampler_steps: int = SamplerSettings.steps
    #: optimizer steps over which the learning rate rises linearly to ``lr``
    #: (:func:`warmup_lr`); 0: ``lr`` from the first step, as before session 36
    warmup_steps: int = 0


def warmup_lr(step: int, lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): a linear rise over the first
    ``warmup_steps`` steps to ``lr``, then ``lr``.

    >>> [warmup_lr(s, 1e-3, 4) for s in range(5)]
    [0.00025, 0.0005, 0.00075, 0.001, 0.001]
    >>> warmup_lr(0, 2e-4, 0)
    0.0002
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def edge_band_weights(brain: torch.Tensor, width: int, edge_weight: float) -> torch.Tensor:
    """Per-pixel loss weights ``[B x 1 x H x W]``: 1, and ``1 + edge_weight`` on the
    pixels of ``brain`` (bool, ``[B x 1 x H x W]``) within ``width`` pixels (in-plane,
    chessboard distance) of a non-brain pixel.

    Pixels beyond the crop's border count as brain, so a crop through the brain has no
    edge there.

    >>> brain = torch.zeros(1, 1, 1, 7, dtype=torch.bool); brain[..., 1:6] = True
    >>> edge_band_weights(brain, 1, 2.0).flatten().tolist()
    [1.0, 3.0, 1.0, 1.0, 1.0, 3.0, 1.0]
    >>> edge_band_weights(torch.ones(1, 1, 1, 4, dtype=torch.bool), 1, 2.0).flatten().tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    outside = (~brain).float()
    # dilating the outside by ``width`` (max-pooling pads with -inf: no edge at the border)
    near = F.max_pool2d(outside, 2 * width + 1, stride=1, padding=width) > 0
    return 1.0 + edge_weight * (brain & near).float()


def distribution_loss(x0: torch.Tensor, target: torch.Tensor, ab: torch.Tensor,
                      min_voxels: int = 64) -> torch.Tensor:
    """Squared 2-Wasserstein distance between the in-brain intensities of the
    predicted clean slices ``x0`` and of the ``target`` slices ``[B x 1 x H x W]``,
    per sample, weighted by ``ab`` (nearly clean predictions count most: the
    sampler's last step is one), averaged over samples with at least
    ``min_voxels`` brain voxels (the brain is where ``target > 0``).

    In 1D the optimal coupling pairs sorted values, so this is the mean squared
    difference of the sorted in-brain values; it ignores where a value sits, only
    which values occur (a spatial permutation costs nothing).
    """
    mask = target > 0
    n = mask.flatten(1).sum(1)
    outside = -1e4  # sorts first in both, paired with itself: contributes 0
    xs = torch.where(mask, x0.float(), outside).flatten(1).sort(dim=1).values
    ys = torch.where(mask, target.float(), outside).flatten(1).sort(dim=1).values
    w2 = ((xs - ys) ** 2).sum(1) / n.clamp(min=1)
    keep = (n >= min_voxels).float()
    return (ab.flatten().float() * keep * w2).sum() / keep.sum().clamp(min=1)


class UniformTimesteps:
    """Timestep sampler returning ``(t, weights)`` (room for importance sampling)."""

    def __init__(self, num_steps: int):
        self.num_steps = num_steps

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(0, self.num_steps, (n,), generator=generator)
        return t, torch.ones(n)


class SamplerTimesteps(UniformTimesteps):
    """Uniform timesteps, but a ``share`` of them taken from the skip sampler's chain.

    The app's sampler evaluates the network at only ``sampler_steps`` timesteps
    (:func:`~harmonize_bids.diffusion.schedule.respace`); a short training run spends
    most of its samples elsewhere. Drawing a share of each batch from the chain itself
    (t = 0 left out: there the clean image is the input and the loss weight is ~0)
    trains those steps more often while the uniform rest keeps every other step count
    usable. Returns ``(t, weights)`` with unit weights, as :class:`UniformTimesteps`.

    >>> g = torch.Generator().manual_seed(0)
    >>> t, _ = SamplerTimesteps(1000, share=1.0, sampler_steps=5).sample(400, g)
    >>> sorted(set(t.tolist()))
    [250, 500, 749, 999]
    """

    def __init__(self, num_steps: int, share: float,
                 sampler_steps: int = SamplerSettings.steps):
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        super().__init__(num_steps)
        self.share = share
        self.chain = torch.tensor([t for t in respace(num_steps, sampler_steps) if t > 0])

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t, weights = super().sample(n, generator)
        on_chain = torch.rand(n, generator=generator) < self.share
        picks = self.chain[torch.randint(0, len(self.chain), (n,), generator=generator)]
        return torch.where(on_chain, picks, t), weights


def timestep_sampler(num_steps: int, config: TrainConfig) -> UniformTimesteps:
    """The training loop's timestep sampler: uniform unless ``config.sampler_share``."""
    if config.sampler_share:
        return SamplerTimesteps(num_steps, config.sampler_share, config.sampler_steps)
    return UniformTimesteps(num_steps)


def training_losses(model: HarmonizationModel, schedule: NoiseSchedule, batch: Batch,
                    t: torch.Tensor, noise: torch.Tensor, config: TrainConfig,
                    generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """All loss terms for one batch (see module docstring)."""
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32,
                         device=t.device)[t][:, None, None, None]
    cond = model.encode(batch.source, generator)
    clean = model.diffused(batch.target, batch.source)
    x_t = NoiseSchedule.q_sample(clean, noise, ab)
    out = model(x_t, t, batch.target_site, cond, batch.source)
    pred = model.config.prediction
    target = {"eps": noise, "x0": clean, "v": NoiseSchedule.v_target(clean, noise, ab)}[pred]
    weight = loss_weight(ab.flatten(), pred, config.max_loss_weight)
    squared = (out.float() - target.float()) ** 2
    if config.edge_weight:
        pixel_weight = edge_band_weights(batch.target > 0, config.edge_width,
                                         config.edge_weight)
        per_sample = (pixel_weight * squared).sum(dim=(1, 2, 3)) / pixel_weight.sum(
            dim=(1, 2, 3))
    else:
        per_sample = squared.mean(dim=(1, 2, 3))
    losses = {"diffusion": (weight * per_sample).mean()}
    if config.distribution_weight:
        x0, _ = NoiseSchedule.x0_eps_from(pred, out.float(), x_t.float(), ab)
        losses["distribution"] = distribution_loss(model.image(x0, batch.source.float()),
                                                   batch.target, ab)
    cond_alt = None
    if config.consistency_weight or config.output_consistency_weight:
        cond_alt = model.encode(batch.source_alt, generator)
    if config.consistency_weight:
        losses["consistency"] = F.mse_loss(cond, cond_alt)
    if config.output_consistency_weight:
        losses["output_consistency"] = output_consistency(
            model, batch, t, noise, ab, x_t, out, cond_alt, config.max_loss_weight)
    known = batch.source_site >= 0
    if config.adversary_weight and known.any():
        logits = model.site_classifier(cond[known], reverse=1.0)
        losses["adversary"] = F.cross_entropy(logits, batch.source_site[known])
    losses["loss"] = (losses["diffusion"]
                      + config.consistency_weight * losses.get("consistency", 0.0)
                      + config.adversary_weight * losses.get("adversary", 0.0)
                      + config.distribution_weight * losses.get("distribution", 0.0)
                      + config.output_consistency_weight
                      * losses.get("output_consistency", 0.0))
    return losses


def output_consistency(model: HarmonizationModel, batch: Batch, t: torch.Tensor,
                       noise: torch.Tensor, ab: torch.Tensor, x_t: torch.Tensor,
                       out: torch.Tensor, cond_alt: torch.Tensor,
                       max_loss_weight: float | None) -> torch.Tensor:
    """Weighted squared gap between the clean images predicted from the source and from
    the same anatomy at another site (``batch.source_alt``), same target, noise,
    timestep and target site.

    A model that diffuses the image sees the same noisy target from both and its
    predictions are compared directly, weighted as the diffusion loss. A residual model
    (``ModelConfig.residual_scale``) diffuses ``target - source``, which differs with the
    source: each prediction gets its own noisy input and the two clean *images* are
    compared, in diffused units, weighted as the diffusion loss weighs the clean error.
    """
    pred = model.config.prediction
    if not model.config.residual_scale:
        out_alt = model(x_t, t, batch.target_site, cond_alt, batch.source_alt)
        gap = ((out.float() - out_alt.float()) ** 2).mean(dim=(1, 2, 3))
        return (loss_weight(ab.flatten(), pred, max_loss_weight) * gap).mean()
    x_t_alt = NoiseSchedule.q_sample(model.diffused(batch.target, batch.source_alt), noise, ab)
    out_alt = model(x_t_alt, t, batch.target_site, cond_alt, batch.source_alt)
    images = [model.image(NoiseSchedule.x0_eps_from(pred, o.float(), x.float(), ab)[0],
                          s.float())
              for o, x, s in ((out, x_t, batch.source), (out_alt, x_t_alt, batch.source_alt))]
    gap = ((model.config.residual_scale * (images[0] - images[1])) ** 2).mean(dim=(1, 2, 3))
    return (loss_weight(ab.flatten(), "x0", max_loss_weight) * gap).mean()


def fast_bf16_on_cpu(cpu_flags: set[str] | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    Elsewhere bf16 autocast is emulated and far slower than float32 (measured on
    an AVX2-only AMD EPYC: a UNet step 2.2 s in float32, 30 s in bf16).
    ``cpu_flags`` defaults to the flags of ``/proc/cpuinfo``.
    """
    if cpu_flags is None:
        try:
            text = open("/proc/cpuinfo").read()
        except OSError:
            return False
        cpu_flags = {f for line in text.splitlines() if line.startswith("flags")
                     for f in line.split(":", 1)[1].split()}
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags)


def use_bf16(device: str) -> bool:
    """bf16 autocast where it is fast: GPUs that support it, CPUs with native bf16."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device == "cpu" and fast_bf16_on_cpu()


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) when running under torchrun with a process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(model: torch.nn.Module, world_size: int) -> None:
    """All-reduce and average gradients across processes (data parallelism)."""
    import torch.distributed as dist

    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad /= world_size


class TrainLoop:
    """Optimizer, EMA weights and step counter around a model and a batch source."""

    def __init__(self, model: HarmonizationModel, sample_batch: Callable[[np.random.Generator], Batch],
                 config: TrainConfig, device: str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device)
        for module in self.model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = config.gradient_checkpointing
        self.sample_batch = sample_batch
        self.config = config
        self.schedule = model.schedule()
        self.timesteps = timestep_sampler(self.schedule.num_steps, config)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.step = 0
        # under torchrun every process draws its own batches; gradients are averaged
        self.rank, self.world_size = distributed_rank_and_size()
        self.seed_streams()
        self.history: list[dict[str, float]] = []

    def seed_streams(self, step: int = 0) -> None:
        """This process's random streams: batches (``rng``), timesteps and noise
        (``generator``), from the seed, the process's rank and ``step`` (0: a new run;
        a resumed data-parallel run starts fresh streams at its step)."""
        extra = [step] if step else []
        self.rng = np.random.default_rng([self.config.seed, self.rank, *extra])
        self.generator = torch.Generator().manual_seed(
            self.config.seed + 1000003 * self.rank + 7919 * step)

    def forward_backward(self, batch: Batch) -> dict[str, float]:
        t, _ = self.timesteps.sample(batch.target.shape[0], self.generator)
        noise = torch.randn(batch.target.shape, generator=self.generator).to(self.device)
        batch = Batch(*(x.to(self.device) for x in (batch.source, batch.source_alt, batch.target,
                                                     batch.target_site, batch.source_site)))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            losses = training_losses(self.model, self.schedule, batch, t.to(self.device), noise,
                                     self.config, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.world_size > 1:
            average_gradients(self.model, self.world_size)
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
            ema_p.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers()):
            ema_b.copy_(b)

    def run_step(self) -> dict[str, float]:
        self.model.train()
        losses = self.forward_backward(self.sample_batch(self.rng))
        if not all(math.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {losses}")
        rate = warmup_lr(self.step, self.config.lr, self.config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        self.history.append({"step": self.step, "lr": rate, **losses})
        return losses

    def run(self, steps: int | None = None,
            log: Callable[[str], None] = lambda msg: None) -> list[dict[str, float]]:
        for _ in range(steps if steps is not None else self.config.steps):
            losses = self.run_step()
            if self.step % self.config.log_every == 0:
                log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        return self.history


def save_state(loop: TrainLoop, path) -> None:
    """Resumable training state (model, EMA, optimizer, step, history) as safetensors + JSON.

    Never pickled: tensors go to ``path`` (safetensors), scalars to ``path.json``.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from harmonize_bids.utils.io import atomic_path, atomic_write_json

    path = Path(path)
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in loop.model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous() for k, v in loop.ema.state_dict().items()})
    tensors["generator"] = loop.generator.get_state()
    opt = loop.optimizer.state_dict()
    scalars = {"step": loop.step, "param_groups": opt["param_groups"], "opt_steps": {},
               "config": loop.model.config.to_dict(), "history": loop.history,
               "rng": loop.rng.bit_generator.state}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value) and value.ndim > 0:
                tensors[f"opt.{idx}.{key}"] = value.contiguous()
            else:
                scalars["opt_steps"][f"{idx}.{key}"] = float(value)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(json.loads(json.dumps(scalars, default=str)), path.with_suffix(".json"))


def load_state(loop: TrainLoop, path) -> bool:
    """Restore what :func:`save_state` wrote; False if there is nothing to resume.

    In one process the run continues exactly as if it had not stopped (the batch,
    timestep and noise streams included); under torchrun each process starts fresh
    streams of its own at the saved step (:meth:`TrainLoop.seed_streams`).
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file() or not path.with_suffix(".json").is_file():
        return False
    scalars = json.loads(path.with_suffix(".json").read_text())
    if scalars["config"] != loop.model.config.to_dict():
        raise ValueError(f"{path}: checkpoint was made for another model configuration")
    tensors = load_file(str(path))
    loop.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    loop.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in scalars["opt_steps"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = torch.tensor(value)
    loop.optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
    loop.step = int(scalars["step"])
    loop.history = scalars["history"]
    if loop.world_size > 1:
        # the file holds rank 0's streams: restored everywhere, every process would draw
        # the same batches from here on
        loop.seed_streams(loop.step)
    else:
        loop.rng.bit_generator.state = scalars["rng"]
        if "generator" in tensors:  # states written before session 36 lack it
            loop.generator.set_state(tensors["generator"])
    return True
