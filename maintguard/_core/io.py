"""Where backend calls run, and the one place the built-ins' fast paths are taken.

Every backend is complete through its public async methods (``read_scopes``,
``update_state``, ...): they run on the I/O loop (:mod:`maintguard._ioloop`), since they
may need asyncio (a Redis client). A built-in may also offer the same reads and writes as
blocking calls (``Backend._fast_path``); :func:`way` decides, once per class, whether the
core takes that offer, and this module is the only one that makes those calls:

- The built-in in-process backends (memory, env) answer at once: they run in the caller.
- Blocking backends (the file) run in the calling thread for sync faces and in one of
  maintguard's worker threads for async faces: the fewest thread hops, and a write handed
  over is under way at once, so it finishes even when its caller is cancelled.

A class that overrides any public I/O method is called through its methods, on the loop.
Writes of one store are serialised in this process by the store's write lock.
"""

from __future__ import annotations

import asyncio
import enum
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
from ..backends._base import PUBLIC_IO, overrides
from . import lifecycle
from .drive import BLOCKING, Runtime, drive
from .tally import counts

__all__ = [
    "InlineRead",
    "Way",
    "background",
    "exiting",
    "failed",
    "inline_reads",
    "offload",
    "read_scopes",
    "read_scopes_blocking",
    "run",
    "run_sync",
    "update",
    "update_blocking",
    "wait",
    "way",
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


# -- which way a backend is called: decided here only -------------------------------------


class Way(enum.Enum):
    LOOP = "its public async methods, on the I/O loop"
    BLOCKING = "its blocking protocol, from a thread the core picks"
    INLINE = "its blocking protocol, in the caller's thread (it never blocks)"


InlineRead = Callable[[Backend, str | None], StoredState]


class _Ways(dict[type[Backend], Way]):
    # Decided at a class's first use, then a dict lookup (backend classes are few).
    def __missing__(self, cls: type[Backend]) -> Way:
        found = self[cls] = _decide(cls)
        return found


class _InlineReads(dict[type[Backend], "InlineRead | None"]):
    def __missing__(self, cls: type[Backend]) -> InlineRead | None:
        found = self[cls] = cls._read_blocking if _ways[cls] is Way.INLINE else None
        return found


_ways = _Ways()
inline_reads: dict[type[Backend], InlineRead | None] = _InlineReads()
"""``inline_reads[type(backend)](backend, scope)`` reads one scope in the caller's thread;
``None``: the backend is not read inline (await :func:`read_scopes`). Asked on every
guard's admission, so it is one dict lookup: the same decision as :func:`way`."""


def way(backend: Backend) -> Way:
    """How the core calls ``backend``: the built-in's fast path only while its class
    overrides none of the public I/O methods (they are the contract; the fast path is
    the same reads and writes without the hop through the I/O loop)."""
    return _ways[type(backend)]


def _decide(cls: type[Backend]) -> Way:
    # The class that makes the offer (Backend at last, offering none) must be the one whose
    # public methods serve this class: the fast path is the same reads and writes as those.
    offering = next(k for k in cls.__mro__ if "_fast_path" in vars(k))
    offer = vars(offering)["_fast_path"]
    if offer is None or overrides(cls, offering, *PUBLIC_IO):
        return Way.LOOP
    return Way.INLINE if offer == "inline" else Way.BLOCKING


# -- backend calls ---------------------------------------------------------------------


async def read_scopes(
    rt: Runtime, backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    """Read ``scopes`` the way :func:`way` says, waiting as ``rt`` does."""
    how = way(backend)
    try:
        if how is Way.INLINE:
            return backend._read_scopes_blocking(scopes)
        if how is Way.BLOCKING:
            return await rt.offload(backend._read_scopes_blocking, scopes)
        return await rt.on_loop(_read(backend, scopes))
    except Exception:
        failed()
        raise


def read_scopes_blocking(
    backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    return drive(read_scopes(BLOCKING, backend, scopes))


async def _read(
    backend: Backend, scopes: Collection[str | None]
) -> Mapping[str | None, StoredState]:
    return await backend.read_scopes(scopes)


async def update(
    rt: Runtime, backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    """Make one write to one scope, serialised with the store's other writes."""
    how = way(backend)
    try:
        if how is Way.INLINE:
            return _locked_update(backend, scope, build, owner)
        if how is Way.BLOCKING:
            return await rt.offload(_locked_update, backend, scope, build, owner)
        return await rt.on_loop(_async_update(backend, scope, build, owner))
    except Exception:
        failed()
        raise


def failed() -> None:
    """A backend operation failed (counted once, for metrics): every read and write the
    core makes passes here, :func:`read_scopes` and :func:`update` call it themselves, and
    a read made through :data:`inline_reads` calls it when it raises."""
    if counts.on:
        counts.backend_error()


def update_blocking(
    backend: Backend, scope: str | None, build: Build, owner: Serialised
) -> StoredState:
    return drive(update(BLOCKING, backend, scope, build, owner))


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
