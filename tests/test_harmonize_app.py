"""The model inside the app: --target-site/--model, sidecars, --model-info, errors."""
from __future__ import annotations

import json
import logging
import subprocess

import nibabel as nb
import numpy as np
import pytest
import torch

from harmonize_bids.cli.run import main
from harmonize_bids.diffusion.checkpoint import bundled_model, load_model, save_model
from harmonize_bids.diffusion.model import HarmonizationModel, ModelConfig


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(sites=("siteA", "siteB"), base_channels=8, channel_mults=(1, 2),
                         attention_levels=(), encoder_channels=8, cond_channels=2, voxel_mm=4.0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(HarmonizationModel(config), path, card={"note": "random weights, tests"})


def test_participant_with_target_site_writes_harmonized_outputs(synthetic_bids, tiny_model_file,
                                                                tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="harmonize_bids")
    out = tmp_path / "out"
    code = main([str(synthetic_bids), str(out), "participant", "--sloppy",
                 "-w", str(tmp_path / "work"), "--participant-label", "01", "02",
                 "--target-site", "siteA", "--model", str(tiny_model_file), "--steps", "2",
                 "--stop-at", "0.25", "--samples", "2", "--nprocs", "2", "--omp-nthreads", "1",
                 "--skip-bids-validation",
                 "--random-seed", "5", "--device", "cpu"])
    assert code == 0
    anat = out / "sub-02" / "anat"
    std = anat / "sub-02_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz"
    native = anat / "sub-02_desc-harmonized_T1w.nii.gz"
    side = json.loads((anat / "sub-02_desc-harmonized_T1w.json").read_text())
    assert side["TargetSite"] == "siteA" and side["SourceSite"] == "siteB"
    assert side["HarmonizationApplied"] is True
    assert side["Steps"] == 2 and side["RandomSeed"] == 5 and side["Device"] == "cpu"
    from harmonize_bids.diffusion.checkpoint import read_config
    last = round(0.25 * (read_config(tiny_model_file).num_timesteps - 1))
    assert side["Timesteps"] == [read_config(tiny_model_file).num_timesteps - 1, last]
    assert side["StopAt"] == 0.25 and side["Strength"] == 1.0 and side["Samples"] == 2
    assert len(side["ModelSHA256"]) == 64
    assert side["TissueIntensitiesMatched"] is False  # a model without site landmarks
    assert side["SliceLevelsEqualized"] is True  # the default
    # harmonized images live on the grids of their spaces and only inside the brain
    pre = nb.load(anat / "sub-02_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz")
    assert nb.load(std).shape == pre.shape
    mask = np.asarray(nb.load(anat / "sub-02_desc-brain_mask.nii.gz").dataobj) > 0
    data = np.asarray(nb.load(native).dataobj)
    assert data.shape == mask.shape and np.all(data[~mask] == 0) and data[mask].std() > 0
    # sub-01 was acquired at the target site: its brain is the reference, kept unchanged
    anat1 = out / "sub-01" / "anat"
    side1 = json.loads((anat1 / "sub-01_desc-harmonized_T1w.json").read_text())
    assert side1["SourceSite"] == side1["TargetSite"] == "siteA"
    assert side1["HarmonizationApplied"] is False and "ModelSHA256" not in side1
    kept = np.asarray(nb.load(
        anat1 / "sub-01_space-MNI152NLin2009aSym_desc-harmonized_T1w.nii.gz").dataobj)
    pre1 = np.asarray(nb.load(
        anat1 / "sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz").dataobj)
    inside = kept != 0
    assert inside.sum() > 100
    np.testing.assert_allclose(kept[inside], pre1[inside], rtol=1e-5)
    # the log names the kept image and points pooled studies to --harmonize-target-site
    kept_line = next(r.getMessage() for r in caplog.records
                     if "written unchanged as its reference" in r.getMessage())
    assert "sub-01" in kept_line and "sub-02" not in kept_line
    assert "pooled over all sites" in kept_line and "--harmonize-target-site" in kept_line


def test_harmonize_node_keeps_a_target_site_brain_without_the_model(tiny_model_file,
                                                                    tmp_path, monkeypatch):
    """keep_source: the brain (masked, negatives clipped) is written unchanged, the
    sidecar says no harmonization was applied, and the model never runs."""
    import harmonize_bids.interfaces.harmonize as harmonize_module
    from harmonize_bids.interfaces.harmonize import Harmonize

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not run on a kept brain")

    monkeypatch.setattr(harmonize_module, "harmonize_std_image", no_model)
    rng = np.random.default_rng(0)
    data = rng.normal(1.0, 0.5, (10, 12, 8)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint8)
    mask[2:8, 3:9, 2:6] = 1
    nb.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "std.nii.gz")
    nb.Nifti1Image(mask, np.eye(4)).to_filename(tmp_path / "mask.nii.gz")
    node = Harmonize(in_file=str(tmp_path / "std.nii.gz"), mask_file=str(tmp_path / "mask.nii.gz"),
                     model_file=str(tiny_model_file), target_site="siteA", keep_source=True)
    monkeypatch.chdir(tmp_path)
    result = node.run()
    out = np.asarray(nb.load(result.outputs.out_file).dataobj)
    np.testing.assert_array_equal(out, np.where(mask > 0, np.clip(data, 0, None), 0))
    meta = result.outputs.metadata
    assert meta["TargetSite"] == "siteA" and meta["HarmonizationApplied"] is False
    assert "ModelSHA256" not in meta and "Steps" not in meta


def test_unknown_target_site_lists_known_sites(synthetic_bids, tiny_model_file, tmp_path, caplog):
    code = main([str(synthetic_bids), str(tmp_path / "out"), "participant",
                 "-w", str(tmp_path / "w"), "--target-site", "mars", "--model",
                 str(tiny_model_file), "--skip-bids-validation"])
    assert code == 64
    assert "siteA, siteB" in caplog.text


def test_match_intensities_without_landmarks_is_refused_early(synthetic_bids, tiny_model_file,
                                                              tmp_path, caplog):
    code = main([str(synthetic_bids), str(tmp_path / "out"), "participant",
                 "-w", str(tmp_path / "w"), "--target-site", "siteA", "--model",
                 str(tiny_model_file), "--skip-bids-validation", "--match-intensities"])
    assert code == 64
    assert "no tissue intensity landmarks for 'siteA'" in caplog.text
    assert not (tmp_path / "out" / "sub-01").exists()
    assert not (tmp_path / "out" / "sub-01").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is usable here")
@pytest.mark.parametrize("level", ["participant", "group"])
def test_device_cuda_without_a_gpu_is_refused_up_front(synthetic_bids, tiny_model_file,
                                                        tmp_path, caplog, level):
    """Not after hours of preprocessing (participant) or of loading brains (group)."""
    extra = ["--target-site", "siteA", "--model", str(tiny_model_file)] \
        if level == "participant" else []
    code = main([str(synthetic_bids), str(tmp_path / "out"), level, "-w", str(tmp_path / "w"),
                 "--skip-bids-validation", "--device", "cuda", *extra])
    assert code == 64
    assert "no CUDA GPU is available: use --device cpu or auto" in caplog.text
    assert not (tmp_path / "out" / "sub-01").exists()


def test_model_errors(synthetic_bids, tmp_path):
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    common = [str(synthetic_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"),
              "--skip-bids-validation", "--target-site", "siteA"]
    assert main(common + ["--model", str(pickled)]) == 66
    # this version ships no bundled model: a clear usage error
    from harmonize_bids.diffusion.checkpoint import bundled_model
    if bundled_model() is None:
        assert main(common) == 64


def test_model_info(tiny_model_file, capsys):
    assert main(["--model-info", "--model", str(tiny_model_file)]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["sites"] == ["siteA", "siteB"] and card["note"] == "random weights, tests"
    assert card["config"]["voxel_mm"] == 4.0


def test_group_level_trains_resumes_and_the_model_harmonizes(sloppy_run, tmp_path):
    """group on the sloppy participant outputs: model + card + loss figure; resume; use it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sloppy_run["out"], out)
    work = tmp_path / "work"
    common = [str(sloppy_run["bids"]), str(out), "group", "-w", str(work),
              "--batch-size", "2", "--patch-size", "32", "--shifted-copies", "1",
              "--skip-bids-validation", "--nprocs", "2", "--random-seed", "3", "--from-scratch"]
    # --landmarks-only: each site's tissue landmarks over its brains, no training
    assert main(common + ["--landmarks-only"]) == 0
    sites = json.loads((out / "site_landmarks.json").read_text())["Sites"]
    assert sorted(sites) == ["siteA", "siteB", "siteC"]
    assert all(v["Images"] == 1 for v in sites.values())
    assert not (out / "models").exists()
    assert main(common + ["--train-steps", "4", "--learning-rate", "1e-3",
                          "--warmup-steps", "2"]) == 0
    model = out / "models" / "harmonize_bids_model.safetensors"
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["sites"] == ["siteA", "siteB", "siteC"]
    assert card["training"]["steps"] == 4 and card["training_data"]["n_images"] == 3
    assert card["training"]["learning_rate"] == 1e-3
    assert card["training"]["warmup_steps"] == 2
    assert card["training"]["initialized_from"] is None  # --from-scratch
    # each site's tissue intensity landmarks, from its participants' preprocessed brains
    assert sorted(card["config"]["site_landmarks"]) == ["siteA", "siteB", "siteC"]
    assert (out / "models" / "harmonize_bids_model_loss.png").stat().st_size > 1000
    state = json.loads((work / "group_training" / "state.json").read_text())
    assert state["step"] == 4
    # the rate each step took: half of 1e-3, then 1e-3 from the warm-up's end on
    assert [h["lr"] for h in state["history"]] == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3])
    # more steps: resumes from 4 (history continues) instead of starting again
    assert main(common + ["--train-steps", "6"]) == 0
    state = json.loads((work / "group_training" / "state.json").read_text())
    assert state["step"] == 6 and [h["step"] for h in state["history"]] == list(range(1, 7))
    # the default (a fine-tune of the bundled model) cannot resume this new network's run,
    # and the refused run leaves the dataset's landmarks file alone
    landmarks_written = (out / "site_landmarks.json").stat().st_mtime_ns
    assert main([a for a in common if a != "--from-scratch"] + ["--train-steps", "8"]) == 64
    assert json.loads((work / "group_training" / "state.json").read_text())["step"] == 6
    assert (out / "site_landmarks.json").stat().st_mtime_ns == landmarks_written
    # the trained model plugs into the participant level
    code = main([str(sloppy_run["bids"]), str(out), "participant", "--sloppy", "-w",
                 str(tmp_path / "work2"), "--participant-label", "01", "--target-site", "siteC",
                 "--model", str(model), "--steps", "2", "--skip-bids-validation",
                 "--nprocs", "2"])
    assert code == 0
    assert (out / "sub-01/anat/sub-01_desc-harmonized_T1w.nii.gz").is_file()
    side = json.loads((out / "sub-01/anat/sub-01_desc-harmonized_T1w.json").read_text())
    # --match-intensities auto (the default): the finest scheme the group model stores;
    # the site landmarks file the group level wrote is read by default, but one scan per
    # site is too few to tell where a scan stands or to stand for the target: the plain
    # match onto the model's landmarks
    assert side["TissueIntensitiesMatched"] is True
    assert side["TissueIntensityLandmarks"] == "vigintiles"
    assert side["TissueIntensitiesSubjectKept"] is False
    assert side["TissueIntensityReference"] == "model"
    # models/, reports and harmonized outputs together still pass the validator
    proc = subprocess.run([shutil.which("bids-validator-deno"), "--format", "json", str(out)],
                          capture_output=True, text=True)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    assert [i for i in issues if i.get("severity") == "error"] == []


def test_group_level_fine_tunes_the_bundled_model_by_default(sloppy_run, tmp_path):
    """Without --from-scratch the group model starts as the bundled one: its network and
    loss terms, and each dataset site's rows from one of the bundled model's sites."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(sloppy_run["out"], out)
    assert main([str(sloppy_run["bids"]), str(out), "group", "-w", str(tmp_path / "work"),
                 "--batch-size", "2", "--patch-size", "32", "--shifted-copies", "1",
                 "--train-steps", "2", "--skip-bids-validation", "--nprocs", "2"]) == 0
    model = out / "models" / "harmonize_bids_model.safetensors"
    card = json.loads(model.with_suffix(".json").read_text())
    bundled_file = bundled_model()
    bundled, bundled_card = load_model(bundled_file)
    start = card["training"]["initialized_from"]
    assert start["file"] == bundled_file.name and start["sites"] == list(bundled.config.sites)
    assert len(start["sha256"]) == 64
    assert card["training"]["total_steps_including_initialization"] == 2 + start["steps"] > 2
    assert sorted(start["site_donors"]) == card["sites"] == ["siteA", "siteB", "siteC"]
    assert set(start["site_donors"].values()) <= set(bundled.config.sites)
    assert card["training"]["output_consistency_weight"] == \
        bundled_card["training"]["output_consistency_weight"]
    assert card["config"]["source_input"] is True
    assert card["config"]["base_channels"] == bundled.config.base_channels
    # the weights derive from the bundled model's data (IXI: CC BY-SA 3.0): its credits stay
    assert card["licences"] == bundled_card["licences"] and "IXI" in card["licences"]
    assert start["training_data"] == bundled_card["training_data"]
    assert set(start["site_donor_basis"].values()) <= {"same site", "nearest tissue landmarks"}
    # two steps away from the bundled weights (EMA), far from a new network's
    group_model, _ = load_model(model)
    torch.testing.assert_close(group_model.encoder.state_dict(), bundled.encoder.state_dict(),
                               atol=5e-3, rtol=0)
    donor = bundled.config.site_index(start["site_donors"]["siteB"])
    torch.testing.assert_close(group_model.site_embedding.weight[1],
                               bundled.site_embedding.weight[donor], atol=5e-3, rtol=0)


def test_group_level_needs_participant_outputs(synthetic_bids, tmp_path):
    code = main([str(synthetic_bids), str(tmp_path / "empty_out"), "group", "-w",
                 str(tmp_path / "w"), "--train-steps", "2", "--skip-bids-validation"])
    assert code == 66


def test_a_bad_site_landmarks_file_is_refused_before_any_work(synthetic_bids, tiny_model_file,
                                                              tmp_path, caplog):
    """--keep-subject-intensities with a site landmarks file the group level did not
    write (or measured at another voxel size) stops before any preprocessing."""
    out = tmp_path / "out"
    bad = tmp_path / "sites.json"
    bad.write_text(json.dumps({"Sites": {}}))
    code = main([str(synthetic_bids), str(out), "participant", "-w", str(tmp_path / "w"),
                 "--target-site", "siteB", "--model", str(tiny_model_file),
                 "--keep-subject-intensities", "--site-landmarks", str(bad),
                 "--skip-bids-validation"])
    assert code == 66
    assert "not a site landmarks file" in caplog.text
    assert not list(out.glob("sub-*")) and not (tmp_path / "w" / "harmonize_bids_wf").exists()
