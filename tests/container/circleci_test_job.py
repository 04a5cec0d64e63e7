#!/usr/bin/env python3
"""Run the ``test`` job of ``.circleci/config.yml`` here, with podman standing in for docker.

CircleCI itself cannot be reached from this machine, so this runs the job's own shell
commands, as written in the config, against the image that
``tests/container/build_and_run.sh`` built (``localhost/harmonize_bids:latest``):
``--version``, the simulated dataset, ``participant`` and ``group`` with a read-only,
networkless container, the output file list against ``.circleci/expected_outputs.txt``,
and the BIDS validator.  What differs from CircleCI, and only that:

- ``docker`` is a shim that calls ``podman`` (with ``--runtime runc`` and explicit
  ulimits, as ``build_and_run.sh`` needs in this sandbox);
- the job's scratch folders (``/tmp/data``, ``/tmp/out``, ``/tmp/work``,
  ``/tmp/outputs.txt``) live under one fresh folder instead of the host's ``/tmp``;
- the "Load the image" step (a CircleCI workspace tarball) is skipped: the image is
  tagged ``$IMAGE:latest`` instead;
- run as root here, the containers get ``-u 1000:1000`` (CircleCI's user is not root).

    python3 tests/container/circleci_test_job.py [SCRATCH_DIR]
"""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LOCAL_IMAGE = "localhost/harmonize_bids:latest"
SKIPPED_STEPS = {"Load the image"}  # CircleCI's workspace tarball; the image is tagged instead
SCRATCH_PATHS = re.compile(r"/tmp/(data|out|work|outputs\.txt)\b")

DOCKER_SHIM = """#!/usr/bin/env bash
# docker -> podman, as tests/container/build_and_run.sh runs it in this sandbox
if [ "$1" = run ]; then
  shift
  args=()
  for a in "$@"; do
    if [ "$a" = "0:0" ]; then a=1000:1000; fi   # root here; CircleCI's user is not root
    args+=("$a")
  done
  exec podman run --runtime runc --ulimit "nofile=$(ulimit -n):$(ulimit -n)" \\
    --ulimit nproc=4096:4096 "${args[@]}"
fi
exec podman "$@"
"""


def job_commands(config: dict, job: str = "test") -> list[tuple[str, str]]:
    """(step name, shell command) of a job's ``run`` steps, in order.

    >>> cfg = {"jobs": {"test": {"steps": ["checkout", {"run": {"name": "a", "command": "x"}},
    ...                                    {"run": "y"}]}}}
    >>> job_commands(cfg)
    [('a', 'x'), ('y', 'y')]
    """
    steps = []
    for step in config["jobs"][job]["steps"]:
        if not isinstance(step, dict) or "run" not in step:
            continue
        run = step["run"]
        if isinstance(run, str):
            steps.append((run, run))
        else:
            steps.append((run.get("name", run["command"]), run["command"]))
    return steps


def localize(command: str, scratch: Path) -> str:
    """Move the job's ``/tmp`` scratch paths under ``scratch`` (``--tmpfs /tmp`` stays).

    >>> localize("mkdir -p /tmp/data /tmp/out && docker run --tmpfs /tmp x > /tmp/outputs.txt",
    ...          Path("/s"))
    'mkdir -p /s/data /s/out && docker run --tmpfs /tmp x > /s/outputs.txt'
    """
    return SCRATCH_PATHS.sub(lambda m: f"{scratch}/{m.group(1)}", command)


def main(argv: list[str]) -> int:
    config = yaml.safe_load((REPO / ".circleci" / "config.yml").read_text())
    image = config["executors"]["docker-machine"]["environment"]["IMAGE"]
    scratch = Path(argv[0] if argv else tempfile.mkdtemp(prefix="circleci_test_job."))
    scratch.mkdir(parents=True, exist_ok=True)
    scratch = scratch.resolve()
    if subprocess.run(["podman", "image", "exists", LOCAL_IMAGE]).returncode != 0:
        print(f"no {LOCAL_IMAGE}: run tests/container/build_and_run.sh first")
        return 1
    subprocess.run(["podman", "tag", LOCAL_IMAGE, f"{image}:latest"], check=True)
    shim_dir = scratch / "bin"
    shim_dir.mkdir(exist_ok=True)
    shim = shim_dir / "docker"
    shim.write_text(DOCKER_SHIM)
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    env = dict(os.environ, IMAGE=image, PATH=f"{shim_dir}:{os.environ['PATH']}")
    t0 = time.monotonic()
    for name, command in job_commands(config):
        if name in SKIPPED_STEPS:
            print(f"[skip] {name}")
            continue
        print(f"[{time.monotonic() - t0:5.0f} s] {name}", flush=True)
        script = "set -eo pipefail\n" + localize(command, scratch)
        result = subprocess.run(["bash", "-c", script], cwd=REPO, env=env)
        if result.returncode != 0:
            print(f"FAILED: {name} (exit {result.returncode})\n{shlex.quote(script)}")
            return result.returncode
    print(f"[{time.monotonic() - t0:5.0f} s] the CircleCI test job passed (scratch: {scratch})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
