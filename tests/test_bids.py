"""Input queries and site resolution (utils/bids.py) on small generated datasets."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from harmonize_bids.exceptions import InputError, NothingSelectedError, UsageError, ValidationError
from harmonize_bids.utils import bids as bu


def _tiny_t1w(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 1000, (12, 14, 10)).astype(np.int16)
    nb.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)


@pytest.fixture
def skeleton(tmp_path) -> Path:
    """sub-01 (2 sessions, 2 runs in ses-a), sub-02 (acq-fast), sub-03 with scanner fields."""
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    (root / "README").write_text("test dataset\n")
    (root / "participants.tsv").write_text(
        "participant_id\tsite\tscanner\nsub-01\tboston\tA\nsub-02\tn/a\tB\nsub-03\t\tC\n")
    _tiny_t1w(root / "sub-01/ses-a/anat/sub-01_ses-a_run-1_T1w.nii.gz")
    _tiny_t1w(root / "sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz")
    _tiny_t1w(root / "sub-01/ses-b/anat/sub-01_ses-b_T1w.nii.gz")
    _tiny_t1w(root / "sub-02/anat/sub-02_acq-fast_T1w.nii.gz")
    _tiny_t1w(root / "sub-03/anat/sub-03_T1w.nii.gz")
    (root / "sub-03/anat/sub-03_T1w.json").write_text(json.dumps(
        {"Manufacturer": "GE", "ManufacturersModelName": "Signa HDxt",
         "MagneticFieldStrength": 1.5}))
    return root


def test_collect_all_and_by_label(skeleton):
    layout = bu.load_layout(skeleton)
    assert len(bu.collect_t1w(layout)) == 5
    files = bu.collect_t1w(layout, ("01",), ("a",))
    assert [f.name for f in files] == ["sub-01_ses-a_run-1_T1w.nii.gz",
                                      "sub-01_ses-a_run-2_T1w.nii.gz"]


def test_filters_null_and_values(skeleton, tmp_path):
    layout = bu.load_layout(skeleton)
    files = bu.collect_t1w(layout, bids_filters={"t1w": {"run": None, "session": None}})
    assert sorted(f.name for f in files) == ["sub-02_acq-fast_T1w.nii.gz", "sub-03_T1w.nii.gz"]
    ffile = tmp_path / "filters.json"
    ffile.write_text(json.dumps({"t1w": {"acquisition": "fast"}}))
    files = bu.collect_t1w(layout, bids_filters=bu.load_bids_filters(ffile))
    assert [f.name for f in files] == ["sub-02_acq-fast_T1w.nii.gz"]


def test_filters_selecting_nothing(skeleton):
    layout = bu.load_layout(skeleton)
    with pytest.raises(NothingSelectedError) as exc:
        bu.collect_t1w(layout, bids_filters={"t1w": {"acquisition": "nope"}})
    assert exc.value.exit_code == 18


def test_filter_with_unknown_entity_is_usage_error(skeleton):
    layout = bu.load_layout(skeleton)
    with pytest.raises(UsageError):
        bu.collect_t1w(layout, bids_filters={"t1w": {"sesion": "a"}})


def test_missing_participant_and_session(skeleton):
    layout = bu.load_layout(skeleton)
    with pytest.raises(InputError, match="99"):
        bu.collect_t1w(layout, ("99",))
    with pytest.raises(InputError, match="zz"):
        bu.collect_t1w(layout, ("01",), ("zz",))


def test_not_a_bids_dataset(tmp_path):
    with pytest.raises(InputError):
        bu.load_layout(tmp_path)


def test_sites_from_tsv_session_and_sidecar(skeleton):
    layout = bu.load_layout(skeleton)
    recs = {r.path.name: r for r in bu.resolve_sites(layout, bu.collect_t1w(layout))}
    assert recs["sub-01_ses-b_T1w.nii.gz"].site == "boston"
    assert recs["sub-01_ses-b_T1w.nii.gz"].site_source == "participants.tsv:site"
    assert recs["sub-02_acq-fast_T1w.nii.gz"].site == "unknown"  # n/a, no sidecar
    assert recs["sub-03_T1w.nii.gz"].site == "ge-signahdxt-1.5t"
    assert recs["sub-03_T1w.nii.gz"].site_source == "sidecar"
    # another column, and the session as site
    recs = bu.resolve_sites(layout, bu.collect_t1w(layout), site_column="scanner")
    assert sorted(r.site for r in recs) == ["A", "A", "A", "B", "C"]
    # a column asked for by name must exist (a misspelling would fall back silently)
    with pytest.raises(UsageError, match="no such column.*participant_id, site, scanner"):
        bu.resolve_sites(layout, bu.collect_t1w(layout), site_column="Site")
    # without a site in participants.tsv (a BOM in the file is fine), the session
    (skeleton / "participants.tsv").write_text(
        "\ufeffparticipant_id\tsite\nsub-01\tn/a\nsub-03\tX\n", encoding="utf-8")
    recs = bu.resolve_sites(layout, bu.collect_t1w(layout, ("01",)), site_from_session=True)
    assert {r.site for r in recs} == {"a", "b"}
    assert bu.resolve_sites(layout, bu.collect_t1w(layout, ("03",)))[0].site == "X"


def test_images_differing_only_in_uncarried_entities_are_refused(skeleton):
    """Two echoes of one T1w would get one derivative name: refuse them, and point to
    the filter that selects one."""
    _tiny_t1w(skeleton / "sub-03/anat/sub-03_echo-1_T1w.nii.gz")
    _tiny_t1w(skeleton / "sub-03/anat/sub-03_echo-2_T1w.nii.gz")
    layout = bu.load_layout(skeleton)
    with pytest.raises(InputError, match="echo-1_T1w.nii.gz, .*echo-2_T1w.nii.gz.*echo"):
        bu.resolve_sites(layout, bu.collect_t1w(layout, ("03",)))
    recs = bu.resolve_sites(layout, bu.collect_t1w(layout, ("03",), (), {"t1w": {"echo": 1}}))
    assert [r.path.name for r in recs] == ["sub-03_echo-1_T1w.nii.gz"]


def test_record_entities_and_label(skeleton):
    layout = bu.load_layout(skeleton)
    rec = bu.resolve_sites(layout, bu.collect_t1w(layout, ("01",), ("a",)))[1]
    assert rec.label == "sub-01_ses-a_run-2"
    assert rec.relpath == "sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz"
    table = bu.format_site_table(bu.resolve_sites(layout, bu.collect_t1w(layout)))
    assert "boston" in table and "ge-signahdxt-1.5t" in table


def test_validator_parses_report():
    report = {"issues": {"issues": [
        {"code": "NIFTI_HEADER_UNREADABLE", "severity": "error", "location": "/sub-01/x.nii"},
        {"code": "README_MISSING", "severity": "warning"}]}}
    errors = bu.parse_validator_errors(json.dumps(report))
    assert len(errors) == 1 and "NIFTI_HEADER_UNREADABLE" in errors[0]
    assert bu.parse_validator_errors("not json") is None


def test_validator_accepts_valid_and_rejects_broken(synthetic_bids, tmp_path):
    bu.validate_dataset(synthetic_bids, ("01",), tmp_path / "v1")
    broken = tmp_path / "broken"
    shutil.copytree(synthetic_bids, broken)
    (broken / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"not a nifti")
    (broken / "sub-02" / "anat" / "sub-02_T1x.nii.gz").write_bytes(b"not a nifti")
    # sub-01 alone is still valid: validation is limited to the selection
    bu.validate_dataset(broken, ("01",), tmp_path / "v2")
    with pytest.raises(ValidationError) as exc:
        bu.validate_dataset(broken, ("02",), tmp_path / "v3")
    assert exc.value.exit_code == 16
