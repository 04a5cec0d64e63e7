"""Harmonize a whole volume slice by slice (axial slices, 2.5D context).

The volume is a brain in template space, intensity-normalized (99th
percentile of the brain = 1), zero outside the mask.  Slices are batched
(bounded by ``max_batch``); one initial noise image is shared by every slice.
Models trained with ``ModelConfig.fill_background`` see the brain continued
into the background (:mod:`harmonize_bids.utils.background`); the output is
masked either way.  Each slice's overall intensity level is the model's
estimate from that slice alone, so by default the volume is finished with
:func:`harmonize_bids.postprocess.level_slices`, which removes the
slice-to-slice level jitter (``docs/model.md``, "Decisions of session 17").
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from harmonize_bids.diffusion.model import HarmonizationModel
from harmonize_bids.diffusion.sampler import SamplerSettings, harmonize_slices
from harmonize_bids.postprocess import level_slices
from harmonize_bids.utils.background import fill_background


def slice_stacks(volume: np.ndarray, k: int) -> np.ndarray:
    """``[Z x (2k+1) x X x Y]``: every axial slice with k neighbours each side (edge-padded)."""
    padded = np.pad(volume, ((0, 0), (0, 0), (k, k)), mode="edge")
    z = volume.shape[2]
    return np.stack([np.moveaxis(padded[:, :, i:i + 2 * k + 1], -1, 0) for i in range(z)])


def batch_size_for(mem_mb: int | None, slice_shape: tuple[int, int], channels: int) -> int:
    """Slices per batch so activations stay well within ``mem_mb`` (rough, conservative)."""
    if not mem_mb:
        return 32
    per_slice_mb = slice_shape[0] * slice_shape[1] * channels * 4 * 40 / 1e6
    return int(max(1, min(64, (mem_mb * 0.5) // max(per_slice_mb, 1e-3))))


def harmonize_volume(model: HarmonizationModel, volume: np.ndarray, mask: np.ndarray,
                     site: int, sampler: SamplerSettings = SamplerSettings(), *, seed: int = 0,
                     device: str = "cpu", max_batch: int = 32, level: bool = True,
                     progress: Callable[[int, int], None] | None = None,
                     source_site: int | None = None) -> np.ndarray:
    """Harmonized copy of ``volume`` (same shape, zero outside ``mask``).

    ``source_site``: the model's site the guidance of ``sampler.source_guidance``
    pushes away from (see :func:`~harmonize_bids.diffusion.sampler.harmonize_slices`).

    ``level``: remove the slice-to-slice jumps in intensity level
    (:func:`~harmonize_bids.postprocess.level_slices`).
    """
    k = model.config.context_slices
    mask = mask > 0
    brain = np.where(mask, volume, 0).astype(np.float32)
    # what the model was trained to see outside the brain (zero, or the brain continued)
    stacks = slice_stacks(fill_background(volume, mask, model.config.fill_background), k)
    has_brain = np.nonzero(mask.sum(axis=(0, 1)) > 0)[0]
    out = np.zeros(volume.shape, np.float32)
    multiple = model.config.multiple
    h, w = volume.shape[:2]
    ph, pw = h + (-h) % multiple, w + (-w) % multiple
    generator = torch.Generator().manual_seed(int(seed))
    # one initial noise per chain, shared by every slice of the volume
    noise = torch.randn((sampler.samples, 1, ph, pw), generator=generator)
    model = model.to(device)
    done = 0
    for start in range(0, len(has_brain), max_batch):
        idx = has_brain[start:start + max_batch]
        src = torch.from_numpy(stacks[idx]).to(device)
        res = harmonize_slices(model, src, site, sampler, noise=noise.to(device),
                               source_site=source_site)
        out[:, :, idx] = np.moveaxis(res[:, 0].cpu().numpy(), 0, -1)
        done += len(idx)
        if progress:
            progress(done, len(has_brain))
    out = np.where(mask, np.clip(out, 0, None), 0).astype(np.float32)
    return level_slices(out, brain, mask) if level else out
