"""What readers see of one (store, scope): the effective state, derived and cached.

:attr:`Snapshots.snapshot` answers from memory (no I/O, safe on any hot path): it derives
the state from this scope's stored state and the global scope's, each with this
process's own record as its stack has it, and keeps it until a change (the book's
version, or the global scope's) or time alone (an ``until``) makes it stale.
"""

from __future__ import annotations

import math

from .._state import MaintenanceState, derive
from .decide import NO_CHANGE
from .identity import HOST, pid
from .shared import Scope
from .stack import to_datetime
from .stored import deadline

__all__ = ["Snapshots"]

_INF = math.inf


class Snapshots(Scope):
    """The snapshot cache of a scope controller."""

    _snap: MaintenanceState | None = None
    _snap_version = -1  # the book's version the snapshot was derived from
    _snap_parent = -1  # the global scope's version, for a named scope
    _deadline = math.inf  # clock time when the snapshot goes stale by itself

    @property
    def snapshot(self) -> MaintenanceState:
        """The effective state from memory: no I/O, safe on any hot path."""
        snap = self._snap
        if (
            snap is None
            or self._snap_version != self.version
            or (self._deadline != _INF and self.store.clock() >= self._deadline)
            or (self.parent is not None and self._snap_parent != self.parent.version)
        ):
            snap = self._resnapshot()
        return snap

    def deadline(self) -> float:
        """Clock time when the snapshot changes by itself (an ``until``, a lease); or inf."""
        self.snapshot  # noqa: B018 - computes the deadline of the current snapshot
        return self._deadline

    def _resnapshot(self) -> MaintenanceState:
        clock = self.store.clock()
        now = to_datetime(clock)
        # Windows are planned ahead at reads, writes and the watcher's wake-ups; where
        # nothing of that runs (a memory store, no watcher) a boundary passed here plans.
        self.plan_ahead(now)
        parent = self.parent
        if parent is not None:
            parent.plan_ahead(now)
        parent_version = parent.version if parent is not None else -1
        version = self.version
        with self._lock:
            levels = [self.level(clock, HOST, pid())]
        if parent is not None:
            with parent._lock:
                levels.append(parent.level(clock, HOST, pid()))
        snap = derive(self.scope, levels, now, leases=False)
        change = NO_CHANGE
        with self._lock:
            # Cached only if nothing changed while deriving: a reader in another thread
            # must never store a snapshot older than a change that already returned.
            if self.version == version and (parent is None or parent.version == parent_version):
                self._snap, self._snap_version, self._snap_parent = snap, version, parent_version
                self._deadline = deadline(levels, now)
                if snap.active is not self.active:  # time alone ended a lease or `until`
                    change = self._recompute(clock)
        if change != NO_CHANGE:
            self._announce(change, None)
        return snap

    def tick(self) -> None:
        """Let time-based changes (leases, ``until``, windows) show, and their transitions
        be heard; plan recurring windows ahead when their planned occurrences run low (the
        watcher calls this at every boundary: deciding never evaluates cron)."""
        self.plan_ahead(to_datetime(self.store.clock()))
        _ = self.snapshot
