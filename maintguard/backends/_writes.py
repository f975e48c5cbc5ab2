"""The writes the core asks of a store, as values a backend can apply natively.

Every read-modify-write maintguard makes is one of six: put (or remove) this process's
hold record in a scope, put (or remove) its presence record, set the explicit state, put
(or remove) a planned window, put (or remove) a host's cordon, record an operator's change
in the audit trail. Each is
callable on a :class:`~maintguard.backends.StoredState`, so a backend that knows only
``update_state(scope, mutate)`` applies it as any mutation; a backend whose store runs code
of its own (Redis scripts) looks at the fields and makes the change there, atomically and
without reading the whole scope first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol, TypeVar

from .._errors import ConfigurationError
from .._state import (
    AuditEntry,
    Cordon,
    ExplicitState,
    HoldRecord,
    StoredState,
    WindowRecord,
    WorkerRecord,
)

__all__ = ["PutCordon", "PutHold", "PutWindow", "PutWorker", "Record", "SetExplicit", "Write"]


class Write:
    """One change to one scope; ``write(stored)`` returns the scope's new state."""

    __slots__ = ()

    def __call__(self, stored: StoredState) -> StoredState:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(slots=True, eq=False)
class PutHold(Write):
    """Store ``record`` as hold ``hold_id`` (``None``: remove it); records whose lease ran
    out by ``now`` are dropped. A store with a clock of its own may take the lease from
    that clock: ``lease_ttl`` seconds from when the write lands."""

    hold_id: str
    record: HoldRecord | None
    now: datetime
    lease_ttl: float
    renewal: bool = False
    """The record should be there still (a lease renewal)."""
    lost: bool = False
    """Set by the backend: a renewal found the record gone (its lease ran out, or the store
    was flushed or restarted); it has been written again."""

    def __call__(self, stored: StoredState) -> StoredState:
        now = self.now
        if self.renewal:
            self.lost = not any(h.id == self.hold_id and h.live(now) for h in stored.holds)
        holds = _put(stored.holds, self.hold_id, self.record, now)
        return stored if holds == stored.holds else replace(stored, holds=holds)


@dataclass(slots=True, eq=False)
class PutWorker(Write):
    """Store ``record`` as worker ``worker_id`` in the global scope (``None``: remove it);
    workers whose lease ran out by ``now`` are dropped."""

    worker_id: str
    record: WorkerRecord | None
    now: datetime
    lease_ttl: float

    def __call__(self, stored: StoredState) -> StoredState:
        workers = _put(stored.workers, self.worker_id, self.record, self.now)
        return stored if workers == stored.workers else replace(stored, workers=workers)


@dataclass(slots=True, eq=False)
class SetExplicit(Write):
    """Set the explicit state to ``explicit``; holds are untouched. Turning it on while it
    is already in force keeps the old ``since`` (running ``on`` again updates details)."""

    explicit: ExplicitState
    now: datetime

    def __call__(self, stored: StoredState) -> StoredState:
        new = self.explicit
        if not new.active:
            new = ExplicitState()
        else:
            old = stored.explicit
            if old.in_force(self.now) and old.since is not None:
                new = replace(new, since=old.since)
        return stored if new == stored.explicit else replace(stored, explicit=new)


@dataclass(slots=True, eq=False)
class PutWindow(Write):
    """Store ``record`` as window ``window_id`` of the scope (``None``: remove it). A window
    added beyond ``limit`` in the scope raises :class:`~maintguard.exceptions.ConfigurationError`
    and changes nothing. ``found`` is set by the backend: whether the window was there."""

    window_id: str
    record: WindowRecord | None
    limit: int = 100
    found: bool = False

    def __call__(self, stored: StoredState) -> StoredState:
        windows = stored.windows
        self.found = any(w.id == self.window_id for w in windows)
        if self.record is None and not self.found:
            return stored
        kept = tuple(w for w in windows if w.id != self.window_id)
        if self.record is not None:
            if not self.found and len(kept) >= self.limit:
                raise ConfigurationError(
                    f"a scope keeps at most {self.limit} windows: cancel some first "
                    "(maintguard schedule list / schedule cancel ID)"
                )
            kept += (self.record,)
        return replace(stored, windows=kept)


@dataclass(slots=True, eq=False)
class PutCordon(Write):
    """Store ``record`` as the cordon of ``host`` (``None``: remove it). Applied to the
    global scope's state only: cordons are the whole store's. ``found`` is set by the
    backend: whether the host was cordoned."""

    host: str
    record: Cordon | None
    found: bool = False

    def __call__(self, stored: StoredState) -> StoredState:
        cordons = stored.cordons
        self.found = any(c.host == self.host for c in cordons)
        if self.record is None and not self.found:
            return stored
        kept = tuple(c for c in cordons if c.host != self.host)
        if self.record is not None:
            kept += (self.record,)
        return replace(stored, cordons=kept)


@dataclass(slots=True, eq=False)
class Record(Write):
    """Add ``entry`` to the audit trail, newest first, keeping the newest ``keep``
    entries. Applied to the global scope's state only: the trail is the whole store's."""

    entry: AuditEntry
    keep: int = 100

    def __call__(self, stored: StoredState) -> StoredState:
        return replace(stored, history=(self.entry, *stored.history)[: self.keep])


class _Leased(Protocol):
    @property
    def id(self) -> str: ...

    def live(self, now: datetime) -> bool: ...


R = TypeVar("R", bound=_Leased)


def _put(records: tuple[R, ...], key: str, record: R | None, now: datetime) -> tuple[R, ...]:
    # The records live at `now` but `key`'s, then `record` (if any) in its place.
    kept: tuple[R, ...] = tuple(r for r in records if r.id != key and r.live(now))
    return kept if record is None else (*kept, record)
