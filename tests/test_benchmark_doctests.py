"""The doctests of the benchmark and maintenance scripts run with the suite.

``benchmarks/`` and ``scripts/`` are not packages (each file is a script), so pytest's
``--doctest-modules`` over ``testpaths`` never sees them; their pure helpers
(e.g. the error decompositions of ``error_bands.py``) are tested here instead.
"""
from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WITH_DOCTESTS = sorted(f"{folder}/{p.name}" for folder in ("benchmarks", "scripts")
                       for p in (ROOT / folder).glob("*.py") if ">>>" in p.read_text())


def test_some_scripts_have_doctests():
    assert "benchmarks/error_bands.py" in WITH_DOCTESTS
    assert "scripts/train_default_model.py" in WITH_DOCTESTS


@pytest.mark.parametrize("name", WITH_DOCTESTS)
def test_script_doctests(name, monkeypatch):
    path = ROOT / name
    monkeypatch.syspath_prepend(str(path.parent))  # scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
