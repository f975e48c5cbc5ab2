"""``benchmarks/goals.py`` judges every goal the benchmarks report, with a tolerance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def goals() -> ModuleType:
    spec = importlib.util.spec_from_file_location("goals", ROOT / "benchmarks" / "goals.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["goals"] = module
    spec.loader.exec_module(module)
    return module


HOLDS = """\
operation  per op
GOALS
  ok      2.31 (target <= 2.5)      memory hold vs the minimal hold
  MISSED  0.92 (target <= 0.9)      memory hold vs the peer
  MISSED  1.2 (target <= 0.9)       env read vs the peer
  ok      +1.20us (target <= +1.5us)  a guarded async call while off, over the bare call
  n/a     (a row failed)            file hold
"""
MIDDLEWARE = """\
GOALS (throughput ratios, median over processes [lowest-highest]; higher is faster)
  ok      0.981 (one process; median 0.975 [0.95-0.99]) (target >= 0.97)  off vs a no-op
  MISSED  0.80 [0.7-0.9] (target >= 0.95)  on, exempt route, vs bare
"""


def test_every_goal_line_is_parsed_with_its_direction(goals: ModuleType) -> None:
    found = goals.parse("holds.py", HOLDS) + goals.parse("middleware.py", MIDDLEWARE)
    assert [(g.value, g.op, g.target) for g in found] == [
        (2.31, "<=", 2.5),
        (0.92, "<=", 0.9),
        (1.2, "<=", 0.9),
        (1.2, "<=", 1.5),
        (None, "<=", 0.0),
        (0.981, ">=", 0.97),
        (0.80, ">=", 0.95),
    ]
    assert found[3].text == "a guarded async call while off, over the bare call"


def test_a_miss_within_the_tolerance_is_noise_and_a_larger_one_fails(goals: ModuleType) -> None:
    found = goals.parse("holds.py", HOLDS) + goals.parse("middleware.py", MIDDLEWARE)
    verdicts = [goal.verdict(0.03) for goal in found]
    assert verdicts == ["ok", "noise", "MISSED", "ok", "FAILED", "ok", "MISSED"]
    assert [goal.verdict(0.0) for goal in found][1] == "MISSED"


def test_the_metrics_row_is_parsed_with_its_note(goals: ModuleType) -> None:
    line = (
        "GOALS\n  MISSED  0.915 (one process; without metrics 0.918, metrics/plain 0.997) "
        "(target >= 0.97)  off (memory) with metrics instrumented vs a no-op middleware, "
        "20 routes\n"
    )
    [goal] = goals.parse("middleware.py", line)
    assert (goal.value, goal.op, goal.target) == (0.915, ">=", 0.97)
    assert goal.text.startswith("off (memory) with metrics instrumented")


def test_lines_outside_the_goals_section_are_not_goals(goals: ModuleType) -> None:
    assert goals.parse("x", "  ok      1.0 (target <= 2)  before any heading\n") == []


def test_a_bad_tolerance_is_a_usage_error(
    goals: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        goals.main(["--tolerance", "2"])
    assert exit_.value.code == 2
    assert "--tolerance must be in [0, 1)" in capsys.readouterr().err
