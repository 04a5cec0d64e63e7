"""training.group on in-memory brains: what the group level does after loading them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harmonize_bids.diffusion.checkpoint import bundled_model
from harmonize_bids.exceptions import UsageError
from harmonize_bids.training.group import (GroupOptions, check_same_start, fit_group_model,
                                           starting_model)
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
    assert "licences" not in card  # a new network owes no earlier data its credits
    record = tmp_path / "work" / "group_training" / "initialized_from.json"
    assert json.loads(record.read_text()) == {"from_scratch": True}


def test_a_single_site_dataset_is_named_in_a_warning(tmp_path):
    brain, mask = toy_brain((0.2, 0.5, 0.9), 0)
    messages: list[str] = []
    options = GroupOptions(train_steps=1, batch_size=2, patch_size=16, base_channels=8,
                           shifted_copies=1, checkpoint_every=1, device="cpu")
    fit_group_model({"sub-0": {"siteA": brain}}, {"sub-0": mask}, ["sub-0"], tmp_path / "m",
                    tmp_path / "w", options, log=messages.append)
    assert any(m.startswith("WARNING: every image is at one site (siteA)") for m in messages)


def test_fit_group_model_needs_shifted_copies(tmp_path):
    """Each participant is at one site: without shifted copies the model would only
    learn to copy its input."""
    brain, mask = toy_brain((0.2, 0.5, 0.9), 0)
    with pytest.raises(UsageError, match="at least 1"):
        fit_group_model({"sub-0": {"a": brain}}, {"sub-0": mask}, ["sub-0"], tmp_path / "m",
                        tmp_path / "w", GroupOptions(shifted_copies=0), log=lambda _: None)
    assert not (tmp_path / "m").exists() and not (tmp_path / "w").exists()


def test_a_training_resumes_only_from_the_weights_it_began_with(tmp_path):
    record = tmp_path / "group_training" / "initialized_from.json"
    record.parent.mkdir()
    check_same_start(record, {"sha256": "aa"}, resuming=False)
    assert json.loads(record.read_text()) == {"sha256": "aa"}
    check_same_start(record, {"sha256": "aa"}, resuming=True)  # same start: resumes
    with pytest.raises(UsageError, match="begun from other weights"):
        check_same_start(record, {"sha256": "bb"}, resuming=True)
    with pytest.raises(UsageError, match="begun from other weights"):
        check_same_start(record, {"from_scratch": True}, resuming=True)
    check_same_start(record, {"sha256": "bb"}, resuming=False, write=False)  # torchrun rank > 0
    assert json.loads(record.read_text()) == {"sha256": "aa"}
    check_same_start(record, {"sha256": "bb"}, resuming=False)  # nothing saved yet: starts over
    assert json.loads(record.read_text()) == {"sha256": "bb"}
    record.unlink()
    check_same_start(record, {"sha256": "cc"}, resuming=True)  # a checkpoint older than the record
    assert not record.exists()


@pytest.mark.skipif(bundled_model() is None, reason="no bundled model in this installation")
def test_a_site_without_landmarks_says_where_its_rows_come_from():
    """Known sites keep their rows, a new site with landmarks takes the nearest known
    site's, and one without any takes the first known site, with a warning."""
    messages: list[str] = []
    bundled = bundled_model()
    from harmonize_bids.diffusion.checkpoint import read_config

    known = read_config(bundled)
    ge = known.site_landmarks["ge15tspgr"]
    _, _, start = starting_model(bundled, ("ge15tspgr", "new15t", "nolandmarks"),
                                 {"ge15tspgr": ge, "new15t": [1.02 * v for v in ge]},
                                 log=messages.append)
    assert start["site_donors"] == {"ge15tspgr": "ge15tspgr", "new15t": "ge15tspgr",
                                    "nolandmarks": known.sites[0]}
    assert start["site_donor_basis"] == {
        "ge15tspgr": "same site", "new15t": "nearest tissue landmarks",
        "nolandmarks": "first known site (no tissue landmarks to choose by)"}
    assert any(m.startswith("WARNING: site 'nolandmarks'") for m in messages)
    assert not any("no model card" in m for m in messages)
