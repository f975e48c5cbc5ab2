"""What the parts of a scope controller share, and how they see their store.

A :class:`~.controller.ScopeController` is made of parts, one job each: the decisions
(:class:`.decide.Book`), the snapshots readers see (:mod:`.snapshots`), reading and
``on_error`` (:mod:`.reading`), writes and leases (:mod:`.persist`), operators' writes
(:mod:`.operators`). :class:`Scope` is their common base: the scope's identity, its lock,
and telling what changed (named scopes, wakers, listeners). The parts see the registry's
``Store`` through :class:`StoreView`, so that none of them imports the registry (which
builds controllers from them).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from .._state import EventKind, MaintenanceEvent, MaintenanceState, Phase, StoredState
from .._windows import plan_due, planned
from ..backends import Backend
from . import dispatch
from .decide import Book, Change
from .identity import new_id
from .inflight import Work

__all__ = ["Scope", "StoreView"]


class StoreView(Protocol):
    """What a scope controller uses of its store (:class:`.registry.Store`)."""

    backend: Backend
    clock: Callable[[], float]
    write_lock: threading.Lock
    sequence: itertools.count[int]
    used: bool
    has_children: bool
    held: set[Any]
    seen: Mapping[str | None, StoredState]
    noted_error: str | None
    read_error: Exception | None
    worker_id: str
    work: Work
    wake_watcher: Callable[[], None] | None

    def children(self) -> Sequence[Any]: ...
    def named_changed(self) -> None: ...
    def read_ok(self) -> None: ...
    def note_error(self, message: str) -> bool: ...
    def watch(self) -> Callable[[], None]: ...


class Scope(Book):
    """One (store, scope) in this process: what every part of its controller knows."""

    def __init__(self, store: StoreView, scope: str | None, parent: Scope | None) -> None:
        backend = store.backend
        super().__init__(backend.stores_holds, new_id())
        self.store = store
        self.backend = backend
        self.scope = scope
        self.parent = parent
        self.where = backend.describe()
        self.label = self.where + ("" if scope is None else f" scope {scope!r}")
        self._lock = threading.Lock()
        self.wakers: set[Callable[[], None]] = set()  # see .changes; called on transitions

    if TYPE_CHECKING:

        @property
        def snapshot(self) -> MaintenanceState: ...

    def plan_ahead(self, now: datetime) -> None:
        """Plan recurring windows again when fewer than two planned occurrences are left
        (the watcher calls this at every boundary, so deciding needs no cron)."""
        stored = self.stored
        if stored is not None and stored.windows and plan_due((stored,), now):
            with self._lock:
                if self.stored is stored:
                    self.stored = planned(stored, now, self.label)
                    self.quiet_until = -math.inf
                    self.version += 1

    def parent_phase(self) -> Phase:
        """The global scope's phase for a named scope (OFF for the global scope itself)."""
        parent = self.parent
        return Phase.OFF if parent is None else parent.phase

    def _recompute(self, now: float) -> Change:
        # Under the lock.
        return self.recompute(now, self.parent_phase())

    def _announce(
        self,
        change: Change,
        kind: EventKind | None,
        owner: str | None = None,
        *,
        actor: str | None = None,
    ) -> None:
        # Outside the lock: tell named scopes, then build events only for whoever hears.
        # `actor`: who made the operator's write that caused the change (None: no one here).
        transition, own_changed = change
        if self.parent is None:
            if transition is not None and self.store.has_children:
                for child in self.store.children():
                    child._parent_changed(actor)
        elif own_changed:
            self.store.named_changed()
        if transition is not None and self.wakers:
            for waker in list(self.wakers):  # hands a wake-up to a loop or thread: cheap
                with contextlib.suppress(Exception):  # its loop has ended
                    waker()
        events: list[MaintenanceEvent] = []
        if transition is not None and dispatch.listening():
            events.append(self._event(EventKind.TRANSITION, previous=transition[0], actor=actor))
        if kind is not None and dispatch.listeners:
            events.append(self._event(kind, owner=owner))
        if events:
            dispatch.emit(events)

    def _event(self, kind: EventKind, **details: Any) -> MaintenanceEvent:
        state = self.snapshot
        if kind is EventKind.TRANSITION:
            details["phase"] = state.phase
        return MaintenanceEvent(kind, self.scope, self.where, state, **details)

    def _parent_changed(self, actor: str | None = None) -> None:
        with self._lock:
            self.version += 1
            change = self._recompute(self.store.clock())
        self._announce(change, None, actor=actor)
