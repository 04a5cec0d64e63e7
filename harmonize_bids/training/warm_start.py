"""Start training from an earlier model's weights, even when the new model reads more inputs.

When a model gains input channels (e.g. ``ModelConfig.source_input`` adds the
source stack to the denoiser's input), the earlier weights still fit everywhere
but in the first convolution.  There the earlier kernel is copied into the
channels it already had and the new channels start at zero, so the widened
model computes exactly what the earlier one did and training only has to learn
how to use the new inputs (the same surgery InstructPix2Pix applied to Stable
Diffusion's first layer).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn


def widen_input(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weight`` padded with zero input channels (dim 1) to the shape of ``like``.

    Raises ``ValueError`` unless only the input-channel dimension differs and grows.
    """
    same_elsewhere = (weight.ndim == like.ndim and weight.shape[0] == like.shape[0]
                      and weight.shape[2:] == like.shape[2:])
    if not same_elsewhere or weight.ndim < 2 or weight.shape[1] > like.shape[1]:
        raise ValueError(f"cannot widen a {tuple(weight.shape)} weight to {tuple(like.shape)}")
    out = torch.zeros_like(like)
    out[:, :weight.shape[1]] = weight.to(like.dtype)
    return out


def warm_start(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Load ``weights`` into ``model``; return the names of tensors that were widened.

    Every tensor of ``model`` must be in ``weights`` with the same shape, or be
    a convolution kernel whose input channels grew (:func:`widen_input`).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    unused = sorted(set(weights) - set(own))
    if missing or unused:
        raise ValueError(f"weights do not fit this model: missing {missing[:5]}, "
                         f"unexpected {unused[:5]}")
    widened = []
    for name, tensor in own.items():
        given = weights[name]
        if given.shape == tensor.shape:
            own[name] = given.to(tensor.dtype)
        else:
            own[name] = widen_input(given, tensor)
            widened.append(name)
    model.load_state_dict(own)
    return widened


def still_unseen(earlier_held_out: Iterable[str] | None, trained_on: Iterable[str]) -> list[str]:
    """What a fine-tuned model has never trained on: ``earlier_held_out`` minus ``trained_on``.

    A model warm-started from earlier weights has seen everything the earlier model
    saw, so only what the earlier model held out can still be held out, and only if
    the fine-tune did not train on it either.  ``None`` (an earlier model that lists
    nothing) gives ``[]``: nothing can be vouched for.
    """
    used = set(trained_on)
    return [name for name in (earlier_held_out or []) if name not in used]
