"""One implementation of each waiting operation, run by async code and by sync code alike.

An operation that waits (until a state holds, until a drain ends) is written once, as a
coroutine that waits only through a :class:`Runtime` it is given:

- :data:`ASYNC` waits with anyio (asyncio or trio), without blocking the event loop;
- :data:`BLOCKING` hands each wait to :func:`drive`, which runs the coroutine right here in
  the calling thread and blocks only it (a ``threading.Event``; backend I/O through the I/O
  loop). Nothing hops to another thread for the operation itself, so a state kept in
  memory is answered in the caller's thread.

A sync face calls ``drive(operation(BLOCKING, ...))``; an async face awaits
``operation(ASYNC, ...)``. The two cannot drift: there is one body. Where the two differ at
the bottom (a backend call in a worker thread or here, cleanup shielded from cancellation
or not), the body asks its runtime (:meth:`Runtime.offload`, :meth:`Runtime.on_loop`,
:meth:`Runtime.shield`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Callable, Coroutine, Generator
from contextlib import AbstractContextManager
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

    async def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the I/O loop: waited for without blocking (async; it finishes
        there even if the caller is cancelled) or blocking this thread."""
        ...

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking call: started at once in a worker thread and waited for (async; it
        finishes even if the caller is cancelled), or made right here (blocking)."""
        ...

    def shield(self) -> AbstractContextManager[Any]:
        """Where cleanup must run to its end even when the caller is being cancelled
        (async: a shielded cancel scope; blocking: nothing cancels a thread's call)."""
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

    async def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await ioloop.run(coro)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return await ioloop.wait(ioloop.offload(fn, *args))

    def shield(self) -> AbstractContextManager[Any]:
        return anyio.CancelScope(shield=True)


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

    async def on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        result: T = await _Request(ioloop.run_sync, coro)
        return result

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)  # drive() runs this body in the caller's thread: block it here

    def shield(self) -> AbstractContextManager[Any]:
        return _NOTHING


_NOTHING = contextlib.nullcontext()

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
