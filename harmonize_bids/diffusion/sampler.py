"""Skip sampling: respaced deterministic DDIM over a stack of slices.

Same inputs, settings and generator seed give the same output.  One noise
image is shared by all slices of a volume (``shared_noise``), so neighbouring
slices start from the same point and stay consistent.  How the chain runs is
one value, :class:`SamplerSettings`, passed unchanged from the command line to
here and written into every harmonized image's sidecar.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from harmonize_bids.diffusion.model import HarmonizationModel
from harmonize_bids.diffusion.schedule import (NoiseSchedule, SamplerSettings, away_from,
                                               ddim_step)

__all__ = ["SamplerSettings", "harmonize_slices"]


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)


@torch.no_grad()
def harmonize_slices(model: HarmonizationModel, source: torch.Tensor, site: int,
                     sampler: SamplerSettings = SamplerSettings(), *,
                     generator: torch.Generator | None = None, shared_noise: bool = True,
                     noise: torch.Tensor | None = None,
                     source_site: int | None = None) -> torch.Tensor:
    """Harmonize source slices ``[N x (2k+1) x H x W]`` to ``site``; return ``[N x 1 x H x W]``.

    ``source_site`` (a site of the model) is what ``sampler.source_guidance`` pushes
    away from; without it, or when it is ``site``, the chain is unguided.

    ``noise`` (optional) is the initial noise of each chain, ``[samples x 1 x H' x W']``
    (shared by all slices; ``H'``, ``W'`` padded to the model's multiple) or, for one
    chain, ``[N x 1 x H' x W']`` (one per slice).  With ``sampler.samples > 1`` the
    chains' clean-image estimates are averaged.
    """
    model.eval()
    config = model.config
    src, (h, w) = _pad_to(source, config.multiple)
    n, plane = src.shape[0], src.shape[-2:]
    chains = int(sampler.samples)
    if noise is None:
        per_chain = 1 if shared_noise else n
        noise = torch.randn((chains * per_chain, 1, *plane), generator=generator,
                            dtype=src.dtype, device="cpu").to(src.device)
        noises = list(noise.split(per_chain))
    elif chains == 1:
        noises = [noise]
    elif noise.shape[0] == chains:
        noises = list(noise.split(1))
    else:
        raise ValueError(f"{chains} chains need noise of shape [{chains} x 1 x H x W], "
                         f"got {tuple(noise.shape)}")
    cond = model.encode(src)
    total = None
    for z in noises:
        x0 = _chain(model, src, cond, site, sampler, z.expand(n, 1, *plane), generator,
                    source_site)
        total = x0 if total is None else total + x0
    return (total / len(noises))[..., :h, :w]


def _chain(model: HarmonizationModel, src: torch.Tensor, cond: torch.Tensor, site: int,
           sampler: SamplerSettings, noise: torch.Tensor,
           generator: torch.Generator | None, source_site: int | None = None
           ) -> torch.Tensor:
    """One deterministic (eta = 0) or stochastic DDIM chain; its final clean estimate."""
    config = model.config
    n = src.shape[0]
    schedule: NoiseSchedule = model.schedule()
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=src.dtype, device=src.device)
    timesteps = sampler.timesteps(schedule.num_steps)
    # a partial start noises the source itself: for a residual model, a zero residual
    start = model.diffused(model.source_centre(src), src)
    x = noise if sampler.strength >= 1.0 else \
        NoiseSchedule.q_sample(start, noise, ab[timesteps[0]])
    sites = torch.full((n,), int(site), dtype=torch.long, device=src.device)
    guided = sampler.source_guidance > 0 and source_site is not None and source_site != site
    away = torch.full_like(sites, int(source_site)) if guided else None
    x0 = x
    for i, t in enumerate(timesteps):
        tt = torch.full((n,), t, dtype=torch.long, device=src.device)
        out = model(x, tt, sites, cond, src)
        if guided:
            out = away_from(out, model(x, tt, away, cond, src), sampler.source_guidance)
        x0, eps = NoiseSchedule.x0_eps_from(config.prediction, out, x, ab[t])
        if i + 1 < len(timesteps):
            x = ddim_step(x0, eps, ab[timesteps[i + 1]], eta=sampler.eta, ab_t=ab[t],
                          noise=None if sampler.eta == 0 else torch.randn(
                              x.shape, generator=generator, dtype=x.dtype).to(x.device))
    return model.image(x0, src)
