"""Cordons and the readiness path: a cordoned host's processes answer the readiness path
with 503 and go on serving every other request; ``cordon(drain=S)`` waits for that host's
in-flight work only. On the memory, file and Redis stores, through raw ASGI calls; real
processes on two hosts are in tests/test_cordons_processes.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from maintguard import (
    ConfigurationError,
    Cordon,
    DrainTimeout,
    MaintenanceModeMiddleware,
    MaintenanceState,
    ReadOnlyBackendError,
    cordon,
    get_history,
    list_cordons,
    maintenance_mode_on,
    not_during_maintenance,
    set_maintenance_mode,
    sync,
    uncordon,
)
from maintguard._cordons import not_ready
from maintguard._core import controller, io, store_of
from maintguard._core.identity import HOST
from maintguard._core.presence import cordon_key
from maintguard._state import StoredState, WorkerRecord
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    PutCordon,
    PutWorker,
)
from tests.asgi import Sent, http_scope, request, says, served, websocket_scope
from tests.conftest import redis_backend
from tests.stores import REDIS_URL, backend_of

pytestmark = pytest.mark.anyio

READY = "/_maintenance/ready"
STATUS = "/_maintenance/status"
SECRET = "s3cret-bypass-token-0123456789"
KINDS = ("memory", "file", "redis")
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_of(str(request.param), tmp_path)


def app_with(store: Backend, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/", says("home"))])
    options.setdefault("readiness_path", READY)
    app.add_middleware(MaintenanceModeMiddleware, backend=store, **options)
    return app


def readiness(sent: Sent) -> tuple[int, dict[str, Any]]:
    assert sent.headers[b"content-type"] == b"application/json"
    assert sent.headers[b"cache-control"] == b"no-store"
    return sent.status, json.loads(sent.body)


# -- the readiness rule (pure) --------------------------------------------------------------


def test_the_readiness_rule() -> None:
    on = MaintenanceState(active=True)
    off = MaintenanceState()
    here = StoredState(cordons=(Cordon("web-1", NOW),))
    assert not_ready(None, off, "web-1", True) is None
    assert not_ready(here, off, "web-1", True) == "cordoned"
    assert not_ready(here, off, "web-2", True) is None  # another host's cordon
    assert not_ready(here, on, "web-1", True) == "cordoned"  # a cordon wins
    assert not_ready(None, on, "web-1", True) is None  # it serves the maintenance page
    assert not_ready(None, on, "web-1", False) == "maintenance"


# -- cordon, uncordon, list, on every store ---------------------------------------------------


async def test_cordon_is_stored_listed_audited_and_removed(store: Backend) -> None:
    found = await cordon("web-1", reason="kernel update", backend=store)
    assert found.host == "web-1" and found.reason == "kernel update" and found.by
    assert found.drain is None
    assert await list_cordons(backend=store) == [found]
    # Again: the same since, a new reason; a reason not given keeps the old one.
    again = await cordon("web-1", reason="reboot", backend=store)
    assert again.since == found.since and again.reason == "reboot"
    kept = await cordon("web-1", backend=store)
    assert kept.reason == "reboot"
    other = await cordon("web-2", backend=store)
    assert [c.host for c in await list_cordons(backend=store)] == ["web-1", "web-2"]
    assert await uncordon("web-1", backend=store) is True
    assert await uncordon("web-1", backend=store) is False  # not cordoned: nothing recorded
    assert await list_cordons(backend=store) == [other]
    trail = await get_history(store)
    assert [(e.kind, e.host) for e in trail[:3]] == [
        ("uncordon", "web-1"),
        ("cordon", "web-2"),
        ("cordon", "web-1"),
    ]
    assert trail[2].reason == "reboot"
    assert not (await maintenance_state(store)).active  # a cordon never turns it on


async def maintenance_state(store: Backend) -> MaintenanceState:
    from maintguard import get_state

    return await get_state(store)


async def test_the_default_host_is_this_one(store: Backend) -> None:
    found = await cordon(backend=store)
    assert found.host == HOST
    assert await uncordon(backend=store) is True


def test_blocking_twins(tmp_path: Path) -> None:
    store = LocalFileBackend(tmp_path / "state.json")
    found = sync.cordon("web-1", reason="disk", backend=store)
    assert sync.list_cordons(backend=store) == [found]
    assert sync.uncordon("web-1", backend=store) is True
    assert sync.list_cordons(backend=store) == []


async def test_a_cordon_survives_other_writes_and_is_seen_by_another_process_view(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.json"
    first = LocalFileBackend(path, refresh_interval=0)
    await cordon("web-1", backend=first)
    await set_maintenance_mode(True, first, reason="x")
    await set_maintenance_mode(False, first)
    async with maintenance_mode_on(backend=first):
        pass
    raw = json.loads(path.read_text())
    assert [c["host"] for c in raw["cordons"]] == ["web-1"]
    assert raw["version"] == 1  # an optional field: older versions keep it as unknown
    stored = io.read_scopes_blocking(LocalFileBackend(path), [None])
    assert [c.host for c in stored[None].cordons] == ["web-1"]


async def test_the_env_backend_refuses_a_cordon() -> None:
    with pytest.raises(ReadOnlyBackendError):
        await cordon("web-1", backend=EnvVarBackend("MAINTGUARD_TEST_CORDON_ENV"))


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"host": ""}, "host must be a host name"),
        ({"host": " web-1"}, "no spaces around it"),
        ({"host": "web\n1"}, "control characters"),
        ({"host": 7}, "host must be a host name"),
        ({"host": "x" * 300}, "host must be a host name"),
        ({"drain": -1}, "drain must be None or a number of seconds"),
        ({"drain": float("nan")}, "drain must be"),
        ({"drain": True}, "drain must be"),
        ({"on_drain_timeout": "wait"}, "on_drain_timeout must be 'proceed' or 'raise'"),
        ({"reason": 5}, "reason must be text"),
        ({"hots": "web-1"}, "did you mean 'host'"),
    ],
)
async def test_bad_input_is_refused_with_the_fix(options: dict[str, Any], says: str) -> None:
    with pytest.raises((ConfigurationError, TypeError), match=says):
        await cordon(backend=MemoryBackend(), **options)


# -- hostile stored values ----------------------------------------------------------------------


async def test_unreadable_cordons_in_a_file_are_dropped_with_a_warning_never_a_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps(
            {
                "active": False,
                "holds": [],
                "cordons": [
                    {"host": 5, "since": "2026-01-01T00:00:00+00:00"},
                    {"host": "web-9", "since": "yesterday"},
                    "garbage",
                    {"host": HOST, "since": "2026-01-01T00:00:00+00:00", "reason": ["x"]},
                ],
            }
        )
    )
    store = LocalFileBackend(path)
    app = app_with(store, status_path=STATUS)
    with caplog.at_level(logging.WARNING):
        async with served(app):
            status, body = readiness(await request(app, READY))
            assert (status, body) == (503, {"ready": False, "cause": "cordoned"})  # HOST's
            assert (await request(app, "/")).body == b"home"
    assert "a cordon is ignored" in caplog.text
    assert [c.host for c in await list_cordons(backend=store)] == [HOST]
    path.write_text(json.dumps({"active": False, "holds": [], "cordons": {"a": 1}}))
    assert io.read_scopes_blocking(store, [None])[None].cordons == ()


async def test_a_redis_cordons_key_of_another_type_is_told_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    store = redis_backend()
    key = "{" + store.key_prefix + "}:cordons"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(key, "not a hash")
        with caplog.at_level(logging.WARNING):
            await set_maintenance_mode(True, store)  # other writes still work
            assert await list_cordons(backend=store) == []
        assert "'cordons' is ignored" in caplog.text
        with pytest.raises(Exception, match="WRONGTYPE"):
            await cordon("web-1", backend=store)  # all or nothing: the cordon is not lost
        client.delete(key)
        client.hset(key, mapping={"web-1": "{not json", "web-2": json.dumps({"since": 5})})
        assert await list_cordons(backend=store) == []
    finally:
        client.delete(key)
        client.close()


# -- the readiness path -----------------------------------------------------------------------


async def test_a_cordoned_host_answers_503_at_readiness_and_serves_the_rest(
    store: Backend,
) -> None:
    app = app_with(store)
    async with served(app):
        assert readiness(await request(app, READY)) == (200, {"ready": True})
        await cordon(reason="kernel update", backend=store)
        assert readiness(await request(app, READY)) == (503, {"ready": False, "cause": "cordoned"})
        head = await request(app, READY, method="HEAD")
        assert head.status == 503 and head.body == b""
        assert (await request(app, "/")).body == b"home"  # still served
        await cordon("another-host", backend=store)
        await uncordon(backend=store)
        assert readiness(await request(app, READY)) == (200, {"ready": True})


async def test_during_maintenance_ready_unless_asked_otherwise(store: Backend) -> None:
    stays = app_with(store)
    leaves = app_with(store, ready_during_maintenance=False)
    async with served(stays), served(leaves):
        async with maintenance_mode_on(backend=store):
            assert (await request(stays, "/")).status == 503
            assert readiness(await request(stays, READY)) == (200, {"ready": True})
            assert readiness(await request(leaves, READY)) == (
                503,
                {"ready": False, "cause": "maintenance"},
            )
        assert readiness(await request(leaves, READY)) == (200, {"ready": True})


async def test_other_methods_get_405_and_the_path_is_exact(tmp_path: Path) -> None:
    app = app_with(LocalFileBackend(tmp_path / "s.json"))
    async with served(app):
        sent = await request(app, READY, method="POST")
        assert sent.status == 405 and sent.headers[b"allow"] == b"GET, HEAD"
        assert (await request(app, READY + "/x")).status == 404
        assert (await request(app, READY, query_string=b"a=1")).status == 200


async def test_the_status_endpoint_shows_cordons_only_to_trusted_callers(tmp_path: Path) -> None:
    store = LocalFileBackend(tmp_path / "s.json")
    app = app_with(store, status_path=STATUS, bypass_secret=SECRET)
    async with served(app):
        await cordon("web-1", reason="disk", backend=store)
        public = json.loads((await request(app, STATUS)).body)
        assert "cordons" not in public
        trusted = json.loads(
            (await request(app, STATUS, headers=[(b"x-maintenance-bypass", SECRET.encode())])).body
        )
        [shown] = trusted["cordons"]
        assert shown["host"] == "web-1" and shown["reason"] == "disk"
        assert shown["draining_until"] is None


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"exempt_paths": [READY]}, "is also in exempt_paths"),
        ({"status_path": READY}, "is also the status_path"),
        ({"readiness_path": "ready"}, "must be an absolute path"),
        ({"readiness_path": "/r?x=1"}, "no query"),
        ({"readiness_path": "/r y"}, "without spaces"),
        ({"readiness_path": "/_maintenance/bypass/r", "bypass_secret": SECRET}, "bypass_path"),
        ({"readiness_path": None, "ready_during_maintenance": False}, "needs a readiness_path"),
        ({"ready_during_maintenance": "no"}, "must be True or False"),
    ],
)
def test_bad_readiness_options_are_refused_when_built(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    options = {"readiness_path": READY, **options}
    with pytest.raises(ConfigurationError, match=says):
        MaintenanceModeMiddleware(says_app, LocalFileBackend(tmp_path / "s.json"), **options)


def says_app(*args: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def test_a_route_at_the_readiness_path_is_refused(tmp_path: Path) -> None:
    app = Starlette(routes=[Route(READY, says("mine"))])
    with pytest.raises(ConfigurationError, match="readiness_path '/_maintenance/ready' is also"):
        MaintenanceModeMiddleware(app, LocalFileBackend(tmp_path / "s.json"), readiness_path=READY)


# -- the drain: this host's work only ------------------------------------------------------------


async def test_a_drain_waits_for_this_hosts_work_and_ends_with_it(store: Backend) -> None:
    release = anyio.Event()
    ended: list[float] = []

    @not_during_maintenance(backend=store)
    async def job() -> None:
        await release.wait()
        ended.append(anyio.current_time())

    async def later() -> None:
        await anyio.sleep(0.3)
        release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.05)
        tg.start_soon(later)
        found = await cordon(drain=5, backend=store)
        done = anyio.current_time()
    assert ended and ended[0] <= done  # it returned only once the job had ended
    assert found.drain is None
    [stored] = await list_cordons(backend=store)
    assert stored.drain is None and stored.drain_until is None  # the token is off again
    await uncordon(backend=store)


@contextlib.asynccontextmanager
async def job_in_flight(store: Backend) -> AsyncIterator[Callable[[], None]]:
    """A guarded job of this process in flight on ``store`` until the block ends or calls
    what it is given."""
    release = anyio.Event()

    @not_during_maintenance(backend=store)
    async def stuck() -> None:
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stuck)
        await anyio.sleep(0.05)
        try:
            yield release.set
        finally:
            release.set()


async def test_a_drain_of_another_host_does_not_wait_for_this_ones_work(store: Backend) -> None:
    async with job_in_flight(store):
        with anyio.fail_after(3):
            await cordon("some-other-host", drain=30, backend=store)


async def test_a_drain_called_from_inside_the_work_does_not_wait_for_itself(
    store: Backend,
) -> None:
    @not_during_maintenance(backend=store)
    async def deploy_step() -> Cordon:
        return await cordon(drain=30, backend=store)

    with anyio.fail_after(5):
        assert (await deploy_step()).host == HOST


async def test_a_drain_that_runs_out_raises_or_warns_and_the_host_stays_cordoned(
    store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async with job_in_flight(store):
        with pytest.raises(DrainTimeout, match=r"did not end within drain=0\.2s") as raised:
            await cordon(drain=0.2, on_drain_timeout="raise", backend=store)
        assert raised.value.pending == 1
        with caplog.at_level(logging.WARNING):
            await cordon(drain=0.1, backend=store)
        assert "going on (on_drain_timeout='proceed')" in caplog.text
    [stored] = await list_cordons(backend=store)
    assert stored.host == HOST and stored.drain is None


async def test_a_cancelled_drain_takes_its_token_off(store: Backend) -> None:
    async with job_in_flight(store):
        with anyio.move_on_after(0.2):
            await cordon(drain=30, backend=store)
    [stored] = await list_cordons(backend=store)
    assert stored.drain is None and stored.drain_until is None


async def test_other_processes_of_the_host_are_waited_for_by_their_reports(
    tmp_path: Path,
) -> None:
    # Another process's presence records, written as it would: on the cordoned host, one
    # that has not reported yet, then reports 2 in flight, then 0; one on another host
    # never reports and is not waited for.
    store = LocalFileBackend(tmp_path / "state.json", refresh_interval=0.05)

    async def report(worker: str, host: str, reports: tuple[tuple[str, int], ...]) -> None:
        await report_as_another_process(store, worker, host, reports)

    await report("far", "web-2", ())
    await report("near", "web-1", ())
    seen: list[str] = []

    async def the_other_process() -> None:
        while True:
            await anyio.sleep(0.05)
            [found] = await list_cordons(backend=store)
            if found.drain is not None:
                break
        seen.append("token")
        await report("near", "web-1", ((cordon_key(found.drain), 2),))
        await anyio.sleep(0.4)
        seen.append("done")
        await report("near", "web-1", ((cordon_key(found.drain), 0),))

    async with anyio.create_task_group() as tg:
        tg.start_soon(the_other_process)
        with anyio.fail_after(10):
            await cordon("web-1", drain=20, backend=store)
        seen.append("drained")
    assert seen == ["token", "done", "drained"]


def test_a_cordon_write_lands_in_the_global_scope_only() -> None:
    write = PutCordon("web-1", Cordon("web-1", NOW))
    state = write(StoredState())
    assert state.cordons == (Cordon("web-1", NOW),) and write.found is False
    removal = PutCordon("web-1", None)
    assert removal(state).cordons == () and removal.found is True
    ctrl = controller(MemoryBackend(), "billing")
    assert ctrl.parent is not None  # put_cordon writes through the global scope


# -- what an outside attack found: each a rule of cordons and their paths ----------------------


@pytest.mark.parametrize("path", [READY, STATUS])
async def test_a_websocket_at_an_own_path_is_the_apps_never_an_http_answer(path: str) -> None:
    # An HTTP answer on a WebSocket is a 500 from the server: the handshake goes to the app
    # (here: no such route, so it is closed), maintenance on or off.
    store = MemoryBackend()
    app = app_with(store, status_path=STATUS)
    async with served(app):
        for on in (False, True):
            await set_maintenance_mode(on, store)
            sent = await websocket_call(app, path)
            assert sent and all(m["type"].startswith("websocket.") for m in sent), sent


async def websocket_call(app: Any, path: str) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    asked = 0

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked == 1:
            return {"type": "websocket.connect"}
        await anyio.sleep(0.05)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(websocket_scope(path), receive, send)
    return sent


async def test_a_drain_goes_on_when_the_host_is_cordoned_again_and_stops_when_uncordoned(
    store: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    async def drain(ended: anyio.Event) -> None:
        await cordon(drain=10, backend=store)
        ended.set()

    ended = anyio.Event()
    async with job_in_flight(store) as release, anyio.create_task_group() as tg:
        tg.start_soon(drain, ended)
        await anyio.sleep(0.2)
        again = await cordon(reason="updated", backend=store)  # a second operator
        assert again.reason == "updated"
        await anyio.sleep(0.3)
        assert not ended.is_set()  # the job still runs: the drain still waits for it
        release()
        with anyio.fail_after(3):
            await ended.wait()
    [kept] = await list_cordons(backend=store)
    assert kept.reason == "updated" and kept.drain is None
    ended = anyio.Event()
    async with job_in_flight(store), anyio.create_task_group() as tg:
        tg.start_soon(drain, ended)
        await anyio.sleep(0.2)
        with caplog.at_level(logging.WARNING), anyio.fail_after(3):
            await uncordon(backend=store)  # in rotation again: nothing more to wait for
            await ended.wait()
    assert "uncordoned while its drain waited" in caplog.text
    assert await list_cordons(backend=store) == []


async def test_two_drains_share_one_token_and_the_longer_keeps_it(store: Backend) -> None:
    async with job_in_flight(store), anyio.create_task_group() as tg:
        tg.start_soon(lambda: cordon(drain=0.2, backend=store))
        await anyio.sleep(0.05)
        with pytest.raises(DrainTimeout):
            await cordon(drain=0.6, on_drain_timeout="raise", backend=store)
    [kept] = await list_cordons(backend=store)
    assert kept.drain is None  # the later drain took it off at its end


async def test_a_timed_out_drain_names_the_processes_it_waited_for(tmp_path: Path) -> None:
    # A process of the host that never reports (an older maintguard, from before cordons)
    # is waited for until the limit; the message says which.
    store = LocalFileBackend(tmp_path / "state.json", refresh_interval=0.05)
    await report_as_another_process(store, "old", "web-1", ())
    with pytest.raises(DrainTimeout, match=r"still running on 'web-1': pid 4242 \(no report\)"):
        await cordon("web-1", drain=0.3, on_drain_timeout="raise", backend=store)


async def report_as_another_process(
    store: Backend, worker: str, host: str, reports: tuple[tuple[str, int], ...]
) -> None:
    """Write another process's presence record, as it would (pid 4242)."""
    expires = datetime.now(timezone.utc) + timedelta(seconds=30)
    write = PutWorker(worker, WorkerRecord(worker, host, 4242, expires, reports), NOW, 30)
    await anyio.to_thread.run_sync(
        lambda: io.update_blocking(store, None, lambda: write, store_of(store))
    )


@pytest.mark.parametrize("on_error", ["open", "closed", "last_known"])
async def test_a_host_stays_out_of_rotation_while_its_store_cannot_be_read(
    tmp_path: Path, on_error: str
) -> None:
    # Cordons never decide maintenance: on_error says what maintenance is while the store
    # cannot be read, and the last known cordons stay.
    path = tmp_path / "state.json"
    store = LocalFileBackend(path, refresh_interval=0, on_error=on_error)
    app = app_with(store)
    async with served(app):
        await cordon(backend=store)
        assert (await request(app, READY)).status == 503
        broken = tmp_path / "broken.json"
        broken.write_text("{ half-written")
        os.replace(broken, path)  # (at once: an empty file on the way would read as off)
        expected = 503 if on_error == "closed" else 200
        with anyio.fail_after(5):  # the watcher's read fails, and on_error is applied
            while (  # noqa: ASYNC110 - the watcher's read, on its own thread
                store_of(store).read_error is None or (await request(app, "/")).status != expected
            ):
                await anyio.sleep(0.02)
        assert readiness(await request(app, READY)) == (503, {"ready": False, "cause": "cordoned"})


async def test_a_readiness_probe_is_not_work_a_drain_waits_for() -> None:
    store = MemoryBackend()
    app = app_with(store)
    async with served(app):
        slow_reader = anyio.Event()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                await slow_reader.wait()  # the client reads the answer slowly

        async with anyio.create_task_group() as tg:
            tg.start_soon(app, http_scope(READY), receive, send)
            await anyio.sleep(0.05)
            with anyio.fail_after(1):
                await cordon(drain=5, backend=store)
            slow_reader.set()


async def test_a_stored_cordon_of_a_host_no_command_can_name_is_not_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A host name with spaces around it or a control character matches no process and no
    # `uncordon --host`: dropped on read with a warning, as any unreadable cordon.
    path = tmp_path / "state.json"
    since = "2026-01-01T00:00:00+00:00"
    cordons = [{"host": h, "since": since} for h in ("web-1 ", "web\t2", "x" * 300, "web-3")]
    path.write_text(json.dumps({"active": False, "holds": [], "cordons": cordons}))
    with caplog.at_level(logging.WARNING):
        found = await list_cordons(backend=LocalFileBackend(path))
    assert [c.host for c in found] == ["web-3"]
    assert caplog.text.count("a cordon is ignored") == 3
