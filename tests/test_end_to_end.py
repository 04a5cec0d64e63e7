"""The participant level end to end on tiny synthetic heads (real ANTs + nipype)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np

from harmonize_bids.cli.run import main

EXPECTED = {
    "desc-preproc_T1w.nii.gz", "desc-preproc_T1w.json", "desc-brain_mask.nii.gz",
    "desc-brain_mask.json", "from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
    "from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json",
    "from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
    "from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.json",
    "space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
    "space-MNI152NLin2009aSym_desc-preproc_T1w.json",
    "space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
    "space-MNI152NLin2009aSym_desc-brain_mask.json",
}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file; ANTs .h5 transforms carry HDF5 timestamps, so only their size."""
    return {str(p.relative_to(root)): str(p.stat().st_size) if p.suffix == ".h5"
            else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_succeeds_with_all_outputs(sloppy_run):
    assert sloppy_run["code"] == 0
    out = sloppy_run["out"]
    for sub in ("01", "02", "03"):
        names = {p.name.removeprefix(f"sub-{sub}_") for p in (out / f"sub-{sub}" / "anat").iterdir()}
        assert names == EXPECTED
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert "random_seed = 7" in (sloppy_run["work"] / "config.toml").read_text()


def test_no_ants_temporaries_outside_work_dir(sloppy_run):
    # antspyx default outprefix is mktemp(): transforms would be left in the temp dir
    xfms = list(sloppy_run["work"].rglob("reg_*Composite.h5"))
    assert len(xfms) >= 6  # two registrations x three subjects, inside the work dir


def test_sidecars_record_site_sources_and_seed(sloppy_run):
    anat = sloppy_run["out"] / "sub-02" / "anat"
    mask = json.loads((anat / "sub-02_desc-brain_mask.json").read_text())
    assert mask["Type"] == "Brain" and mask["Site"] == "siteB"
    std = json.loads((anat / "sub-02_space-MNI152NLin2009aSym_desc-preproc_T1w.json").read_text())
    assert std["RandomSeed"] == 7 and std["SkullStripped"] is True
    assert std["IntensityNormalization"]["Divisor"] > 0
    pre = json.loads((anat / "sub-02_desc-preproc_T1w.json").read_text())
    assert pre["Sources"] == ["bids:raw:sub-02/anat/sub-02_T1w.nii.gz",
                              "bids::sub-02/anat/sub-02_desc-brain_mask.nii.gz"]


def test_masks_match_truth_and_brains_land_on_template(sloppy_run):
    from harmonize_bids.templates import get_template

    out, bids = sloppy_run["out"], sloppy_run["bids"]
    mni = nb.load(get_template("mni_brain")).get_fdata() > 0
    for sub in ("01", "02", "03"):
        mask_img = nb.load(out / f"sub-{sub}/anat/sub-{sub}_desc-brain_mask.nii.gz")
        truth_img = nb.as_closest_canonical(nb.load(
            bids / f"derivatives/synthetic-truth/sub-{sub}/anat/sub-{sub}_desc-brain_mask.nii.gz"))
        assert np.allclose(mask_img.affine, truth_img.affine, atol=1e-3)
        assert _dice(np.asarray(mask_img.dataobj) > 0, np.asarray(truth_img.dataobj) > 0) > 0.85
        std_mask = nb.load(out / f"sub-{sub}/anat/sub-{sub}_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz")
        assert std_mask.shape == mni.shape
        assert _dice(np.asarray(std_mask.dataobj) > 0, mni) > 0.8


def test_outputs_pass_bids_validator_and_pybids(sloppy_run):
    from bids.layout import BIDSLayout

    exe = shutil.which("bids-validator-deno")
    proc = subprocess.run([exe, "--format", "json", str(sloppy_run["out"])],
                          capture_output=True, text=True)
    report = json.loads(proc.stdout)
    errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
    assert errors == [], errors
    layout = BIDSLayout(sloppy_run["out"], validate=False, is_derivative=True)
    masks = layout.get(suffix="mask", desc="brain", space=None, extension=".nii.gz")
    assert len(masks) == 3


def test_rerun_reuses_work_dir_and_reproduces(sloppy_run, tmp_path):
    """Same seed, one thread, fresh work dir => identical outputs; a rerun on the old
    work dir recomputes nothing."""
    out2 = tmp_path / "out2"
    code = main([str(sloppy_run["bids"]), str(out2), "participant", "--sloppy",
                 "-w", str(tmp_path / "work2"), "--participant-label", "01",
                 "--random-seed", "7", "--nprocs", "2", "--omp-nthreads", "1",
                 "--skip-bids-validation"])
    assert code == 0
    ref = {k: v for k, v in _tree_digest(sloppy_run["out"]).items() if k.startswith("sub-01")}
    assert {k: v for k, v in _tree_digest(out2).items() if k.startswith("sub-01")} == ref

    # rerun on the first work dir: nothing is recomputed (registration results untouched)
    xfm = next(sloppy_run["work"].rglob("sub_01_wf/**/reg_brain/reg_Composite.h5"))
    mtime = xfm.stat().st_mtime_ns
    code = main([str(sloppy_run["bids"]), str(sloppy_run["out"]), "participant", "--sloppy",
                 "-w", str(sloppy_run["work"]), "--participant-label", "01",
                 "--random-seed", "7", "--nprocs", "2", "--omp-nthreads", "1",
                 "--skip-bids-validation"])
    assert code == 0 and xfm.stat().st_mtime_ns == mtime


def test_input_dataset_is_not_modified(sloppy_run):
    bids = sloppy_run["bids"]
    names = sorted(str(p.relative_to(bids)) for p in bids.rglob("*"))
    assert not any("harmonize" in n or n.startswith("work") for n in names)


def test_bad_subject_is_reported_and_others_finish(synthetic_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(synthetic_bids, ds)
    bad = ds / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    img = nb.load(bad)
    nb.Nifti1Image(np.zeros(img.shape, np.int16), img.affine).to_filename(bad)  # constant image
    code = main([str(ds), str(tmp_path / "out"), "participant", "--sloppy", "-w",
                 str(tmp_path / "work"), "--nprocs", "2", "--skip-bids-validation",
                 "--participant-label", "01", "02"])
    assert code == 1
    assert (tmp_path / "out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz").exists()
    assert not (tmp_path / "out/sub-02").exists()
    assert list((tmp_path / "work" / "crash").glob("crash-*"))


def test_exit_codes_of_the_whole_app(synthetic_bids, tmp_path):
    common = [str(synthetic_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w")]
    assert main(common + ["--participant-label", "99", "--skip-bids-validation"]) == 66
    filt = tmp_path / "f.json"
    filt.write_text(json.dumps({"t1w": {"acquisition": "none"}}))
    assert main(common + ["--bids-filter-file", str(filt), "--skip-bids-validation"]) == 18
    assert main(common + ["--target-site", "siteA", "--skip-bids-validation",
                          "--model", str(tmp_path / "missing.safetensors")]) == 66
    assert not (tmp_path / "out" / "sub-01").exists()


def test_nothing_is_left_in_the_system_temp_dir(synthetic_bids, tmp_path, monkeypatch):
    """antspyx's default mktemp() outputs would land in the temp dir: all must stay in -w."""
    import tempfile

    scratch = tmp_path / "system_tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # inherited by nipype's workers
    monkeypatch.setenv("TMPDIR", str(scratch))
    code = main([str(synthetic_bids), str(tmp_path / "out"), "participant", "--sloppy",
                 "-w", str(tmp_path / "work"), "--participant-label", "03", "--nprocs", "2",
                 "--skip-bids-validation"])
    assert code == 0
    assert list(scratch.iterdir()) == []


def test_use_plugin_linear_runs_every_step_in_process(synthetic_bids, tmp_path):
    """A nipype plugin other than MultiProc, chosen by --use-plugin, runs the workflow."""
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    out = tmp_path / "out"
    code = main([str(synthetic_bids), str(out), "participant", "--sloppy",
                 "--participant-label", "01", "-w", str(tmp_path / "work"),
                 "--omp-nthreads", "1", "--use-plugin", str(plugin),
                 "--skip-bids-validation"])
    assert code == 0
    assert list(out.glob("sub-01/anat/*desc-preproc_T1w.nii.gz"))
    assert not list(out.glob("sub-02"))


def test_one_html_report_per_participant(sloppy_run):
    reports = sorted(p.name for p in sloppy_run["out"].glob("*.html"))
    assert reports == ["sub-01.html", "sub-02.html", "sub-03.html"]
    page = (sloppy_run["out"] / "sub-01.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # mask + registration (no harmonization)
    assert "Brain mask" in page and "siteA" in page


def test_kill_9_mid_run_then_resume_gives_identical_outputs(sloppy_run, tmp_path):
    """SIGKILL the whole run (main process and workers) once preprocessing has
    started: no partial file under a final name; a rerun on the same work dir
    finishes and its outputs equal an uninterrupted run's."""
    import os
    import signal
    import sys
    import time

    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, "-m", "harmonize_bids.cli.run", str(sloppy_run["bids"]), str(out),
           "participant", "--sloppy", "-w", str(work), "--participant-label", "01",
           "--random-seed", "7", "--nprocs", "2", "--omp-nthreads", "1",
           "--skip-bids-validation"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(work.rglob("result_n4.pklz")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # nothing half-written under a final name (temporary names start with a dot)
    for f in out.rglob("*"):
        if f.is_file() and not f.name.startswith("."):
            if f.name.endswith(".json"):
                json.loads(f.read_text())
            elif f.name.endswith(".nii.gz"):
                nb.load(f).get_fdata()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    ref = {k: v for k, v in _tree_digest(sloppy_run["out"]).items() if k.startswith("sub-01")}
    assert {k: v for k, v in _tree_digest(out).items() if k.startswith("sub-01")} == ref


def test_stop_on_first_crash_stops_the_run(synthetic_bids, tmp_path):
    """With --stop-on-first-crash a bad image ends the run (exit 1) without finishing
    the others; the bad image fails in its first step, before any other can finish."""
    ds = tmp_path / "ds"
    shutil.copytree(synthetic_bids, ds)
    bad = ds / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = nb.load(bad)
    nb.Nifti1Image(np.zeros(img.shape, np.int16), img.affine).to_filename(bad)
    code = main([str(ds), str(tmp_path / "out"), "participant", "--sloppy", "-w",
                 str(tmp_path / "work"), "--nprocs", "1", "--skip-bids-validation",
                 "--stop-on-first-crash"])
    assert code == 1
    assert not list((tmp_path / "out").glob("sub-*/anat/*space-MNI152NLin2009aSym_desc-preproc*"))


def test_t1w_with_a_wrong_extension_is_not_selected(synthetic_bids, tmp_path):
    """A 'T1w' that is not NIfTI (here .mgz) is never picked up: nothing selected, 18."""
    ds = tmp_path / "ds"
    shutil.copytree(synthetic_bids, ds)
    for f in ds.glob("sub-*/anat/*_T1w.nii.gz"):
        f.rename(f.with_name(f.name.replace(".nii.gz", ".mgz")))
    code = main([str(ds), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    assert code == 18
    assert not list((tmp_path / "out").rglob("*.nii.gz"))
