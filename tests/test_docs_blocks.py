"""The blocks of README.md and docs/ that are not Python (the Python ones run, see the root
``conftest.py``): every ``maintguard`` command line shown in a shell or console block is
one the command's parser accepts, every JSON and YAML block parses, and every metric a
PromQL query or an alerting rule uses is one maintguard exports. So a renamed option,
command or metric cannot leave a page that tells operators something that fails. (The
Redis ACL line is run against Redis by tests/test_redis.py; docs/benchmarks.md is
generated.)"""

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


@pytest.mark.parametrize(("where", "text"), blocks("yaml"), ids=lambda v: str(v)[:40])
def test_every_yaml_block_parses(where: str, text: str) -> None:
    import yaml

    assert list(yaml.safe_load_all(text))


def exported_names() -> set[str]:
    """Every sample name maintguard's Prometheus collector can export."""
    from prometheus_client import CollectorRegistry

    from maintguard.metrics import prometheus

    names = set()
    for family in prometheus.instrument(CollectorRegistry()).describe():
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def test_every_metric_a_query_or_rule_uses_is_exported() -> None:
    # PromQL is not run here (no Prometheus): the names it uses are checked instead.
    used = {
        (where, name)
        for where, text in blocks("promql", "yaml")
        for name in re.findall(r"\bmaintguard_[a-z_]+", text)
    }
    assert len(used) >= 8
    unknown = sorted(f"{where}: {name}" for where, name in used if name not in exported_names())
    assert not unknown, unknown
