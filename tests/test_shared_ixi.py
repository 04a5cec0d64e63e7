"""Real heads: two IXI Hammersmith scans (../shared/data) through the default pipeline.

Skipped when the shared data are absent (e.g. on a user's machine).
"""
from __future__ import annotations

import json
import shutil

import nibabel as nb
import numpy as np
import pytest

from harmonize_bids.cli.run import main

pytestmark = pytest.mark.shared_data


def test_default_pipeline_on_real_ixi_heads(shared_data, tmp_path):
    from harmonize_bids.templates import get_template

    ixi = shared_data / "ixi-hh-t1w-2mm"
    bids = tmp_path / "ixi"
    (bids / "sub-IXI014" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "IXI HH subset", "BIDSVersion": "1.10.0", "License": "CC BY-SA 3.0"}))
    (bids / "README").write_text("Two IXI Hammersmith T1w scans (CC BY-SA 3.0, brain-development.org).\n")
    (bids / "participants.tsv").write_text("participant_id\tsite\nsub-IXI014\tixi-hh\n")
    shutil.copy(ixi / "IXI014-HH-1236_T1.nii.gz", bids / "sub-IXI014/anat/sub-IXI014_T1w.nii.gz")

    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"),
                 "--nprocs", "2", "--random-seed", "1"])
    assert code == 0
    anat = out / "sub-IXI014" / "anat"
    mask_img = nb.load(anat / "sub-IXI014_desc-brain_mask.nii.gz")
    volume_ml = (np.asarray(mask_img.dataobj) > 0).sum() * np.prod(mask_img.header.get_zooms()) / 1000
    assert 900 < volume_ml < 2000, volume_ml  # adult brain, with some CSF

    # the brain in template space overlays the MNI template
    mni = nb.load(get_template("mni_brain")).get_fdata()
    std = nb.load(anat / "sub-IXI014_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz").get_fdata()
    std_mask = nb.load(anat / "sub-IXI014_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz").get_fdata()
    inside = mni > 0
    dice = 2 * np.logical_and(std_mask > 0, inside).sum() / ((std_mask > 0).sum() + inside.sum())
    assert dice > 0.9, dice
    corr = np.corrcoef(std[inside], mni[inside])[0, 1]
    assert corr > 0.6, corr
