"""Where backend calls run.

- The built-in in-process backends (memory, env) answer at once: they run in the caller.
- Blocking backends (the file) run in the calling thread for sync faces and in one of
  maintguard's worker threads for async faces: the fewest thread hops, and a write handed
  over is under way at once, so it finishes even when its caller is cancelled.
- Other backends are async code that may need asyncio (a Redis client): they run on the
  I/O loop (:mod:`maintguard._ioloop`).
Writes of one store are serialised in this process by the store's write lock.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Protocol

from .._ioloop import (
    background,
    exiting,
    offload,
    run,
    run_sync,
    wait,
)
from .._state import StoredState
from ..backends import Backend
from . import lifecycle

__all__ = [
    "background",
    "exiting",
    "offload",
    "read_scopes",
    "run",
    "run_sync",
    "update",
    "update_blocking",
    "wait",
]

Mutate = Callable[[StoredState], StoredState]
Build = Callable[[], Mutate]
"""Makes the write (a :class:`~maintguard.backends._writes.Write`) once it is this write's
turn: what it stores is decided then, so writes that run in any order still leave the store
as this process is when the last one runs."""


class Serialised(Protocol):
    """What owns the lock that serialises a store's writes in this process."""

    write_lock: threading.Lock


_async_locks: weakref.WeakKeyDictionary[Serialised, asyncio.Lock] = weakref.WeakKeyDictionary()


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


def _after_fork_in_child() -> None:
    global _async_locks
    _async_locks = weakref.WeakKeyDictionary()


lifecycle.after_fork("io", _after_fork_in_child)
