"""Copies of a stored state as this process takes them: times mended, leases judged.

Pure functions over values (the clock passed in): a user-written store may hand over
naive or missing times (:func:`sane`); another process's lease is judged only by the read
that found it (:func:`judged`), which says when the copy must be read again
(:func:`lease_due`); while the store cannot be read, the holds last read keep counting
(:func:`frozen`); an explicit state's ``until`` and a window's boundaries change it by time
alone (:func:`deadline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from .._state import EPOCH, StoredState

__all__ = ["EMPTY", "deadline", "frozen", "judged", "lease_due", "sane"]

EMPTY = StoredState()


def sane(stored: StoredState) -> StoredState:
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
    return replace(stored, explicit=explicit, holds=holds)


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


def frozen(stored: StoredState) -> StoredState:
    """``stored`` while the store cannot be read: the holds the last read found live count
    until the next read (their holders' renewals cannot be seen; a job must not lose its
    maintenance to an outage of the store)."""
    if all(h.expires is None for h in stored.holds):
        return stored
    return replace(stored, holds=tuple(replace(h, expires=None) for h in stored.holds))


def deadline(levels: Sequence[StoredState], now: datetime) -> float:
    """When the state derived from ``levels`` changes by time alone: an ``until``, or a
    window's next boundary (its announcement, start or end, as planned); a lease ends
    only by a read."""
    times = [e.until for lv in levels if (e := lv.explicit).active and e.until and e.until > now]
    for level in levels:
        for window in level.windows:
            occurrence = window.current(now)
            if occurrence is None:
                continue
            start, end = occurrence
            announced = window.announced_from(start)
            if announced is not None:
                times.append(announced)
            times += (start, end)
    times = [t for t in times if t > now]
    if not times:
        return math.inf
    return min(times).timestamp()


def judged(stored: StoredState, own_hold: str, own_worker: str, at: datetime) -> StoredState:
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
    return replace(stored, holds=holds, workers=workers)


def lease_due(stored: StoredState, own_hold: str, own_worker: str) -> float:
    """When the first of other processes' leases in ``stored`` runs out: the copy must be
    read again then, before that record is dropped."""
    times = [h.expires for h in stored.holds if h.expires is not None and h.id != own_hold]
    times += [w.expires for w in stored.workers if w.id != own_worker]
    return min(times).timestamp() if times else math.inf
