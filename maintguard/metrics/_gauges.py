"""The gauges both metrics modules expose, read from memory at collection time.

Every store this process knows (:func:`maintguard._core.registry.all_stores`) and each
scope controller of it whose copy of the state is current: the snapshot readers see (no
I/O; an in-memory store, the environment, is read again in place when due). A copy older
than the store's ``refresh_interval`` that no watcher keeps fresh (a process that read a
file or Redis store once) shows no series rather than a stale one. The
``scope`` label is ``""`` for the global scope. A ``backend`` label (the store's
``describe()``, with `` #2``, `` #3``... for a second and later store of the same name)
is added only while this process knows more than one store: with one store, the scope
alone keeps series unique.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

from .._core.registry import Store, all_stores
from .._state import Phase

__all__ = ["PHASES", "ScopeGauges", "read"]

logger = logging.getLogger("maintguard")

PHASES = tuple(phase.value for phase in Phase)
"""The values of the ``phase`` label, one series each."""

_names: weakref.WeakKeyDictionary[Store, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ScopeGauges:
    """What one (store, scope) shows now."""

    backend: str | None  # None: the only store, no backend label
    scope: str  # "" for the global scope
    active: bool
    phase: str
    holds: int
    next_start: float | None  # Unix seconds; None: no window planned
    next_end: float | None

    def labels(self) -> dict[str, str]:
        found = {"scope": self.scope}
        if self.backend is not None:
            found["backend"] = self.backend
        return found


def _name(store: Store) -> str:
    with _lock:
        name = _names.get(store)
        if name is None:
            base = store.backend.describe()
            taken = set(_names.values())
            name, n = base, 1
            while name in taken:
                n += 1
                name = f"{base} #{n}"
            _names[store] = name
        return name


def read() -> list[ScopeGauges]:
    """Every known (store, scope)'s gauges, from memory."""
    stores = all_stores()
    several = len(stores) > 1
    found = []
    for store in stores:
        try:
            backend = _name(store) if several else None
            watched = store.watching
            for ctrl in store.controllers():
                if ctrl.stored is None:
                    continue  # never read: nothing known to show
                if not watched and ctrl.stale() and not ctrl.refresh_inline():
                    continue  # read once, not kept fresh, and a read needs I/O: not known now
                state = ctrl.snapshot
                window = state.next_window
                found.append(
                    ScopeGauges(
                        backend,
                        ctrl.scope or "",
                        state.active,
                        state.phase.value,
                        state.holds,
                        None if window is None else window.start.timestamp(),
                        None if window is None else window.end.timestamp(),
                    )
                )
        except Exception:  # a collection never fails on one store
            logger.exception("maintguard: reading metrics of %s failed", store.backend.describe())
    return found
