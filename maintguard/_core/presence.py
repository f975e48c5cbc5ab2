"""Presence: which processes watch a shared store, and what they report to drains.

Every process that watches a store whose holds are stored (file, Redis) keeps a
:class:`~maintguard._state.WorkerRecord` in the store's global scope, with a lease renewed
every ``lease_ttl / 3`` seconds. While another process's hold drains (its record carries a
drain token), the record also reports, for that token, how much of this process's in-flight
work the drain waits for; it is rewritten when the count changes. A drain waits until every
live record other than its own process's reports zero for its token (a process that died
stops counting when its lease runs out). A cordon's drain is the same, limited to the
processes of one host: while a cordon of this host carries a drain token, this process
reports all of its in-flight work to it (:func:`cordon_key`, :func:`host_waiting_for`).

A process records its presence *before* it first reads the state to admit work, so a
drain either finds the record or the process finds the drain's hold and admits nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import anyio

from .._state import Mode, WorkerRecord
from ..backends._writes import PutWorker
from . import io, lifecycle
from .drive import ASYNC
from .identity import HOST, pid
from .registry import Store, all_stores
from .stack import to_datetime

__all__ = [
    "cordon_key",
    "host_waiting_for",
    "join",
    "unfinished_on_host",
    "leave",
    "leave_blocking",
    "leave_at_shutdown",
    "report_key",
    "tick",
    "waiting_for",
]

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
    full, own_mode = report_key(token, Mode.FULL), report_key(token, mode)

    def count_of(worker: WorkerRecord) -> int | None:
        count = worker.report(full)
        if count is None and mode is Mode.READ_ONLY:
            count = worker.report(own_mode)
        return count

    return len(_unfinished(store, count_of))


def cordon_key(token: str) -> str:
    """What a report to the drain of a cordon (token ``token``) answers."""
    return f"{token}/cordon"


def host_waiting_for(store: Store, key: str, host: str) -> int:
    """How many other live processes on ``host`` have not reported zero for ``key``."""
    return len(unfinished_on_host(store, key, host))


def unfinished_on_host(store: Store, key: str, host: str) -> list[tuple[WorkerRecord, int | None]]:
    """The other live processes on ``host`` that have not reported zero for ``key``, and
    what they reported (None: nothing yet)."""
    return _unfinished(store, lambda worker: worker.report(key), host)


def _unfinished(
    store: Store, count_of: Callable[[WorkerRecord], int | None], host: str | None = None
) -> list[tuple[WorkerRecord, int | None]]:
    # The other live processes (on `host`, when given) whose report is missing or not zero
    # (the others were judged live by the read that found them).
    if not _shared(store):
        return []
    stored = store.root.stored
    if stored is None or not stored.workers:
        return []
    own = store.worker_id
    found = []
    for worker in stored.workers:
        if worker.id == own or (host is not None and worker.host != host):
            continue
        count = count_of(worker)
        if count is None or count > 0:
            found.append((worker, count))
    return found


def _reports(store: Store) -> Reports:
    # For each drain another process asks (a draining hold record in any scope read), how
    # much of this process's work it waits for.
    own_pid = pid()
    found: list[tuple[str, int]] = []
    tokens: set[str] = set()
    for scope, stored in list(store.seen.items()):
        for hold in stored.holds:
            if hold.drain is None or (hold.host == HOST and hold.pid == own_pid):
                continue
            token = report_key(hold.drain, hold.mode)
            tokens.add(token)
            judged = store.judged.setdefault(token, {})
            found.append((token, store.work.count(scope, hold.mode, frozenset(), judged)))
    for token in [t for t in store.judged if t not in tokens]:
        del store.judged[token]  # that drain is over
    root = store.root.stored
    if root is not None and root.cordons:
        now = to_datetime(store.clock())
        for cordon in root.cordons:
            if cordon.host == HOST and cordon.drain is not None and cordon.draining(now):
                found.append((cordon_key(cordon.drain), store.work.total()))
    return tuple(sorted(found))


class _Write:
    """This process's record in the global scope as given (None: removed); records whose
    lease ran out are dropped. A renewal (``watched``) that finds the presence withdrawn
    when its turn comes removes the record instead: it lost the race with a shutdown's
    removal, which must stay the last word."""

    def __init__(self, store: Store, reports: Reports | None, *, watched: bool = False) -> None:
        self.store = store
        self.reports = reports
        self.watched = watched
        self.now = store.clock()

    def __call__(self) -> PutWorker:
        store = self.store
        if self.watched and not store.present:
            self.reports = None
        ttl = store.backend.lease_ttl
        record = None
        if self.reports is not None:
            expires = to_datetime(self.now) + timedelta(seconds=ttl)
            record = WorkerRecord(store.worker_id, HOST, pid(), expires, self.reports)
        return PutWorker(store.worker_id, record, to_datetime(store.clock()), ttl)

    def written(self) -> None:
        # The records written are not applied to what this process knows of the store: a
        # write that read the file before another process changed it could land after a
        # newer read. The watcher's next read brings them.
        self.store.presence_at = self.now
        self.store.reported = self.reports


async def join(store: Store) -> None:
    """Record this process's presence now, if it is not recorded yet."""
    store.present = True
    if not _shared(store) or store.reported is not None:
        return
    write = _Write(store, _reports(store))
    await io.update(ASYNC, store.backend, None, write, store)
    write.written()


async def tick(store: Store) -> None:
    """From the watcher: renew the record when due, rewrite it when a report changed."""
    if not _shared(store) or not store.present or io.exiting():  # (exiting: being removed)
        return
    reports = _reports(store)
    _hear_work_end(store, reports)
    renew_at = store.presence_at + store.backend.lease_ttl / 3
    if reports == store.reported and store.clock() < renew_at:
        return
    write = _Write(store, reports, watched=True)
    try:
        await io.update(ASYNC, store.backend, None, write, store)
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
    write.written()


def _hear_work_end(store: Store, reports: Reports | None) -> None:
    # While this process reports work in flight to a drain elsewhere, the end of a piece of
    # its work wakes the watcher (as it wakes a drain here), which reports again at once
    # rather than at its next turn: the drain ends when the work does, not a
    # refresh_interval later.
    wanted = store.wake_watcher if reports and any(count for _, count in reports) else None
    listening = store.report_waker
    if listening is not wanted:
        if listening is not None:
            store.work.drains.discard(listening)
        if wanted is not None:
            store.work.drains.add(wanted)
        store.report_waker = wanted


async def leave(store: Store) -> None:
    """Remove this process's record: it no longer watches the store."""
    store.present = False
    _hear_work_end(store, None)
    if not _shared(store) or store.reported is None or io.exiting():  # (at exit: blocking)
        return
    try:
        await io.update(ASYNC, store.backend, None, _Write(store, None), store)
    except Exception as exc:
        _not_removed(store, exc)
    store.reported = None


async def leave_at_shutdown(store: Store, limit: float) -> None:
    """A server's shutdown: remove this process's record now, within ``limit`` seconds,
    unless guarded work of this process is in flight on the store (drains elsewhere must
    go on waiting for it). The process may end right after without the watcher's last turn
    or atexit (uvicorn re-raises SIGTERM); a guard used later records it again. Never
    raises."""
    if any(store.work.live.values()):
        return
    try:
        with anyio.move_on_after(limit) as waiting:
            await leave(store)
        if waiting.cancelled_caught:  # the write goes on: it may still land
            _not_removed(store, TimeoutError(f"no answer within {limit:g}s"))
    except Exception as exc:
        _not_removed(store, exc)


def leave_blocking(store: Store) -> None:
    """The same at interpreter exit."""
    if not _shared(store) or store.reported is None:
        return
    try:
        found = io.read_scopes_blocking(store.backend, (None,)).get(None)
        if found is not None and any(w.id == store.worker_id for w in found.workers):
            io.update_blocking(store.backend, None, _Write(store, None), store)
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


def _leave_at_exit() -> None:
    # After the holds' records (see .lifecycle): this process watches no store any more.
    for store in all_stores():
        leave_blocking(store)


lifecycle.at_exit("presence", _leave_at_exit)
