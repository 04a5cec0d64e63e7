"""Skip sampling: respaced deterministic DDIM over a stack of slices.

Same inputs, settings and generator seed give the same output.  One noise
image is shared by all slices of a volume (``shared_noise``), so neighbouring
slices start from the same point and stay consistent.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from harmonize_bids.diffusion.model import HarmonizationModel
from harmonize_bids.diffusion.schedule import NoiseSchedule, ddim_step, respace


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)


@torch.no_grad()
def harmonize_slices(model: HarmonizationModel, source: torch.Tensor, site: int, *,
                     steps: int = 10, strength: float = 1.0, eta: float = 0.0,
                     generator: torch.Generator | None = None, shared_noise: bool = True,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Harmonize source slices ``[N x (2k+1) x H x W]`` to ``site``; return ``[N x 1 x H x W]``.

    ``steps`` is the number of network evaluations (S << T).  ``strength`` < 1
    starts from the source slice noised to t = strength (T-1) instead of pure
    noise: fewer noise levels to cross, more of the source kept.
    """
    model.eval()
    config = model.config
    k = config.context_slices
    src, (h, w) = _pad_to(source, config.multiple)
    n = src.shape[0]
    schedule: NoiseSchedule = model.schedule()
    ab = torch.as_tensor(schedule.alphas_cumprod, dtype=src.dtype, device=src.device)
    timesteps = respace(schedule.num_steps, steps, strength)
    if noise is None:
        shape = (1 if shared_noise else n, 1, *src.shape[-2:])
        noise = torch.randn(shape, generator=generator, dtype=src.dtype, device="cpu").to(src.device)
    noise = noise.expand(n, 1, *src.shape[-2:])
    cond = model.encode(src)
    x = noise if strength >= 1.0 else NoiseSchedule.q_sample(src[:, k:k + 1], noise, ab[timesteps[0]])
    sites = torch.full((n,), int(site), dtype=torch.long, device=src.device)
    x0 = x
    for i, t in enumerate(timesteps):
        tt = torch.full((n,), t, dtype=torch.long, device=src.device)
        out = model(x, tt, sites, cond)
        x0, eps = NoiseSchedule.x0_eps_from(config.prediction, out, x, ab[t])
        if i + 1 < len(timesteps):
            x = ddim_step(x0, eps, ab[timesteps[i + 1]], eta=eta, ab_t=ab[t],
                          noise=None if eta == 0 else torch.randn(
                              x.shape, generator=generator, dtype=x.dtype).to(x.device))
    return x0[..., :h, :w]
