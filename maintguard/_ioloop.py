"""The I/O loop: one asyncio loop in a daemon thread that runs maintguard's background work.

Holds are taken from asyncio, trio, plain threads and test portals at once; async backend
code that needs asyncio (a Redis client) runs here, so trio callers and sync code can use
it too, and a submitted call finishes here whatever its caller does. Watchers and lease
renewals run here as background tasks. Worker threads run blocking calls (file I/O).
Nothing here knows what maintguard stores: it is the bottom layer, usable by backends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

# anyio loads these on first use; loaded here, in the importing thread, because a fork
# while a background thread (the I/O loop's) loads one leaves the child stuck for ever on
# that module's import lock: the asyncio backend, and what the loop's code asks of anyio.
import anyio._backends._asyncio
import anyio.to_thread
from anyio import CancelScope, Event, create_task_group, move_on_after  # noqa: F401

from ._core import lifecycle

__all__ = [
    "background",
    "exiting",
    "mark_background",
    "offload",
    "on_io_thread",
    "on_shutdown",
    "run",
    "run_inline",
    "run_sync",
    "shutdown",
    "submit",
    "tidy",
    "wait",
]

logger = logging.getLogger("maintguard")
T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_background: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
_workers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="maintguard-worker")
_running_loop = asyncio._get_running_loop


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


def on_io_thread() -> bool:
    return threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the I/O loop; it runs to the end whatever the caller does."""
    # An empty context: the caller's context variables (trio's sniffio marker among them)
    # must not leak into the I/O loop's task.
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, _loop or _start())


def tidy(coro: Coroutine[Any, Any, None]) -> None:
    """Run a clean-up ``coro`` on the I/O loop if it is running (never starts it)."""
    loop = _loop
    if loop is None or loop.is_closed():
        coro.close()
        return
    try:
        contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)
    except RuntimeError:  # the loop is closing
        coro.close()


def on_shutdown(close: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``close()`` on the I/O loop when it shuts down, after the writes have landed."""
    _closers.append(close)


def mark_background(task: asyncio.Task[Any]) -> None:
    """A task made on the I/O loop that is background work (cancelled at exit, not waited for)."""
    _background.add(task)


def background(coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
    """Run ``coro`` on the I/O loop as a background task (cancelled at interpreter exit).

    Cancelling the returned future cancels the task.
    """

    async def main() -> None:
        task = asyncio.current_task()
        if task is not None:
            _background.add(task)
        await coro

    return submit(main())


def run_sync(coro: Coroutine[Any, Any, T], *, interruptible: float = 0.0) -> T:
    """Run ``coro`` on the I/O loop and block this thread until it is done.

    ``interruptible`` (seconds): a KeyboardInterrupt (Ctrl-C) while waiting cancels
    ``coro`` and waits that long at most for its clean-up (a drain taking its token off)
    before it goes on up; without it, ``coro`` runs on to its end."""
    if on_io_thread():
        coro.close()
        raise RuntimeError("a blocking maintguard call was made on maintguard's I/O thread")
    if not interruptible:
        return submit(coro).result()
    ended = threading.Event()

    async def watched() -> T:
        try:
            return await coro
        finally:
            ended.set()

    future = submit(watched())
    try:
        return future.result()
    except KeyboardInterrupt:
        future.cancel()  # the task is cancelled on the loop: its finally clauses run
        ended.wait(interruptible)
        raise


def run_inline(coro: Coroutine[Any, Any, T]) -> T:
    """Run, right here, a coroutine that never suspends (calls on an in-process backend,
    whose I/O is none): from sync code and from an event loop's own thread alike."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("run_inline() was given a coroutine that waits for something")


async def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the I/O loop; wait for it from asyncio or trio without blocking.

    If the caller is cancelled while waiting, the work still completes on the I/O loop.
    """
    if on_io_thread():
        return await coro
    return await wait(submit(coro))


def exiting() -> bool:
    """The interpreter is exiting: worker threads take no more work (reads are moot now)."""
    return bool(getattr(concurrent.futures.thread, "_shutdown", False))


def offload(fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Start ``fn(*args)`` in maintguard's worker threads now, whatever the caller does next.

    Unlike a thread hop that starts when awaited, a write handed over here is under way
    even if its caller is cancelled at once, and threads finish it at interpreter exit.
    """
    return _workers.submit(fn, *args)


async def wait(future: concurrent.futures.Future[T]) -> T:
    """Wait for ``future`` from asyncio or trio; cancelling the wait leaves the work running."""
    if _running_loop() is not None:
        return await asyncio.shield(asyncio.wrap_future(future))
    return await anyio.to_thread.run_sync(future.result, abandon_on_cancel=True)


# -- exit and fork -----------------------------------------------------------------------


def shutdown(timeout: float = 5.0) -> None:
    """Let submitted writes (releases) land, stop background tasks, close the loop."""
    global _loop
    loop, _loop = _loop, None
    thread = _thread
    if loop is None or thread is None or not thread.is_alive():
        return

    async def drain() -> bool:
        for task in list(_background):
            task.cancel()
        # What is left are writes (releases): they may finish; background tasks need not.
        here = asyncio.current_task()
        writes = [t for t in asyncio.all_tasks() if t is not here and t not in _background]
        pending: set[asyncio.Task[Any]] = set()
        if writes:
            _, pending = await asyncio.wait(writes, timeout=timeout)
        for close in _closers:  # connections opened on this loop, closed with it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(), 1.0)
        return not pending

    try:
        landed = asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 1)
    except Exception:
        landed = False
    if not landed:
        logger.warning(
            "maintguard: some state writes had not finished at exit; hold records left "
            "behind stop counting when their lease runs out"
        )
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=1)
    if not thread.is_alive():
        loop.close()


def _after_fork_in_child() -> None:
    # The loop thread and the workers do not survive fork; the child starts its own.
    global _loop, _thread, _lock, _background, _workers
    _loop, _thread, _lock = None, None, threading.Lock()
    _background = weakref.WeakSet()
    _workers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="maintguard-worker")


lifecycle.at_exit("ioloop", shutdown)
lifecycle.after_fork("ioloop", _after_fork_in_child)
