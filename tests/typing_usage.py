"""Uses the public API as users do; checked by mypy --strict and run by a test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import anyio

import maintguard
from maintguard import (
    MaintenanceEvent,
    MaintenanceState,
    Mode,
    get_maintenance_mode,
    get_state,
    maintenance_mode_on,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard._state import StoredState
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend, backend_from_url
from maintguard.exceptions import MaintGuardError


@under_maintenance
async def bare() -> int:
    return 1


@under_maintenance(reason="reindex", retry_after=timedelta(minutes=5), mode=Mode.READ_ONLY)
def sync_job(x: int) -> str:
    return str(x)


@under_maintenance(scope="billing")
def rows() -> Iterator[int]:
    yield 1


@maintenance_mode_on()
async def stream() -> AsyncIterator[int]:
    yield 1


class Store(Backend):
    async def read_state(self, scope: str | None) -> StoredState:
        return StoredState()

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        return None


def on_event(event: MaintenanceEvent) -> None:
    print(event.kind.value)


async def main(path: str) -> MaintenanceState:
    maintguard.configure(backend=MemoryBackend())
    one: int = await bare()
    two: str = sync_job(2)
    async with under_maintenance(backend=LocalFileBackend(path)) as hold:
        assert isinstance(hold, maintguard.MaintenanceHold)
    with maintenance_mode_on(backend_from_url("memory:"), reason="sync"):
        pass
    async with maintenance_mode_on(Store()):
        pass
    await set_maintenance_mode(True, until=60, reason=f"{one}{two}")
    active: bool = await get_maintenance_mode()
    try:
        await set_maintenance_mode(False)
    except MaintGuardError:
        raise
    maintguard.add_listener(on_event)
    maintguard.remove_listener(on_event)
    maintguard.configure(backend=None)
    assert list(rows()) == [1] and active
    return await get_state(MemoryBackend(), scope="billing")


if __name__ == "__main__":
    import sys

    print(anyio.run(main, sys.argv[1]))
