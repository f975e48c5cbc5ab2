"""Listener dispatch: events leave the hold path through a queue to one dispatcher thread.

The hold path, lease renewals, the watcher and requests only *emit*: an emitted event is
logged (stdlib logging, ``maintguard`` logger) and queued. One daemon thread takes events
in order and calls every listener registered when the event was emitted, one after the
other: sync listeners directly, async ones on the dispatcher's own asyncio loop. So a
listener that blocks, hangs or raises delays only the events after it, never a hold.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .._state import EventKind, MaintenanceEvent
from ..exceptions import ConfigurationError
from . import lifecycle

__all__ = [
    "Listener",
    "add_listener",
    "emit",
    "flush_listeners",
    "listening",
    "remove_listener",
]

logger = logging.getLogger("maintguard")

Listener = Callable[[MaintenanceEvent], Awaitable[None] | None]

listeners: tuple[Listener, ...] = ()
_lock = threading.Lock()
_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
_thread: threading.Thread | None = None
level_cache: dict[int, bool] = getattr(logger, "_cache", {})


def add_listener(listener: Listener) -> Listener:
    """Call ``listener(event)`` on every :class:`MaintenanceEvent`; returns it (a decorator).

    Listeners run in maintguard's dispatcher thread, in the order they were added, one
    event after the other in the order the events happened; async listeners run on that
    thread's own asyncio loop. A listener never runs on the hold path: a slow, hanging or
    raising listener delays only the events after it. A listener that raises is logged.

    >>> @add_listener
    ... def on_event(event): ...
    >>> remove_listener(on_event)
    """
    global listeners
    if not callable(listener):
        raise ConfigurationError(f"a listener must be callable, not {listener!r}")
    with _lock:
        listeners = (*listeners, listener)
    return listener


def remove_listener(listener: Listener) -> None:
    """Stop calling ``listener`` for events emitted from now on; unknown ones are ignored."""
    global listeners
    with _lock:
        listeners = tuple(x for x in listeners if x != listener)  # bound methods: ==


def flush_listeners(timeout: float | None = 5.0) -> bool:
    """Wait until every event emitted so far has been handed to every listener.

    Returns False when ``timeout`` seconds passed first (a listener still runs). Called
    from a listener it raises ``ConfigurationError`` (it would wait on itself). Tests and
    shutdown code call it; a hold never waits for listeners.
    """
    if _thread is None:
        return True
    if threading.current_thread() is _thread:
        raise ConfigurationError(
            "flush_listeners() was called from a listener: it would wait for itself; "
            "call it from the code that emits events (a test, a shutdown hook)"
        )
    done = threading.Event()
    _queue.put(done)
    return done.wait(timeout)


def listening() -> bool:
    """True when events must be built: someone listens or logging would show them."""
    if listeners:
        return True
    enabled = level_cache.get(logging.INFO)  # logging's own cache, cleared on changes
    return logger.isEnabledFor(logging.INFO) if enabled is None else enabled


def emit(events: Iterable[MaintenanceEvent]) -> None:
    """Log ``events`` and queue them for the listeners; never blocks, never raises."""
    now = listeners
    for event in events:
        _log(event)
        if now:
            _start()
            _queue.put((now, event))


def _log(event: MaintenanceEvent) -> None:
    if event.kind is EventKind.TRANSITION:
        s = event.state
        logger.info(
            "maintenance %s (%s%s)%s",
            event.phase.value if event.phase else "?",
            event.backend,
            "" if event.scope is None else f", scope {event.scope!r}",
            f": {s.reason}" if s.reason else "",
        )


def _start() -> None:
    global _thread
    if _thread is None:
        with _lock:
            if _thread is None:
                thread = threading.Thread(target=_run, name="maintguard-listeners", daemon=True)
                thread.start()
                _thread = thread


def _run() -> None:
    loop = asyncio.new_event_loop()
    while True:
        item = _queue.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        listeners, event = item
        for listener in listeners:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    loop.run_until_complete(_awaited(result))
            except BaseException:  # a listener's bug never stops the dispatcher
                logger.exception("maintguard listener %r failed on %s", listener, event.kind)


async def _awaited(result: Awaitable[None]) -> None:
    await result


def _at_exit() -> None:
    if not flush_listeners(2.0):
        logger.warning("maintguard: listeners still busy at exit; later events are dropped")


def _after_fork_in_child() -> None:
    # The dispatcher thread does not survive fork; events queued in the parent stay there.
    global _lock, _queue, _thread
    _lock, _queue, _thread = threading.Lock(), queue.SimpleQueue(), None


lifecycle.at_exit("listeners", _at_exit)
lifecycle.after_fork("listeners", _after_fork_in_child)
