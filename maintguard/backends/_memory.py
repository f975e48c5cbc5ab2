"""State in this process's memory: for tests, single-process apps and scripts."""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Collection

from .._core import lifecycle
from .._state import StoredState
from ._base import Backend, overrides

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Keeps the state in a dict. Each instance is its own store; nothing survives the process.

    Every change goes through maintguard, so the state is never re-read: call the faces
    (``set_maintenance_mode``...), not ``write_state``, to change it.

    >>> backend = MemoryBackend()
    """

    stores_holds = False
    _fast_path = "inline"

    def __init__(self) -> None:
        super().__init__(refresh_interval=math.inf)
        self._states: dict[str | None, StoredState] = {}
        # Read-modify-writes from any thread (or loop) are atomic: each under this lock.
        self._lock = threading.Lock()
        _instances.add(self)

    async def read_state(self, scope: str | None) -> StoredState:
        return self._read_blocking(scope)

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        with self._lock:
            self._states[scope] = state

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        if overrides(type(self), MemoryBackend, "read_state", "write_state"):
            return await super().update_state(scope, mutate)  # through the subclass's methods
        return self._update_blocking(scope, mutate)

    # -- the blocking protocol (see Backend._fast_path): the same, called in any thread -------

    def _read_scopes_blocking(
        self, scopes: Collection[str | None]
    ) -> dict[str | None, StoredState]:
        return {scope: self._states.get(scope, _EMPTY) for scope in scopes}

    def _read_blocking(self, scope: str | None) -> StoredState:
        return self._states.get(scope, _EMPTY)

    def _update_blocking(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        with self._lock:
            new = self._states[scope] = mutate(self._states.get(scope, _EMPTY))
        return new


_EMPTY = StoredState()
_instances: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for backend in list(_instances):
        backend._lock = threading.Lock()  # another thread may have held it at the fork


lifecycle.after_fork("memory", _reset_after_fork)
