"""Every snippet runs: the Python blocks of README.md and docs/**/*.md, and the ``>>>``
examples in the docstrings of maintguard/**/*.py, are collected as tests.

Sybil, not pytest's own ``--doctest-glob``/``--doctest-modules``: doctest only knows ``>>>``
sessions and compares printed output, while the docs are fenced Markdown blocks of plain
code (no prompts, no output to compare). Sybil finds both kinds, with the line each starts
on, gives a page one namespace (a later block may use what an earlier one defined, as a
reader does), and lets us add the fragment marker and top-level ``await`` in a few lines.

One test per page (not Sybil's one per block): a page's blocks depend on each other in
order, and pytest-xdist (``-n 2 --dist load``) would otherwise spread them over two
processes. A failure names the block's file and line; the test's report section
``snippets`` says how many blocks ran and which were fragments (``pytest -rA``).

A block that is only a fragment (it needs names it does not define, a server of its own, a
package maintguard does not depend on) is marked by this line directly above its fence::

    <!-- fragment: WHY -->

and is not run; every other block runs. Blocks may use ``await`` at top level, as in an
async REPL: such a block runs in a fresh event loop. Each page runs in a temporary working
directory of its own (relative paths such as ``file:maintenance.json`` land there), and the
default backend and the listeners it chose are forgotten after it, so no page leaks a store
or a webhook into the tests that run after it in the same process.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser
from sybil.parsers.rest import DocTestParser

FRAGMENT = re.compile(r"<!-- fragment: (?P<why>\S.*?) -->")


def run_python(example: Example) -> None:
    """Run one block; a block with top-level ``await`` runs in an event loop of its own."""
    source = "\n" * (example.line + example.parsed.line_offset) + str(example.parsed)
    code = compile(
        source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
    )
    result = eval(code, example.namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    example.namespace.pop("__builtins__", None)


class PythonBlocks:
    """Fenced ``python`` blocks; one with the fragment marker directly above is not run."""

    def __init__(self) -> None:
        self.blocks = CodeBlockParser(language="python", evaluator=run_python)

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.blocks(document):
            above = document.text[: region.start].rstrip("\n").rsplit("\n", 1)[-1]
            marker = FRAGMENT.fullmatch(above.strip())
            if marker is not None:
                region.evaluator = None  # Example.evaluate() leaves it alone
                region.parsed = marker["why"]
            yield region


markdown = Sybil(
    parsers=[PythonBlocks()],
    patterns=["README.md", "docs/*.md", "docs/**/*.md"],
)
docstrings = Sybil(
    parsers=[DocTestParser()],
    patterns=["maintguard/*.py", "maintguard/**/*.py"],
    excludes=["maintguard/__main__.py"],
)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SnippetFile | None:
    for sybil in (markdown, docstrings):
        if sybil.should_parse(file_path):
            return SnippetFile.from_parent(parent, path=file_path, sybil=sybil)
    return None


class SnippetFile(pytest.File):
    def __init__(self, *, sybil: Sybil, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sybil = sybil

    def collect(self) -> Iterator[pytest.Item]:
        document = self.sybil.parse(self.path)
        if any(True for _ in document.examples()):
            yield SnippetPage.from_parent(self, name="snippets", document=document)


class SnippetPage(pytest.Item):
    """Every block of one page, in order, in one namespace."""

    def __init__(self, *, document: Document, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.document = document

    def runtest(self) -> None:
        ran, fragments = 0, []
        namespace = self.document.namespace
        namespace["__name__"] = "__docs__"
        with _page_sandbox():
            for example in self.document.examples():
                if example.region.evaluator is None:
                    fragments.append(f"line {example.line}: {example.region.parsed}")
                    continue
                example.evaluate()
                ran += 1
        lines = [f"{ran} ran, {len(fragments)} fragments", *fragments]
        self.add_report_section("call", "snippets", "\n".join(lines))

    def _traceback_filter(self, excinfo: pytest.ExceptionInfo[BaseException]) -> Any:
        # Start the traceback at the failing block (pytest's own frames say nothing).
        traceback = excinfo.traceback
        for index, entry in enumerate(traceback):
            if Path(entry.path) == self.path:
                return traceback[index:]
        return traceback

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.name}: every snippet"


class _page_sandbox:
    """A temporary working directory; the default backend and new listeners undone after."""

    def __enter__(self) -> None:
        from maintguard._core import dispatch

        self.listeners = dispatch.listeners
        self.cwd = os.getcwd()
        self.tmp = tempfile.TemporaryDirectory(prefix="maintguard-docs-")
        os.chdir(self.tmp.name)

    def __exit__(self, *exc: object) -> None:
        import maintguard
        from maintguard._core import dispatch

        try:
            maintguard.flush_listeners()
            for listener in set(dispatch.listeners) - set(self.listeners):
                maintguard.remove_listener(listener)  # a page's webhook posts nothing after it
                hooks = sys.modules.get("maintguard.hooks")
                if hooks is not None and isinstance(listener, hooks.Webhook):
                    listener.close()
            maintguard.configure(backend=None)
        finally:
            os.chdir(self.cwd)
            self.tmp.cleanup()
