"""maintguard.sync: the state functions without await, and their refusal in a loop's thread."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import maintguard
from maintguard import ConfigurationError, sync, under_maintenance
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend
from tests.conftest import redis_backend


@pytest.fixture(params=["memory", "file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "file":
        return LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    return redis_backend()


def test_set_and_read_without_a_loop(store: Backend) -> None:
    assert sync.get_maintenance_mode(store) is False
    sync.set_maintenance_mode(True, store, reason="DB upgrade", retry_after=60, until=600)
    state = sync.get_state(store)
    assert (state.active, state.reason, state.retry_after) == (True, "DB upgrade", 60.0)
    assert state.until is not None and state.explicit
    assert sync.get_maintenance_mode(store, scope="billing") is True  # follows the global one
    sync.set_maintenance_mode(True, store, scope="billing", mode="read_only")
    sync.set_maintenance_mode(False, store)
    assert sync.get_maintenance_mode(store) is False
    assert sync.get_state(store, "billing").mode.value == "read_only"
    sync.set_maintenance_mode(False, store, scope="billing")
    assert sync.get_maintenance_mode(store, "billing") is False


def test_the_default_backend_and_urls_work(tmp_path: Path) -> None:
    maintguard.configure(backend=f"file:{tmp_path / 'default.json'}")
    sync.set_maintenance_mode(True, reason="default")
    assert sync.get_state().reason == "default"
    assert sync.get_state(f"file:{tmp_path / 'default.json'}").active is True
    sync.set_maintenance_mode(False)


def test_a_sync_hold_is_seen(store: Backend) -> None:
    with under_maintenance(backend=store, reason="job"):
        assert sync.get_state(store).holds == 1
    assert sync.get_state(store).holds == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sync.set_maintenance_mode("yes"), "needs True or False"),  # type: ignore[arg-type]
        (
            lambda: sync.set_maintenance_mode(False, "memory:", reason="x"),
            "only go with value=True",
        ),
        (lambda: sync.get_state("s3://bucket"), "is not understood"),
        (lambda: sync.get_state("memory:", scope=""), "scope must be None"),
    ],
)
def test_bad_input_raises_the_same_errors_as_the_async_functions(call: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        call()


@pytest.mark.parametrize("library", ["asyncio", "trio"])
def test_in_a_loops_own_thread_it_names_the_function_to_await(library: str) -> None:
    backend = MemoryBackend()

    async def main() -> None:
        for name, call in [
            ("get_state", lambda: sync.get_state(backend)),
            ("get_maintenance_mode", lambda: sync.get_maintenance_mode(backend)),
            ("set_maintenance_mode", lambda: sync.set_maintenance_mode(True, backend)),
        ]:
            with pytest.raises(ConfigurationError) as refused:
                call()
            assert f"use `await maintguard.{name}(...)`" in str(refused.value)
            assert f"this thread runs {'an asyncio' if library == 'asyncio' else 'a trio'}" in str(
                refused.value
            )
        assert await maintguard.get_maintenance_mode(backend) is False  # nothing was set
        # A worker thread of the loop may block.
        await anyio.to_thread.run_sync(lambda: sync.set_maintenance_mode(True, backend))
        assert await maintguard.get_maintenance_mode(backend) is True

    anyio.run(main, backend=library)


def test_from_many_threads_at_once(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    errors: list[BaseException] = []

    def flip(i: int) -> None:
        try:
            for _ in range(5):
                sync.set_maintenance_mode(True, backend, reason=f"t{i}")
                assert sync.get_maintenance_mode(backend) is True  # nobody turns it off
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sync.get_state(backend).reason in {f"t{i}" for i in range(6)}


@pytest.mark.processes
def test_importing_it_loads_neither_starlette_nor_redis() -> None:
    code = (
        "import sys, maintguard.sync\n"
        "print(sorted(m for m in ('starlette', 'redis', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
