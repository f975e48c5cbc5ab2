"""The blocks of README.md and docs/ that are not Python (the Python ones run, see the root
``conftest.py``): every ``maintguard`` command line shown in a shell or console block is
one the command's parser accepts, and every JSON block parses. So a renamed option or
command cannot leave a page that tells operators to type something that fails."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from maintguard._cli import _parser

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(*languages: str) -> list[tuple[str, str]]:
    """(where, text) of every fenced block in one of ``languages``."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match[1] in languages:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match[2]))
    return found


def commands() -> list[tuple[str, list[str]]]:
    """Every ``maintguard ...`` command typed in a shell or console block: its arguments."""
    found = []
    for where, text in blocks("sh", "bash", "console"):
        for line in text.splitlines():
            typed = line.strip().removeprefix("$ ")
            if not typed.startswith("maintguard "):
                continue  # output, another program, pip install 'maintguard[...]'
            typed = re.split(r";|&&|\||>", typed)[0]  # `; echo "exit $?"`, `>/dev/null`
            words = shlex.split(typed, comments=True)
            found.append((where, words[1:]))
    return found


def test_the_pages_show_maintguard_commands() -> None:
    assert len(commands()) >= 15  # the check below is not vacuous


@pytest.mark.parametrize(("where", "argv"), commands(), ids=lambda v: str(v)[:60])
def test_every_command_shown_is_accepted_by_the_parser(where: str, argv: list[str]) -> None:
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:  # (argparse's way of refusing)
        pytest.fail(f"{where}: `maintguard {' '.join(argv)}` is refused (exit {exc.code})")


@pytest.mark.parametrize(("where", "text"), blocks("json"), ids=lambda v: str(v)[:40])
def test_every_json_block_parses(where: str, text: str) -> None:
    json.loads(text)
