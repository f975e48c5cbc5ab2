"""Drains: a hold turns maintenance on at once, then waits for in-flight work before its body."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from maintguard import (
    ConfigurationError,
    DrainTimeout,
    EventKind,
    MaintenanceEvent,
    MaintenanceModeMiddleware,
    Mode,
    Phase,
    UnderMaintenance,
    add_listener,
    exempt,
    flush_listeners,
    get_state,
    maintenance_scope,
    not_during_maintenance,
    remove_listener,
    under_maintenance,
)
from maintguard.backends import LocalFileBackend, MemoryBackend
from tests.asgi import http_scope

pytestmark = pytest.mark.anyio


class Heard:
    """Collects events while entered."""

    def __init__(self) -> None:
        self.events: list[MaintenanceEvent] = []

    def __enter__(self) -> Heard:
        add_listener(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        flush_listeners()
        remove_listener(self.events.append)

    def kinds(self) -> list[EventKind]:
        flush_listeners()
        return [e.kind for e in self.events]


async def eventually(check: Any, seconds: float = 5.0) -> None:
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - the state under test changes elsewhere
            await anyio.sleep(0.005)


# -- guarded jobs ---------------------------------------------------------------------------


async def test_body_starts_only_after_the_guarded_job_ends() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    log: list[str] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        log.append("job started")
        await release.wait()
        log.append("job ended")

    @not_during_maintenance(policy="raise", backend=backend)
    async def later() -> None:
        log.append("later ran")

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await eventually(lambda: log == ["job started"])
        tg.start_soon(maintenance)
        await eventually(lambda: backend_state(backend).active)
        state = await get_state(backend)
        assert state.active and state.phase is Phase.DRAINING
        with pytest.raises(UnderMaintenance):  # new work is refused while draining
            await later()
        await anyio.sleep(0.05)
        assert log == ["job started"]
        release.set()
    assert log == ["job started", "job ended", "body"]
    assert not (await get_state(backend)).active


def backend_state(backend: Any) -> Any:
    from maintguard._core import controller

    return controller(backend, None).snapshot


async def test_the_phase_goes_off_draining_on_off_and_listeners_hear_it() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    phases: list[Phase] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        await release.wait()

    with Heard() as heard:
        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await anyio.sleep(0.02)

            async def maintenance() -> None:
                async with under_maintenance(backend=backend, drain=10):
                    phases.append((await get_state(backend)).phase)

            tg.start_soon(maintenance)
            await eventually(lambda: backend_state(backend).active)
            phases.append((await get_state(backend)).phase)
            release.set()
        kinds = heard.kinds()
        transitions = [
            (e.previous, e.phase) for e in heard.events if e.kind is EventKind.TRANSITION
        ]
    assert phases == [Phase.DRAINING, Phase.ON]
    assert transitions == [
        (Phase.OFF, Phase.DRAINING),
        (Phase.DRAINING, Phase.ON),
        (Phase.ON, Phase.OFF),
    ]
    assert kinds.count(EventKind.DRAIN_FINISHED) == 1
    assert EventKind.DRAIN_TIMED_OUT not in kinds


async def test_a_drain_with_nothing_in_flight_runs_at_once() -> None:
    backend = MemoryBackend()
    with Heard() as heard:
        with anyio.fail_after(1):
            async with under_maintenance(backend=backend, drain=30):
                assert (await get_state(backend)).phase is Phase.ON
        assert EventKind.DRAIN_FINISHED in heard.kinds()


async def test_timeout_proceed_warns_tells_and_runs_the_body(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    ran: list[str] = []

    @not_during_maintenance(backend=backend)
    async def stuck() -> None:
        await release.wait()

    with Heard() as heard:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck)
            await anyio.sleep(0.02)
            with caplog.at_level(logging.WARNING, "maintguard"):
                async with under_maintenance(backend=backend, drain=0.2, reason="reindex"):
                    ran.append("body")
                    assert (await get_state(backend)).phase is Phase.ON
            release.set()
        kinds = heard.kinds()
    assert ran == ["body"]
    assert EventKind.DRAIN_TIMED_OUT in kinds and EventKind.DRAIN_FINISHED not in kinds
    assert any("drain=0.2s" in r.getMessage() for r in caplog.records)


async def test_timeout_raise_releases_the_hold_and_never_runs_the_body() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    ran: list[str] = []

    @not_during_maintenance(backend=backend)
    async def stuck() -> None:
        await release.wait()

    with Heard() as heard:
        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck)
            await anyio.sleep(0.02)
            with pytest.raises(DrainTimeout, match="on_drain_timeout='raise'"):
                async with under_maintenance(backend=backend, drain=0.1, on_drain_timeout="raise"):
                    ran.append("body")
            assert not (await get_state(backend)).active  # released at once
            release.set()
        assert EventKind.DRAIN_TIMED_OUT in heard.kinds()
    assert ran == []


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("face", ["async", "sync"])
async def test_a_raising_timeout_goes_draining_to_off_and_counts_what_was_pending(
    kind: str, face: str, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Found: the phase went DRAINING -> ON -> OFF, with an ON transition and the log line
    # "maintenance on (...)" although the body never ran; DrainTimeout.pending was always 0.
    backend = MemoryBackend() if kind == "memory" else LocalFileBackend(tmp_path / "m.json")
    release = threading.Event()
    started = threading.Semaphore(0)
    phases: list[Phase] = []

    @not_during_maintenance(backend=backend)
    def stuck() -> None:
        started.release()
        release.wait(10)

    def hold() -> None:
        with under_maintenance(backend=backend, drain=0.3, on_drain_timeout="raise"):
            raise AssertionError("the body must not run")

    async def hold_async() -> None:
        async with under_maintenance(backend=backend, drain=0.3, on_drain_timeout="raise"):
            raise AssertionError("the body must not run")

    workers = [threading.Thread(target=stuck) for _ in range(2)]
    caplog.set_level(logging.INFO, "maintguard")
    with Heard() as heard:
        for worker in workers:
            worker.start()
        for _ in workers:
            assert started.acquire(timeout=5)
        try:
            with pytest.raises(DrainTimeout) as timed_out:
                if face == "sync":
                    await anyio.to_thread.run_sync(hold)
                else:
                    await hold_async()
        finally:
            release.set()
            for worker in workers:
                worker.join(10)
        phases = [e.phase for e in heard.events if e.kind is EventKind.TRANSITION]
    assert timed_out.value.pending == 2
    assert "(2 still running)" in str(timed_out.value)
    assert phases == [Phase.DRAINING, Phase.OFF]
    logged = [r.getMessage() for r in caplog.records if r.name == "maintguard"]
    assert not any(m.startswith("maintenance on") for m in logged), logged
    assert not (await get_state(backend)).active


async def test_a_decorated_job_drains_too() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    log: list[str] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        await release.wait()
        log.append("job")

    @under_maintenance(backend=backend, drain=10)
    async def nightly() -> None:
        log.append("nightly")

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.02)
        tg.start_soon(nightly)
        await anyio.sleep(0.05)
        assert log == []
        release.set()
    assert log == ["job", "nightly"]


async def test_cancelled_while_draining_leaves_nothing_behind() -> None:
    backend = MemoryBackend()
    release = anyio.Event()

    @not_during_maintenance(backend=backend)
    async def stuck() -> None:
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stuck)
        await anyio.sleep(0.02)
        with anyio.move_on_after(0.1) as scope:
            async with under_maintenance(backend=backend, drain=30):
                raise AssertionError("the body must not run")
        assert scope.cancelled_caught
        state = await get_state(backend)
        assert not state.active and state.holds == 0
        release.set()


def test_sync_drain_waits_for_a_job_in_another_thread() -> None:
    backend = MemoryBackend()
    started, release = threading.Event(), threading.Event()
    log: list[str] = []

    @not_during_maintenance(backend=backend)
    def job() -> None:
        started.set()
        release.wait(10)
        log.append("job")

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    with under_maintenance(backend=backend, drain=10):
        log.append("body")
    worker.join(5)
    assert log == ["job", "body"]


def test_sync_drain_timeout_raise() -> None:
    backend = MemoryBackend()
    started, release = threading.Event(), threading.Event()

    @not_during_maintenance(backend=backend)
    def job() -> None:
        started.set()
        release.wait(10)

    worker = threading.Thread(target=job)
    worker.start()
    assert started.wait(5)
    try:
        hold = under_maintenance(backend=backend, drain=0.1, on_drain_timeout="raise")
        with pytest.raises(DrainTimeout), hold:
            raise AssertionError("the body must not run")
        assert not backend_state(backend).active
    finally:
        release.set()
        worker.join(5)


async def test_a_job_that_starts_a_drained_hold_does_not_wait_for_itself() -> None:
    backend = MemoryBackend()
    ran: list[str] = []

    @not_during_maintenance(backend=backend)
    async def migrate() -> None:
        async with under_maintenance(backend=backend, drain=5, on_drain_timeout="raise"):
            ran.append("body")

    with anyio.fail_after(2):
        await migrate()
    assert ran == ["body"]


def test_a_sync_job_that_starts_a_drained_hold_does_not_wait_for_itself() -> None:
    backend = MemoryBackend()

    @not_during_maintenance(backend=backend)
    def migrate() -> str:
        with under_maintenance(backend=backend, drain=5, on_drain_timeout="raise"):
            return "done"

    start = time.monotonic()
    assert migrate() == "done"
    assert time.monotonic() - start < 2


async def test_a_guarded_block_that_starts_a_drained_hold_does_not_wait_for_itself() -> None:
    backend = MemoryBackend()
    async with not_during_maintenance(backend=backend):
        with anyio.fail_after(2):
            async with under_maintenance(backend=backend, drain=5, on_drain_timeout="raise"):
                pass


async def test_a_named_scope_drain_waits_for_its_scope_only() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    log: list[str] = []

    @not_during_maintenance(backend=backend)  # global work: a billing hold does not refuse it
    async def mailer() -> None:
        await release.wait()

    @not_during_maintenance(backend=backend, scope="billing")
    async def invoices() -> None:
        await release.wait()
        log.append("invoices")

    async with anyio.create_task_group() as tg:
        tg.start_soon(mailer)
        await anyio.sleep(0.02)
        with anyio.fail_after(2):
            async with under_maintenance(backend=backend, scope="billing", drain=5):
                log.append("billing body")  # the mailer was not waited for
        tg.start_soon(invoices)
        await anyio.sleep(0.02)

        async def drain_billing() -> None:
            async with under_maintenance(backend=backend, scope="billing", drain=5):
                log.append("billing body 2")

        tg.start_soon(drain_billing)
        await anyio.sleep(0.05)
        assert log == ["billing body"]
        release.set()
    assert log == ["billing body", "invoices", "billing body 2"]


async def test_a_read_only_drain_does_not_wait_for_jobs_that_may_read() -> None:
    backend = MemoryBackend()
    release = anyio.Event()

    @not_during_maintenance(backend=backend, allow_read_only=True)
    async def report() -> None:
        await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        await anyio.sleep(0.02)
        with anyio.fail_after(2):
            async with under_maintenance(backend=backend, mode="read_only", drain=5):
                pass
        release.set()


# -- the self-context rule ------------------------------------------------------------------


async def test_guarded_helpers_run_inside_the_holds_own_context() -> None:
    backend = MemoryBackend()

    @not_during_maintenance(backend=backend, policy="raise")
    async def helper() -> str:
        return "ran"

    @not_during_maintenance(backend=backend, policy="raise")
    def sync_helper() -> str:
        return "ran"

    async with under_maintenance(backend=backend):
        assert await helper() == "ran"
        assert sync_helper() == "ran"
        async with not_during_maintenance(backend=backend, policy="raise"):
            pass
    # Tasks it starts are its own too.
    async with under_maintenance(backend=backend), anyio.create_task_group() as tg:
        tg.start_soon(helper)

    @under_maintenance(backend=backend)
    def decorated() -> str:
        return sync_helper()

    assert decorated() == "ran"


async def test_other_work_is_still_refused_while_a_hold_runs() -> None:
    backend = MemoryBackend()
    outcome: list[str] = []

    @not_during_maintenance(backend=backend, policy="raise")
    async def helper() -> None:
        outcome.append("ran")

    inside = anyio.Event()
    done = anyio.Event()

    async def other() -> None:  # started before the hold: not its context
        await inside.wait()
        try:
            await helper()
        except UnderMaintenance:
            outcome.append("refused")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        async with under_maintenance(backend=backend):
            inside.set()
            await done.wait()
    assert outcome == ["refused"]


async def test_a_hold_on_another_store_does_not_let_guarded_work_through() -> None:
    mine, other = MemoryBackend(), MemoryBackend()

    @not_during_maintenance(backend=mine, policy="raise")
    async def helper() -> None: ...

    async with under_maintenance(backend=mine), under_maintenance(backend=other):
        await helper()  # inside a hold of `mine`: runs
    async with under_maintenance(backend=other):
        async with under_maintenance(backend=mine, reason="elsewhere"):
            pass
        await helper()  # `mine` is off again


async def test_a_stale_mark_never_lets_work_through() -> None:
    backend = MemoryBackend()
    hold = under_maintenance(backend=backend)

    @not_during_maintenance(backend=backend, policy="raise")
    async def helper() -> None: ...

    await hold.__aenter__()
    await hold.__aexit__(None, None, None)
    async with under_maintenance(backend=backend, reason="another task's"):
        pass
    from maintguard import set_maintenance_mode

    await set_maintenance_mode(True, backend)
    with pytest.raises(UnderMaintenance):
        await helper()


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("drain", [-1, True, "5", math.nan, math.inf])
def test_bad_drain_is_refused(drain: Any) -> None:
    with pytest.raises(ConfigurationError, match="drain must be"):
        under_maintenance(drain=drain)


def test_bad_on_drain_timeout_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'proceed' or 'raise'"):
        under_maintenance(drain=5, on_drain_timeout="wait")


# -- requests -------------------------------------------------------------------------------


class Client:
    """Raw ASGI requests, so that a test sees exactly when each message is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(self, path: str, method: str = "GET", log: list[Any] | None = None) -> int:
        messages: list[Any] = [] if log is None else log
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await anyio.sleep_forever()
            raise AssertionError  # pragma: no cover

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        scope = http_scope(path, method)
        await self.app(scope, receive, send)
        return int(next(m["status"] for m in messages if m["type"] == "http.response.start"))


def drained_app(backend: Any, release: anyio.Event, **extra: Any) -> Starlette:
    async def slow(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("slow")

    async def fast(request: Request) -> Response:
        return PlainTextResponse("fast")

    @exempt
    async def health(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("up")

    @maintenance_scope("billing")
    async def invoices(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("invoices")

    routes = [
        Route("/slow", slow, methods=["GET", "POST"]),
        Route("/fast", fast),
        Route("/health", health),
        Route("/invoices", invoices),
        *extra.pop("routes", []),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, **extra)
    return app


async def test_drain_waits_for_slow_requests_and_new_ones_get_503() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    client = Client(drained_app(backend, release))
    log: list[str] = []
    statuses: list[int] = []

    async def slow() -> None:
        statuses.append(await client.request("/slow"))
        log.append("slow answered")

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    assert await client.request("/fast") == 200
    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        tg.start_soon(slow)
        await anyio.sleep(0.05)
        tg.start_soon(maintenance)
        await eventually(lambda: backend_state(backend).active)
        assert await client.request("/fast") == 503  # refused at once while draining
        await anyio.sleep(0.05)
        assert log == []
        release.set()
    assert statuses == [200, 200]
    assert log == ["slow answered", "slow answered", "body"]


async def test_drain_waits_for_a_streaming_response_until_its_last_chunk() -> None:
    backend = MemoryBackend()
    gates = [anyio.Event() for _ in range(3)]
    log: list[str] = []

    async def chunks() -> AsyncIterator[bytes]:
        for i, gate in enumerate(gates):
            await gate.wait()
            log.append(f"chunk {i}")
            yield b"x"

    async def export(request: Request) -> Response:
        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/export", export)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    client = Client(app)

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    async with anyio.create_task_group() as tg:
        tg.start_soon(client.request, "/export")
        gates[0].set()
        await eventually(lambda: log == ["chunk 0"])
        tg.start_soon(maintenance)
        await anyio.sleep(0.05)
        gates[1].set()
        await anyio.sleep(0.05)
        assert log == ["chunk 0", "chunk 1"]  # still streaming: the body waits
        gates[2].set()
    assert log == ["chunk 0", "chunk 1", "chunk 2", "body"]


async def test_a_request_counts_until_its_background_task_has_run() -> None:
    # After its last body message, a request's background task is still its work (it may
    # write what the maintenance changes): the drain waits for it too.
    backend = MemoryBackend()
    release = anyio.Event()
    log: list[str] = []

    async def cleanup() -> None:
        await release.wait()
        log.append("background done")

    async def respond(request: Request) -> Response:
        return PlainTextResponse("ok", background=BackgroundTask(cleanup))

    app = Starlette(routes=[Route("/", respond)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    client = Client(app)
    messages: list[Any] = []

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    async with anyio.create_task_group() as tg:
        tg.start_soon(client.request, "/", "GET", messages)
        await eventually(lambda: any(m["type"] == "http.response.body" for m in messages))
        tg.start_soon(maintenance)
        await anyio.sleep(0.05)
        assert log == []  # the response is out, its background task is not done
        release.set()
    assert log == ["background done", "body"]


@pytest.mark.parametrize("sync", [False, True], ids=["async endpoint", "sync endpoint"])
async def test_an_admin_endpoint_that_starts_a_drained_hold_does_not_wait_for_itself(
    sync: bool,
) -> None:
    backend = MemoryBackend()
    release = anyio.Event()

    async def admin(request: Request) -> Response:
        async with under_maintenance(backend=backend, drain=5, on_drain_timeout="raise"):
            return PlainTextResponse("migrated")

    def sync_admin(request: Request) -> Response:
        with under_maintenance(backend=backend, drain=5, on_drain_timeout="raise"):
            return PlainTextResponse("migrated")

    @exempt
    async def exempt_admin(request: Request) -> Response:
        return await admin(request)

    endpoint = sync_admin if sync else admin
    client = Client(
        drained_app(
            backend,
            release,
            routes=[Route("/admin", endpoint, methods=["POST"]), Route("/x", exempt_admin)],
        )
    )
    with anyio.fail_after(3):
        assert await client.request("/admin", "POST") == 200
        assert await client.request("/x") == 200


async def test_an_admin_endpoint_still_waits_for_other_requests() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    log: list[str] = []

    async def admin(request: Request) -> Response:
        async with under_maintenance(backend=backend, drain=10):
            log.append("migrated")
        return PlainTextResponse("done")

    client = Client(drained_app(backend, release, routes=[Route("/admin", admin)]))

    async def slow() -> None:
        await client.request("/slow")
        log.append("slow answered")

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        await anyio.sleep(0.05)
        tg.start_soon(client.request, "/admin")
        await anyio.sleep(0.1)
        assert log == []
        release.set()
    assert log == ["slow answered", "migrated"]


async def test_exempt_requests_and_other_scopes_are_not_waited_for() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    client = Client(drained_app(backend, release))
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.request, "/health")  # exempt: a hold never refuses it
        tg.start_soon(client.request, "/slow")  # global: a billing hold does not refuse it
        await anyio.sleep(0.05)
        with anyio.fail_after(2):
            async with under_maintenance(backend=backend, scope="billing", drain=5):
                pass
        tg.start_soon(client.request, "/invoices")
        await anyio.sleep(0.05)
        with anyio.fail_after(1):
            with pytest.raises(DrainTimeout):  # but an invoice in flight is waited for
                async with under_maintenance(
                    backend=backend, scope="billing", drain=0.2, on_drain_timeout="raise"
                ):
                    pass
        release.set()


async def test_a_read_only_drain_does_not_wait_for_safe_requests() -> None:
    backend = MemoryBackend()
    release = anyio.Event()
    client = Client(drained_app(backend, release))
    async with anyio.create_task_group() as tg:
        tg.start_soon(client.request, "/slow", "GET")
        await anyio.sleep(0.05)
        with anyio.fail_after(2):
            async with under_maintenance(
                backend=backend, mode=Mode.READ_ONLY, drain=5, on_drain_timeout="raise"
            ):
                pass
        tg.start_soon(client.request, "/slow", "POST")
        await anyio.sleep(0.05)
        with pytest.raises(DrainTimeout):
            async with under_maintenance(
                backend=backend, mode=Mode.READ_ONLY, drain=0.2, on_drain_timeout="raise"
            ):
                pass
        release.set()


async def test_a_websocket_session_counts_until_it_closes() -> None:
    backend = MemoryBackend()
    log: list[str] = []

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        await websocket.close()
        log.append("closed")

    app = Starlette(routes=[WebSocketRoute("/ws", chat)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]
    hang_up = anyio.Event()

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await hang_up.wait()
        return {"type": "websocket.receive", "text": "bye"}

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "raw_path": b"/ws", "root_path": "",
             "headers": [], "query_string": b"", "subprotocols": []}  # fmt: skip

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    async with anyio.create_task_group() as tg:
        tg.start_soon(app, scope, receive, send)
        await anyio.sleep(0.05)
        tg.start_soon(maintenance)
        await anyio.sleep(0.05)
        assert log == []
        hang_up.set()
    assert log == ["closed", "body"]


# -- a shared store in one process ----------------------------------------------------------


async def test_a_file_store_drains_this_processes_work_and_records_presence(
    tmp_path: Any,
) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0.05)
    release, inside = anyio.Event(), anyio.Event()
    log: list[str] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        inside.set()
        await release.wait()
        log.append("job")

    async def maintenance() -> None:
        async with under_maintenance(backend=backend, drain=10):
            log.append("body")

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await inside.wait()  # admitted, and so in flight
        assert '"workers"' in read(tmp_path)  # recorded before its first look
        tg.start_soon(maintenance)
        await eventually(lambda: '"drain"' in read(tmp_path))  # others are asked to report
        assert log == []
        release.set()
    assert log == ["job", "body"]
    assert '"drain"' not in read(tmp_path)


def read(tmp_path: Any) -> str:
    path = tmp_path / "m.json"
    return path.read_text() if path.exists() else ""


async def test_a_drain_beside_a_running_hold_keeps_the_phase_on() -> None:
    # Maintenance is on and a body runs already: a drain that begins now waits the same
    # way, and the phase stays ON (the state machine never goes back to DRAINING).
    backend = MemoryBackend()
    release = anyio.Event()
    phases: list[Phase] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        await release.wait()

    with Heard() as heard:
        async with anyio.create_task_group() as tg:
            tg.start_soon(job)
            await anyio.sleep(0.02)
            async with under_maintenance(backend=backend):
                phases.append((await get_state(backend)).phase)

                async def drained() -> None:
                    async with under_maintenance(backend=backend, drain=10):
                        phases.append((await get_state(backend)).phase)

                tg.start_soon(drained)
                await anyio.sleep(0.05)
                phases.append((await get_state(backend)).phase)
                release.set()
                await eventually(lambda: len(phases) == 3)
        flush_listeners()
        transitions = [
            (e.previous, e.phase) for e in heard.events if e.kind is EventKind.TRANSITION
        ]
    assert phases == [Phase.ON, Phase.ON, Phase.ON]
    assert transitions == [(Phase.OFF, Phase.ON), (Phase.ON, Phase.OFF)]


@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_other_processes_keep_seeing_on_when_a_drain_begins_beside_a_running_hold(
    tmp_path: Any, kind: str
) -> None:
    # The memory test above, on a shared store, looked at from another process. Found:
    # the process's hold record (one per process) carries the drain token whenever a drain
    # waits, even while another frame's body runs: every other process derives DRAINING.
    import sys

    from tests.stores import new_spec, open_store

    spec = new_spec(kind, tmp_path)
    backend = open_store(spec, refresh_interval=0.1)
    release = anyio.Event()

    async def phase_elsewhere() -> str:
        code = (
            "import sys; from maintguard import sync; from tests.stores import open_store; "
            "print(sync.get_state(open_store(sys.argv[1])).phase.value)"
        )
        done = await anyio.run_process([sys.executable, "-c", code, spec])
        return done.stdout.decode().strip()

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        await release.wait()

    seen: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.1)
        async with under_maintenance(backend=backend, reason="running"):
            seen.append(await phase_elsewhere())

            async def drained() -> None:
                async with under_maintenance(backend=backend, reason="drained", drain=30):
                    pass

            tg.start_soon(drained)
            if kind == "file":  # its record asks others to report: the drain waits
                state_file = tmp_path / "maintenance.json"  # (the spec's file)
                await eventually(lambda: '"drain"' in state_file.read_text())
            await anyio.sleep(0.3)
            seen.append(await phase_elsewhere())
            release.set()
    assert seen == ["on", "on"]
