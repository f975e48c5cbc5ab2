"""Presence: which processes watch a shared store, and what they report to drains.

Every process that watches a store whose holds are stored (file, Redis) keeps a
:class:`~maintguard.state.WorkerRecord` in the store's global scope, with a lease renewed
every ``lease_ttl / 3`` seconds. While another process's hold drains (its record carries a
drain token), the record also reports, for that token, how much of this process's in-flight
work the drain waits for; it is rewritten when the count changes. A drain waits until every
live record other than its own process's reports zero for its token (a process that died
stops counting when its lease runs out).

A process records its presence *before* it first reads the state to admit work, so a
drain either finds the record or the process finds the drain's hold and admits nothing.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING

from ..backends.writes import PutWorker
from ..state import Mode, WorkerRecord
from . import io
from .controller import HOST
from .stack import to_datetime

if TYPE_CHECKING:
    from .registry import Store

__all__ = ["join", "leave", "leave_blocking", "report_key", "tick", "waiting_for"]

logger = logging.getLogger("maintguard")
Reports = tuple[tuple[str, int], ...]


def _shared(store: Store) -> bool:
    return store.backend.stores_holds


def report_key(token: str, mode: Mode) -> str:
    """What a report answers: drain ``token`` of a hold in ``mode`` (one process's drains
    share a token; a full hold refuses more than a read-only one)."""
    return f"{token}/{mode.value}"


def waiting_for(store: Store, token: str, mode: Mode) -> int:
    """How many other live processes have not reported zero for drain ``token`` of a hold
    in ``mode`` (a full report of zero also answers a read-only drain)."""
    if not _shared(store):
        return 0
    stored = store.root.stored
    if stored is None or not stored.workers:
        return 0
    own = store.worker_id
    n = 0
    for worker in stored.workers:
        if worker.id == own:  # (the others were judged live by the read that found them)
            continue
        count = worker.report(report_key(token, Mode.FULL))
        if count is None and mode is Mode.READ_ONLY:
            count = worker.report(report_key(token, mode))
        if count is None or count > 0:
            n += 1
    return n


def _reports(store: Store) -> Reports:
    # For each drain another process asks (a draining hold record in any scope read), how
    # much of this process's work it waits for.
    pid = os.getpid()
    found: list[tuple[str, int]] = []
    tokens: set[str] = set()
    for scope, stored in list(store.seen.items()):
        for hold in stored.holds:
            if hold.drain is None or (hold.host == HOST and hold.pid == pid):
                continue
            token = report_key(hold.drain, hold.mode)
            tokens.add(token)
            judged = store.judged.setdefault(token, {})
            found.append((token, store.work.count(scope, hold.mode, frozenset(), judged)))
    for token in [t for t in store.judged if t not in tokens]:
        del store.judged[token]  # that drain is over
    return tuple(sorted(found))


def _write(store: Store, reports: Reports | None) -> tuple[io.Build, float]:
    # This process's record in the global scope as given (None: removed); records whose
    # lease ran out are dropped.
    now = store.clock()
    ttl = store.backend.lease_ttl
    expires = to_datetime(now) + timedelta(seconds=ttl)
    own = store.worker_id

    def build() -> PutWorker:
        record = None if reports is None else WorkerRecord(own, HOST, os.getpid(), expires, reports)
        return PutWorker(own, record, to_datetime(store.clock()), ttl)

    return build, now


def _written(store: Store, now: float, reports: Reports | None) -> None:
    # The records written are not applied to what this process knows of the store: a
    # write that read the file before another process changed it could land after a
    # newer read. The watcher's next read brings them.
    store.presence_at = now
    store.reported = reports


async def join(store: Store) -> None:
    """Record this process's presence now, if it is not recorded yet."""
    if not _shared(store) or store.reported is not None:
        return
    store.present = True
    reports = _reports(store)
    build, now = _write(store, reports)
    await io.update(store.backend, None, build, store)
    _written(store, now, reports)


async def tick(store: Store) -> None:
    """From the watcher: renew the record when due, rewrite it when a report changed."""
    if not _shared(store) or not store.present or io.exiting():  # (exiting: being removed)
        return
    reports = _reports(store)
    renew_at = store.presence_at + store.backend.lease_ttl / 3
    if reports == store.reported and store.clock() < renew_at:
        return
    build, now = _write(store, reports)
    try:
        await io.update(store.backend, None, build, store)
    except RuntimeError:  # the interpreter is exiting: its workers are gone
        return
    except Exception as exc:
        if not store.presence_failing:  # once while it lasts
            store.presence_failing = True
            logger.warning(
                "%s: could not record this process's presence for drains (%s); drained "
                "holds elsewhere do not wait for this process's work until it can; retrying",
                store.backend.describe(),
                exc,
            )
        return
    if store.presence_failing:
        store.presence_failing = False
        logger.info("%s: this process's presence is recorded again", store.backend.describe())
    _written(store, now, reports)


async def leave(store: Store) -> None:
    """Remove this process's record: it no longer watches the store."""
    store.present = False
    if not _shared(store) or store.reported is None or io.exiting():  # (at exit: blocking)
        return
    build, _ = _write(store, None)
    try:
        await io.update(store.backend, None, build, store)
    except Exception as exc:
        _not_removed(store, exc)
    store.reported = None


def leave_blocking(store: Store) -> None:
    """The same at interpreter exit."""
    if not _shared(store) or store.reported is None:
        return
    build, _ = _write(store, None)
    try:
        found = io.read_scopes_blocking(store.backend, (None,)).get(None)
        if found is not None and any(w.id == store.worker_id for w in found.workers):
            io.update_blocking(store.backend, None, build, store)
    except Exception as exc:
        _not_removed(store, exc)
    store.reported = None


def _not_removed(store: Store, exc: Exception) -> None:
    logger.warning(
        "%s: could not remove this process's presence record (%s); it stops counting when "
        "its lease runs out",
        store.backend.describe(),
        exc,
    )
