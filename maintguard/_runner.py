"""The I/O loop: one asyncio loop in a daemon thread runs every backend call.

Holds are taken from asyncio, trio, plain threads and test portals at once. Running all
backend I/O on one loop gives one place to serialise writes (an asyncio lock per store),
lets asyncio-only clients serve trio callers, lets sync code drive async backends, and
makes release writes immune to the caller's cancellation: once submitted, a write finishes
even if the task that asked for it is cancelled.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _start() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def main() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=main, name="maintguard-io", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def loop() -> asyncio.AbstractEventLoop:
    return _loop or _start()


def on_io_thread() -> bool:
    return threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the I/O loop; it runs to the end whatever the caller does."""
    # An empty context: the caller's context variables (trio's sniffio marker among them)
    # must not leak into the I/O loop's task.
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop())


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the I/O loop and block this thread until it is done."""
    if on_io_thread():
        coro.close()
        raise RuntimeError(
            "a sync maintguard call was made from the maintguard I/O thread "
            "(a sync listener?): use the async API there"
        )
    return submit(coro).result()


async def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the I/O loop and wait for it from asyncio or trio without blocking.

    If the caller is cancelled while waiting, the work still completes on the I/O loop.
    """
    if on_io_thread():
        return await coro
    future = submit(coro)
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: trio (through anyio)
        return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)
    return await asyncio.shield(asyncio.wrap_future(future))


async def maybe_await(value: Awaitable[T] | T) -> T:
    if isinstance(value, Awaitable):
        return await value
    return value


def _shutdown() -> None:
    # Give pending writes (releases) a moment to land before the interpreter exits.
    global _loop
    loop_, _loop = _loop, None
    if loop_ is None or _thread is None:
        return

    async def drain() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            if getattr(t, "_maintguard_background", False):
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with contextlib.suppress(Exception):  # best effort at exit
        asyncio.run_coroutine_threadsafe(drain(), loop_).result(timeout=5)
    loop_.call_soon_threadsafe(loop_.stop)
    _thread.join(timeout=1)
    if not _thread.is_alive():
        loop_.close()


def _after_fork_in_child() -> None:
    # The loop thread does not survive fork; the child starts its own on first use.
    global _loop, _thread, _lock
    _loop, _thread, _lock = None, None, threading.Lock()


atexit.register(_shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
