"""One implementation of each waiting operation, run by async code and by sync code alike.

An operation that waits (until a state holds, until a drain ends) is written once, as a
coroutine that waits only through a :class:`Runtime` it is given:

- :data:`ASYNC` waits with anyio (asyncio or trio), without blocking the event loop;
- :data:`BLOCKING` hands each wait to :func:`drive`, which runs the coroutine right here in
  the calling thread and blocks only it (a ``threading.Event``; backend I/O through the I/O
  loop). Nothing hops to another thread for the operation itself, so a state kept in
  memory is answered in the caller's thread.

A sync face calls ``drive(operation(BLOCKING, ...))``; an async face awaits
``operation(ASYNC, ...)``. The two cannot drift: there is one body.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar

import anyio

from .. import _ioloop as ioloop

__all__ = ["ASYNC", "BLOCKING", "Runtime", "Signal", "drive"]

T = TypeVar("T")


class Signal(Protocol):
    """A one-shot wake-up: set from any thread, waited for by one runtime."""

    def set(self) -> None: ...


class Runtime(Protocol):
    """How an operation waits: made for async callers or for blocking ones."""

    def signal(self) -> tuple[Signal, Callable[[], None]]:
        """A new signal and a waker for it that any thread may call (cheap, non-blocking)."""
        ...

    async def wait(self, signal: Signal, seconds: float) -> None:
        """Until ``signal`` is set or ``seconds`` (``math.inf``: no limit) have passed."""
        ...

    async def io(self, coro: Coroutine[Any, Any, T]) -> T:
        """Backend I/O: awaited here (async) or run on the I/O loop (blocking)."""
        ...


class _Async:
    """Waits with anyio, under asyncio or trio."""

    def signal(self) -> tuple[Signal, Callable[[], None]]:
        event = anyio.Event()
        loop = asyncio._get_running_loop()
        if loop is not None:
            running = loop

            def wake() -> None:
                running.call_soon_threadsafe(event.set)

            return event, wake
        import trio  # not asyncio: anyio runs on trio

        token = trio.lowlevel.current_trio_token()
        return event, lambda: token.run_sync_soon(event.set)

    async def wait(self, signal: Signal, seconds: float) -> None:
        assert isinstance(signal, anyio.Event)
        with anyio.move_on_after(seconds):
            await signal.wait()

    async def io(self, coro: Coroutine[Any, Any, T]) -> T:
        return await coro


class _Request:
    """What a blocking wait asks :func:`drive` to do, in the driving thread."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args

    def __await__(self) -> Generator[_Request, Any, Any]:
        return (yield self)


def _block(event: threading.Event, seconds: float) -> None:
    event.wait(None if seconds == math.inf else max(0.0, seconds))


class _Blocking:
    """Blocks the thread that runs :func:`drive`."""

    def signal(self) -> tuple[Signal, Callable[[], None]]:
        event = threading.Event()
        return event, event.set

    async def wait(self, signal: Signal, seconds: float) -> None:
        assert isinstance(signal, threading.Event)
        await _Request(_block, signal, seconds)

    async def io(self, coro: Coroutine[Any, Any, T]) -> T:
        result: T = await _Request(ioloop.run_sync, coro)
        return result


ASYNC: Runtime = _Async()
BLOCKING: Runtime = _Blocking()


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run an operation given :data:`BLOCKING` to its end in this thread.

    Each wait it asks for blocks this thread; an exception raised while blocked (a
    ``KeyboardInterrupt``) is thrown into the operation, so its ``finally`` blocks run.
    """
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = coro.send(value) if error is None else coro.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if not isinstance(request, _Request):
            coro.close()
            raise RuntimeError(f"a blocking operation awaited {request!r}, not its runtime")
        try:
            value, error = request.fn(*request.args), None
        except BaseException as exc:
            value, error = None, exc
