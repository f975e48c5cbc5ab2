"""Every snippet runs: the Python blocks of README.md and docs/**/*.md, and the ``>>>``
examples in the docstrings of maintguard/**/*.py, are collected as tests.

Sybil, not pytest's own ``--doctest-glob``/``--doctest-modules``: doctest only knows ``>>>``
sessions and compares printed output, while the docs are fenced Markdown blocks of plain
code (no prompts, no output to compare). Sybil runs both kinds, each block as one pytest
item (so ``-n 2`` spreads them and ``-k`` picks them), shares one namespace per page (a
later block may use what an earlier one defined, as a reader does), and lets us add the
fragment marker and top-level ``await`` below in a few lines.

A block that is only a fragment (it needs names it does not define, a server of its own,
a package maintguard does not depend on) is marked by this line directly above its fence::

    <!-- fragment: WHY -->

and is reported as skipped with that reason; every other block runs. Blocks may use
``await`` at top level, as in an async REPL: such a block runs in a fresh event loop.
Each page runs in a temporary working directory of its own (relative paths such as
``file:maintenance.json`` land there), and the chosen default backend and the listeners it
added are forgotten after it, so no page leaks a store or a webhook into the tests that run
after it in the same process.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.integration.pytest import SybilItem
from sybil.parsers.markdown import CodeBlockParser
from sybil.parsers.rest import DocTestParser

FRAGMENT = re.compile(r"<!-- fragment: (?P<why>\S.*?) -->\s*$")


def run_python(example: Example) -> None:
    """Run one block; a block with top-level ``await`` runs in an event loop of its own."""
    source = "\n" * (example.line + example.parsed.line_offset - 1) + str(example.parsed)
    code = compile(
        source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    example.namespace.pop("__builtins__", None)


class PythonBlocks:
    """Fenced ``python`` blocks; one with the fragment marker directly above is skipped."""

    def __init__(self) -> None:
        self.blocks = CodeBlockParser(language="python", evaluator=run_python)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.blocks(document):
            above = document.text[: region.start].rstrip("\n").rsplit("\n", 1)[-1]
            marker = FRAGMENT.match(above.strip())
            if marker is not None:
                region.evaluator = _skip(marker["why"])
            yield region


def _skip(why: str) -> Any:
    def skip(example: Example) -> None:
        pytest.skip(f"fragment: {why}")

    return skip


def _setup(namespace: dict[str, Any]) -> None:
    from maintguard._core import dispatch

    namespace["__name__"] = "__docs__"
    namespace["_listeners"] = dispatch.listeners
    namespace["_cwd"] = os.getcwd()
    namespace["_tmp"] = tempfile.TemporaryDirectory(prefix="maintguard-docs-")
    os.chdir(namespace["_tmp"].name)


def _teardown(namespace: dict[str, Any]) -> None:
    import maintguard
    from maintguard._core import dispatch

    maintguard.flush_listeners()
    for listener in set(dispatch.listeners) - set(namespace["_listeners"]):
        maintguard.remove_listener(listener)  # a page's webhook posts nothing after it
        hooks = sys.modules.get("maintguard.hooks")
        if hooks is not None and isinstance(listener, hooks.Webhook):
            listener.close()
    maintguard.configure(backend=None)
    os.chdir(namespace["_cwd"])
    namespace["_tmp"].cleanup()


markdown = Sybil(
    parsers=[PythonBlocks()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
    setup=_setup,
    teardown=_teardown,
    name="docs",
)
docstrings = Sybil(
    parsers=[DocTestParser()],
    patterns=["maintguard/*.py", "maintguard/**/*.py"],
    excludes=["maintguard/__main__.py"],
    setup=_setup,
    teardown=_teardown,
    name="docstrings",
)

pytest_collect_file = (markdown + docstrings).pytest()


def _traceback_filter(self: SybilItem, excinfo: Any) -> Any:
    # Sybil 10 cuts the traceback at its own frame and indexes the entry after it, which
    # is missing when a block fails in a later item of a page (pytest then stops with an
    # INTERNALERROR instead of the block's error): show the whole traceback then.
    try:
        return _sybil_traceback_filter(self, excinfo)
    except IndexError:
        return excinfo.traceback


_sybil_traceback_filter = SybilItem._traceback_filter
SybilItem._traceback_filter = _traceback_filter  # type: ignore[method-assign]
