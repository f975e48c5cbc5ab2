"""State in this process's memory: for tests, single-process apps and scripts."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from .._state import StoredState
from ._base import Backend

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

    async def read_state(self, scope: str | None) -> StoredState:
        return self._states.get(scope, StoredState())

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        self._states[scope] = state

    def _read_scopes_blocking(
        self, scopes: Collection[str | None]
    ) -> dict[str | None, StoredState]:
        return {scope: self._states.get(scope, _EMPTY) for scope in scopes}

    def _read_blocking(self, scope: str | None) -> StoredState:
        return self._states.get(scope, _EMPTY)

    def _update_blocking(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        new = self._states[scope] = mutate(self._states.get(scope, _EMPTY))
        return new


_EMPTY = StoredState()
