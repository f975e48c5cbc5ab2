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

A hold entered inside work (an admin endpoint, a guarded job) finds that work's key on the
running stack and does not wait for it: nothing is marked per call for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import CodeType, FrameType
from typing import Any, Protocol

from .._state import Mode

__all__ = [
    "Judge",
    "Work",
    "current",
    "held",
    "inside_hold",
    "mark_held",
    "new_key",
    "own_keys",
    "work_frame",
]

new_key = itertools.count(1).__next__
"""A new work key (atomic: one C call)."""

Chain = int | tuple[int, Any]  # a key, or (key, the chain it runs inside)
current: ContextVar[Chain | None] = ContextVar("maintguard_work", default=None)
"""Guarded ``with`` blocks this context runs inside (no frame of ours runs their body)."""


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


_work_frames: dict[CodeType, str] = {}


def work_frame(code: CodeType, local: str) -> None:
    """Frames running ``code`` hold the key of their work in local variable ``local``.

    The hot paths (a request, a guarded call) mark nothing per call: a hold entered inside
    such work finds it on the running stack (:func:`own_keys`).
    """
    _work_frames[code] = local


def own_keys() -> frozenset[int]:
    """The work a hold entered here runs inside: its own request or guarded job.

    Found on this thread's running stack; on the stacks of the tasks this one runs on
    behalf of — the task waiting for this worker thread of ``anyio.to_thread`` (a sync
    endpoint) or ``trio.to_thread``, the tasks that started this one in an anyio task
    group or a trio nursery (a streamed response's body, the request's own tasks); and
    through :data:`current` for guarded ``with`` blocks.
    """
    keys: list[int] = []
    _frames_keys(sys._getframe(1), keys)
    for coro in _outer_coroutines():
        for _ in range(_MAX_DEPTH):
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is None:
                break
            _frame_key(frame, keys)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    chain = current.get()
    while isinstance(chain, tuple):
        keys.append(chain[0])
        chain = chain[1]
    if chain is not None:
        keys.append(chain)
    return frozenset(keys)


_MAX_DEPTH = 1000


def _frames_keys(frame: FrameType | None, keys: list[int]) -> None:
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return
        _frame_key(frame, keys)
        frame = frame.f_back


def _frame_key(frame: FrameType, keys: list[int]) -> None:
    local = _work_frames.get(frame.f_code)
    if local is not None:
        key = frame.f_locals.get(local)
        if isinstance(key, tuple) and len(key) == 2:  # an admission: (store, key)
            key = key[1]
        if isinstance(key, int) and key > 0:
            keys.append(key)


def _outer_coroutines() -> Iterator[Any]:
    """The coroutines of the tasks this code runs on behalf of, innermost first: the task
    waiting for this worker thread, then the tasks that started the current task."""
    waiting = _waiting_coroutine()
    if waiting is not None:
        yield waiting
    loop = asyncio._get_running_loop()
    if loop is not None:
        backend = sys.modules.get("anyio._backends._asyncio")
        states = getattr(backend, "_task_states", None)
        task = asyncio.current_task(loop)
        tasks: dict[int, Any] | None = None
        for _ in range(_MAX_DEPTH):
            parent_id = getattr(states.get(task), "parent_id", None) if states else None
            if parent_id is None:
                return
            if tasks is None:
                tasks = {id(t): t for t in asyncio.all_tasks(loop)}
            task = tasks.get(parent_id)
            if task is None:
                return
            yield task.get_coro()
        return
    trio = sys.modules.get("trio")
    if trio is None:
        return
    try:
        task = trio.lowlevel.current_task()
    except RuntimeError:  # not in trio
        return
    for _ in range(_MAX_DEPTH):
        nursery = task.parent_nursery
        if nursery is None:
            return
        task = nursery.parent_task
        yield task.coro


def _waiting_coroutine() -> Any:
    # In a worker thread of anyio.to_thread (asyncio) or trio.to_thread: the coroutine of
    # the task that waits for the thread.
    backend = sys.modules.get("anyio._backends._asyncio")
    if backend is not None:
        scope = getattr(getattr(backend, "threadlocals", None), "current_cancel_scope", None)
        task = getattr(scope, "_host_task", None)
        if task is not None:
            return task.get_coro()
    threads = sys.modules.get("trio._threads")
    if threads is not None:
        register = getattr(getattr(threads, "PARENT_TASK_DATA", None), "task_register", None)
        if register and register[0] is not None:
            return register[0].coro
    return None


held: ContextVar[tuple[Any, int, Any] | None] = ContextVar("maintguard_held", default=None)
"""The holds this context runs inside, newest first: ``(frames, frame key, older)``, where
``frames`` is the frame table of the hold's stack (not its controller: a mark left behind
keeps no controller alive).

A context copied from it (a task started, a worker thread of ``to_thread``) runs inside
them too. Links are not taken off at exit (an exit may run in another context): a link
whose frame has left counts for nothing, and the next entry drops such links at the head.
"""


def mark_held(ctrl: Any, key: int) -> None:
    """Code running in this context from now on runs inside frame ``key`` of ``ctrl``."""
    chain = held.get()
    while chain is not None and chain[1] not in chain[0]:
        chain = chain[2]  # its frame has left
    held.set((ctrl.stack._frames, key, chain))


def inside_hold(store: Any, scope: str | None) -> bool:
    """True when this context runs inside a live hold on ``store`` that refuses work of
    ``scope`` (the global scope's, or that scope's own): guards then let the maintenance
    job's own helpers work. A hold of another named scope lets nothing through."""
    chain = held.get()
    if chain is None:
        return False
    tables = {
        id(ctrl.stack._frames)
        for ctrl in store.controllers()
        if ctrl.scope is None or ctrl.scope == scope
    }
    while chain is not None:
        frames, key, chain = chain
        if key in frames and id(frames) in tables:
            return True
    return False
