"""Shared fixtures: tiny synthetic BIDS datasets and one sloppy end-to-end run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = Path(os.environ.get("HARMONIZE_BIDS_SHARED_DATA", SHARED_DATA))


@pytest.fixture(scope="session")
def synthetic_bids(tmp_path_factory) -> Path:
    """Three participants at three synthetic sites, 4 mm (read-only use!)."""
    from harmonize_bids.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("bids") / "ds", n_subjects=3, seed=1)


@pytest.fixture(scope="session")
def sloppy_run(synthetic_bids, tmp_path_factory):
    """Run the participant level once (sloppy) on the synthetic dataset."""
    from harmonize_bids.cli.run import main

    base = tmp_path_factory.mktemp("run")
    out, work = base / "out", base / "work"
    code = main([str(synthetic_bids), str(out), "participant", "--sloppy",
                 "-w", str(work), "--nprocs", "2", "--omp-nthreads", "1",
                 "--random-seed", "7"])
    return {"code": code, "out": out, "work": work, "bids": synthetic_bids}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not available at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def labels_dir(tmp_path_factory) -> Path:
    """Two cartoon whole-head label maps (SynthSeg label values), 2 mm."""
    import nibabel as nb
    from toys import toy_labels

    d = tmp_path_factory.mktemp("labels")
    for k, shape in enumerate([(40, 48, 40), (42, 46, 38)]):
        anat = toy_labels(shape)
        nb.Nifti1Image(anat.labels, anat.affine).to_filename(d / f"toy_{k}.nii.gz")
    return d


@pytest.fixture(scope="session")
def toy_dataset(labels_dir, tmp_path_factory) -> Path:
    """A simulated traveling-subject dataset: 3 anatomies x 2 sites, with rescans."""
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS

    protocols = [PROTOCOLS["siemens3tmprage"], PROTOCOLS["ge15tspgr"]]
    return make_traveling_dataset(labels_dir, tmp_path_factory.mktemp("sim") / "ds", protocols,
                                  n_anatomies=3, resolution_mm=2.0, seed=4, rescan=True,
                                  progress=lambda m: None)
