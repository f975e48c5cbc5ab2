"""A drain: a hold that waits for in-flight work before its body runs.

The hold is entered first (new work is refused from then on, here at once and in other
processes as soon as they see it); then the drain waits until the work its hold refuses
has ended: this process's (less the holder's own request or job) and, on a shared store,
every other live process's, as their presence records report it (:mod:`.presence`).
Woken at once when local work ends; other processes' reports are looked at every
``refresh_interval`` (the watcher reads them).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import anyio

from .._state import Mode
from . import io, presence
from .changes import async_waker
from .controller import ScopeController, refresh_store
from .watcher import watch

__all__ = ["wait_drained", "wait_drained_blocking"]


def _left(
    ctrl: ScopeController, token: str, mode: Mode, exclude: frozenset[int]
) -> Callable[[], int]:
    store = ctrl.store
    judged: dict[int, bool] = {}

    def left() -> int:
        return store.work.count(ctrl.scope, mode, exclude, judged) + presence.waiting_for(
            store, token, mode
        )

    return left


def _poll(ctrl: ScopeController) -> float:
    backend = ctrl.backend
    if not backend.stores_holds:
        return math.inf  # only this process's work: woken when it ends
    interval = backend.refresh_interval
    return interval if 0 < interval < math.inf else 1.0


async def wait_drained(
    ctrl: ScopeController, token: str, mode: Mode, exclude: frozenset[int], seconds: float
) -> int:
    """Wait (asyncio or trio) until the work a drain waits for has ended: 0, or how much
    was still pending (this process's work, and other processes not reporting zero) when
    ``seconds`` ran out first."""
    left = _left(ctrl, token, mode, exclude)
    work = ctrl.store.work
    drains = work.drains
    poll = _poll(ctrl)
    stop = watch(ctrl.backend) if poll < math.inf else None  # others' reports stay fresh
    own = work.suspend(exclude)
    try:
        if poll < math.inf:  # who watches the store, as it is now (not as cached)
            await refresh_store(ctrl.store, ctrl.store.controllers())
        with anyio.move_on_after(seconds):
            while left():
                event = anyio.Event()
                waker = async_waker(event)
                drains.add(waker)
                try:
                    if not left():  # ended between the look and the registration
                        break
                    with anyio.move_on_after(poll):
                        await event.wait()
                finally:
                    drains.discard(waker)
            return 0
        return left()  # the last look decides
    finally:
        work.resume(own)
        if stop is not None:
            stop()


def wait_drained_blocking(
    ctrl: ScopeController, token: str, mode: Mode, exclude: frozenset[int], seconds: float
) -> int:
    """The same, blocking this thread."""
    left = _left(ctrl, token, mode, exclude)
    work = ctrl.store.work
    drains = work.drains
    poll = _poll(ctrl)
    stop = watch(ctrl.backend) if poll < math.inf else None
    end = time.monotonic() + seconds
    own = work.suspend(exclude)
    try:
        if poll < math.inf:
            io.run_sync(refresh_store(ctrl.store, ctrl.store.controllers()))
        while pending := left():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return pending
            event = threading.Event()
            drains.add(event.set)
            try:
                if not left():
                    break
                event.wait(min(remaining, poll))
            finally:
                drains.discard(event.set)
        return 0
    finally:
        work.resume(own)
        if stop is not None:
            stop()
