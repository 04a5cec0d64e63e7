"""A 2D UNet denoiser conditioned on timestep, site and an anatomical condition.

Shapes: ``x_t [N x 1 x H x W]``, ``cond [N x C_c x H x W]``, ``t [N]`` (original
timesteps, 0..T-1), ``site [N]`` (indices).  H and W must be divisible by
``2 ** (len(channel_mults) - 1)`` (the sampler pads).

With a ``region`` mask ``[N x 1 x H x W]`` (the brain), every normalization takes its
statistics inside the region only and attention attends to it only, so the output
inside the brain does not depend on how much empty background surrounds it (the
field of view; ``docs/model.md``, session 22).
"""
from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[N x dim]`` of (possibly fractional) timesteps ``[N]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class RegionGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics may be taken inside a region only.

    ``forward(x)`` is plain GroupNorm; ``forward(x, region)`` computes each group's mean
    and variance over the pixels where ``region [N x 1 x H x W]`` is true (over all
    pixels of a sample whose region is empty) and normalizes every pixel with them.
    Same parameters as :class:`torch.nn.GroupNorm`, so weights move between the two.
    """

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        if region is None:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.num_groups
        xg = x.float().reshape(n, g, c // g, h * w)
        m = region.reshape(n, 1, 1, h * w).to(xg.dtype)
        m = torch.where(m.sum(-1, keepdim=True) > 0, m, torch.ones_like(m))
        count = m.sum(-1, keepdim=True) * (c // g)
        mean = (xg * m).sum((-2, -1), keepdim=True) / count
        var = ((xg - mean) ** 2 * m).sum((-2, -1), keepdim=True) / count
        out = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(n, c, h, w)
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(x.dtype)


def _norm(channels: int) -> RegionGroupNorm:
    return RegionGroupNorm(min(8, channels), channels)


def region_pyramid(region: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``region`` at each resolution of the UNet (a pixel is in if any pixel it covers
    is; sizes as the stride-2 convolutions give them)."""
    out = [region.float()]
    for _ in range(levels - 1):
        out.append(F.max_pool2d(out[-1], 3, stride=2, padding=1))
    return [r > 0 for r in out]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with FiLM (scale, shift) from an embedding if given."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_ch), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2, self.conv2 = _norm(out_ch), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                region: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, region)))
        h = self.norm2(h, region)
        if self.film is not None and emb is not None:
            scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (low-resolution) feature map."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = self.norm(x, region).flatten(2).transpose(1, 2)
        ignore = None
        if region is not None:  # attend to the region only (to every pixel if it is empty)
            ignore = ~region.flatten(1)
            ignore = ignore & ~ignore.all(dim=1, keepdim=True)
        out, _ = self.attn(seq, seq, seq, key_padding_mask=ignore, need_weights=False)
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; one ResBlock stack per resolution.

    ``emb_dim=None`` builds an unconditioned UNet (used by the condition encoder).
    """

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 4), num_res_blocks: int = 1,
                 attention_levels: tuple[int, ...] = (), emb_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        chans = [base_channels * m for m in channel_mults]
        self.inp = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        ch = chans[0]
        for level, out_ch in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(ch, out_ch, emb_dim, dropout))
                ch = out_ch
            if level in attention_levels:
                blocks.append(Attention(ch))
            self.down.append(blocks)
            skips.append(ch)
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1)
                                   if level < len(chans) - 1 else nn.Identity())
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), Attention(ch),
                                  ResBlock(ch, ch, emb_dim, dropout)]) \
            if attention_levels else nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level in reversed(range(len(chans))):
            blocks = nn.ModuleList()
            blocks.append(ResBlock(ch + skips[level], chans[level], emb_dim, dropout))
            ch = chans[level]
            for _ in range(num_res_blocks - 1):
                blocks.append(ResBlock(ch, ch, emb_dim, dropout))
            if level in attention_levels:
                blocks.append(Attention(ch))
            self.up.append(blocks)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        self.levels = len(chans)
        #: recompute block activations in the backward pass instead of storing them
        #: (less memory for bigger batches/patches, more compute); training only
        self.gradient_checkpointing = False

    def _run(self, blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor | None,
             region: torch.Tensor | None) -> torch.Tensor:
        for block in blocks:
            args = (h, emb, region) if isinstance(block, ResBlock) else (h, region)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
        return h

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """``region``: normalize (and attend) inside it only (module docstring)."""
        regions = region_pyramid(region, self.levels) if region is not None \
            else [None] * self.levels
        h = self.inp(x)
        skips = []
        for level, (blocks, down) in enumerate(zip(self.down, self.downsample)):
            h = self._run(blocks, h, emb, regions[level])
            skips.append(h)
            h = down(h)
        h = self._run(self.mid, h, emb, regions[-1])
        for level, blocks in zip(reversed(range(self.levels)), self.up):
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self._run(blocks, torch.cat([h, skip], dim=1), emb, regions[level])
        norm, act, conv = self.out
        return conv(act(norm(h, regions[0])))
