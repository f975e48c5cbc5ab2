"""One (store, scope) in this process: its hold stack, the stored state last read, the phase.

Decisions are synchronous and taken under the controller's thread lock (holds are entered
from asyncio, trio and threads at once); I/O happens after deciding, through :mod:`.io`;
events are built only when someone will hear them and leave through :mod:`.dispatch`.

Writes *reconcile*: a write stores this process's hold record as the stack is at the moment
of writing, so writes that land in any order still leave the store matching the stack, and
a read that started before a write landed never replaces what the write stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._state import (
    EPOCH,
    EventKind,
    ExplicitState,
    MaintenanceEvent,
    MaintenanceState,
    Phase,
    StoredState,
    derive,
)
from ..backends._writes import PutHold, SetExplicit, Write
from ..exceptions import BackendError, MaintGuardError, PartialReadError, ReadOnlyBackendError
from . import dispatch, io
from .stack import Details, HoldStack, Presents, details_of, new_key, record, to_datetime

if TYPE_CHECKING:
    from .registry import Store

__all__ = ["HOST", "ScopeController", "refresh_store"]

logger = logging.getLogger("maintguard")
HOST = socket.gethostname()
EMPTY = StoredState()
_UNKNOWN = ("unknown",)  # the record as stored is not known: the next change writes it
Transition = tuple[Phase, Phase] | None
_NO_CHANGE: tuple[Transition, bool] = (None, False)
_ON, _OFF, _DRAINING = Phase.ON, Phase.OFF, Phase.DRAINING
_may_log = functools.partial(dispatch._level_cache.get, logging.INFO, True)
"""Whether a transition may be logged (logging's own cache; not known yet: _announce asks)."""


class ScopeController:
    """The hold stack, cached stored state and phase of one (store, scope) in this process."""

    def __init__(
        self,
        store: Store,
        scope: str | None,
        parent: ScopeController | None,
    ) -> None:
        self.store = store
        self.backend = store.backend
        self.scope = scope
        self.parent = parent
        self.where = store.backend.describe()
        self.label = self.where + ("" if scope is None else f" scope {scope!r}")
        self._stores_holds = store.backend.stores_holds
        self._lock = threading.Lock()
        self.stack = HoldStack()  # entered frames: readers see them
        self.entering = HoldStack()  # frames whose record is being written: not seen yet
        self.hold_id = _new_hold_id()
        self.stored: StoredState | None = None  # None: never read
        self.read_at = -math.inf
        self.version = 0  # bumps on every change a reader could see
        self.writes = 0  # completed writes: a read that started before one is dropped
        self.active = False
        self.own_active = False  # active through this scope's own state (not the parent's)
        self.phase = Phase.OFF
        self._snap: MaintenanceState | None = None
        self._snap_parent = -1
        self._deadline = math.inf  # clock time when the snapshot goes stale by itself
        self.lease_due = math.inf  # clock time when a lease in the copy runs out: read then
        self._written: tuple[object, ...] | None = None  # presented details last stored
        self._inflight = 0
        self._applied = 0  # the newest write whose result this controller holds
        self._renewal: object | None = None  # the running renewal's token
        self._unwatch: Callable[[], None] | None = None  # the store is watched while held
        self.wakers: set[Callable[[], None]] = set()  # see .changes; called on transitions
        self.drain_token: str | None = None  # while drains wait here: what others report for
        self._drains = 0  # drains waiting for in-flight work before their bodies run
        self._draining: set[int] = set()  # the entered frames of those drains
        self._drain_seq = 0

    def after_fork(self) -> None:
        """In a forked child: hold nothing of the parent, renew nothing, new locks.

        The stored state read stays: the parent's record in it now counts as another
        process's hold, which is what the parent's hold is to the child.
        """
        self._lock = threading.Lock()
        self.stack.clear()
        self.entering.clear()
        self.hold_id = _new_hold_id()
        self._written = None
        self._inflight = 0
        self._renewal = None
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:  # the parent's holds kept the store watched, not ours
            unwatch()
        self.wakers = set()
        self.drain_token = None
        self._drains = 0
        self._draining = set()
        self.version += 1
        self._snap = None
        self._recompute(self.store.clock())

    # -- the hold path: pure decisions under the lock -------------------------------------

    def enter(self, presents: Presents, keys: list[int], drain: bool = False) -> int | None:
        """Enter one more frame presenting ``presents`` for the hold object whose frames
        here are ``keys`` (oldest first; the frame's key is appended to it).

        ``drain``: the frame drains (see :meth:`begin_drain`) until :meth:`end_drain`.
        Returns ``None`` when the entry is done. Returns the new frame's key when its record
        must be stored first: the caller writes, then calls :meth:`commit` on success or
        :meth:`abort` on any failure; until then nobody sees the frame.
        """
        change = _NO_CHANGE
        store = self.store
        lock = self._lock
        lock.acquire()  # (acquire/finally: half the cost of `with` on this path)
        try:
            # The object entered again while its own frame is the top: count on that frame.
            again = keys and self.stack.again(keys[-1])
            if again and drain:
                self._draining.add(keys[-1])
            if not again:
                started = store.clock()
                key = new_key()
                if drain:
                    self._draining.add(key)
                if self._stores_holds:
                    self.entering.push(key, presents, started)
                    if self._inflight or self._presented() != self._written:
                        self._inflight += 1
                        return key
                    self.entering.remove(key)
                keys.append(key)
                self.version += 1
                self._snap = None
                if self.stack.push(key, presents, started):  # the first frame: on by itself
                    if self.parent is not None:  # (a store keeps its root controller)
                        store.held.add(self)  # lives while it holds, if nothing else does
                    own_changed = not self.own_active
                    self.own_active = True
                    if not self.active:
                        self.active = True
                        phase = _DRAINING if drain else _ON
                        change = ((self.phase, phase), own_changed)
                        self.phase = phase
                    elif own_changed:
                        change = (None, True)
        finally:
            lock.release()
        if dispatch._listeners or (
            change is not _NO_CHANGE
            and (self.parent is not None or store.has_children or self.wakers or _may_log())
        ):
            self._announce_entry(change, presents.owner, keys)
        return None

    def commit(self, key: int, keys: list[int]) -> None:
        """The record of an entering frame is stored: readers see the frame from now on."""
        with self._lock:
            frame = self.entering.remove(key)
            if frame is None:  # pragma: no cover - a fork came between
                return
            keys.append(key)
            self.version += 1
            self._snap = None
            change = _NO_CHANGE
            if self.stack.push(key, frame[0], frame[1]):
                self.store.held.add(self)
                change = self._recompute(self.store.clock())
        self._announce_entry(change, frame[0].owner, keys)

    def abort(self, key: int) -> None:
        """An entry failed: forget the frame (nobody saw it); a write must follow."""
        with self._lock:
            self.entering.remove(key)
            self._draining.discard(key)
            self._inflight += 1

    def leave(self, keys: list[int]) -> bool | None:
        """Count the newest entry of ``keys`` out; True when the stored record must follow.

        ``None`` when ``keys`` is empty (exited more often than entered). A frame that is
        not here (entered before this process forked) changes nothing.
        """
        store = self.store
        lock = self._lock
        lock.acquire()
        try:
            if not keys:
                return None
            key = keys[-1]
            stack = self.stack
            frame = stack.remove(key)
            if frame is None:
                keys.pop()
                return False
            stays = frame[2] > 0  # counted down: the frame stays
            if not stays:
                keys.pop()
                if self._draining:  # (left while draining: a timed-out drain)
                    self._draining.discard(key)
                self.version += 1
                self._snap = None
                write = self._stores_holds and self._claim_write()
                stored = self.stored
                if stack._frames:
                    change = _NO_CHANGE
                elif self.parent is not None:
                    store.held.discard(self)
                    change = self._recompute(store.clock())
                elif stored is None or not (stored.holds or stored.explicit.active):
                    self.own_active = False  # the root, and nothing else holds it: off
                    change = ((self.phase, _OFF), True) if self.active else (None, True)
                    self.active = False
                    self.phase = _OFF
                else:
                    change = self._recompute(store.clock())
        finally:
            lock.release()
        if stays:
            if dispatch._listeners:
                self._announce(_NO_CHANGE, EventKind.HOLD_RELEASED, frame[0].owner)
            return False
        if dispatch._listeners or (
            change is not _NO_CHANGE
            and (self.parent is not None or store.has_children or self.wakers or _may_log())
        ):
            try:
                self._announce(change, EventKind.HOLD_RELEASED, frame[0].owner)
            except BaseException:  # (a log handler hit by Ctrl-C): the release still lands
                if write:
                    self._release_quietly()  # blocking, but only on this way out
                raise
        return write

    def holding(self) -> bool:
        return bool(self.stack) or bool(self.entering)

    def _presented(self) -> tuple[object, ...] | None:
        details = details_of(self.stack, self.entering)
        if details is None:
            return None
        token = self.drain_token
        return (*details.presented(), token, token is not None and self._body_runs())

    def _body_runs(self) -> bool:
        # Under the lock: a frame of ours runs its body (it is not one waiting in a drain).
        frames = self.stack._frames
        return len(frames) > sum(1 for key in self._draining if key in frames)

    # -- drains ----------------------------------------------------------------------------

    def begin_drain(self) -> str:
        """A hold about to be entered waits for in-flight work first: until
        :meth:`end_drain`, this process's record asks others to report (phase DRAINING)."""
        with self._lock:
            self._drains += 1
            if self.drain_token is None:
                self._drain_seq += 1
                self.drain_token = f"{self.hold_id}:{self._drain_seq}"
            self.version += 1
            self._snap = None
            token = self.drain_token
            change = self._recompute(self.store.clock())
        self._announce(change, None)
        return token

    def end_drain(self, key: int | None = None) -> bool:
        """A drain is over (finished, timed out or abandoned); True when the stored record
        must follow (write it, as after :meth:`leave`)."""
        change = _NO_CHANGE
        write = False
        with self._lock:
            self._drains -= 1
            if key is not None:
                self._draining.discard(key)
            self.version += 1
            self._snap = None
            if self._drains == 0 and self.drain_token is not None:
                self.drain_token = None
                write = self._claim_write()
            change = self._recompute(self.store.clock())
        self._announce(change, None)
        return write

    def claim_release(self) -> bool:
        """A release failed and nothing is held now: the stored record may still be there.
        True (one more write counted) when the caller should write again to remove it."""
        with self._lock:
            claim = self._release_failed() and self._inflight == 0
            if claim:
                self._inflight += 1
            return claim

    def release_pending(self) -> bool:
        """This process holds nothing here, but its last release could not be written: its
        stored record counts until it is removed (by a retry) or its lease runs out."""
        with self._lock:
            return self._release_failed()

    def claim_lost(self) -> bool:
        """This process holds here, but the copy just read lacks its record (a restarted or
        flushed store, an operator's ``off --force``, a write that failed): True (one more
        write counted) when the caller should write it again now, not at the next renewal."""
        with self._lock:
            stored = self.stored
            lost = (
                self._stores_holds
                and bool(self.stack._frames)
                and self._inflight == 0
                and stored is not None
                and all(h.id != self.hold_id for h in stored.holds)
            )
            if lost:
                self._inflight += 1
            return lost

    def _release_failed(self) -> bool:
        # Under the lock.
        return self._written is _UNKNOWN and not self.holding()

    def sync_record(self) -> bool:
        """True when the stored record no longer matches the stack (a write must follow)."""
        with self._lock:
            return self.holding() and self._claim_write()

    def _claim_write(self) -> bool:
        # Under the lock: True (and one more write counted) when this process's stored
        # record must be written to match the stack, or a write is already under way.
        write = self._stores_holds and (self._inflight > 0 or self._presented() != self._written)
        if write:
            self._inflight += 1
        return write

    def drain_event(self, kind: EventKind, owner: str, **details: Any) -> None:
        if dispatch._listeners:
            dispatch.emit([self._event(kind, owner=owner, **details)])

    def _recompute(self, now: float) -> tuple[Transition, bool]:
        # Under the lock: is this scope on, through itself or the global scope?
        stored = self.stored
        own = bool(self.stack._frames) or (
            stored is not None and _stored_active(stored, self.hold_id, now)
        )
        parent = self.parent
        active = own or (parent is not None and parent.active)
        own_changed = own is not self.own_active
        self.own_active = own
        phase = self._phase(stored, now) if active else _OFF
        self.active = active
        if phase is self.phase:
            return (None, True) if own_changed else _NO_CHANGE
        previous, self.phase = self.phase, phase
        return (previous, phase), own_changed

    def _phase(self, stored: StoredState | None, now: float) -> Phase:
        # Under the lock, while active: the phase rule of `derive` (DRAINING while every
        # source of maintenance is a hold still draining), from what is known here.
        if self._body_runs():
            return _ON  # a frame of ours whose body runs
        if stored is not None and (stored.explicit.active or stored.holds):
            at = to_datetime(now)
            if stored.explicit.in_force(at):
                return _ON
            for h in stored.holds:
                if not h.draining and h.id != self.hold_id:
                    return _ON
        parent = self.parent
        if parent is not None and parent.active and parent.phase is not _DRAINING:
            return _ON
        return _DRAINING

    def _announce_entry(self, change: tuple[Transition, bool], owner: str, keys: list[int]) -> None:
        # All or nothing: an entry interrupted while telling of it (a log handler hit by
        # Ctrl-C) is undone before the interruption goes on.
        try:
            self._announce(change, EventKind.HOLD_ACQUIRED, owner)
        except BaseException:
            if self.leave(keys):
                self._release_quietly()  # blocking, but only on this way out
            raise

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

    def release_all(self) -> None:
        """At interpreter exit: end every frame still entered here and remove the record."""
        with self._lock:
            if not self.holding():
                return
            self.stack.clear()
            self.entering.clear()
            self._draining.clear()
            self.store.held.discard(self)
            self._inflight += 1
        self._release_quietly()

    def _release_quietly(self) -> None:
        try:
            self.write_blocking()
        except BaseException as exc:  # on a way out already: say so; the lease ends it
            self.release_failed(exc)

    def _announce(
        self, change: tuple[Transition, bool], kind: EventKind | None, owner: str | None = None
    ) -> None:
        # Outside the lock: tell named scopes, then build events only for whoever hears.
        transition, own_changed = change
        if self.parent is None:
            if transition is not None and self.store.has_children:
                for child in self.store.children():
                    child._parent_changed()
        elif own_changed:
            self.store.named_changed()
        if transition is not None and self.wakers:
            for waker in list(self.wakers):  # hands a wake-up to a loop or thread: cheap
                with contextlib.suppress(Exception):  # its loop has ended
                    waker()
        events: list[MaintenanceEvent] = []
        if transition is not None and dispatch.listening():
            events.append(self._event(EventKind.TRANSITION, previous=transition[0]))
        if kind is not None and dispatch._listeners:
            events.append(self._event(kind, owner=owner))
        if events:
            dispatch.emit(events)

    def _event(self, kind: EventKind, **details: Any) -> MaintenanceEvent:
        state = self.snapshot
        if kind is EventKind.TRANSITION:
            details["phase"] = state.phase
        return MaintenanceEvent(kind, self.scope, self.where, state, **details)

    def _parent_changed(self) -> None:
        with self._lock:
            self.version += 1
            self._snap = None
            change = self._recompute(self.store.clock())
        self._announce(change, None)

    # -- what readers see --------------------------------------------------------------

    @property
    def snapshot(self) -> MaintenanceState:
        """The effective state from memory: no I/O, safe on any hot path."""
        snap = self._snap
        parent = self.parent
        if (
            snap is None
            or (self._deadline != math.inf and self.store.clock() >= self._deadline)
            or (parent is not None and self._snap_parent != parent.version)
        ):
            snap = self._resnapshot()
        return snap

    def deadline(self) -> float:
        """Clock time when the snapshot changes by itself (an ``until``, a lease); or inf."""
        self.snapshot  # noqa: B018 - computes the deadline of the current snapshot
        return self._deadline

    def level(self, now: datetime) -> StoredState:
        """This scope's stored state with this process's own record as the stack has it."""
        with self._lock:
            return self._level(now)

    def _level(self, now: datetime) -> StoredState:
        stored = self.stored or EMPTY
        details = details_of(self.stack)
        holds = tuple(h for h in stored.holds if h.id != self.hold_id)
        if details is not None:
            # Draining as this process sees it: while every frame of ours still drains
            # (the stored record asks others to report while any does).
            drain = None if self._body_runs() else self.drain_token
            holds += (_local_record(details, self.hold_id, now.timestamp(), drain),)
        return StoredState(stored.explicit, holds, stored.workers)

    def _resnapshot(self) -> MaintenanceState:
        parent = self.parent
        parent_version = parent.version if parent is not None else -1
        version = self.version
        now = to_datetime(self.store.clock())
        levels = [self.level(now)]
        if parent is not None:
            levels.append(parent.level(now))
        snap = derive(self.scope, levels, now, leases=False)
        change = _NO_CHANGE
        with self._lock:
            # Cached only if nothing changed while deriving: a reader in another thread
            # must never store a snapshot older than a change that already returned.
            if self.version == version and (parent is None or parent.version == parent_version):
                self._snap, self._snap_parent = snap, parent_version
                self._deadline = _deadline(levels, now)
                if snap.active is not self.active:  # time alone ended a lease or `until`
                    change = self._recompute(now.timestamp())
        if change != _NO_CHANGE:
            self._announce(change, None)
        return snap

    def tick(self) -> None:
        """Let time-based changes (leases, ``until``) show, and their transitions be heard."""
        _ = self.snapshot

    # -- reading -------------------------------------------------------------------------

    def stale(self) -> bool:
        """Read again: the refresh interval has passed, or a lease in the copy ran out."""
        return (
            time.monotonic() - self.read_at >= self.backend.refresh_interval
            or self.store.clock() >= self.lease_due
        )

    def refresh_inline(self) -> bool:
        """For in-memory backends: refresh this scope and its parent at once, in this
        thread; False when the backend needs I/O (then await :func:`refresh_store`)."""
        backend = self.backend
        if not backend._inline:
            return False
        parent = self.parent
        now = time.monotonic()
        if parent is not None and now - parent.read_at >= backend.refresh_interval:
            parent._read_inline(now)
        if now - self.read_at >= backend.refresh_interval:
            self._read_inline(now)
        return True

    def start(self) -> None:
        """An in-memory store is read at once, so that a first hold sees what it says (an
        environment variable already on) rather than taking the state for off."""
        if not self.backend._inline or self.stored is not None:
            return
        at = self.store.clock()
        try:
            stored = self.backend._read_blocking(self.scope)
        except Exception:  # the first real read reports it
            return
        with self._lock:
            if self.stored is None:  # what is known first is no transition: nothing to tell
                self._store(stored, at)
        if self.parent is not None and self.own_active:
            self.store.named_changed()  # but requests must know a named scope is on

    def _read_inline(self, now: float) -> None:
        # (An in-memory store keeps no other process's leases: nothing for `at` to judge.)
        writes = self.writes
        try:
            stored = self.backend._read_blocking(self.scope)
        except Exception as exc:
            self.read_failed(exc, may_raise=True)
            return
        store = self.store
        if stored is self.stored and store.used and store.noted_error is None:
            self.read_at = now  # the env backend: unchanged (and no error to clear)
        else:
            self.apply_read(stored, writes)

    def apply_read(
        self, stored: StoredState, writes: int, *, clears: bool = True, at: float | None = None
    ) -> None:
        """Take a state read when ``writes`` writes had completed, unless one landed since.
        ``clears``: the read was whole (a store error noted before is over). ``at``: the
        clock when the read began (default: now), which judges the leases it found."""
        if clears:
            self.store.read_ok()
        if stored is self.stored and self.lease_due == math.inf:
            self.read_at = time.monotonic()  # nothing changed (the env backend's one object)
            return
        if at is None:
            at = self.store.clock()
        with self._lock:
            if self.writes != writes:
                return  # a newer write landed while this read ran
            change = self._store(stored, at)
        self._announce(change, None)

    def _store(self, stored: StoredState, at: float | None) -> tuple[Transition, bool]:
        # Under the lock. ``at``: when the read (or write) that found ``stored`` began;
        # None: not found in the store (on_error's stand-in), so no lease is judged.
        stored = _sane(stored)
        if at is None:
            self.lease_due = math.inf
        else:
            worker = self.store.worker_id
            stored = _judged(stored, self.hold_id, worker, to_datetime(at))
            self.lease_due = _lease_due(stored, self.hold_id, worker)
        self.stored = stored
        self.read_at = time.monotonic()
        self.version += 1
        self._snap = None
        return self._recompute(self.store.clock())

    def read_failed(self, exc: Exception, *, may_raise: bool) -> None:
        """A read failed: follow ``on_error`` from now on, the very first read included
        (raising that one too when ``may_raise``: a clear error where it can be seen)."""
        error = as_backend_error(exc, f"{self.where}: reading the maintenance state failed")
        store = self.store
        store.read_error = error
        raising = may_raise and not store.used and self.backend.raise_on_first_read
        store.used = True
        policy = self.backend.on_error
        if not raising and store.note_error(f"{error} (following on_error={policy!r})"):
            dispatch.emit([self._event(EventKind.BACKEND_ERROR, error=error)])
        if policy == "open":
            stored = EMPTY
        elif policy == "closed":
            stored = StoredState(ExplicitState(active=True, reason="maintenance state unavailable"))
        else:  # as last read, with its holds' leases frozen: renewals cannot be seen now
            stored = _frozen(self.stored or EMPTY)
        with self._lock:
            change = self._store(stored, None)
        self._announce(change, None)
        if raising:  # told to the caller; on_error is in force already, whoever catches it
            raise error from exc

    # -- writing -------------------------------------------------------------------------

    def _hold_write(self, renewal: bool) -> PutHold:
        # Under the store's write lock, once this write's turn has come: store the stack as
        # it is now (this is what makes writes reconcile).
        now = self.store.clock()
        with self._lock:
            details = details_of(self.stack, self.entering)
            drain = self.drain_token
            running = drain is not None and self._body_runs()
            self._written = None if details is None else (*details.presented(), drain, running)
        ttl = self.backend.lease_ttl
        held = None
        if details is not None:
            held = record(
                details,
                hold_id=self.hold_id,
                host=HOST,
                pid=os.getpid(),
                now=now,
                lease_ttl=ttl,
                drain=drain,
                running=running,
            )
        return PutHold(self.hold_id, held, to_datetime(now), ttl, renewal and held is not None)

    async def write(self, *, renewal: bool = False) -> None:
        """Write this process's record as the stack has it (one counted write)."""
        try:
            turn, build = self._numbered(functools.partial(self._hold_write, renewal))
            new = await io.update(self.backend, self.scope, build, self.store)
        except BaseException as exc:
            self._write_failed()
            if isinstance(exc, Exception):
                raise as_backend_error(exc, f"{self.label}: writing the hold failed") from exc
            raise
        self._write_done(new, turn)

    def write_blocking(self) -> None:
        """The same from a thread that may block (sync faces)."""
        try:
            turn, build = self._numbered(functools.partial(self._hold_write, False))
            new = io.update_blocking(self.backend, self.scope, build, self.store)
        except BaseException as exc:
            self._write_failed()
            if isinstance(exc, Exception):
                raise as_backend_error(exc, f"{self.label}: writing the hold failed") from exc
            raise
        self._write_done(new, turn)

    def _write_failed(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._written = _UNKNOWN

    def _numbered(self, make: Callable[[], Write]) -> tuple[list[Any], io.Build]:
        # Writes of a store run one at a time; number them as they run, so that results
        # applied out of order (their callers resume in any order) never undo a newer one.
        turn: list[Any] = [0, None, 0.0]  # [number, the write made, when it began]

        def build() -> Write:
            turn[0] = next(self.store.sequence)
            turn[2] = self.store.clock()
            turn[1] = write = make()
            return write

        return turn, build

    def _apply_write(self, new: StoredState, turn: list[Any]) -> tuple[Transition, bool]:
        # Under the lock.
        self.writes += 1
        if turn[0] <= self._applied:
            return _NO_CHANGE  # a newer write's result is already here
        self._applied = turn[0]
        return self._store(new, turn[2])

    def _write_done(self, new: StoredState, turn: list[Any]) -> None:
        self.store.used = True
        if turn[1].lost:
            logger.warning(
                "%s: this process's hold record had gone from the store (its lease ran out "
                "while renewals failed, the store was flushed or restarted, or an operator "
                "removed it with `maintguard off --force`); written again: this process "
                "still holds maintenance",
                self.label,
            )
        with self._lock:
            self._inflight -= 1
            change = self._apply_write(new, turn)
            renewal = None
            holding = self.holding()
            if self._renewal is None and holding:
                renewal = self._renewal = object()
            # While this process holds here the store is watched, so a record that vanished
            # (a restarted or flushed store, `off --force`) is written again as soon as a
            # read sees it gone, not only at the next renewal.
            watched = self._unwatch is not None
            unwatch = None
            if watched and not holding and self._inflight == 0:
                unwatch, self._unwatch = self._unwatch, None
        if renewal is not None:
            io.background(_renew(weakref.ref(self), renewal, self.backend.lease_ttl / 3))
        if holding and not watched:
            self._watch()
        if unwatch is not None:
            unwatch()
        self._announce(change, None)

    def _watch(self) -> None:
        from .watcher import watch  # (the watcher builds on this module)

        stop = watch(self.backend)
        with self._lock:
            if self._unwatch is None and self.holding():
                self._unwatch = stop
                weakref.finalize(self, stop)  # (stop is idempotent)
                return
        stop()  # another write started it first, or the hold ended meanwhile

    def release_failed(self, exc: BaseException, entering: bool = False) -> None:
        if entering:
            # The entry's own error reached the holder; its write most likely never landed.
            logger.info(
                "%s: after a failed entry, could not check that no hold record was left "
                "(%s); if one was, it stops counting when its lease runs out in %.0fs",
                self.label,
                exc,
                self.backend.lease_ttl,
            )
            return
        logger.warning(
            "%s: could not remove this process's hold record (%s); other processes stop "
            "counting it when its lease runs out in %.0fs",
            self.label,
            exc,
            self.backend.lease_ttl,
        )

    async def set_explicit(self, explicit: ExplicitState) -> None:
        """Set the explicit (operator) state; holds are not touched. ``since`` is kept
        when the state is in force already."""
        await self._operator_write(
            lambda: SetExplicit(explicit, to_datetime(self.store.clock())), "writing the state"
        )

    async def remove_holds(self, hold_ids: Collection[str]) -> None:
        """Remove other processes' hold records from this scope (an operator's forced off).

        A holder that still runs writes its record again as soon as it sees it gone (a live
        holder never loses its hold to a lost record); this is for holders that died or
        hang. This process's own record is left to its frames.
        """
        for hold_id in hold_ids:
            if hold_id != self.hold_id:
                await self._operator_write(
                    functools.partial(self._removal, hold_id), f"removing hold {hold_id}"
                )

    def _removal(self, hold_id: str) -> PutHold:
        return PutHold(hold_id, None, to_datetime(self.store.clock()), self.backend.lease_ttl)

    async def _operator_write(self, make: Callable[[], Write], doing: str) -> None:
        if self.backend.read_only:
            raise read_only_error(self.backend, self.scope)
        turn, build = self._numbered(make)
        try:
            new = await io.update(self.backend, self.scope, build, self.store)
        except MaintGuardError:
            raise
        except Exception as exc:
            raise as_backend_error(exc, f"{self.label}: {doing} failed") from exc
        self.store.used = True
        with self._lock:
            change = self._apply_write(new, turn)
        self._announce(change, None)


async def _renew(ref: weakref.ref[ScopeController], renewal: object, period: float) -> None:
    """On the I/O loop: renew a controller's lease every ``period`` while it holds frames.

    A tick that finds nothing held ends the renewal, so a hold entered soon after a release
    (a job in a loop) starts nothing new. Between ticks the controller is held only weakly:
    an idle one is freed, and the next tick ends.
    """
    try:
        while True:
            await asyncio.sleep(period)
            ctrl = ref()
            if ctrl is None:
                return
            with ctrl._lock:
                if ctrl._renewal is not renewal:
                    return
                if not ctrl.holding() and not ctrl._release_failed():
                    ctrl._renewal = None  # decided with the lock: a new hold starts anew
                    return
                ctrl._inflight += 1
            try:
                await ctrl.write(renewal=True)
            except Exception as exc:
                logger.warning("%s; retrying in %.1fs", exc, period)
                dispatch.emit(
                    [ctrl._event(EventKind.BACKEND_ERROR, error=as_backend_error(exc, ""))]
                )
            del ctrl
    finally:  # cancelled (interpreter exit): a later hold starts a renewal of its own
        ctrl = ref()
        if ctrl is not None:
            with ctrl._lock:
                if ctrl._renewal is renewal:
                    ctrl._renewal = None


async def refresh_store(
    store: Store, ctrls: Sequence[ScopeController], *, may_raise: bool = False
) -> None:
    """Read every scope of ``ctrls`` from ``store`` in one whole-store read."""
    writes = [c.writes for c in ctrls]
    at = store.clock()
    try:
        found = _checked(
            store.backend,
            await io.read_scopes(store.backend, [c.scope for c in ctrls]),
            [c.scope for c in ctrls],
        )
    except PartialReadError as exc:  # the scopes read are taken; the others follow on_error
        store.seen = exc.found
        for ctrl, count in zip(ctrls, writes, strict=True):
            if ctrl.scope in exc.found:
                ctrl.apply_read(exc.found[ctrl.scope], count, clears=False, at=at)
            else:
                ctrl.read_failed(exc, may_raise=may_raise)
        return
    except Exception as exc:
        if io.exiting():
            return  # the watcher of an exiting process: nothing to tell
        for ctrl in ctrls:
            ctrl.read_failed(exc, may_raise=may_raise)
        return
    store.seen = found
    for ctrl, count in zip(ctrls, writes, strict=True):
        ctrl.apply_read(found.get(ctrl.scope, EMPTY), count, at=at)


def _checked(
    backend: Any, found: Any, scopes: Sequence[str | None]
) -> Mapping[str | None, StoredState]:
    """What a read returned, as far as it is a state for each scope asked: a user-written
    read that left a scope out, or handed back something else (a dict, None), is a failed
    read of that scope (``on_error``), never an empty state read as off, never a 500."""
    if not isinstance(found, Mapping):
        raise BackendError(
            f"{backend.describe()}: read_scopes returned {type(found).__name__}, not a mapping "
            "of scopes to StoredState"
        )
    good: dict[str | None, StoredState] = {}
    wrong = []
    for scope in scopes:
        state = found.get(scope)
        if isinstance(state, StoredState):
            good[scope] = state
        else:
            what = "left it out" if scope not in found else f"gave {type(state).__name__}"
            wrong.append(f"scope {scope!r}: {what}")
    if wrong:
        raise PartialReadError(
            f"{backend.describe()}: the read {'; '.join(wrong)} (read_state and read_scopes "
            "must return a StoredState for every scope asked)",
            good,
        )
    return found


def _new_hold_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _sane(stored: StoredState) -> StoredState:
    """``stored`` with its times mended, as a user-written store may hand them over: naive
    ones read as UTC, others that are no time at all dropped (no end, no expiry: closed).
    The same object when nothing needs mending, so an unchanged read stays unchanged."""
    explicit = stored.explicit
    if _odd(explicit.until) or _odd(explicit.since):
        explicit = replace(explicit, until=_utc(explicit.until), since=_utc(explicit.since))
    holds = stored.holds
    if any(_odd(h.acquired) or _odd(h.started) or _odd(h.expires) for h in holds):
        holds = tuple(
            replace(
                h,
                acquired=_utc(h.acquired) or EPOCH,
                started=_utc(h.started) or EPOCH,
                expires=_utc(h.expires),
            )
            for h in holds
        )
    if explicit is stored.explicit and holds is stored.holds:
        return stored
    return StoredState(explicit, holds, stored.workers)


def _odd(value: object) -> bool:
    if value is None:
        return False
    return not isinstance(value, datetime) or value.utcoffset() is None


def _utc(value: Any) -> Any:
    if not isinstance(value, datetime):
        return None
    if value.utcoffset() is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _frozen(stored: StoredState) -> StoredState:
    """``stored`` while the store cannot be read: the holds the last read found live count
    until the next read (their holders' renewals cannot be seen; a job must not lose its
    maintenance to an outage of the store)."""
    if all(h.expires is None for h in stored.holds):
        return stored
    return replace(stored, holds=tuple(replace(h, expires=None) for h in stored.holds))


def _stored_active(stored: StoredState, own_id: str, now: float) -> bool:
    # Another process's hold in the copy counts: the read that brought it found it live.
    if not stored.explicit.active and not stored.holds:
        return False
    return stored.explicit.in_force(to_datetime(now)) or any(h.id != own_id for h in stored.holds)


def _deadline(levels: Sequence[StoredState], now: datetime) -> float:
    # When the derived state changes by time alone: an `until` (a lease ends by a read).
    times = [e.until for lv in levels if (e := lv.explicit).active and e.until and e.until > now]
    if not times:
        return math.inf
    return min(times).timestamp()


def _judged(stored: StoredState, own_hold: str, own_worker: str, at: datetime) -> StoredState:
    """``stored`` as a read started at ``at`` found it: other processes' records whose
    lease had run out by then are dropped; the others count until a later read drops them
    (time alone never ends another process's lease: its renewal may not have been read)."""
    holds = stored.holds
    if any(h.id != own_hold and not h.live(at) for h in holds):
        holds = tuple(h for h in holds if h.id == own_hold or h.live(at))
    workers = stored.workers
    if any(w.id != own_worker and not w.live(at) for w in workers):
        workers = tuple(w for w in workers if w.id == own_worker or w.live(at))
    if holds is stored.holds and workers is stored.workers:
        return stored
    return StoredState(stored.explicit, holds, workers)


def _lease_due(stored: StoredState, own_hold: str, own_worker: str) -> float:
    """When the first of other processes' leases in ``stored`` runs out: the copy must be
    read again then, before that record is dropped."""
    times = [h.expires for h in stored.holds if h.expires is not None and h.id != own_hold]
    times += [w.expires for w in stored.workers if w.id != own_worker]
    return min(times).timestamp() if times else math.inf


def _local_record(details: Details, hold_id: str, now: float, drain: str | None) -> Any:
    return record(
        details, hold_id=hold_id, host=HOST, pid=os.getpid(), now=now, lease_ttl=None, drain=drain
    )


def as_backend_error(exc: BaseException, context: str) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"{context}: {exc!r}" if context else repr(exc))


def read_only_error(backend: Any, scope: str | None) -> ReadOnlyBackendError:
    make = getattr(backend, "_read_only_error", None)
    if make is not None:
        return make(scope)  # type: ignore[no-any-return]
    return ReadOnlyBackendError(f"{backend.describe()} cannot be written")
