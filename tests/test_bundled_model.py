"""The model shipped in the package and the demo that uses it."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from harmonize_bids.cli.run import main
from harmonize_bids.diffusion.checkpoint import bundled_model, file_sha256, load_model
from harmonize_bids.simulate.protocols import PROTOCOLS


@pytest.fixture(scope="module")
def bundled():
    path = bundled_model()
    assert path is not None, "the package must ship its default model"
    return path


def test_bundled_model_loads_and_its_card_is_complete(bundled):
    model, card = load_model(bundled)
    sites = list(model.config.sites)
    assert "ixi-hh" in sites
    simulated = [s for s in sites if s != "ixi-hh"]
    assert simulated and all(s in PROTOCOLS for s in simulated)  # simulate --protocols SITE
    assert bundled.stat().st_size < 50 * 2**20
    assert "CC BY-SA 3.0" in card["licences"]["IXI"] and "IXI" in card["licences"]["IXI"]
    training = card["training"]  # a fine-tune counts the steps of the weights it started from
    assert training.get("total_steps_including_initialization", training["steps"]) > 1000
    assert card["command"].startswith("python scripts/train_default_model.py")
    assert card["training_data"]["held_out_label_maps"]
    assert card["training_data"]["held_out_ixi_participants"]  # track B of the benchmark
    # the card describes the very file beside it (not a renamed copy of another one)
    assert card["weights"] == bundled.name and card["sha256"] == file_sha256(bundled)


def test_bundled_card_names_results_files_that_exist(bundled):
    """The card's ``metrics`` point users to benchmark tables of this very model."""
    _, card = load_model(bundled)
    root = Path(__file__).resolve().parents[1]
    assert card["metrics"]
    assert [m for m in card["metrics"] if not (root / m).is_file()] == []


def test_model_info_without_model_prints_the_bundled_card(bundled, capsys):
    assert main(["--model-info"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert "ixi-hh" in card["sites"] and card["sha256"]


def test_demo_harmonizes_and_scores_against_the_truth(tmp_path, capsys):
    """The README's main job, small: one head under two protocols, harmonized with the
    bundled model to siemens3tmprage, scored against the truth."""
    from harmonize_bids.cli.demo import main as demo

    code = demo([str(tmp_path / "demo"), "--sources", "clinical15tthick", "--resolution", "3",
                 "--steps", "2", "--sloppy", "--nprocs", "2"])
    assert code == 0
    out = tmp_path / "demo" / "derivatives"
    harmonized = sorted(out.glob("sub-*/anat/*_desc-harmonized_T1w.nii.gz"))
    assert len(harmonized) == 4  # 2 images x (native + template space)
    data = np.asarray(nb.load(harmonized[0]).dataobj)
    assert np.isfinite(data).all() and data.max() > 0
    assert sorted(p.name for p in out.glob("*.html")) == ["sub-a01s01.html", "sub-a01s02.html"]
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines()
               if line.startswith("| harmonize_bids | clinical15tthick → siemens3tmprage"))
    assert not row.rstrip(" |").endswith("n/a")  # the rescan ceiling is reported
