"""A Redis server of the test's own, killed and started again while an app serves and a job
holds: requests never get a 500, the last known state holds meanwhile, and once Redis is
back the job's record is written again and every reader sees it."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

import anyio
import pytest
import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from maintguard import BackendError, MaintenanceModeMiddleware, sync, under_maintenance
from maintguard._core.registry import store_of
from maintguard.backends import RedisBackend
from tests.stores import RedisServer, redis_prefix

pytestmark = [pytest.mark.redis, pytest.mark.processes]


def app_for(backend: RedisBackend) -> Starlette:
    async def home(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    return app


def statuses(client: TestClient, seconds: float) -> set[int]:
    seen = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.add(client.get("/").status_code)
        time.sleep(0.01)
    return seen


def until(client: TestClient, status: int, limit: float) -> set[int]:
    seen = set()
    end = time.monotonic() + limit
    while (code := client.get("/").status_code) != status:
        seen.add(code)
        assert time.monotonic() < end, f"still {code}, not {status}"
        time.sleep(0.01)
    return seen


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_run(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = redis_prefix()
    app_backend = RedisBackend(
        f"redis://127.0.0.1:{redis_server.port}/0", key_prefix=prefix, refresh_interval=0.3
    )
    # The job, as another process sees the same server: through the socket.
    job_backend = RedisBackend(
        f"unix://{redis_server.socket}", key_prefix=prefix, lease_ttl=1.5, refresh_interval=0.3
    )
    entering = RedisBackend(f"redis://localhost:{redis_server.port}/0", key_prefix=prefix)
    leave = threading.Event()
    held = threading.Event()

    def job() -> None:
        with under_maintenance(backend=job_backend, reason="reindex"):
            held.set()
            leave.wait(60)

    caplog.set_level(logging.INFO, "maintguard")
    with TestClient(app_for(app_backend)) as client:
        assert client.get("/").status_code == 200
        worker = threading.Thread(target=job)
        worker.start()
        try:
            assert held.wait(10)
            until(client, 503, limit=5)

            redis_server.kill()
            # The last known state, longer than the job's lease (its renewals cannot be
            # seen now); never a 500.
            assert statuses(client, 2.5) == {503}
            with pytest.raises(BackendError, match=r"writing the hold failed: .*(refused|failed)"):
                anyio.run(_enter, entering)

            redis_server.start()  # empty: the restart lost every key
            # The job's renewal finds its record gone and writes it again; readers follow.
            seen = statuses(client, 3.0)
            assert 500 not in seen and 503 in seen
            until(client, 503, limit=5)
            stored = anyio.run(RedisBackend(f"redis://127.0.0.1:{redis_server.port}/0",
                                            key_prefix=prefix).read_state, None)  # fmt: skip
            assert [h.reason for h in stored.holds] == ["reindex"]
        finally:
            leave.set()
            worker.join(30)
        assert until(client, 200, limit=5) <= {503}
    store = store_of(app_backend)
    until_true(lambda: store.reported is None)  # the watcher left before Redis goes

    messages = [r.getMessage() for r in caplog.records if r.name == "maintguard"]
    failed = [m for m in messages if "reading the maintenance state failed" in m]
    assert len([m for m in failed if "127.0.0.1" in m]) == 1  # warned once while it lasted
    assert any("readable again" in m for m in messages)
    assert any("had gone from the store" in m for m in messages)  # the lease re-acquired
    assert any("writing the hold failed" in m and "retrying" in m for m in messages)


def until_true(check: Callable[[], bool], limit: float = 10) -> None:
    end = time.monotonic() + limit
    while not check():
        assert time.monotonic() < end
        time.sleep(0.01)


async def _enter(backend: RedisBackend) -> None:
    async with under_maintenance(backend=backend):
        raise AssertionError("the body ran although Redis was down")


# -- a Redis that stops answering without closing the connection -----------------------------


def test_a_stopped_redis_is_unreadable_within_the_refresh_bound(redis_server: RedisServer) -> None:
    # SIGSTOP (or a network partition) closes nothing: only a timeout tells. It is derived
    # from refresh_interval, so on_error="closed" answers 503 about one interval (plus the
    # timeout, here as long) after the server stopped — not after redis-py's 5 s, twice.
    assert redis_server.proc is not None
    backend = RedisBackend(
        f"redis://127.0.0.1:{redis_server.port}/0",
        key_prefix=redis_prefix(),
        refresh_interval=1,
        on_error="closed",
    )
    with TestClient(app_for(backend)) as client:
        assert client.get("/").status_code == 200
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            until(client, 503, limit=20)
            took = time.monotonic() - stopped
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        until(client, 200, limit=10)  # and readable again once it answers
    assert took < 2 * 1 + 1.5, f"seen unreadable after {took:.1f}s"


def test_a_slow_but_alive_redis_still_takes_holds(redis_server: RedisServer) -> None:
    # refresh_interval=0 ("read every time") does not make the timeout 0: a server that
    # answers late, but within the floor, still takes holds, renews and releases them.
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    backend = RedisBackend(url, key_prefix=redis_prefix(), refresh_interval=0, lease_ttl=1.5)
    slow = redis.Redis(port=redis_server.port)
    try:
        slow.execute_command("CLIENT", "PAUSE", 400, "ALL")
        with under_maintenance(backend=backend, reason="slow"):
            slow.execute_command("CLIENT", "PAUSE", 400, "ALL")  # a renewal waits too
            time.sleep(1.0)
            assert sync.get_state(backend).reason == "slow"
        assert sync.get_state(backend).active is False
    finally:
        slow.close()
