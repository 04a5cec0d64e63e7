"""Derivative names, sidecars and atomic writes."""
from __future__ import annotations

import json

import pytest

from harmonize_bids import derivatives as d
from harmonize_bids.exceptions import OutputError
from harmonize_bids.utils.io import atomic_path

ENTS = {"subject": "01", "session": "pre", "acquisition": "mprage", "run": 2,
        "_relpath": "sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_run-2_T1w.nii.gz"}


@pytest.mark.parametrize("kind,name", [
    ("t1w_preproc", "sub-01_ses-pre_acq-mprage_run-2_desc-preproc_T1w.nii.gz"),
    ("brain_mask", "sub-01_ses-pre_acq-mprage_run-2_desc-brain_mask.nii.gz"),
    ("t1w2std_xfm", "sub-01_ses-pre_acq-mprage_run-2_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"),
    ("std2t1w_xfm", "sub-01_ses-pre_acq-mprage_run-2_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5"),
    ("std_t1w", "sub-01_ses-pre_acq-mprage_run-2_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"),
    ("std_mask", "sub-01_ses-pre_acq-mprage_run-2_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz"),
])
def test_names_keep_source_entities(kind, name):
    assert d.derivative_relpath(ENTS, kind) == f"sub-01/ses-pre/anat/{name}"


def test_unknown_kind():
    with pytest.raises(KeyError):
        d.derivative_relpath(ENTS, "nope")


def test_sidecars():
    mask = d.build_sidecar(ENTS, "brain_mask", site="boston")
    assert mask["Type"] == "Brain" and mask["Site"] == "boston"
    # the mask comes from the raw image (after a head-wide N4); the final N4 fits its
    # field inside the mask: provenance runs one way, never in a circle
    assert mask["Sources"] == [f"bids:raw:{ENTS['_relpath']}"]
    assert mask["SpatialReference"] == f"bids:raw:{ENTS['_relpath']}"
    pre = d.build_sidecar(ENTS, "t1w_preproc")
    assert pre["SkullStripped"] is False and pre["Sources"] == [
        f"bids:raw:{ENTS['_relpath']}",
        "bids::sub-01/ses-pre/anat/sub-01_ses-pre_acq-mprage_run-2_desc-brain_mask.nii.gz"]
    std = d.build_sidecar(ENTS, "std_t1w", extra={"RandomSeed": 3})
    assert std["SkullStripped"] is True and std["SpatialReference"] == "MNI152NLin2009aSym"
    assert std["RandomSeed"] == 3 and len(std["Sources"]) == 3
    assert "SpatialReference" not in d.build_sidecar(ENTS, "t1w2std_xfm")


def test_save_derivative_writes_file_and_sidecar(tmp_path):
    src = tmp_path / "in.nii"
    src.write_bytes(b"\x00" * 400)
    out = d.save_derivative(tmp_path / "out", ENTS, "t1w_preproc", src, site="x")
    assert out.name.endswith("desc-preproc_T1w.nii.gz")
    import gzip
    assert gzip.decompress(out.read_bytes()) == b"\x00" * 400
    side = json.loads(d.sidecar_path(out).read_text())
    assert side["Site"] == "x"
    # no temporary files left behind
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, d.sidecar_path(out).name])


def test_paths_never_escape_output(tmp_path):
    with pytest.raises(OutputError):
        d.derivative_path(tmp_path, {**ENTS, "subject": "../../etc"}, "brain_mask")
    with pytest.raises(OutputError):
        d.derivative_path(tmp_path, {**ENTS, "session": "/abs"}, "brain_mask")


def test_atomic_path_removes_partial_file_on_error(tmp_path):
    final = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []


def test_dataset_description_and_bidsignore(tmp_path, monkeypatch):
    monkeypatch.setenv("HARMONIZE_BIDS_CONTAINER", "docker")
    monkeypatch.setenv("HARMONIZE_BIDS_CONTAINER_TAG", "harmonize:test")
    d.init_derivatives(tmp_path / "out", tmp_path / "bids")
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "harmonize_bids" and gen["Container"] == {
        "Type": "docker", "Tag": "harmonize:test"}
    assert desc["DatasetLinks"]["raw"].startswith("file://")
    assert "*_xfm.h5" in (tmp_path / "out" / ".bidsignore").read_text()
    # a second call (another job) leaves the existing file alone
    before = (tmp_path / "out" / "dataset_description.json").stat().st_mtime_ns
    d.init_derivatives(tmp_path / "out", tmp_path / "bids")
    assert (tmp_path / "out" / "dataset_description.json").stat().st_mtime_ns == before
    # one written by an earlier version (or for a moved input) is refreshed
    path = tmp_path / "out" / "dataset_description.json"
    path.write_text(json.dumps({**desc, "GeneratedBy": [{**gen, "Version": "0.0.1"}]}))
    d.init_derivatives(tmp_path / "out", tmp_path / "bids")
    assert json.loads(path.read_text()) == desc
    # another tool's dataset (or a damaged file) is not written into
    for text in (json.dumps({"Name": "x", "GeneratedBy": [{"Name": "fMRIPrep"}]}), "{"):
        path.write_text(text)
        with pytest.raises(OutputError, match="holds another dataset"):
            d.init_derivatives(tmp_path / "out", tmp_path / "bids")


def test_uncreatable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputError) as exc:
        d.init_derivatives(blocker / "out", tmp_path)
    assert exc.value.exit_code == 73
