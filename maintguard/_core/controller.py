"""One (store, scope) in this process: the coordinator of its parts; and the store.

A :class:`ScopeController` is made of one part per job, each in its own module:

- :mod:`.decide` — the decisions (enter, commit, abort, leave, drains, the phase), plain
  methods over values that return what to do;
- :mod:`.snapshots` — the effective state readers see, derived and cached;
- :mod:`.reading` — taking reads, and ``on_error`` when one fails;
- :mod:`.persist` — writing this process's record in order, renewing its lease;
- :mod:`.operators` — operators' writes (the explicit state, forced removals).

The controller itself only coordinates: it takes its thread lock around each decision
(holds are entered from asyncio, trio and threads at once), then applies what was
decided outside it: the store's ``held`` set, and telling named scopes, wakers and
listeners (events are built only when someone will hear them). The caller (a hold face)
makes the writes a decision asks for.

A :class:`Store` is what every backend object naming one store shares in this process:
its scope controllers and what they share (see :mod:`.registry` for which store a backend
object names).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .._state import EventKind, StoredState
from ..backends import Backend
from . import dispatch
from .decide import NO_CHANGE, Change
from .identity import new_id
from .inflight import Work
from .operators import Operators, read_only_error
from .reading import Reading, as_backend_error, refresh_store
from .snapshots import Snapshots
from .stack import Presents

__all__ = [
    "ScopeController",
    "Store",
    "as_backend_error",
    "plug_watcher",
    "read_only_error",
    "refresh_stale",
    "refresh_store",
]

logger = logging.getLogger("maintguard")
_level_of = dispatch.level_cache.get  # (logging clears its cache in place: the same dict)
_INFO = logging.INFO
"""``_level_of(_INFO, True)``: whether a transition may be logged (logging's own cache; not
known yet: _announce asks)."""
_HOLD_ACQUIRED, _HOLD_RELEASED = EventKind.HOLD_ACQUIRED, EventKind.HOLD_RELEASED


class ScopeController(Snapshots, Reading, Operators):
    """The hold stack, cached stored state and phase of one (store, scope) in this process."""

    parent: ScopeController | None
    store: Store

    def __init__(
        self,
        store: Store,
        scope: str | None,
        parent: ScopeController | None,
    ) -> None:
        super().__init__(store, scope, parent)

    def after_fork(self) -> None:
        """In a forked child: hold nothing of the parent, renew nothing, new locks.

        The stored state read stays: the parent's record in it now counts as another
        process's hold, which is what the parent's hold is to the child.
        """
        self._lock = threading.Lock()
        self.forget_holds(new_id())
        self.forget_writes()
        self.wakers = set()
        self._snap = None
        self._recompute(self.store.clock())

    # -- the hold path: decide under the lock, then apply ---------------------------------

    def enter(self, presents: Presents, keys: list[int], drain: bool = False) -> int | None:
        """Enter one more frame presenting ``presents`` for the hold object whose frames
        here are ``keys`` (oldest first; the frame's key is appended to it).

        ``drain``: the frame drains (see :meth:`begin_drain`) until :meth:`end_drain`.
        Returns ``None`` when the entry is done. Returns the new frame's key when its record
        must be stored first: the caller writes, then calls :meth:`commit` on success or
        :meth:`abort` on any failure; until then nobody sees the frame.
        """
        store = self.store
        parent = self.parent
        lock = self._lock
        lock.acquire()  # (acquire/finally: half the cost of `with` on this path)
        try:
            if parent is None:
                change = self.decide_enter(presents, keys, drain, store.clock)
            else:
                change = self.decide_enter(presents, keys, drain, store.clock, parent.phase)
                if change.__class__ is tuple and len(self.stack.frames) == 1:
                    store.held.add(self)  # a named scope lives while it holds (the root always)
        finally:
            lock.release()
        if change is NO_CHANGE:
            if dispatch.listeners:
                self._announce_entry(change, presents.owner, keys)
            return None
        if change.__class__ is int:
            return change
        if (
            dispatch.listeners
            or parent is not None
            or store.has_children
            or self.wakers
            or _level_of(_INFO, True)
        ):
            self._announce_entry(change, presents.owner, keys)  # type: ignore[arg-type]
        return None

    def commit(self, key: int, keys: list[int]) -> None:
        """The record of an entering frame is stored: readers see the frame from now on."""
        with self._lock:
            change = self.decide_commit(key, keys, self.store.clock(), self.parent_phase())
            if change is None:  # pragma: no cover - a fork came between
                return
            if len(self.stack) == 1:
                self.store.held.add(self)
            owner = self.stack.frames[key][0].owner
        self._announce_entry(change, owner, keys)

    def abort(self, key: int) -> None:
        """An entry failed: forget the frame (nobody saw it); a write must follow."""
        with self._lock:
            self.decide_abort(key)

    def leave(self, keys: list[int], frame_key: int = 0) -> bool | None:
        """Count the newest entry of ``keys`` out (of frame ``frame_key`` when given: see
        :meth:`decide_leave`); True when the stored record must follow.

        ``None`` when ``keys`` is empty (exited more often than entered). A frame that is
        not here (entered before this process forked) changes nothing.
        """
        store = self.store
        parent = self.parent
        lock = self._lock
        lock.acquire()
        try:
            if parent is None:
                left = self.decide_leave(keys, store.clock, None, frame_key)
            else:
                left = self.decide_leave(keys, store.clock, parent.phase, frame_key)
                if (
                    left is not None
                    and left[0] is not None
                    and left[0][2] <= 0
                    and not self.stack.frames
                ):
                    store.held.discard(self)
        finally:
            lock.release()
        if left is None:
            return None
        frame, write, change = left
        if frame is None:
            return False
        if change is NO_CHANGE:  # (also a frame counted down: it stays)
            if not dispatch.listeners:
                return write
        elif not (
            dispatch.listeners
            or parent is not None
            or store.has_children
            or self.wakers
            or _level_of(_INFO, True)
        ):
            return write
        try:
            self._announce(change, _HOLD_RELEASED, frame[0].owner)
        except BaseException:  # (a log handler hit by Ctrl-C): the release still lands
            if write:
                self._release_quietly()  # blocking, but only on this way out
            raise
        return write

    def _announce_entry(self, change: Change, owner: str, keys: list[int]) -> None:
        # All or nothing: an entry interrupted while telling of it (a log handler hit by
        # Ctrl-C) is undone before the interruption goes on.
        try:
            self._announce(change, _HOLD_ACQUIRED, owner)
        except BaseException:
            if self.leave(keys):
                self._release_quietly()  # blocking, but only on this way out
            raise

    # -- drains ----------------------------------------------------------------------------

    def begin_drain(self) -> str:
        """A hold about to be entered waits for in-flight work first: until
        :meth:`end_drain`, this process's record asks others to report (phase DRAINING)."""
        with self._lock:
            token, change = self.decide_begin_drain(self.store.clock(), self.parent_phase())
        self._announce(change, None)
        return token

    def end_drain(self, key: int | None = None) -> bool:
        """A drain is over (finished, timed out or abandoned); True when the stored record
        must follow (write it, as after :meth:`leave`)."""
        with self._lock:
            write, change = self.decide_end_drain(key, self.store.clock(), self.parent_phase())
        self._announce(change, None)
        return write

    def drain_event(self, kind: EventKind, owner: str, **details: Any) -> None:
        if dispatch.listeners:
            dispatch.emit([self._event(kind, owner=owner, **details)])

    # -- writes the watcher and the faces claim -------------------------------------------

    def claim_release(self) -> bool:
        """A release failed and nothing is held now: the stored record may still be there.
        True (one more write counted) when the caller should write again to remove it."""
        with self._lock:
            return self.claim_release_unwritten()

    def release_pending(self) -> bool:
        """This process holds nothing here, but its last release could not be written: its
        stored record counts until it is removed (by a retry) or its lease runs out."""
        with self._lock:
            return self.release_unwritten()

    def claim_lost(self) -> bool:
        """This process holds here, but the copy just read lacks its record (a restarted or
        flushed store, an operator's ``off --force``, a write that failed): True (one more
        write counted) when the caller should write it again now, not at the next renewal."""
        with self._lock:
            return self.claim_lost_record()

    def sync_record(self) -> bool:
        """True when the stored record no longer matches the stack (a write must follow)."""
        with self._lock:
            return self.claim_sync()

    # -- holds left behind (the pytest plugin) ---------------------------------------------

    def entries(self) -> dict[int, tuple[int, Presents]]:
        """Each entered frame's entry count and what it presents (to find holds left
        behind: a test compares them before and after)."""
        with self._lock:
            return self.stack.counts()

    def end_entries(self, key: int, count: int) -> None:
        """End ``count`` entries of frame ``key`` wherever it stands (a hold a test left
        behind), as that many exits would."""
        for _ in range(count):
            if self.leave([key]):
                self._release_quietly()


class Store:
    """What every backend object naming one store shares in this process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.options = backend.options()
        self.clock: Callable[[], float] = time.time  # wall-clock seconds; tests fake it
        self.lock = threading.Lock()  # the scope table and the watcher count
        self.write_lock = threading.Lock()  # serialises this process's writes
        self.sequence = itertools.count(1)  # numbers writes in the order they run
        self.used = False  # once read or written, read errors follow on_error
        self.named_active = False  # some named scope is on by its own state
        self.has_children = False  # a named scope was ever asked for
        self.watchers = 0
        self.watching = False
        # Set by a running watcher: wakes it (from any thread) to look at the times again,
        # e.g. after this process scheduled a window that starts before its next wake-up.
        self.wake_watcher: Callable[[], None] | None = None
        self.work = Work()  # this process's in-flight work on the store
        self.seen: Mapping[str | None, StoredState] = {}  # every scope the last read returned
        # Presence (see .presence): this process's record in a shared store.
        self.worker_id = new_id()
        self.reported: tuple[tuple[str, int], ...] | None = None  # as written; None: absent
        self.report_waker: Callable[[], None] | None = None  # in work.drains while reporting
        self.present = False  # joined (a middleware, a guard): the watcher keeps the record
        self.presence_at = -math.inf
        self.presence_failing = False
        self.judged: dict[str, dict[int, bool]] = {}  # per drain token: entries judged
        self.noted_error: str | None = None
        self.read_error: Exception | None = None  # why the last read failed; None: it worked
        self._scopes: weakref.WeakValueDictionary[str, ScopeController] = (
            weakref.WeakValueDictionary()
        )
        self.held: set[ScopeController] = set()  # controllers with frames entered: kept
        self.root = ScopeController(self, None, None)

    def controller(self, scope: str | None) -> ScopeController:
        if scope is None:
            root = self.root
            if root.stored is None:
                root.start()
            return root
        ctrl = self._scopes.get(scope)
        if ctrl is None:
            with self.lock:
                ctrl = self._scopes.get(scope)
                if ctrl is None:
                    ctrl = self._scopes[scope] = ScopeController(self, scope, self.root)
                    self.has_children = True
        if ctrl.stored is None:
            ctrl.start()
        return ctrl

    def watch(self) -> Callable[[], None]:
        """Keep this store fresh in the background (see :mod:`.watcher`); returns ``stop``."""
        if _watcher is None:  # pragma: no cover - the watcher plugs itself in at import
            raise RuntimeError("maintguard's watcher is not loaded")
        return _watcher(self.backend)

    def children(self) -> list[ScopeController]:
        return list(self._scopes.values())

    def controllers(self) -> list[ScopeController]:
        return [self.root, *self._scopes.values()]

    def named_changed(self) -> None:
        self.named_active = any(c.own_active for c in self.children())

    def read_ok(self) -> None:
        self.used = True
        self.read_error = None
        if self.noted_error is not None:
            self.noted_error = None
            logger.info("%s: maintenance state readable again", self.backend.describe())

    def note_error(self, message: str) -> bool:
        """Log a read error once while it lasts; True when it is new."""
        if message == self.noted_error:
            return False
        self.noted_error = message
        logger.warning("%s", message)
        return True

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.work = Work()  # the parent's work is not this process's
        self.worker_id = new_id()
        self.reported = None
        self.report_waker = None
        self.presence_at = -math.inf
        self.judged = {}
        self.held = set()
        for ctrl in self.controllers():
            ctrl.after_fork()


_watcher: Callable[[Backend], Callable[[], None]] | None = None


def plug_watcher(watch: Callable[[Backend], Callable[[], None]]) -> None:
    """The watcher (which builds on the controllers) plugs itself in for :meth:`Store.watch`."""
    global _watcher
    _watcher = watch


async def refresh_stale(ctrl: ScopeController) -> None:
    """One store read for ``ctrl``'s scope and the global scope it follows, when either is
    stale (older than ``refresh_interval``, or a lease in its copy is due)."""
    stale = [c for c in (ctrl.parent, ctrl) if c is not None and c.stale()]
    if stale:
        await refresh_store(ctrl.store, stale, may_raise=True)
