"""The generated parts of the documentation site: the CLI reference and the benchmarks page.

``docs/hooks.py`` writes ``docs/reference/cli.md`` from the argparse parser at build time;
``benchmarks/to_docs.py`` writes ``docs/benchmarks.md`` from a benchmark run. Neither runs
MkDocs or a benchmark here.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from maintguard._cli import _COMMANDS

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    return _load("maintguard_docs_hooks", ROOT / "docs" / "hooks.py")


@pytest.fixture(scope="module")
def to_docs() -> ModuleType:
    return _load("maintguard_bench_to_docs", ROOT / "benchmarks" / "to_docs.py")


def test_the_cli_reference_has_every_commands_help(hooks: ModuleType) -> None:
    page = hooks.cli_reference()
    for command in [*_COMMANDS, "schedule list", "schedule cancel"]:
        assert f"$ maintguard {command} --help\nusage: maintguard {command} " in page, command
        assert f"## `maintguard {command}`" in page, command
    assert "$ maintguard --help\nusage: maintguard " in page
    assert page.count("```text") == page.count("\n```\n") == len(_COMMANDS) + 3


def test_the_hook_replaces_the_marker_and_leaves_other_pages_alone(hooks: ModuleType) -> None:
    page = hooks.on_page_markdown(f"# CLI\n\n{hooks.MARKER}\n", page=None)
    assert hooks.MARKER not in page
    assert "usage: maintguard cordon" in page
    assert hooks.on_page_markdown("# Other\n", page=None) == "# Other\n"


def test_the_cli_reference_does_not_depend_on_the_terminal(
    hooks: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = hooks.cli_reference()
    monkeypatch.setenv("COLUMNS", "200")
    assert hooks.cli_reference() == narrow
    monkeypatch.delenv("COLUMNS")
    assert hooks.cli_reference() == narrow


RUN: dict[str, Any] = {
    "date": "2026-12-07T19:00:00+00:00",
    "machine": {
        "platform": "Linux-6.1-x86_64",
        "cpu": "Fake CPU | 2 GHz",
        "cpu_count": 2,
        "python": "CPython 3.11.7",
    },
    "tolerance": 0.03,
    "quick": False,
    "goals": [
        {
            "source": "holds.py",
            "text": "memory hold vs the minimal hold",
            "value": 2.31,
            "op": "<=",
            "target": 2.5,
            "verdict": "ok",
        },
        {
            "source": "middleware.py",
            "text": "off vs a no-op",
            "value": 0.95,
            "op": ">=",
            "target": 0.97,
            "verdict": "MISSED",
        },
        {
            "source": "holds.py",
            "text": "file hold",
            "value": None,
            "op": "<=",
            "target": 0.0,
            "verdict": "FAILED",
        },
    ],
    "failed": ["middleware.py exited 1"],
    "outputs": {"holds.py": "operation  per op\nGOALS\n  ok  2.31 (target <= 2.5)  x\n"},
}


def _tables(page: str) -> list[list[str]]:
    tables: list[list[str]] = []
    previous = ""
    for line in page.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    return tables


def _cells(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_the_benchmarks_page_is_well_formed_markdown(to_docs: ModuleType) -> None:
    page = to_docs.render(RUN)
    assert page.startswith("# Benchmarks\n")
    for fact in ("2026-12-07T19:00:00+00:00", "Linux-6.1-x86_64", "CPython 3.11.7", "| 2 |"):
        assert fact in page
    assert "1 of 3 goals met (" in page
    assert "| met | memory hold vs the minimal hold | 2.31 | <= 2.5 | `holds.py` |" in page
    assert "| **missed** | off vs a no-op | 0.95 | >= 0.97 | `middleware.py` |" in page
    assert "| **failed** | file hold | — | — | `holds.py` |" in page
    assert "| **failed** | middleware.py exited 1 |" in page
    assert "Fake CPU \\| 2 GHz" in page  # a | in a value does not break the table
    tables = _tables(page)
    assert len(tables) == 2
    for table in tables:
        assert re.fullmatch(r"\|(---\|)+", table[1]), table[1]
        assert {_cells(row) for row in table} == {_cells(table[0])}, table
    assert page.count("```") % 2 == 0
    assert "    GOALS" in page  # the benchmark's own output, inside its note
    for name in to_docs.WHAT:
        assert f"### `benchmarks/{name}`" in page


def test_the_benchmarks_page_renders(to_docs: ModuleType) -> None:
    import markdown  # (the test extra has it, and pymdown-extensions: the site's own)

    html = markdown.markdown(
        to_docs.render({**RUN, "quick": True}),
        extensions=["tables", "admonition", "pymdownx.details", "pymdownx.superfences"],
    )
    assert html.count("<table>") == 2
    assert "<td><strong>missed</strong></td>" in html
    assert 'class="admonition warning"' in html
    assert "<details" in html


def test_a_saved_run_is_written_as_the_page(to_docs: ModuleType, tmp_path: Path) -> None:
    import json

    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(RUN), encoding="utf-8")
    out = tmp_path / "benchmarks.md"
    assert to_docs.main(["--from-json", str(saved), "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == to_docs.render(RUN)
