"""MkDocs hooks: the CLI reference is written from the argparse parser at build time.

``docs/reference/cli.md`` holds the marker ``<!-- maintguard-cli-help -->``; every build
replaces it with ``maintguard --help`` and each command's ``--help`` (``schedule``'s
``list`` and ``cancel`` too), taken from ``maintguard._cli._parser()``, so the page
cannot drift from the command line. ``tests/test_docs_reference.py`` checks that every
command is named.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- maintguard-cli-help -->"
WIDTH = "88"  # argparse wraps at $COLUMNS: a fixed width, so every build writes the same page


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for name, sub in _subcommands(parser).items():
        yield from _walk(sub, (*path, name))


def cli_reference() -> str:
    """The markdown for every command's ``--help``, parser by parser."""
    from maintguard._cli import _parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        sections = []
        for path, parser in _walk(_parser()):
            command = " ".join(("maintguard", *path))
            level = "#" * min(2 + max(len(path) - 1, 0), 4)
            title = f"`{command}`" if path else "`maintguard` (every command)"
            anchor = "-".join(("cmd", *path)) if path else "cmd-maintguard"
            sections.append(
                f"{level} {title} {{#{anchor}}}\n\n"
                f"```text\n$ {command} --help\n{parser.format_help().rstrip()}\n```\n"
            )
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
