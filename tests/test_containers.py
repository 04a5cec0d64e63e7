"""Static checks of the container and CI files (the images themselves are built and run
by tests/container/build_and_run.sh and by CircleCI)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def circleci() -> dict:
    return yaml.safe_load((REPO / ".circleci" / "config.yml").read_text())


def test_circleci_workflow_references_defined_jobs(circleci):
    assert circleci["version"] == 2.1
    jobs = circleci["jobs"]
    assert {"build", "test", "deploy"} <= set(jobs)
    for wf in circleci["workflows"].values():
        for entry in wf["jobs"]:
            name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            assert name in jobs
            for dep in (spec or {}).get("requires", []):
                assert dep in jobs
    for job in jobs.values():
        assert job.get("executor") in circleci["executors"] or "docker" in job \
            or "machine" in job


def test_circleci_runs_the_app_read_only_and_networkless(circleci):
    commands = [step["run"]["command"] for step in circleci["jobs"]["test"]["steps"]
                if isinstance(step, dict) and isinstance(step.get("run"), dict)]
    app_runs = [c for c in commands if "docker run" in c and "--version" not in c]
    assert len(app_runs) >= 3
    for cmd in app_runs:
        assert "--read-only" in cmd and "--network none" in cmd, cmd
    text = "\n".join(commands)
    assert "participant" in text and "group" in text
    assert "expected_outputs.txt" in text and "bids-validator-deno" in text


def _validate_circleci(path: Path) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.circle-ci", str(path)], capture_output=True, text=True)


def test_circleci_config_matches_circleci_schema(tmp_path):
    """CircleCI's own JSON schema (vendored by check-jsonschema, offline)."""
    pytest.importorskip("check_jsonschema")
    config = REPO / ".circleci" / "config.yml"
    result = _validate_circleci(config)
    assert result.returncode == 0, result.stdout + result.stderr
    # the check can fail: a job whose steps are not a list is rejected
    broken = yaml.safe_load(config.read_text())
    next(iter(broken["jobs"].values()))["steps"] = 5
    (tmp_path / "config.yml").write_text(yaml.safe_dump(broken))
    assert _validate_circleci(tmp_path / "config.yml").returncode != 0


def test_expected_outputs_list_is_sorted_and_bids_named():
    lines = (REPO / ".circleci" / "expected_outputs.txt").read_text().splitlines()
    assert lines == sorted(lines) and len(lines) > 10
    assert "dataset_description.json" in lines
    assert any(line.endswith("desc-harmonized_T1w.nii.gz") for line in lines)
    assert any(line.startswith("models/") for line in lines)


def test_dockerfile_contract():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M)
    assert 'ENTRYPOINT ["harmonize_bids"]' in text
    assert re.search(r"^USER (?!root)\S+", text, re.M)          # not root
    assert text.count("FROM ") >= 2                              # multi-stage
    assert "constraints.txt" in text and "libtcmalloc" in text
    assert "HOME=/tmp" in text


def test_constraints_pin_everything_but_torch():
    pins = [line for line in (REPO / "docker" / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==\S+", p) for p in pins), pins
    names = {p.split("==")[0] for p in pins}
    assert {"antspyx", "nipype", "pybids", "safetensors", "bids-validator-deno"} <= names
    assert "torch" not in names


def test_singularity_definition_passes_arguments_through():
    text = (REPO / "singularity.def").read_text()
    # the source of the Docker image is a build argument, docker-daemon by default
    assert re.search(r"^Bootstrap: \{\{ BOOTSTRAP \}\}$", text, re.M)
    assert re.search(r"^From: \{\{ FROM \}\}$", text, re.M)
    arguments = text.split("%arguments", 1)[1].split("\n%", 1)[0]
    defaults = dict(line.strip().split("=", 1) for line in arguments.splitlines() if "=" in line)
    assert defaults == {"BOOTSTRAP": "docker-daemon", "FROM": "harmonize_bids:latest",
                        "VERSION": "unstable"}
    used = set(re.findall(r"\{\{ (\w+) \}\}", text))
    assert used <= set(defaults), used - set(defaults)
    assert 'exec harmonize_bids "$@"' in text
    for section in ("%environment", "%runscript", "%labels", "%help"):
        assert section in text


def _circleci_runner():
    import importlib.util

    path = REPO / "tests" / "container" / "circleci_test_job.py"
    spec = importlib.util.spec_from_file_location("_circleci_test_job", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_circleci_runner_covers_the_real_test_job(circleci, tmp_path):
    """tests/container/circleci_test_job.py runs the test job's own commands with podman:
    every step but the workspace load must run, and none may touch the host's /tmp."""
    import doctest

    runner = _circleci_runner()
    assert doctest.testmod(runner).failed == 0
    steps = runner.job_commands(circleci)
    names = [name for name, _ in steps]
    assert set(runner.SKIPPED_STEPS) <= set(names)
    run = [runner.localize(cmd, tmp_path) for name, cmd in steps
           if name not in runner.SKIPPED_STEPS]
    text = "\n".join(run)
    assert "participant" in text and "group" in text and "expected_outputs.txt" in text
    # the only /tmp left is the containers' own tmpfs
    leftovers = re.findall(r"/tmp\S*", text.replace(str(tmp_path), "SCRATCH"))
    assert set(leftovers) == {"/tmp"}, leftovers
    # CircleCI's "Load the image" reads the workspace tarball, which does not exist here
    skipped = [cmd for name, cmd in steps if name in runner.SKIPPED_STEPS]
    assert all("image.tar.zst" in cmd for cmd in skipped)
