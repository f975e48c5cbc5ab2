"""``on_error`` applies from the very first read (docs/how-to/many-servers.md, "Backends":
what a store that cannot be read means): a process that serves requests or runs guarded work
before its first successful read follows it, with and without a lifespan, whatever the
store."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from maintguard import (
    BackendError,
    MaintenanceModeMiddleware,
    MaintGuardError,
    UnderMaintenance,
    get_state,
    not_during_maintenance,
)
from maintguard.backends import Backend, EnvVarBackend, LocalFileBackend, RedisBackend, StoredState
from tests.stores import free_port

pytestmark = pytest.mark.anyio


def corrupt_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: object) -> Backend:
    path = tmp_path / "maintenance.json"
    path.write_text("{not json")
    return LocalFileBackend(path, **options)  # type: ignore[arg-type]


def unreachable_redis(tmp_path: Path, _: pytest.MonkeyPatch, **options: object) -> Backend:
    return RedisBackend(f"redis://127.0.0.1:{free_port()}/0", **options)  # type: ignore[arg-type]


def unknown_env_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Backend:
    var = f"MAINTGUARD_ON_ERROR_{tmp_path.name.upper().replace('-', '_')}"
    monkeypatch.setenv(var, "perhaps")
    return EnvVarBackend(var, **options)  # type: ignore[arg-type]


UNREADABLE: list[Callable[..., Backend]] = [corrupt_file, unreachable_redis, unknown_env_value]


def app_for(backend: Backend) -> Starlette:
    async def home(request: Request) -> Response:
        return PlainTextResponse("the app")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    return app


@pytest.mark.parametrize("unreadable", UNREADABLE)
async def test_without_a_lifespan_the_first_request_is_refused_when_closed(
    unreadable: Callable[..., Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found: served without a lifespan (httpx's ASGITransport, an ASGI server with lifespan
    # off), the first read's error was logged and the app answered every request.
    backend = unreadable(tmp_path, monkeypatch, on_error="closed")
    transport = httpx.ASGITransport(app=app_for(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            response = await client.get("/")
            assert response.status_code == 503
            assert "the app" not in response.text


@pytest.mark.parametrize("unreadable", UNREADABLE)
async def test_without_a_lifespan_open_serves_and_says_why(
    unreadable: Callable[..., Backend],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = unreadable(tmp_path, monkeypatch, on_error="open")
    transport = httpx.ASGITransport(app=app_for(backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).text == "the app"
    said = [r for r in caplog.records if "on_error='open'" in r.getMessage()]
    assert len(said) == 1
    assert said[0].exc_info is None  # one line, no traceback


@pytest.mark.parametrize("unreadable", [corrupt_file, unreachable_redis])
def test_with_a_lifespan_an_unreadable_store_fails_the_start_up(
    unreadable: Callable[..., Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = unreadable(tmp_path, monkeypatch, on_error="closed")
    served: list[int] = []
    with pytest.raises(BackendError), TestClient(app_for(backend)) as client:
        served.append(client.get("/").status_code)
    assert served == []


@pytest.mark.parametrize("unreadable", [corrupt_file, unreachable_redis])
async def test_a_first_read_that_raises_leaves_on_error_in_force(
    unreadable: Callable[..., Backend], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first read raises (a clear error where it can be seen), and whoever catches it
    # finds the on_error state in force, not a state never read.
    backend = unreadable(tmp_path, monkeypatch, on_error="closed", refresh_interval=30)
    with pytest.raises(BackendError):
        await get_state(backend)
    state = await get_state(backend)
    assert state.active
    assert state.reason == "maintenance state unavailable"


@pytest.mark.parametrize("unreadable", UNREADABLE)
@pytest.mark.parametrize("policy", ["raise", "skip"])
async def test_a_guard_never_runs_its_job_on_a_closed_store_that_cannot_be_read(
    unreadable: Callable[..., Backend],
    policy: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = unreadable(tmp_path, monkeypatch, on_error="closed")
    ran: list[int] = []

    @not_during_maintenance(policy=policy, backend=backend)
    async def job() -> None:
        ran.append(1)

    for _ in range(2):
        with contextlib.suppress(UnderMaintenance, BackendError):
            await job()
    assert ran == []


def test_the_sync_guard_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = corrupt_file(tmp_path, monkeypatch, on_error="closed")
    ran: list[int] = []

    @not_during_maintenance(policy="raise", backend=backend)
    def job() -> None:
        ran.append(1)

    for _ in range(2):
        with pytest.raises(MaintGuardError):
            job()
    assert ran == []


class JunkScopes(Backend):
    """A user-written store whose whole-store read hands back junk for some scopes."""

    def __init__(self, junk: object, **options: Any) -> None:
        super().__init__(**options)
        self.junk = junk

    async def read_state(self, scope: str | None) -> Any:
        return StoredState()

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        pass

    async def read_scopes(self, scopes: Any) -> Any:
        if self.junk == "no mapping":
            return [StoredState() for _ in scopes]
        return {s: (StoredState() if s is None else self.junk) for s in scopes}


@pytest.mark.parametrize("junk", [None, {"active": False}, "no mapping"])
async def test_junk_from_a_user_read_is_closed_for_a_named_scope_from_the_first_request(
    junk: object,
) -> None:
    # Without a lifespan: the first request's read gives a scope no StoredState. Closed
    # means that scope's routes answer 503 (never the app, never a 500); the global scope's
    # routes follow the same rule only when the whole read was junk.
    from maintguard import maintenance_scope

    backend = JunkScopes(junk, on_error="closed", refresh_interval=30)

    async def home(request: Request) -> Response:
        return PlainTextResponse("the app")

    @maintenance_scope("billing")
    async def pay(request: Request) -> Response:
        return PlainTextResponse("paid")

    app = Starlette(routes=[Route("/", home), Route("/pay", pay)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(2):
            paid = await client.get("/pay")
            assert paid.status_code == 503, paid.text
            home_status = (await client.get("/")).status_code
            assert home_status == (503 if junk == "no mapping" else 200)
