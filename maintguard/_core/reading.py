"""Reading a store: taking what a read found, and ``on_error`` when it failed.

A read is judged by the clock when it began (other processes' leases in it), dropped
when a write landed meanwhile (the write stored newer news), and a failed one puts the
store's ``on_error`` policy in force at once, the very first read included.
:func:`refresh_store` reads every scope asked of one store in one whole-store read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .._state import EventKind, ExplicitState, StoredState
from ..exceptions import BackendError, PartialReadError
from . import dispatch, io
from .decide import Change
from .drive import ASYNC
from .shared import Scope, StoreView
from .stored import EMPTY, frozen

__all__ = ["Reading", "as_backend_error", "refresh_store"]

_NEVER = math.inf  # a refresh interval under which a copy is never read again


class Reading(Scope):
    """Reads of a scope controller and its ``on_error`` policy."""

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
        read = io.inline_reads[type(backend)]
        if read is None:
            return False
        interval = backend.refresh_interval
        if interval == _NEVER:  # (memory: what is stored is what this process wrote)
            return True
        parent: Reading | None = self.parent  # type: ignore[assignment]
        if not interval:  # (the environment: read at every call, so no clock is needed)
            if parent is not None:
                parent._read_now(read, parent.read_at)
            self._read_now(read, self.read_at)
            return True
        now = time.monotonic()
        if parent is not None and now - parent.read_at >= interval:
            parent._read_now(read, now)
        if now - self.read_at >= interval:
            self._read_now(read, now)
        return True

    def start(self) -> None:
        """An in-memory store is read at once, so that a first hold sees what it says (an
        environment variable already on) rather than taking the state for off."""
        read = io.inline_reads[type(self.backend)]
        if read is None or self.stored is not None:
            return
        at = self.store.clock()
        try:
            stored = read(self.backend, self.scope)
        except Exception:  # the first real read reports it
            return
        with self._lock:
            if self.stored is None:  # what is known first is no transition: nothing to tell
                self._take(stored, at)
        if self.parent is not None and self.own_active:
            self.store.named_changed()  # but requests must know a named scope is on

    def _read_now(self, read: io.InlineRead, now: float) -> None:
        # (An in-memory store keeps no other process's leases: nothing for `at` to judge.)
        writes = self.writes
        try:
            stored = read(self.backend, self.scope)
        except Exception as exc:
            io.failed()
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
            change = self._take(stored, at)
        self._announce(change, None)

    def _take(self, stored: StoredState, at: float | None) -> Change:
        # Under the lock.
        store = self.store
        return self.decide_read(
            stored, at, store.worker_id, store.clock(), self.parent_phase(), time.monotonic()
        )

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
            stored = frozen(self.stored or EMPTY)
        if self.stored is not None and self.stored.cordons and not stored.cordons:
            # Cordons never decide maintenance: a host out of rotation stays out while its
            # store cannot be read, whatever on_error says of maintenance.
            stored = replace(stored, cordons=self.stored.cordons)
        with self._lock:
            change = self._take(stored, None)
        self._announce(change, None)
        if raising:  # told to the caller; on_error is in force already, whoever catches it
            raise error from exc


async def refresh_store(
    store: StoreView, ctrls: Sequence[Reading], *, may_raise: bool = False
) -> None:
    """Read every scope of ``ctrls`` from ``store`` in one whole-store read."""
    writes = [c.writes for c in ctrls]
    at = store.clock()
    try:
        found = _checked(
            store.backend,
            await io.read_scopes(ASYNC, store.backend, [c.scope for c in ctrls]),
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


def as_backend_error(exc: BaseException, context: str) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"{context}: {exc!r}" if context else repr(exc))
