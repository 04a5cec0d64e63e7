"""Nothing lost, nothing corrupt: concurrent writers, untouched inputs."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path


def _one_job(args):
    out, bids, subject = args
    from harmonize_bids.derivatives import init_derivatives, save_derivative

    init_derivatives(Path(out), Path(bids))
    src = Path(out).parent / f"in_{subject}.nii"
    src.write_bytes(bytes(range(256)) * 64)
    ents = {"subject": subject, "_relpath": f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz"}
    save_derivative(Path(out), ents, "brain_mask", src, site="s")
    return subject


def test_eight_jobs_share_one_output_dir(tmp_path):
    out = tmp_path / "derivatives"
    jobs = [(str(out), str(tmp_path / "bids"), f"{i:02d}") for i in range(8)]
    with mp.get_context("spawn").Pool(8) as pool:
        assert sorted(pool.map(_one_job, jobs)) == [j[2] for j in jobs]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    for _, _, sub in jobs:
        side = out / f"sub-{sub}/anat/sub-{sub}_desc-brain_mask.json"
        assert json.loads(side.read_text())["Type"] == "Brain"
    leftovers = [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    assert leftovers == []  # no temporary files under any name


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_input_dataset_checksums_unchanged_by_a_run(synthetic_bids, tmp_path):
    from harmonize_bids.cli.run import main

    before = _digest(synthetic_bids)
    assert main([str(synthetic_bids), str(tmp_path / "out"), "participant", "--sloppy", "-w",
                 str(tmp_path / "work"), "--participant-label", "01", "--nprocs", "2"]) == 0
    assert _digest(synthetic_bids) == before
