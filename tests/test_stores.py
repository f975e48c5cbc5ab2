"""The store registry and the watcher: one state per store, one read per interval, no stale
read over a newer write, idle scopes freed, on_error for every scope after start-up."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Collection
from pathlib import Path

import anyio
import pytest

from maintguard import (
    ConfigurationError,
    get_maintenance_mode,
    get_state,
    set_maintenance_mode,
    sync,
    under_maintenance,
)
from maintguard._core import store_of, watch
from maintguard._core.controller import refresh_store
from maintguard.backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend, StoredState

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ({"lease_ttl": 30.0}, {"lease_ttl": 5.0}, "lease_ttl=5.0 here but lease_ttl=30.0 there"),
        ({}, {"refresh_interval": 0.2}, "refresh_interval=0.2 here but refresh_interval=1.0"),
        ({}, {"on_error": "closed"}, "on_error='closed' here but on_error='last_known' there"),
    ],
)
async def test_two_objects_for_one_store_must_agree_on_options(
    tmp_path: Path, first: dict[str, object], second: dict[str, object], named: str
) -> None:
    a = LocalFileBackend(tmp_path / "m.json", **first)  # type: ignore[arg-type]
    b = LocalFileBackend(tmp_path / "m.json", **second)  # type: ignore[arg-type]
    async with under_maintenance(backend=a):
        with pytest.raises(ConfigurationError) as info:
            await get_maintenance_mode(b)
    assert named in str(info.value)
    assert "same options" in str(info.value)


async def test_env_objects_for_one_variable_must_agree_on_on_error() -> None:
    assert not await get_maintenance_mode(EnvVarBackend("MAINTGUARD_STORES_TEST"))
    with pytest.raises(ConfigurationError, match="on_error='open' here"):
        await get_maintenance_mode(EnvVarBackend("MAINTGUARD_STORES_TEST", on_error="open"))


async def test_objects_that_agree_share_one_state(tmp_path: Path) -> None:
    a = LocalFileBackend(tmp_path / "m.json", lease_ttl=5)
    b = LocalFileBackend(tmp_path / "./m.json", lease_ttl=5.0)
    assert store_of(a) is store_of(b)
    async with under_maintenance(backend=a):
        assert store_of(b).root.snapshot.active  # at once, without reading


class CountingFile(LocalFileBackend):
    reads = 0

    def _read_scopes_blocking(
        self, scopes: Collection[str | None]
    ) -> dict[str | None, StoredState]:
        type(self).reads += 1
        return super()._read_scopes_blocking(scopes)


async def test_watcher_reads_the_store_once_per_interval_for_all_scopes(tmp_path: Path) -> None:
    backend = CountingFile(tmp_path / "m.json", refresh_interval=0.05)
    scopes = [store_of(backend).controller(f"tenant-{i}") for i in range(20)]
    await set_maintenance_mode(True, backend, scope="tenant-7")
    CountingFile.reads = 0
    ticks = 0
    stop = watch(backend)
    try:
        start = anyio.current_time()
        while anyio.current_time() - start < 0.5:
            await anyio.sleep(0.05)
            ticks += 1
    finally:
        stop()
    # 21 scopes watched: once a tick for all of them (the old watcher read 21 times a tick)
    assert 1 <= CountingFile.reads <= ticks + 3
    assert scopes[7].snapshot.active and not scopes[6].snapshot.active


async def test_idle_scope_controllers_are_freed(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "m.json")
    store = store_of(backend)
    for i in range(200):
        assert not await get_maintenance_mode(backend, scope=f"tenant-{i}")
    async with under_maintenance(backend=backend, scope="held"):
        gc.collect()
        assert [c.scope for c in store.children()] == ["held"]  # a live frame keeps its scope
    for _ in range(100):  # the lease renewal on the I/O loop lets go of it as it stops
        gc.collect()
        if not store.children():
            break
        await anyio.sleep(0.01)
    assert store.children() == []


def test_a_scope_held_by_a_dropped_hold_object_stays_on_as_the_global_one_does() -> None:
    # The frame itself keeps its scope's controller: a hold entered and never left (a
    # leaked object) holds maintenance on, in a named scope as in the global one, rather
    # than ending silently when the garbage collector frees the object.
    backend = MemoryBackend()
    for scope in ("billing", None):
        under_maintenance(backend=backend, scope=scope).__enter__()
        gc.collect()
        assert sync.get_state(backend, scope).holds == 1
    store = store_of(backend)
    assert [c.scope for c in store.children()] == ["billing"]
    for ctrl in store.controllers():
        ctrl.release_all()
    del ctrl
    gc.collect()
    assert store.children() == [] and not sync.get_maintenance_mode(backend)


class GatedBackend(Backend):
    """A user-written store whose reads can be held back, to order a read and a write."""

    def __init__(self) -> None:
        super().__init__(refresh_interval=0)
        self.state = StoredState()
        self.reading = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    async def read_state(self, scope: str | None) -> StoredState:
        seen = self.state  # what the store says when the read starts
        self.reading.set()
        while not self.gate.is_set():  # noqa: ASYNC110 - set from another thread
            await asyncio.sleep(0.005)
        return seen

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        self.state = state

    async def update_state(self, scope, mutate):  # type: ignore[no-untyped-def]
        self.state = mutate(self.state)
        return self.state


async def test_a_read_older_than_a_write_never_replaces_it() -> None:
    backend = GatedBackend()
    store = store_of(backend)
    await get_maintenance_mode(backend)  # started
    backend.gate.clear()
    backend.reading.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(refresh_store, store, [store.root])  # the watcher's read, old data
        while not backend.reading.is_set():  # noqa: ASYNC110 - set from another thread
            await anyio.sleep(0.005)
        await set_maintenance_mode(True, backend, reason="newer")
        backend.gate.set()
    state = store.root.snapshot
    assert (state.active, state.reason) == (True, "newer")


async def test_a_never_read_scope_follows_on_error_after_start_up(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0, on_error="closed")
    assert not await get_maintenance_mode(backend)  # start-up read: fine
    path.write_text("{corrupt")
    state = await get_state(backend, scope="never-read")  # no BackendError at run time
    assert (state.active, state.reason) == (True, "maintenance state unavailable")


async def test_the_first_read_of_a_corrupt_store_raises(tmp_path: Path) -> None:
    from maintguard import BackendError

    path = tmp_path / "m.json"
    path.write_text("{corrupt")
    with pytest.raises(BackendError, match="does not hold a maintenance state"):
        await get_maintenance_mode(LocalFileBackend(path))


async def test_nested_hold_with_unchanged_details_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0)
    outer, twin = [under_maintenance(backend=backend, reason="reindex") for _ in range(2)]
    async with outer:
        written = path.stat().st_mtime_ns, path.read_text()
        async with outer, twin:  # the same object again, another presenting the same details
            assert (path.stat().st_mtime_ns, path.read_text()) == written
        assert (path.stat().st_mtime_ns, path.read_text()) == written
        async with under_maintenance(backend=backend, reason="other"):  # details change
            assert json.loads(path.read_text())["holds"][0]["reason"] == "other"
        assert json.loads(path.read_text())["holds"][0]["reason"] == "reindex"


async def test_blocking_backend_callers_in_threads_and_loops_share_one_writer(
    tmp_path: Path,
) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    holds = [under_maintenance(backend=backend, reason=f"r{i}") for i in range(8)]
    barrier = threading.Barrier(4)

    def in_thread(i: int) -> None:
        barrier.wait()
        for _ in range(5):
            with holds[i]:
                pass

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for _ in range(5):
        async with holds[5]:
            assert await get_maintenance_mode(backend)
    for t in threads:
        t.join()
    assert not await get_maintenance_mode(backend)
    assert json.loads((tmp_path / "m.json").read_text())["holds"] == []


def test_a_reader_slower_than_a_hold_never_caches_a_stale_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    controller_module = sys.modules["maintguard._core.snapshots"]  # where snapshots derive

    backend = MemoryBackend()
    ctrl = store_of(backend).root
    derived, go_on = threading.Event(), threading.Event()
    real_derive = controller_module.derive

    def slow_derive(*args: object, **kwargs: object) -> object:
        state = real_derive(*args, **kwargs)  # type: ignore[arg-type]
        if threading.current_thread().name == "slow-reader":
            derived.set()
            go_on.wait(10)  # the hold is entered while this reader still holds the old state
        return state

    monkeypatch.setattr(controller_module, "derive", slow_derive)
    reader = threading.Thread(target=lambda: ctrl.snapshot, name="slow-reader")
    reader.start()
    assert derived.wait(10)
    with under_maintenance(backend=backend, reason="mine"):
        go_on.set()
        reader.join(10)
        state = ctrl.snapshot
        assert (state.active, state.reason) == (True, "mine")
    assert not ctrl.snapshot.active
