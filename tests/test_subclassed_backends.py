"""A subclass of a built-in backend is called through the public methods it overrides.

The built-ins take shortcuts past ``read_state``/``write_state``/``update_state``/
``read_scopes`` (the file's blocking calls from the caller's thread, the in-process
backends' inline reads, one Redis script per write, one read for every scope): those are
optimisations of the built-in's own methods, taken only while a subclass overrides none of
them. Every face that reads or writes must go through the subclass's override.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import maintguard.sync
from maintguard import ConfigurationError, get_state, set_maintenance_mode, under_maintenance
from maintguard._core import io
from maintguard._core.watcher import watch
from maintguard._state import ExplicitState
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    RedisBackend,
    StoredState,
)
from tests.stores import REDIS_URL, redis_prefix

PUBLIC_IO = ("read_state", "read_scopes", "write_state", "update_state")
READS = {"read_state", "read_scopes"}
WRITES = {"read_state", "write_state", "update_state"}  # a read-modify-write reads too
KINDS = ("memory", "env", "file", "redis")
WRITABLE = ("memory", "file", "redis")
SHARED = ("file", "redis")  # the backends whose holds are written to the store
_vars = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # overrides run on maintguard's I/O loop whatever the caller's library


class Recorder:
    """A subclass of a built-in backend overriding one public method, and its calls."""

    def __init__(self, kind: str, method: str, tmp_path: Path) -> None:
        self.kind, self.method, self.tmp_path = kind, method, tmp_path
        self.calls: list[str] = []
        self.lock = threading.Lock()
        base: type[Backend] = {
            "memory": MemoryBackend,
            "env": EnvVarBackend,
            "file": LocalFileBackend,
            "redis": RedisBackend,
        }[kind]
        recorder = self

        async def override(self: Backend, *args: Any) -> Any:
            with recorder.lock:
                recorder.calls.append(method)
            return await getattr(super(cls, self), method)(*args)

        cls = type(f"Recording{base.__name__}", (base,), {method: override})
        self.cls = cls

    def new(self, **options: Any) -> Backend:
        """A backend object of the subclass naming a store of its own."""
        if self.kind == "memory":
            return self.cls()  # type: ignore[no-any-return]
        if self.kind == "env":
            var = f"MAINTGUARD_SUB_{os.getpid()}_{next(_vars)}"
            os.environ.pop(var, None)
            return self.cls(var, **options)  # type: ignore[no-any-return]
        if self.kind == "redis":
            options.setdefault("refresh_interval", 0)
            return self.cls(REDIS_URL, key_prefix=redis_prefix(), **options)  # type: ignore[no-any-return]
        options.setdefault("refresh_interval", 0)
        path = self.tmp_path / f"m{next(_vars)}.json"
        return self.cls(path, **options)  # type: ignore[no-any-return]

    def seen(self) -> bool:
        with self.lock:
            found = self.method in self.calls
            self.calls.clear()
        return found


@pytest.fixture(params=[(k, m) for k in KINDS for m in PUBLIC_IO], ids="-".join)
def recorder(request: pytest.FixtureRequest, tmp_path: Path) -> Recorder:
    kind, method = request.param
    return Recorder(kind, method, tmp_path)


def test_a_subclass_that_overrides_a_public_method_loses_the_shortcuts(recorder: Recorder) -> None:
    assert io.way(recorder.new()) is io.Way.LOOP
    # ...while one that overrides nothing public keeps them, and so does its subclass.
    base = recorder.cls.__mro__[1]
    renamed = Recorder(recorder.kind, recorder.method, recorder.tmp_path)
    renamed.cls = type("Renamed", (base,), {"describe": lambda self: "renamed"})
    again = Recorder(recorder.kind, recorder.method, recorder.tmp_path)
    again.cls = type("Again", (renamed.cls,), {})
    expected = {"memory": io.Way.INLINE, "env": io.Way.INLINE, "file": io.Way.BLOCKING}
    assert io.way(renamed.new()) is io.way(again.new()) is expected.get(recorder.kind, io.Way.LOOP)
    # A subclass of an overriding subclass is served by the override: no shortcut either.
    below = Recorder(recorder.kind, recorder.method, recorder.tmp_path)
    below.cls = type("Below", (recorder.cls,), {"describe": lambda self: "below"})
    assert io.way(below.new()) is io.Way.LOOP


@pytest.mark.anyio
async def test_async_faces_go_through_the_override(recorder: Recorder) -> None:
    backend = recorder.new()
    state = await get_state(backend)
    assert state.active is False
    assert recorder.seen() is (recorder.method in READS), "get_state"

    if recorder.kind in WRITABLE:
        backend = recorder.new()
        await set_maintenance_mode(True, backend, reason="ops")
        assert recorder.seen() is (recorder.method in WRITES), "set_maintenance_mode"
        assert (await get_state(backend)).reason == "ops"

    backend = recorder.new()
    recorder.seen()
    async with under_maintenance(backend=backend, reason="job"):
        expected = recorder.kind in SHARED and recorder.method in WRITES
        if recorder.method in WRITES:  # (a read: the holder's watcher may read at once)
            assert recorder.seen() is expected, "entering a hold"
        state = await get_state(backend)
        assert (state.active, state.reason) == (True, "job")
        recorder.seen()
    if recorder.method in WRITES:  # (a read: the holder's own watcher may read meanwhile)
        assert recorder.seen() is expected, "leaving a hold"
    assert (await get_state(backend)).active is False


def test_sync_faces_go_through_the_override(recorder: Recorder) -> None:
    backend = recorder.new()
    assert maintguard.sync.get_state(backend).active is False
    assert recorder.seen() is (recorder.method in READS), "sync.get_state"

    if recorder.kind in WRITABLE:
        backend = recorder.new()
        maintguard.sync.set_maintenance_mode(True, backend, reason="ops")
        assert recorder.seen() is (recorder.method in WRITES), "sync.set_maintenance_mode"
        assert maintguard.sync.get_state(backend).reason == "ops"

    backend = recorder.new()
    recorder.seen()
    with under_maintenance(backend=backend, reason="job"):
        expected = recorder.kind in SHARED and recorder.method in WRITES
        if recorder.method in WRITES:  # (a read: the holder's watcher may read at once)
            assert recorder.seen() is expected, "entering a hold"
        assert maintguard.sync.get_state(backend).active is True
        recorder.seen()
    if recorder.method in WRITES:  # (a read: the holder's own watcher may read meanwhile)
        assert recorder.seen() is expected, "leaving a hold"


@pytest.mark.parametrize("method", sorted(READS))
@pytest.mark.parametrize("kind", ["env", "file", "redis"])  # memory is never re-read
def test_the_watcher_reads_through_the_override(kind: str, method: str, tmp_path: Path) -> None:
    recorder = Recorder(kind, method, tmp_path)
    backend = recorder.new(refresh_interval=0.1) if kind != "env" else recorder.new()
    stop = watch(backend)
    try:
        assert _within(5.0, recorder.seen), "no watcher read went through the override"
    finally:
        stop()


def test_a_subclass_changes_what_readers_see(tmp_path: Path) -> None:
    # Not only called: what the override returns is what every face shows.
    class Forced(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            stored = await super().read_state(scope)
            return StoredState(ExplicitState(True, "forced"), stored.holds, stored.workers)

    backend = Forced(tmp_path / "m.json", refresh_interval=0)
    state = maintguard.sync.get_state(backend)
    assert (state.active, state.reason) == (True, "forced")
    assert anyio.run(get_state, backend).reason == "forced"


def test_a_subclass_read_modify_write_keeps_the_file_lock(tmp_path: Path) -> None:
    # Its read and write run under the file's lock: writers in other threads (and
    # processes) wait, so no write is lost between the subclass's read and its write.
    path = tmp_path / "m.json"

    class Slow(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            stored = await super().read_state(scope)
            await anyio.sleep(0.05)  # another writer would land here without the lock
            return stored

    slow = Slow(path, refresh_interval=0)
    plain = LocalFileBackend(path)

    def count(name: str) -> Callable[[StoredState], StoredState]:
        def mutate(s: StoredState) -> StoredState:
            reason = s.explicit.reason or ""
            return StoredState(ExplicitState(True, reason + name))

        return mutate

    async def slow_writes() -> None:
        for _ in range(5):
            await slow.update_state(None, count("s"))

    def plain_writes() -> None:
        for _ in range(5):
            plain._update_blocking(None, count("p"))
            time.sleep(0.01)

    thread = threading.Thread(target=plain_writes)
    thread.start()
    anyio.run(slow_writes)
    thread.join()
    reason = plain._read_blocking(None).explicit.reason or ""
    assert sorted(reason) == sorted("s" * 5 + "p" * 5)


def _within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_subclass_is_not_silently_served_by_a_plain_object_of_its_store(
    tmp_path: Path,
) -> None:
    # Objects naming one store share the first one's I/O: a second object whose class
    # reads or writes its own way is refused, naming both, rather than bypassed.
    class Audited(LocalFileBackend):
        async def write_state(self, scope: str | None, state: StoredState) -> None:
            await super().write_state(scope, state)

    class Renamed(LocalFileBackend):  # overrides no I/O: the same store, the same I/O
        def describe(self) -> str:
            return "renamed"

    path = tmp_path / "m.json"
    assert maintguard.sync.get_state(LocalFileBackend(path)).active is False
    assert maintguard.sync.get_state(Renamed(path)).active is False
    with pytest.raises(ConfigurationError, match=r"io=.*Audited.* here but io=.*LocalFileBackend"):
        maintguard.sync.get_state(Audited(path))


# -- a subclass whose read hands back something else: a failed read, never a 500 or "off" ----


def _served_without_lifespan(backend: Backend) -> list[int]:
    """Status codes of three requests to an app behind the middleware, no lifespan."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from maintguard import MaintenanceModeMiddleware

    async def home(request: Request) -> Response:
        return PlainTextResponse("the app")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)

    async def main() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [(await client.get("/")).status_code for _ in range(3)]

    return anyio.run(main)


def test_a_read_state_that_returns_a_dict_is_a_failed_read_not_a_500(tmp_path: Path) -> None:
    class Forgetful(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            return {"active": True}  # type: ignore[return-value]  # from_dict forgotten

    backend = Forgetful(tmp_path / "m.json", on_error="closed")
    assert _served_without_lifespan(backend) == [503, 503, 503]


def test_a_read_state_that_returns_none_follows_on_error(tmp_path: Path) -> None:
    class Empty(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            return None  # type: ignore[return-value]  # a row not found, not turned into StoredState()

    backend = Empty(tmp_path / "m.json", on_error="closed")
    assert _served_without_lifespan(backend) == [503, 503, 503]


def test_read_scopes_that_leaves_out_a_scope_follows_on_error(tmp_path: Path) -> None:
    # "The result has an entry for each scope asked for": one that lacks it read as an
    # empty store (off), so a closed store served the app.
    class Partial(LocalFileBackend):
        async def read_scopes(self, scopes: Any) -> dict[str | None, StoredState]:
            return {}

    path = tmp_path / "m.json"
    path.write_text('{"version": 1, "active": true}')
    backend = Partial(path, on_error="closed")
    assert _served_without_lifespan(backend) == [503, 503, 503]


def test_get_state_wraps_a_read_state_that_returns_garbage(tmp_path: Path) -> None:
    class Forgetful(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            return {"active": True}  # type: ignore[return-value]

    backend = Forgetful(tmp_path / "m.json", on_error="closed", refresh_interval=0)
    from maintguard import BackendError

    with pytest.raises(BackendError):
        maintguard.sync.get_state(backend)
    assert maintguard.sync.get_state(backend).active  # then on_error="closed"
