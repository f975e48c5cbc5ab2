"""The watcher: one background task per watched store keeps every scope's snapshot fresh.

Each ``refresh_interval`` it reads the whole store once (every scope at once, through
``Backend.read_scopes``) and republishes; at once when the store notifies a change or this
process changed it (``Store.wake_watcher``); and at the next lease expiry, ``until`` or
window boundary of any scope, so that transitions are heard on time. A
store that never changes behind maintguard's back (memory) is only re-derived. Hot paths
then read snapshots and never a backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable

from .. import _ioloop as ioloop
from ..backends import Backend
from . import io, lifecycle, presence
from .controller import Store, plug_watcher
from .drive import ASYNC
from .reading import refresh_store
from .registry import all_stores, store_of

__all__ = ["watch"]

logger = logging.getLogger("maintguard")
_MIN_DELAY = 0.001


def watch(backend: Backend) -> Callable[[], None]:
    """Keep every scope of ``backend``'s store fresh in the background; returns ``stop``."""
    store = store_of(backend)
    with store.lock:
        store.watchers += 1
        start = not store.watching
        store.watching = True
    if start:
        io.background(_watch(store, _changes(store)))
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with store.lock:
            if not stopped:
                stopped = True
                store.watchers -= 1

    return stop


async def _watch(store: Store, changes: AsyncIterator[object] | None) -> None:
    interval = store.backend.refresh_interval
    tick = interval if 0 < interval < math.inf else 1.0
    if store.backend.stores_holds:  # the presence record's lease is renewed in time too
        tick = min(tick, store.backend.lease_ttl / 3)
    # As fresh as the oldest copy (a middleware's start-up has just read: not again now).
    read_at = min((c.read_at for c in store.controllers()), default=-math.inf)
    due = math.inf  # the next lease expiry or `until` of any scope (store clock)
    wake = asyncio.Event()
    changed = asyncio.Event()  # the store said it changed (set with `wake`)
    notifier = _notifier(store, changes, wake, changed)
    loop = asyncio.get_running_loop()

    def wake_up() -> None:
        loop.call_soon_threadsafe(wake.set)

    store.wake_watcher = wake_up
    try:
        while True:
            with store.lock:
                if store.watchers <= 0:
                    store.watching = False  # decided with the lock: a new watch starts anew
                    break
            ctrls = store.controllers()
            try:
                now = time.monotonic()
                notified = changed.is_set()  # (a wake-up alone only looks at the times)
                changed.clear()
                wake.clear()
                expired = store.clock() >= due
                if interval < math.inf and (
                    notified or expired or now - read_at >= interval * 0.99
                ):  # (a lease that ran out here may have been renewed unheard: read first)
                    read_at = now
                    await refresh_store(store, ctrls)
                for ctrl in ctrls:
                    ctrl.tick()
                    # A release failed (others still see the record), or a live hold's
                    # record is gone from the store (others no longer see it): write now.
                    lost = False
                    if ctrl.claim_release() or (lost := ctrl.claim_lost()):
                        with contextlib.suppress(Exception):  # (said when it failed)
                            await ctrl.write(ASYNC, renewal=lost)  # (a renewal says it was gone)
                await presence.tick(store)
                # Read again when a lease in a copy runs out (its holder may have renewed
                # it unheard): until that read, the copy keeps counting it.
                due = min((min(c.deadline(), c.lease_due) for c in ctrls), default=math.inf)
            except Exception:  # never let the watcher die
                logger.exception("maintguard: the watcher of %s failed", store.backend.describe())
            del ctrls
            # Woken early by a change, or at the next expiry: expiries are heard on time
            # without any notification from the store.
            delay = min(tick, max(due - store.clock(), _MIN_DELAY))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
    except BaseException:  # cancelled (interpreter exit)
        with store.lock:
            store.watching = False
        raise
    finally:
        store.wake_watcher = None
        if notifier is not None:
            notifier.cancel()
    if store.watchers <= 0:
        await presence.leave(store)  # watched no more: drains need not wait for us


def _changes(store: Store) -> AsyncIterator[object] | None:
    # Made in the caller's thread, not on the I/O loop: it may import a module (watchfiles),
    # and a fork while another thread imports leaves the child stuck on the import lock.
    try:
        return store.backend._changes()
    except Exception:
        logger.exception("maintguard: %s offers no change notification", store.backend.describe())
        return None


def _notifier(
    store: Store,
    changes: AsyncIterator[object] | None,
    wake: asyncio.Event,
    changed: asyncio.Event,
) -> asyncio.Task[None] | None:
    """Wake the watcher when the backend says the store may have changed."""
    if changes is None:
        return None

    async def notify() -> None:
        try:
            async for _ in changes:
                changed.set()
                wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # polling goes on: changes are still seen, later
            logger.warning(
                "maintguard: change notification for %s stopped (%s); polling every %ss",
                store.backend.describe(),
                exc,
                store.backend.refresh_interval,
            )

    task = asyncio.ensure_future(notify())
    ioloop.mark_background(task)
    return task


def _after_fork_in_child() -> None:
    # The watcher task died with the parent's I/O thread: a forked worker (gunicorn
    # preload) starts its own, or its middleware would never follow changes.
    for store in all_stores():
        with store.lock:
            restart = store.watchers > 0
            store.watching = restart
        if restart:
            io.background(_watch(store, _changes(store)))


lifecycle.after_fork("watchers", _after_fork_in_child)
plug_watcher(watch)
