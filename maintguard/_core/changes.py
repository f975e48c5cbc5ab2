"""Waiting until a scope's state says something, woken by its changes instead of polling.

A controller keeps a set of wakers; every transition it announces calls them (outside its
lock). A waker only hands a wake-up to its event loop or thread (``call_soon_threadsafe``,
a trio token, ``threading.Event.set``): cheap, non-blocking, and never the user's code, so
it may run on the hold path where listeners may not. A state that changes by itself (an
``until`` or a lease running out) is caught by waking at the controller's deadline.

One body (:func:`until`) serves async and blocking callers (:mod:`.drive`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .._state import MaintenanceState
from .controller import ScopeController
from .drive import ASYNC, Runtime

__all__ = ["until", "wait_until"]

Predicate = Callable[[MaintenanceState], bool]


def _seconds_to_deadline(ctrl: ScopeController) -> float:
    # The snapshot also goes stale by itself (``until``, a lease): wake then to look again.
    deadline = ctrl.deadline()
    if deadline == math.inf:
        return math.inf
    return max(0.0, deadline - ctrl.store.clock()) + 0.001


async def until(
    rt: Runtime, ctrl: ScopeController, predicate: Predicate, timeout: float | None = None
) -> MaintenanceState | None:
    """Wait until ``predicate(ctrl.snapshot)`` holds and return that state; None once
    ``timeout`` seconds have passed first."""
    clock = time.monotonic  # a timeout is a duration: not the store's (wall, faked) clock
    end = math.inf if timeout is None else clock() + timeout
    while True:
        state = ctrl.snapshot
        if predicate(state):
            return state
        signal, waker = rt.signal()
        ctrl.wakers.add(waker)
        try:
            state = ctrl.snapshot  # a change between the first look and the registration
            if predicate(state):
                return state
            left = min(_seconds_to_deadline(ctrl), end - clock())
            if left <= 0:
                return None
            await rt.wait(signal, left)
        finally:
            ctrl.wakers.discard(waker)


async def wait_until(ctrl: ScopeController, predicate: Predicate) -> MaintenanceState:
    """Wait (asyncio or trio) until ``predicate(ctrl.snapshot)`` holds; return that state."""
    state = await until(ASYNC, ctrl, predicate)
    assert state is not None  # no timeout
    return state
