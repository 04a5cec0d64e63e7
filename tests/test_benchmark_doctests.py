"""The benchmark scripts' doctests run with the suite.

``benchmarks/`` is not a package (each file is a script), so pytest's
``--doctest-modules`` over ``testpaths`` never sees them; their pure helpers
(e.g. the error decompositions of ``error_bands.py``) are tested here instead.
"""
from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WITH_DOCTESTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if ">>>" in p.read_text())


def test_some_benchmarks_have_doctests():
    assert "error_bands.py" in WITH_DOCTESTS


@pytest.mark.parametrize("name", WITH_DOCTESTS)
def test_benchmark_doctests(name, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # scripts import their siblings
    spec = importlib.util.spec_from_file_location(f"_bench_{name[:-3]}", BENCHMARKS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} doctest(s) failed in benchmarks/{name}"
