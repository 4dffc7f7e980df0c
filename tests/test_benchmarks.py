"""Every benchmark runs in its `--smoke` mode, so a refactor that breaks one fails the tests.

Each benchmark times the project's code against a baseline in the same run and asserts that the two
agree (equal counts, IoUs, index contents, inertia within a band); `--smoke` runs the same code and
the same checks at tiny sizes. The times they print are never asserted.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # this checkout, whatever the installed package points at
BENCHMARKS = sorted((REPO / "benchmarks").glob("bench_*.py"))


def test_the_benchmarks_are_found():
    # an empty glob would turn the runs below into a silent skip
    assert {"bench_eval", "bench_index", "bench_kmeans", "bench_loader", "bench_ranking"} <= {p.stem for p in BENCHMARKS}


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_benchmark_smoke(script: Path):
    # the scripts import partdistill from this checkout; one BLAS/OpenMP thread keeps a busy machine quick
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), "--smoke"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{script.name} --smoke exited {result.returncode}:\n{result.stdout[-2000:]}\n" \
                                   f"{result.stderr[-4000:]}"
