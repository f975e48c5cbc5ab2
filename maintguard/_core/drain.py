"""A drain: a hold that waits for in-flight work before its body runs.

The hold is entered first (new work is refused from then on, here at once and in other
processes as soon as they see it); then the drain waits until the work its hold refuses
has ended: this process's (less the holder's own request or job) and, on a shared store,
every other live process's, as their presence records report it (:mod:`.presence`).
Woken at once when local work ends; other processes' reports are looked at every 0.25 s
(or ``refresh_interval``, when shorter) in memory, where the watcher keeps them fresh.

A cordon's drain waits the same way for what :func:`host_left` counts: all in-flight work
of the processes of one host.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .._state import Mode
from . import presence
from .controller import ScopeController, refresh_store
from .drive import Runtime
from .identity import HOST
from .tally import counts
from .watcher import watch

__all__ = ["drained", "hold_left", "host_left"]

Left = Callable[[], int]
"""How much work a drain still waits for (0: none)."""


def hold_left(ctrl: ScopeController, token: str, mode: Mode, exclude: frozenset[int]) -> Left:
    """What drain ``token`` of a hold in ``mode`` waits for: the work such a hold refuses,
    here (less ``exclude``, the holder's own) and in every other process."""
    store = ctrl.store
    judged: dict[int, bool] = {}

    def left() -> int:
        return store.work.count(ctrl.scope, mode, exclude, judged) + presence.waiting_for(
            store, token, mode
        )

    return left


def host_left(ctrl: ScopeController, token: str, host: str, exclude: frozenset[int]) -> Left:
    """What the drain ``token`` of ``host``'s cordon waits for: every piece of in-flight
    work of that host's processes (this one's too, less ``exclude``, when it is on it);
    nothing once the host is no longer cordoned with that token."""
    store = ctrl.store
    key = presence.cordon_key(token)

    def left() -> int:
        stored = store.root.stored
        cordon = None if stored is None else stored.cordon_of(host)
        if cordon is None or cordon.drain != token:
            return 0  # uncordoned meanwhile: nothing more to wait for
        here = store.work.total(exclude) if host == HOST else 0
        return here + presence.host_waiting_for(store, key, host)

    return left


_LOOK = 0.25
"""Seconds between looks at other processes' reports (in memory: the watcher keeps them
fresh, at once where the store tells of changes, as Redis and a watched file do)."""


def _poll(ctrl: ScopeController) -> float:
    backend = ctrl.backend
    if not backend.stores_holds:
        return math.inf  # only this process's work: woken when it ends
    interval = backend.refresh_interval
    return min(interval, _LOOK) if 0 < interval < math.inf else _LOOK


async def drained(
    rt: Runtime, ctrl: ScopeController, left: Left, exclude: frozenset[int], seconds: float
) -> int:
    """Wait until ``left()`` is 0 (the work a drain waits for has ended): 0, or how much was
    still pending (this process's work, and other processes not reporting zero) when
    ``seconds`` ran out first. ``exclude``: the waiter's own work, out of the count while it
    waits."""
    work = ctrl.store.work
    drains = work.drains
    poll = _poll(ctrl)
    start = time.monotonic()
    end = start + seconds
    stop = watch(ctrl.backend) if poll < math.inf else None  # others' reports stay fresh
    own = work.suspend(exclude)
    try:
        if poll < math.inf:  # who watches the store, as it is now (not as cached)
            await rt.io(refresh_store(ctrl.store, ctrl.store.controllers()))
        while pending := left():
            remaining = end - time.monotonic()
            if remaining <= 0:
                if counts.on:
                    counts.drained(time.monotonic() - start)
                return pending  # the last look decides
            signal, waker = rt.signal()
            drains.add(waker)
            try:
                if not left():  # ended between the look and the registration
                    break
                await rt.wait(signal, min(remaining, poll))
            finally:
                drains.discard(waker)
        if counts.on:
            counts.drained(time.monotonic() - start)
        return 0
    finally:
        work.resume(own)
        if stop is not None:
            stop()
