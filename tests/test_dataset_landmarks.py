"""The dataset's tissue landmarks per site: measured from the participant level's
template-space brains, written, read back, refused when malformed."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from harmonize_bids import site_intensity as si
from harmonize_bids.dataset_landmarks import (
    measure_site_landmarks,
    read_site_landmarks,
    write_site_landmarks,
)
from harmonize_bids.derivatives import derivative_path
from harmonize_bids.exceptions import InputError
from harmonize_bids.utils.bids import T1wRecord
from harmonize_bids.utils.grid import to_model_grid


def brain(gm: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm three-tissue 'brain' (grey matter at ``gm``) and its mask."""
    rng = np.random.default_rng(seed)
    shape = (24, 24, 12)
    labels = rng.choice(3, size=shape, p=(0.2, 0.4, 0.4))
    image = np.array([0.3, gm, 0.9])[labels] + rng.normal(0, 0.02, shape)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 1:-1] = True
    return np.where(mask, image, 0).astype(np.float32), mask


def write_participant(out: Path, subject: str, site: str, gm: float, seed: int) -> T1wRecord:
    """A record whose template-space brain and mask the participant level 'wrote'."""
    entities = {"subject": subject}
    image, mask = brain(gm, seed)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for kind, data in (("std_t1w", image), ("std_mask", mask.astype(np.uint8))):
        path = derivative_path(out, entities, kind)
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(data, affine).to_filename(path)
    return T1wRecord(path=Path(f"/bids/sub-{subject}_T1w.nii.gz"), entities=entities,
                     site=site, site_source="participants.tsv")


def test_measured_statistics_are_those_of_the_brains_on_the_model_grid(tmp_path):
    out = tmp_path / "out"
    gms = {"01": ("a", 0.55), "02": ("a", 0.6), "03": ("a", 0.65), "04": ("b", 0.5)}
    records = [write_participant(out, sub, site, gm, k)
               for k, (sub, (site, gm)) in enumerate(gms.items())]
    missing = T1wRecord(path=Path("/bids/sub-05_T1w.nii.gz"), entities={
        "subject": "05"}, site="b",
        site_source="participants.tsv")
    logged: list[str] = []
    path = measure_site_landmarks(records + [missing], out, 4.0, 3, tmp_path / "sites.json",
                                  log=logged.append)
    assert any("sub-05" in m and "no preprocessed brain" in m for m in logged)
    got = read_site_landmarks(path, voxel_mm=4.0)
    expected = si.site_statistics({
        site: [si.tissue_landmarks(*to_model_grid(*brain(gm, k), (2, 2, 2), 4.0)[:2], 3)
               for k, (s, gm) in enumerate(gms.values()) if s == site] for site in "ab"})
    assert sorted(got) == ["a", "b"] and got["a"].images == 3 and got["b"].images == 1
    for site in "ab":
        np.testing.assert_allclose(got[site].mean, expected[site].mean, atol=1e-6)
        np.testing.assert_allclose(got[site].sd, expected[site].sd, atol=1e-6)
    # grey matter differs between site a's brains, so its spread there is not zero
    assert got["a"].sd[1 + 3 + 1] > 0.01 > got["a"].sd[1 + 3 + 3 + 1]  # GM median; WM median = 1
    data = json.loads(path.read_text())
    assert data["ModelVoxelSize"] == 4.0 and data["Landmarks"][0] == "p0.5"
    assert len(data["Landmarks"]) == len(data["Sites"]["a"]["Mean"]) == 11


def test_no_preprocessed_participant_is_an_input_error(tmp_path):
    rec = T1wRecord(path=Path("/bids/sub-01_T1w.nii.gz"), entities={
        "subject": "01"}, site="a",
        site_source="participants.tsv")
    with pytest.raises(InputError, match="run the participant level first"):
        measure_site_landmarks([rec], tmp_path, 2.0, 3, tmp_path / "s.json", log=lambda m: None)
    assert not (tmp_path / "s.json").exists()


def test_reading_refuses_other_files_and_other_voxel_sizes(tmp_path):
    stats = si.site_statistics({"a": [np.linspace(0.1, 1.2, 5), np.linspace(0.2, 1.3, 5)]})
    path = write_site_landmarks(tmp_path / "s.json", stats, voxel_mm=2.0)
    assert read_site_landmarks(path)["a"].images == 2
    with pytest.raises(InputError, match="measured at 2.0 mm"):
        read_site_landmarks(path, voxel_mm=1.0)
    (tmp_path / "other.json").write_text(json.dumps({"Sites": {}}))
    with pytest.raises(InputError, match="not a site landmarks file"):
        read_site_landmarks(tmp_path / "other.json")
    data = json.loads(path.read_text())
    data["Sites"]["a"]["SD"] = [0.1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="malformed"):
        read_site_landmarks(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="Cannot read"):
        read_site_landmarks(tmp_path / "broken.json")
