"""Start training from an earlier model's weights, even when the new model reads more inputs.

When a model gains input channels (e.g. ``ModelConfig.source_input`` adds the
source stack to the denoiser's input), the earlier weights still fit everywhere
but in the first convolution.  There the earlier kernel is copied into the
channels it already had and the new channels start at zero, so the widened
model computes exactly what the earlier one did and training only has to learn
how to use the new inputs (the same surgery InstructPix2Pix applied to Stable
Diffusion's first layer).

A model can also start from one trained on *other sites* (the ``group`` level
fine-tunes the bundled model on a dataset's sites): everything but the per-site
rows is shared, and each new site's rows start as a copy of a *donor* site's,
the same-named site when the earlier model knows it, else the site whose tissue
intensities look most alike (:func:`site_donors`, :func:`with_sites`).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
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


#: why a site's donor was chosen (:func:`donor_choices`)
SAME_SITE = "same site"
NEAREST = "nearest tissue landmarks"
FIRST_KNOWN = "first known site (no tissue landmarks to choose by)"


def donor_choices(known: Mapping[str, Sequence[float]],
                  new: Mapping[str, Sequence[float] | None],
                  known_sites: Sequence[str]) -> dict[str, tuple[str, str]]:
    """For each new site, ``(donor, why)``: the known site whose learned rows it starts
    from, and on what basis (:data:`SAME_SITE`, :data:`NEAREST`, :data:`FIRST_KNOWN`).

    ``known`` and ``new`` map sites to their tissue intensity landmarks (two vectors
    of different schemes are compared by their tissue medians).  A new site the earlier model knows by name
    keeps its own rows; any other takes the known site whose landmarks, in units of
    each vector's white-matter median, are nearest (Euclidean), so a new 1.5 T
    site starts from a 1.5 T site.  Without landmarks on either side the first
    known site is used.

    >>> donor_choices({"a": [.1, .2, .5, .9, 1.], "b": [.1, .4, .7, .9, 1.]},
    ...               {"b": None, "x": [.2, .8, 1.4, 1.8, 2.]}, ["a", "b"])["x"]
    ('b', 'nearest tissue landmarks')
    >>> donor_choices({}, {"x": [.2, .8, 1.4, 1.8, 2.]}, ["a", "b"])["x"][1]
    'first known site (no tissue landmarks to choose by)'
    """
    from harmonize_bids.site_intensity import coarsen, in_wm_units

    def distance(a: Sequence[float], b: Sequence[float]) -> float:
        if len(a) != len(b):
            a, b = coarsen(a, 1), coarsen(b, 1)
        return float(np.linalg.norm(in_wm_units(a) - in_wm_units(b)))

    if not known_sites:
        raise ValueError("the earlier model knows no sites")
    candidates = {site: values for site, values in known.items() if site in known_sites}
    choices = {}
    for site, values in new.items():
        if site in known_sites:
            choices[site] = (site, SAME_SITE)
        elif values is None or not candidates:
            choices[site] = (known_sites[0], FIRST_KNOWN)
        else:
            choices[site] = (min(candidates, key=lambda k: distance(candidates[k], values)),
                             NEAREST)
    return choices


def site_donors(known: Mapping[str, Sequence[float]], new: Mapping[str, Sequence[float] | None],
                known_sites: Sequence[str]) -> dict[str, str]:
    """For each new site, the known site whose learned rows it starts from
    (:func:`donor_choices` without the reasons).

    >>> site_donors({"a": [.1, .2, .5, .9, 1.], "b": [.1, .4, .7, .9, 1.]},
    ...             {"b": None, "x": [.2, .8, 1.4, 1.8, 2.]}, ["a", "b"])
    {'b': 'b', 'x': 'b'}
    """
    return {site: donor for site, (donor, _) in donor_choices(known, new, known_sites).items()}


def with_sites(weights: Mapping[str, torch.Tensor], known_sites: Sequence[str],
               donors: Mapping[str, str], per_site: Iterable[str]) -> dict[str, torch.Tensor]:
    """``weights`` with every per-site tensor (one row per site along dim 0, named in
    ``per_site``) rebuilt for the sites of ``donors``, in its order: each row is a copy
    of its donor's row.

    >>> w = {"emb": torch.tensor([[1.], [2.]]), "conv": torch.zeros(1)}
    >>> with_sites(w, ["a", "b"], {"x": "b", "a": "a", "y": "b"}, ["emb"])["emb"].tolist()
    [[2.0], [1.0], [2.0]]
    """
    rows = [list(known_sites).index(donor) for donor in donors.values()]
    out = dict(weights)
    for name in per_site:
        out[name] = weights[name][rows].clone()
    return out
