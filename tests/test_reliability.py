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


# ---- full or read-only disks (tmpfs mounts: root only, skipped elsewhere) ----

import contextlib  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                         capture_output=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_fails_before_any_work_with_exit_74(synthetic_bids, tmp_path, caplog):
    from harmonize_bids.cli.run import main

    with _tmpfs(tmp_path / "small", "1m") as small:
        code = main([str(synthetic_bids), str(small / "out"), "participant",
                     "-w", str(tmp_path / "work"), "--skip-bids-validation"])
        assert code == 74
        assert not list((small / "out").rglob("*.nii.gz"))
    assert "MB free" in caplog.text


def test_read_only_output_exits_73(synthetic_bids, tmp_path):
    from harmonize_bids.cli.run import main

    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        code = main([str(synthetic_bids), str(ro / "out"), "participant",
                     "-w", str(tmp_path / "work"), "--skip-bids-validation"])
    assert code == 73


def test_disk_full_mid_write_leaves_no_partial_file(tmp_path):
    from harmonize_bids.exceptions import StorageError
    from harmonize_bids.utils.io import atomic_write_text

    with _tmpfs(tmp_path / "tiny", "64k") as tiny:
        atomic_write_text("small\n", tiny / "a.txt")
        with pytest.raises(StorageError, match="No space left"):
            atomic_write_text("x" * 200_000, tiny / "big.txt")
        assert sorted(os.listdir(tiny)) == ["a.txt"]


def test_runs_without_any_network(synthetic_bids, tmp_path):
    """The whole participant level (validation included) in a network namespace with
    no interfaces: nothing is downloaded, no telemetry is attempted."""
    import shutil
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    cmd = ["unshare", "-n", sys.executable, "-m", "harmonize_bids.cli.run", str(synthetic_bids),
           str(tmp_path / "out"), "participant", "--sloppy", "--participant-label", "02",
           "-w", str(tmp_path / "work"), "--nprocs", "2", "--omp-nthreads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert list((tmp_path / "out").glob("sub-02/anat/*desc-preproc_T1w.nii.gz"))
