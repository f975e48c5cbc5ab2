"""Where backend calls run, and the I/O loop that runs the background ones.

Holds are taken from asyncio, trio, plain threads and test portals at once.
- The built-in in-process backends (memory, env) answer at once: they run in the caller.
- Blocking backends (the file) run in the calling thread for sync faces and in one of
  maintguard's worker threads for async faces: the fewest thread hops, and a write handed
  over is under way at once, so it finishes even when its caller is cancelled.
- Other backends are async code that may need asyncio (a Redis client): they run on one
  asyncio loop in a daemon thread, so trio callers and sync code can use them too; a
  submitted call finishes there whatever its caller does.
Writes of one store are serialised in this process by the store's write lock.
The watcher and lease renewals run on the I/O loop as background tasks.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import concurrent.futures.thread
import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from ..backends import Backend
from ..state import StoredState

__all__ = ["read_scopes", "run", "run_sync", "submit", "update", "update_blocking"]

logger = logging.getLogger("maintguard")
T = TypeVar("T")
Mutate = Callable[[StoredState], StoredState]
Build = Callable[[], Mutate]
"""Makes the write (a :class:`~maintguard.backends.writes.Write`) once it is this write's
turn: what it stores is decided then, so writes that run in any order still leave the store
as this process is when the last one runs."""


class Serialised(Protocol):
    """What owns the lock that serialises a store's writes in this process."""

    write_lock: threading.Lock


_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_background: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
_async_locks: weakref.WeakKeyDictionary[Serialised, asyncio.Lock] = weakref.WeakKeyDictionary()
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


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the I/O loop and block this thread until it is done."""
    if on_io_thread():
        coro.close()
        raise RuntimeError("a blocking maintguard call was made on maintguard's I/O thread")
    return submit(coro).result()


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


# -- backend calls ---------------------------------------------------------------------


async def read_scopes(
    backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    if backend._inline:
        return backend._read_scopes_blocking(scopes)
    if backend._blocking:
        return await wait(offload(backend._read_scopes_blocking, scopes))
    return await run(backend.read_scopes(scopes))


def read_scopes_blocking(
    backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    if backend._inline or backend._blocking:
        return backend._read_scopes_blocking(scopes)
    return run_sync(_read(backend, scopes))


async def _read(
    backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    return await backend.read_scopes(scopes)


async def update(
    backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    """Make one write to one scope, serialised with the store's other writes."""
    if backend._inline:
        return _locked_update(backend, scope, build, owner)
    if backend._blocking:
        return await wait(offload(_locked_update, backend, scope, build, owner))
    return await run(_async_update(backend, scope, build, owner))


def update_blocking(
    backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    if backend._blocking:
        return _locked_update(backend, scope, build, owner)
    return run_sync(_async_update(backend, scope, build, owner))


def _locked_update(
    backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    with owner.write_lock:
        return backend._update_blocking(scope, build())


async def _async_update(
    backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    # On the I/O loop: an asyncio lock stands for the store's thread lock there.
    async_lock = _async_locks.get(owner)
    if async_lock is None:
        async_lock = _async_locks[owner] = asyncio.Lock()
    async with async_lock:
        return await backend.update_state(scope, build())


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
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
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
    global _loop, _thread, _lock, _background, _async_locks, _workers
    _loop, _thread, _lock = None, None, threading.Lock()
    _background, _async_locks = weakref.WeakSet(), weakref.WeakKeyDictionary()
    _workers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="maintguard-worker")


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
