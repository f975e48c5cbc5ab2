"""The library's layout: no import cycles, no private names across modules, no frame
inspection, and a plain ``import maintguard`` loads no optional dependency.

The import graph is built from the source with :mod:`ast`: every ``import`` and ``from``
statement counts, wherever it stands (in a function, under ``TYPE_CHECKING``), since each
one ties the two modules together. Importing a submodule does not count as importing its
package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import maintguard

ROOT = Path(maintguard.__file__).parent
PACKAGE = "maintguard"
# What "this is the holder's own work" must never come from: frame locals, walking the
# stack, or anyio's and trio's private task data (a rename or an upgrade breaks them).
FRAME_NAMES = ("f_locals", "_getframe", "f_back", "f_globals", "gi_frame", "cr_frame")
PRIVATE_TASK_DATA = ("_task_states", "threadlocals", "PARENT_TASK_DATA", "parent_nursery")
# The one place allowed to look at frames: naming a hold object's owner by the file and line
# that made it (code positions only, once per object, never on a hot path, never locals).
OWNER_NAMING = ("maintguard/_holds.py", "_caller")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _imports(module: str) -> Iterator[tuple[str, str | None, int]]:
    """``(imported module, name taken from it or None, line)`` for every import statement."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in MODULES:
                    yield submodule, None, node.lineno  # `from . import io`: the module
                else:
                    yield target, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target in MODULES and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(group)) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    # A shortest path from the group's first module back to itself, within the group.
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return sorted(group)  # pragma: no cover - a strongly connected group has a cycle


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles among maintguard modules:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles
    )


def test_no_private_name_imported_from_another_module() -> None:
    found = []
    for module in MODULES:
        for target, name, line in _imports(module):
            private = name is not None and name.startswith("_") and not name.startswith("__")
            if private and target != module:
                found.append(
                    f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {name} from {target}"
                )
    assert not found, "private names imported from another module:\n" + "\n".join(
        "  " + f for f in found
    )


def test_no_private_attribute_of_another_module_is_read() -> None:
    # `dispatch._listeners` is an import of a private name by another route.
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        package = module if _is_package(module) else module.rpartition(".")[0]
        names = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    if f"{target}.{alias.name}" in MODULES:
                        names[alias.asname or alias.name] = f"{target}.{alias.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
                and names[node.value.id] != module
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(
                    f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value.id}.{node.attr}"
                )
    assert not found, "private attributes of other modules read:\n" + "\n".join(
        "  " + f for f in found
    )


def test_no_frame_inspection() -> None:
    found = []
    for path in MODULES.values():
        where = str(path.relative_to(ROOT.parent))
        allowed = _lines_of_function(path, OWNER_NAMING[1]) if where == OWNER_NAMING[0] else ()
        for number, text in enumerate(path.read_text().splitlines(), 1):
            for name in (*FRAME_NAMES, *PRIVATE_TASK_DATA):
                if name in text and not (number in allowed and name != "f_locals"):
                    found.append(f"{where}:{number}: {name}")
    assert not found, "the library inspects frames:\n" + "\n".join("  " + f for f in found)


def test_the_one_frame_look_is_only_the_owner_name() -> None:
    # _caller names where a hold object was made; it may not grow into finding work.
    path = ROOT / "_holds.py"
    allowed = _lines_of_function(path, OWNER_NAMING[1])
    body = "\n".join(path.read_text().splitlines()[min(allowed) - 1 : max(allowed)])
    assert "f_locals" not in body and "current_task" not in body
    assert body.rstrip().endswith('return f"{frame.f_code.co_filename}:{frame.f_lineno}"')


def _lines_of_function(path: Path, name: str) -> range:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            assert node.end_lineno is not None
            return range(node.lineno, node.end_lineno + 1)
    raise AssertionError(f"{path} has no function {name}")


# That `import maintguard` loads neither starlette nor redis: tests/test_core.py.
