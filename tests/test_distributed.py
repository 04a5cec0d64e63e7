"""Group-level training launched by torchrun (2 CPU processes, gloo)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys


def test_torchrun_two_processes_train_one_model(sloppy_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(sloppy_run["out"], out)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "harmonize_bids", str(sloppy_run["bids"]), str(out), "group",
           "-w", str(tmp_path / "work"), "--train-steps", "3", "--batch-size", "2",
           "--patch-size", "32", "--shifted-copies", "1", "--skip-bids-validation",
           "--from-scratch",
           "--omp-nthreads", "1", "--nprocs", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "process 0 of 2" in log and "process 1 of 2" in log
    card = json.loads((out / "models" / "harmonize_bids_model.json").read_text())
    assert card["training"]["steps"] == 3
    assert card["training"]["initialized_from"] is None  # --from-scratch: a new network
    assert card["config"]["source_input"] is False
    state = json.loads((tmp_path / "work" / "group_training" / "state.json").read_text())
    assert state["step"] == 3
