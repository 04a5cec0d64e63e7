"""The anatomical condition encoder.

It maps the source slice and its neighbours (2.5D context, ``[N x (2k+1) x H x W]``)
to a few feature maps ``c [N x C_c x H x W]`` that must describe anatomy but
not the scanner.  Training makes it so (see ``training``): the same anatomy
seen through different protocols must give the same ``c`` (consistency), a
site classifier on ``c`` is fought through gradient reversal, and the
bottleneck (few channels, bounded by tanh, noised while training) keeps the
denoiser from copying the source contrast through it.
"""
from __future__ import annotations

import torch
from torch import nn

from harmonize_bids.diffusion.unet import UNet


class ConditionEncoder(nn.Module):
    """Small UNet (no time/site input) with a bounded, low-dimensional output."""

    def __init__(self, context_slices: int = 1, cond_channels: int = 4,
                 base_channels: int = 16, channel_mults: tuple[int, ...] = (1, 2, 4),
                 bottleneck_noise: float = 0.1):
        super().__init__()
        self.net = UNet(2 * context_slices + 1, cond_channels, base_channels, channel_mults)
        self.bottleneck_noise = bottleneck_noise

    def forward(self, source: torch.Tensor, generator: torch.Generator | None = None,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """``region``: normalize inside it only (:class:`~harmonize_bids.diffusion.unet.UNet`)."""
        c = torch.tanh(self.net(source, region=region))
        if self.training and self.bottleneck_noise > 0:
            noise = torch.randn(c.shape, generator=generator, dtype=c.dtype).to(c.device)
            c = c + self.bottleneck_noise * noise
        return c


class GradientReversal(torch.autograd.Function):
    """Identity forward, -lambda * gradient backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


class SiteClassifier(nn.Module):
    """Predicts the source site from the condition (adversary during training)."""

    def __init__(self, cond_channels: int, n_sites: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(cond_channels, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, n_sites))

    @property
    def head(self) -> nn.Linear:
        """The output layer: one row per site."""
        return self.net[-1]

    def forward(self, c: torch.Tensor, reverse: float = 0.0) -> torch.Tensor:
        if reverse:
            c = GradientReversal.apply(c, reverse)
        return self.net(c)
