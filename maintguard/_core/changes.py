"""Waiting until a scope's state says something, woken by its changes instead of polling.

A controller keeps a set of wakers; every transition it announces calls them (outside its
lock). A waker only hands a wake-up to its event loop or thread (``call_soon_threadsafe``,
a trio token, ``threading.Event.set``): cheap, non-blocking, and never the user's code, so
it may run on the hold path where listeners may not. A state that changes by itself (an
``until`` or a lease running out) is caught by waking at the controller's deadline.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable

import anyio

from .._state import MaintenanceState
from .controller import ScopeController

__all__ = ["async_waker", "wait_until", "wait_until_blocking"]

Predicate = Callable[[MaintenanceState], bool]


def async_waker(event: anyio.Event) -> Callable[[], None]:
    loop = asyncio._get_running_loop()
    if loop is not None:
        running = loop

        def wake() -> None:
            running.call_soon_threadsafe(event.set)

        return wake
    import trio  # not asyncio: anyio runs on trio

    token = trio.lowlevel.current_trio_token()
    return lambda: token.run_sync_soon(event.set)


def _seconds_to_deadline(ctrl: ScopeController) -> float:
    # The snapshot also goes stale by itself (``until``, a lease): wake then to look again.
    deadline = ctrl.deadline()
    if deadline == math.inf:
        return math.inf
    return max(0.0, deadline - ctrl.store.clock()) + 0.001


async def wait_until(ctrl: ScopeController, predicate: Predicate) -> MaintenanceState:
    """Wait (asyncio or trio) until ``predicate(ctrl.snapshot)`` holds; return that state."""
    while True:
        state = ctrl.snapshot
        if predicate(state):
            return state
        event = anyio.Event()
        waker = async_waker(event)
        ctrl.wakers.add(waker)
        try:
            state = ctrl.snapshot  # a change between the first look and the registration
            if predicate(state):
                return state
            with anyio.move_on_after(_seconds_to_deadline(ctrl)):
                await event.wait()
        finally:
            ctrl.wakers.discard(waker)


def wait_until_blocking(
    ctrl: ScopeController, predicate: Predicate, timeout: float | None = None
) -> MaintenanceState | None:
    """Block this thread until ``predicate(ctrl.snapshot)`` holds; None after ``timeout``."""
    end = math.inf if timeout is None else ctrl.store.clock() + timeout
    while True:
        state = ctrl.snapshot
        if predicate(state):
            return state
        event = threading.Event()
        ctrl.wakers.add(event.set)
        try:
            state = ctrl.snapshot
            if predicate(state):
                return state
            left = min(_seconds_to_deadline(ctrl), end - ctrl.store.clock())
            if left <= 0:
                return None
            event.wait(None if left == math.inf else left)
        finally:
            ctrl.wakers.discard(event.set)
