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
