"""training.group on in-memory brains: what the group level does after loading them."""
from __future__ import annotations

import json

import numpy as np

from harmonize_bids.training.group import GroupOptions, fit_group_model
from toys import toy_labels


def toy_brain(contrast: tuple[float, float, float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A toy brain (CSF, GM, WM at ``contrast``, a little noise) and its mask."""
    labels = toy_labels(shape=(24, 24, 12)).labels
    brain = np.zeros(labels.shape, np.float32)
    for value, classes in zip(contrast, ((4, 43, 24), (3, 42), (2, 41))):
        brain[np.isin(labels, classes)] = value
    mask = brain > 0
    noise = np.random.default_rng(seed).normal(0, 0.02, brain.shape).astype(np.float32)
    return np.where(mask, brain + noise, 0).astype(np.float32), mask


def test_fit_group_model_leaves_its_inputs_alone_and_writes_the_model(tmp_path):
    """A second arm (benchmarks/group_fine_tune.py) must see the same images: the
    protocol-shifted copies are added to copies of the inputs, not to them."""
    volumes, masks = {}, {}
    for i, (site, contrast) in enumerate([("siteA", (0.2, 0.5, 0.9)),
                                          ("siteB", (0.3, 0.8, 0.6))]):
        brain, mask = toy_brain(contrast, i)
        volumes[f"sub-{i}"], masks[f"sub-{i}"] = {site: brain}, mask
    before = {sub: sorted(per_site) for sub, per_site in volumes.items()}
    options = GroupOptions(train_steps=1, batch_size=2, patch_size=16, base_channels=8,
                           shifted_copies=1, checkpoint_every=1, device="cpu")
    path = fit_group_model(volumes, masks, list(volumes), tmp_path / "models",
                           tmp_path / "work", options, log=lambda _: None)
    assert {sub: sorted(per_site) for sub, per_site in volumes.items()} == before
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sites"] == ["siteA", "siteB"] and card["training"]["steps"] == 1
    assert card["training"]["initialized_from"] is None
    assert card["training"]["total_steps_including_initialization"] == 1
    assert (tmp_path / "work" / "group_training" / "state.json").is_file()
