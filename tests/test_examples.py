"""The examples and the benchmark run as users run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize("flag", [[], ["--trio"]])
def test_async_script(flag: list[str], tmp_path: Path) -> None:
    out = run("examples/script.py", "--state", str(tmp_path / "m.json"), *flag)
    assert "maintenance on: 'importing customers', 1 hold(s)" in out
    assert "imported batch 3/3" in out
    assert out.rstrip().endswith("maintenance off after the import")
    assert ("(trio)" in out) is bool(flag)


def test_sync_script(tmp_path: Path) -> None:
    out = run("examples/sync_script.py", "--state", str(tmp_path / "m.json"))
    assert "holds recorded in m.json: 1" in out
    assert "rebuilt 42 documents" in out
    assert out.rstrip().endswith("maintenance off, holds recorded: 0")


def test_holds_benchmark_prints_ratios() -> None:
    out = run("benchmarks/holds.py", "--n", "50", "--rounds", "1")
    lines = out.splitlines()
    assert lines[0].split() == ["operation", "per", "op", "x", "bare", "call"]
    names = [line.rsplit(None, 2)[0] for line in lines[1:]]
    assert names[0] == "bare async call" and len(names) == 7
    assert all(float(line.split()[-1]) > 0 for line in lines[1:])


def test_typed_usage_file_runs(tmp_path: Path) -> None:
    out = run("tests/typing_usage.py", str(tmp_path / "m.json"))
    assert out.startswith("MaintenanceState(active=False")
