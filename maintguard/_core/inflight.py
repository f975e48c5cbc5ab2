"""In-flight ordinary work of each store in this process, and what a drain waits for.

Guarded calls, and requests the middleware lets through while maintenance is off for
them, are *work*: each is an entry in its store's :class:`Work` from just before its
check until it ends (a request: when the app returns). Counting costs one dict insert
and one removal; whether a drain waits for an entry (its scope, an exempt route, a
read-only hold and a safe method) is judged only when a drain asks, by the face that
made the entry (its first item, a :class:`Judge`).

The entry is made *before* the work looks at the state, and a drain counts only after
its hold is visible: so either the drain counts the work, or the work sees maintenance
on and does not start.

Two context variables say what the running code is part of, so that neither rule needs
to look at stacks or at a concurrency library's internals:

- :data:`current_work`: the work this context runs inside (a request, a guarded call).
  A drained hold entered there does not wait for it (:func:`own_keys`).
- :data:`held`: the holds this context runs inside. Guarded calls made there are the
  maintenance job's own helpers and run (:func:`inside_hold`).

Each is set where the work or the hold begins and reset with its token where it ends, in
the same context. What copies the context inherits both: worker threads of
``anyio.to_thread``, ``asyncio.to_thread``, ``trio.to_thread`` and Starlette's thread
pool, tasks started in a task group or nursery, ``asyncio.create_task``. A task or thread
started from elsewhere (a worker loop running before the hold, ``threading.Thread``
without ``contextvars.copy_context().run``) does not.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Protocol, TypeAlias

from .._state import Mode

__all__ = [
    "HeldMark",
    "Judge",
    "Work",
    "WorkChain",
    "current_work",
    "held",
    "held_mark",
    "inside_hold",
    "mark_held",
    "new_key",
    "own_keys",
    "unmark_held",
]

new_key = itertools.count(1).__next__
"""A new work key (atomic: one C call). Keys are never used twice."""

WorkChain: TypeAlias = "tuple[int, WorkChain | None]"
current_work: ContextVar[WorkChain | None] = ContextVar("maintguard_work", default=None)
"""The work this context runs inside, innermost first: ``(key, outer chain)``.

Set as ``current_work.set((key, current_work.get()))`` where the work begins (the
middleware around the app call, a guard around the guarded call, each step of a guarded
generator) and reset with that token where it ends. A link left behind (a guarded block
left in another context) names work that has ended: its key is in no table any more, so
it excludes nothing.
"""


def own_keys() -> frozenset[int]:
    """The work a hold entered here runs inside: its own request or guarded job, and the
    work that one runs inside (nested)."""
    keys = []
    chain = current_work.get()
    while chain is not None:
        key, chain = chain
        keys.append(key)
    return frozenset(keys)


class Judge(Protocol):
    """What made an entry: says whether a drain of ``scope`` in ``mode`` waits for it."""

    def refused(self, entry: Any, scope: str | None, mode: Mode) -> bool: ...


class Work:
    """The in-flight work of one store in this process.

    ``live`` holds the entries of guarded calls, ``(guard, ...)``: each judged by its first
    item. A face with its own hot path (the middleware) keeps a table of its own, registered
    with :meth:`table`, whose entries it judges itself.
    """

    __slots__ = ("drains", "live", "tables")

    def __init__(self) -> None:
        self.live: dict[int, tuple[Any, ...]] = {}
        self.tables: list[tuple[Judge | None, dict[int, Any]]] = [(None, self.live)]
        self.drains: set[Callable[[], None]] = set()  # wakers of drains waiting here

    def table(self, judge: Judge) -> dict[int, Any]:
        """The table of ``judge``'s entries (made once per judge)."""
        for owner, table in self.tables:
            if owner is judge:
                return table
        table = {}
        self.tables = [*self.tables, (judge, table)]
        return table

    def end(self, key: int) -> None:
        """Guarded call ``key`` ended (more than once is fine); wake the drains that wait."""
        if self.live.pop(key, None) is not None and self.drains:
            self.wake()

    def wake(self) -> None:
        for waker in list(self.drains):
            with contextlib.suppress(Exception):  # its loop has ended
                waker()

    def suspend(self, keys: frozenset[int]) -> list[tuple[dict[int, Any], int, Any]]:
        """Take entries ``keys`` out of the count while their work waits in a drain of its
        own (as a waiting guard is not in flight): two jobs that each drain must not wait
        for each other. :meth:`resume` puts them back."""
        taken = []
        for _, table in self.tables:
            for key in keys:
                entry = table.pop(key, None)
                if entry is not None:
                    taken.append((table, key, entry))
        if taken and self.drains:
            self.wake()
        return taken

    @staticmethod
    def resume(taken: list[tuple[dict[int, Any], int, Any]]) -> None:
        for table, key, entry in taken:
            table[key] = entry

    def total(self, exclude: frozenset[int] = frozenset()) -> int:
        """How many entries are in flight, less ``exclude``: what a cordon's drain waits
        for (all of this process's work, whatever its scope or route)."""
        return sum(1 for _, table in self.tables for key in list(table) if key not in exclude)

    def count(
        self,
        scope: str | None,
        mode: Mode,
        exclude: frozenset[int],
        judged: dict[int, bool],
    ) -> int:
        """How many entries a drain of ``scope`` in ``mode`` waits for, less ``exclude``.

        ``judged`` remembers each entry's answer across the counts of one drain.
        """
        n = 0
        for judge, table in self.tables:
            for key, entry in list(table.items()):
                if key in exclude:
                    continue
                verdict = judged.get(key)
                if verdict is None:
                    try:
                        verdict = (judge or entry[0]).refused(entry, scope, mode)
                    except Exception:  # cannot tell: wait for it (fail closed)
                        verdict = True
                    judged[key] = verdict
                n += verdict
        return n


HeldMark: TypeAlias = "list[Any]"
"""One entry of a hold, as the contexts that run inside it see it: ``[frames, key, token,
work, again]``.

``frames`` is the frame table of the hold's stack (not its controller: a mark left behind
keeps no controller alive), ``key`` the entry's frame there, 0 once the entry has ended
(wherever its exit ran): from then on the mark counts for nothing in any context that still
links it (a copy of the context, or the context of an entry left elsewhere). ``token`` is
that of the :func:`mark_held` set, until the link is taken off; ``work`` the key of the
work the entry was made in (0: none; see :data:`marks_of_work`); ``again`` how many more
entries of the same object the context inside it made on its frame (each exit there counts
one down before the link is taken off: no link per nesting level). A list: made and
changed at every entry and exit, where a class would cost more than the rest of the mark.
"""


def held_mark(ctrl: Any, key: int) -> HeldMark:
    mark: HeldMark = [ctrl.stack.frames, key, None, 0, 0]
    entered_in_work(mark)
    return mark


marks_of_work: dict[int, dict[int, HeldMark]] = {}
"""Hold entries made inside a piece of work (a request, a guarded call), by the work's key.

Code of that work runs inside them even where the entering context's mark does not reach:
FastAPI runs a sync ``yield`` dependency's first half in a worker thread, in a copy of the
request's context, so a hold it enters marks only that copy; the endpoint, run in the
request's own context afterwards, is inside the hold all the same."""


def entered_in_work(mark: HeldMark) -> None:
    """Record ``mark`` against the work this context runs inside (if any)."""
    work = current_work.get()
    if work is not None:
        mark[3] = key = work[0]
        found = marks_of_work.get(key)
        if found is None:
            found = marks_of_work[key] = {}
        found[id(mark)] = mark


def ended(mark: HeldMark) -> None:
    """``mark``'s entry ended (wherever its exit runs): it counts for nothing from now on."""
    mark[1] = 0
    key = mark[3]
    if key:
        found = marks_of_work.get(key)
        if found is not None:
            found.pop(id(mark), None)
            if not found:
                marks_of_work.pop(key, None)


HeldChain: TypeAlias = "tuple[HeldMark, HeldChain | None]"
held: ContextVar[HeldChain | None] = ContextVar("maintguard_held", default=None)
"""The hold entries this context runs inside, newest first: ``(mark, older chain)``.

A decorated call or a ``with`` block links its mark on entry (:func:`mark_held`) and takes
it off on exit (:func:`unmark_held`). A context copied from it (a task started, a worker
thread of ``to_thread``) runs inside the same entries until they end.
"""


def mark_held(mark: HeldMark) -> None:
    """Code running in this context from now on runs inside ``mark``'s entry."""
    chain = held.get()
    while chain is not None and chain[0][1] not in chain[0][0]:
        chain = chain[1]  # entries that ended elsewhere: their links go
    mark[2] = held.set((mark, chain))


def unmark_held(mark: HeldMark, chain: HeldChain | None) -> None:
    """``mark``'s entry ended, wherever this runs (``chain``: :data:`held` here, as just
    read). In the context that linked it, its link is taken off when nothing live was linked
    since, and so are ended links below it that were linked here (an exit out of order
    leaves its link, which counts for nothing, until then). O(1) for each link taken off."""
    ended(mark)
    while chain is not None:
        link = chain[0]
        token = link[2]
        if link[1] or token is None:  # a live entry on top, or a link taken off already
            return
        try:
            held.reset(token)
        except (ValueError, RuntimeError):  # linked in the context this one copies
            return
        link[2] = None
        chain = token.old_value
        if chain is Token.MISSING:
            return


def inside_hold(store: Any, scope: str | None) -> bool:
    """True when this context runs inside a live hold entry on ``store`` that refuses work
    of ``scope`` (the global scope's, or that scope's own): guards then let the maintenance
    job's own helpers work. A hold of another named scope lets nothing through."""
    chain = held.get()
    work = current_work.get()
    if chain is None and (work is None or not marks_of_work):
        return False
    tables = {
        id(ctrl.stack.frames)
        for ctrl in store.controllers()
        if ctrl.scope is None or ctrl.scope == scope
    }
    while chain is not None:
        mark, chain = chain
        if mark[1] in mark[0] and id(mark[0]) in tables:
            return True
    while work is not None:  # entries made inside this context's work, elsewhere
        key, work = work
        found = marks_of_work.get(key)
        if found:
            for mark in list(found.values()):
                if mark[1] in mark[0] and id(mark[0]) in tables:
                    return True
    return False
