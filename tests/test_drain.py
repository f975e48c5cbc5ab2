"""Drains: a hold turns maintenance on at once, then waits for in-flight work before its body.

What a drain waits for (guarded calls, requests until the app returns, WebSocket sessions,
other processes' work through their presence records), what it does not (exempt, refused
and let-through requests, other scopes, the holder's own request or job), timeouts and
cancellation, and the self-context rule (a hold's own helpers run).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import trio
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
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
    get_maintenance_mode,
    get_state,
    maintenance_scope,
    not_during_maintenance,
    remove_listener,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard._core.registry import store_of
from maintguard._state import WorkerRecord
from maintguard.backends import Backend, HoldRecord, LocalFileBackend, MemoryBackend, StoredState
from tests.asgi import http_scope

pytestmark = pytest.mark.anyio

PROMPT = 0.6  # seconds: "at once" for a drain with nothing to wait for


# -- helpers ------------------------------------------------------------------------------


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


async def drain_seconds(backend: Backend, drain: float = 3.0, **options: Any) -> float:
    """Seconds until a drained hold's body starts; DrainTimeout when the drain ran out."""
    t0 = time.monotonic()
    async with under_maintenance(backend=backend, drain=drain, on_drain_timeout="raise", **options):
        return time.monotonic() - t0


async def call(
    app: Any,
    path: str,
    method: str = "GET",
    *,
    client: str = "10.9.8.7",
    disconnect: anyio.Event | None = None,
) -> tuple[int | None, bytes]:
    """One raw ASGI HTTP request: (status, body). ``disconnect`` set: the client leaves."""
    scope = http_scope(path, method, client=(client, 1234), host=b"test")
    asked = False
    status: list[int] = []
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if disconnect is not None:
            await disconnect.wait()
            return {"type": "http.disconnect"}
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(scope, receive, send)
    return (status[0] if status else None), b"".join(body)


async def websocket_session(app: Any, path: str, close: anyio.Event) -> list[dict[str, Any]]:
    """A WebSocket client that connects and leaves when ``close`` is set."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "client": ("10.9.8.7", 1234),
        "server": ("test", 80),
        "subprotocols": [],
    }
    connected = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await close.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


class Gate:
    """Work that runs until released; ``entered`` tells when it began."""

    def __init__(self) -> None:
        self.entered = anyio.Event()
        self.release = anyio.Event()
        self.ended_at: float | None = None

    async def run(self) -> None:
        self.entered.set()
        await self.release.wait()
        self.ended_at = time.monotonic()


def middleware_app(backend: Backend, routes: list[Any], **options: Any) -> Starlette:
    return Starlette(
        routes=routes,
        middleware=[Middleware(MaintenanceModeMiddleware, backend=backend, **options)],
    )


async def started(app: Any) -> None:
    """Start a middleware (it settles on its backend at the first request)."""
    status, _ = await call(app, "/__nothing_here__")
    assert status == 404


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
        flush_listeners()  # (events reach listeners on the dispatcher's thread)
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
    await set_maintenance_mode(True, backend)
    with pytest.raises(UnderMaintenance):
        await helper()


async def test_guard_refuses_after_leaving_a_hold_object_another_task_still_holds() -> None:
    b = MemoryBackend()
    # one module-level object, as docs/how-to/jobs-and-drains.md shows
    hold = under_maintenance(backend=b)

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    go, inside, done = anyio.Event(), anyio.Event(), anyio.Event()

    async def other_task() -> None:  # started before any hold
        await go.wait()
        async with hold:  # counts on the frame on top (the same object's)
            inside.set()
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        async with hold:
            go.set()
            await inside.wait()
        # This task has left the hold; maintenance stays on for the other task's entry.
        assert await get_maintenance_mode(b)
        try:
            with pytest.raises(UnderMaintenance):
                await helper()
        finally:
            done.set()


async def test_a_hold_entry_left_by_a_task_it_started_stops_counting_for_its_task() -> None:
    # The exit runs in a copy of the entering task's context (a task it started): the
    # entering task's own link cannot be reset from there, but it counts for nothing from
    # then on, though the frame lives on for another task's entry of the same object.
    b = MemoryBackend()
    hold = under_maintenance(backend=b)

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    go, inside, done = anyio.Event(), anyio.Event(), anyio.Event()

    async def other_task() -> None:  # started before any hold
        await go.wait()
        async with hold:
            inside.set()
            await done.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(other_task)
        await hold.__aenter__()
        go.set()
        await inside.wait()
        assert await helper() == "ran"
        async with anyio.create_task_group() as inner:
            inner.start_soon(hold.__aexit__, None, None, None)
        assert await get_maintenance_mode(b)  # the other task's entry
        try:
            with pytest.raises(UnderMaintenance):
                await helper()
        finally:
            done.set()


async def test_a_hold_marks_the_context_that_entered_it_until_its_exit() -> None:
    # Set on entry, reset on exit (return, exception, cancellation): after the hold the
    # context is as it was (core.inflight.held), and the operator's "on" refuses again. A
    # held generator marks the context of its first step (the code iterating it runs its
    # helpers, as around a `with` block) until its exit.
    from maintguard._core.inflight import held

    b = MemoryBackend()

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    @not_during_maintenance(backend=b, policy="raise")
    def sync_helper() -> str:
        return "ran"

    @under_maintenance(backend=b)
    async def job(fail: bool) -> None:
        assert await helper() == "ran"
        if fail:
            raise ValueError("fail")
        await anyio.sleep(10)  # cancelled

    @under_maintenance(backend=b)
    def sync_job(fail: bool) -> None:
        assert sync_helper() == "ran"
        if fail:
            raise ValueError("fail")

    @under_maintenance(backend=b)
    async def pages() -> AsyncIterator[int]:
        yield 1
        yield 2

    @under_maintenance(backend=b)
    def rows() -> Iterator[int]:
        yield 1
        yield 2

    async def refused() -> None:
        assert held.get() is None
        with pytest.raises(UnderMaintenance):
            await helper()
        with pytest.raises(UnderMaintenance):
            sync_helper()

    await set_maintenance_mode(True, b, reason="operator")
    try:
        await refused()
        with pytest.raises(ValueError, match="fail"):
            await job(True)
        await refused()
        with anyio.move_on_after(0.05) as scope:
            await job(False)
        assert scope.cancelled_caught
        await refused()
        sync_job(False)
        await refused()
        with pytest.raises(ValueError, match="fail"):
            sync_job(True)
        await refused()
        agen = pages()
        assert await agen.__anext__() == 1
        assert await helper() == "ran"  # its consumer, between steps
        assert [p async for p in agen] == [2]
        await refused()
        gen = rows()
        assert next(gen) == 1
        assert sync_helper() == "ran"
        gen.close()
        await refused()
        for hold in (under_maintenance(backend=b), under_maintenance(backend=b, drain=0)):
            with anyio.move_on_after(0.05) as scope:
                async with hold:
                    assert await helper() == "ran"
                    await anyio.sleep(10)
            assert scope.cancelled_caught
            await refused()
            with pytest.raises(ValueError, match="block"), hold:
                assert sync_helper() == "ran"
                raise ValueError("block")
            await refused()
    finally:
        await set_maintenance_mode(False, b)


async def test_an_object_entered_again_in_its_own_context_keeps_it_marked_to_the_last_exit() -> (
    None
):
    # Entries counted on the object's own frame by the context already inside it are
    # counted on that context's mark too (no new link): every level runs the helpers, the
    # last exit takes the mark off, and another task's exit of one level leaves it on.
    from maintguard._core.inflight import held

    b = MemoryBackend()
    hold = under_maintenance(backend=b)

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    before = held.get()
    await set_maintenance_mode(True, b)  # so that only the mark lets the helper run
    try:
        async with hold:
            async with hold:
                async with hold:
                    assert await helper() == "ran"
                assert await helper() == "ran"
                async with anyio.create_task_group() as tg:  # one level, left elsewhere
                    await hold.__aenter__()
                    tg.start_soon(hold.__aexit__, None, None, None)
                assert await helper() == "ran"
            assert await helper() == "ran"
        assert held.get() is before
        with pytest.raises(UnderMaintenance):
            await helper()
    finally:
        await set_maintenance_mode(False, b)
    assert not await get_maintenance_mode(b)


async def test_holds_left_out_of_order_in_one_task_keep_the_newer_one_marked() -> None:
    b = MemoryBackend()
    first, second = under_maintenance(backend=b), under_maintenance(backend=b, reason="2")

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    await set_maintenance_mode(True, b, reason="operator")
    try:
        await first.__aenter__()
        await second.__aenter__()
        await first.__aexit__(None, None, None)  # not the newest: its link stays, dead
        assert await helper() == "ran"  # inside `second` still
        await second.__aexit__(None, None, None)
        with pytest.raises(UnderMaintenance):
            await helper()
    finally:
        await set_maintenance_mode(False, b)


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


# -- guards: in-flight counts never leak ---------------------------------------------------


@pytest.mark.filterwarnings("ignore::ResourceWarning")  # trio's, for the collected generator
async def test_guard_counts_do_not_leak_on_any_way_out() -> None:
    b = MemoryBackend()

    @not_during_maintenance(backend=b)
    async def ok() -> int:
        return 1

    @not_during_maintenance(backend=b)
    async def boom() -> None:
        raise ValueError("boom")

    @not_during_maintenance(backend=b)
    def sync_boom() -> None:
        raise KeyError("boom")

    @not_during_maintenance(backend=b)
    def numbers() -> Iterator[int]:
        yield from range(10)

    @not_during_maintenance(backend=b)
    async def anumbers() -> Any:
        for i in range(10):
            yield i

    @not_during_maintenance(backend=b)
    async def slow() -> None:
        await anyio.sleep(10)

    assert await ok() == 1
    with pytest.raises(ValueError, match="boom"):
        await boom()
    with pytest.raises(KeyError):
        sync_boom()
    for _ in numbers():
        break  # the generator is closed when dropped
    async for _ in anumbers():
        break  # closed by the event loop's async generator hooks once collected
    kept = anumbers()
    async for _ in kept:
        break
    await kept.aclose()  # closed explicitly after a break
    gc.collect()
    await anyio.sleep(0.05)
    with anyio.move_on_after(0.05):
        await slow()  # cancelled inside
    guard = not_during_maintenance(backend=b)
    with pytest.raises(RuntimeError, match="x"):
        async with guard:
            raise RuntimeError("x")
    with pytest.raises(RuntimeError, match="y"), guard:
        raise RuntimeError("y")
    await anyio.to_thread.run_sync(lambda: list(numbers()))

    # A guarded block entered in one task and left in another still ends its entry.
    entered = anyio.Event()
    await guard.__aenter__()

    async def leave_elsewhere() -> None:
        await guard.__aexit__(None, None, None)
        entered.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(leave_elsewhere)
    await entered.wait()

    assert await drain_seconds(b, drain=0) < PROMPT  # nothing left in flight


async def test_drain_waits_for_running_guarded_work_then_wakes_at_its_end() -> None:
    b = MemoryBackend()
    gate = Gate()
    stop = threading.Event()
    thread_ended: list[float] = []
    agen_gate = Gate()

    @not_during_maintenance(backend=b)
    async def job() -> None:
        await gate.run()

    @not_during_maintenance(backend=b)
    def sync_job() -> None:
        stop.wait(5)
        thread_ended.append(time.monotonic())

    @not_during_maintenance(backend=b)
    async def export() -> Any:
        yield 1
        await agen_gate.run()
        yield 2

    async def consume() -> None:
        async for _ in export():
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        tg.start_soon(anyio.to_thread.run_sync, sync_job)
        tg.start_soon(consume)
        await gate.entered.wait()
        await agen_gate.entered.wait()
        await anyio.sleep(0.1)  # the thread is in its call

        async def release() -> None:
            await anyio.sleep(0.2)
            gate.release.set()
            await anyio.sleep(0.1)
            stop.set()
            await anyio.sleep(0.1)
            agen_gate.release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=5)
        body = time.monotonic()
    assert gate.ended_at is not None and gate.ended_at <= body
    assert thread_ended and thread_ended[0] <= body
    assert agen_gate.ended_at is not None and agen_gate.ended_at <= body
    assert took < 0.4 + PROMPT  # woken at the last end, not at the timeout


async def test_worker_started_before_the_hold_waits_and_is_not_counted() -> None:
    b = MemoryBackend()
    ran: list[float] = []
    go = anyio.Event()

    @not_during_maintenance(backend=b)
    async def job() -> None:
        ran.append(time.monotonic())

    async def worker_loop() -> None:
        await go.wait()
        await job()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker_loop)  # its context has no mark: not the hold's helper
        await anyio.sleep(0.01)
        async with under_maintenance(backend=b):
            go.set()
            await anyio.sleep(0.1)
            assert ran == []  # waiting
            assert await drain_seconds(b, drain=2) < PROMPT  # the waiting call is not in flight
            assert ran == []
        released = time.monotonic()
    assert ran and ran[0] >= released


async def test_self_context_rule_lets_only_the_holds_own_helpers_through() -> None:
    b = MemoryBackend()
    other = MemoryBackend()

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    @not_during_maintenance(backend=b, policy="raise")
    def sync_helper() -> str:
        return "ran"

    refused: list[str] = []
    ready = anyio.Event()
    asked = anyio.Event()

    async def worker_loop() -> None:  # running before the hold
        await ready.wait()
        try:
            await helper()
        except UnderMaintenance:
            refused.append("worker")
        asked.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker_loop)
        async with under_maintenance(backend=b):
            assert await helper() == "ran"
            assert await anyio.to_thread.run_sync(sync_helper) == "ran"
            results: list[str] = []

            async def child() -> None:
                results.append(await helper())

            async with anyio.create_task_group() as inner:
                inner.start_soon(child)
            assert results == ["ran"]
            ready.set()
            await asked.wait()
        assert refused == ["worker"]

    # A hold on another store lets nothing through; after the hold, its marks are dead.
    await set_maintenance_mode(True, b, reason="operator")
    try:
        async with under_maintenance(backend=other):
            with pytest.raises(UnderMaintenance):
                await helper()
        async with under_maintenance(backend=b):
            pass
        with pytest.raises(UnderMaintenance):
            await helper()  # the hold of this context has left: the operator's "on" stands
        with pytest.raises(UnderMaintenance):
            sync_helper()
    finally:
        await set_maintenance_mode(False, b)


async def test_a_guarded_job_that_starts_a_drained_hold_does_not_wait_for_itself() -> None:
    b = MemoryBackend()
    guard = not_during_maintenance(backend=b)

    @not_during_maintenance(backend=b)
    async def job() -> float:
        return await drain_seconds(b, drain=1.5)

    @not_during_maintenance(backend=b)
    def sync_job() -> float:
        t0 = time.monotonic()
        with under_maintenance(backend=b, drain=1.5, on_drain_timeout="raise"):
            return time.monotonic() - t0

    @not_during_maintenance(backend=b)
    async def export() -> Any:
        yield await drain_seconds(b, drain=1.5)

    assert await job() < PROMPT
    assert await anyio.to_thread.run_sync(sync_job) < PROMPT
    assert [t < PROMPT async for t in export()] == [True]
    async with guard:
        assert await drain_seconds(b, drain=1.5) < PROMPT
        async with anyio.create_task_group() as tg:  # a task of the block: its context
            tg.start_soon(drain_seconds, b, 1.5)


async def test_a_hold_left_in_another_task_leaves_no_live_mark_behind() -> None:
    b = MemoryBackend()

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    hold = under_maintenance(backend=b)
    await hold.__aenter__()
    assert await helper() == "ran"

    async def leave() -> None:
        await hold.__aexit__(None, None, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leave)
    await set_maintenance_mode(True, b)
    try:
        with pytest.raises(UnderMaintenance):
            await helper()
    finally:
        await set_maintenance_mode(False, b)


async def test_a_task_still_inside_a_shared_hold_keeps_running_its_helpers() -> None:
    # docs/how-to/jobs-and-drains.md, Holding maintenance: one hold object can be entered
    # by many tasks at once; Background jobs: a guarded call made inside a hold's own context runs.
    b = MemoryBackend()
    shared = under_maintenance(backend=b, reason="shared")
    between = under_maintenance(backend=b, reason="another job")

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    a_in, between_in, b_in, a_out, done = (anyio.Event() for _ in range(5))
    outcome: list[str] = []

    async def first() -> None:
        async with shared:  # its own frame
            a_in.set()
            await b_in.wait()
        a_out.set()  # left: one entry of `shared` ended

    async def another_job() -> None:
        await a_in.wait()
        async with between:  # a frame above `shared`'s
            between_in.set()
            await done.wait()

    async def second() -> None:
        await between_in.wait()
        async with shared:  # not on top: a frame of its own, the object's newest
            b_in.set()
            await a_out.wait()
            try:
                outcome.append(await helper())  # still inside `shared`
            except UnderMaintenance:
                outcome.append("refused")
        done.set()

    async with anyio.create_task_group() as tg:
        for job in (first, another_job, second):
            tg.start_soon(job)
    assert outcome == ["ran"]
    assert not await get_maintenance_mode(b)


@pytest.mark.parametrize("form", ["decorated", "with"])
def test_an_endpoint_inside_a_sync_yield_dependencys_hold_runs_its_helpers(form: str) -> None:
    # docs/how-to/jobs-and-drains.md: `def dep(): with maintenance_mode_on(): yield` works; a
    # guarded call made inside a hold's own context runs (as it does under an async `yield`
    # dependency).
    from fastapi import Depends, FastAPI
    from starlette.testclient import TestClient

    b = MemoryBackend()
    hold = under_maintenance(backend=b)

    @under_maintenance(backend=b)
    def decorated() -> Iterator[None]:
        yield

    def with_block() -> Iterator[None]:
        with hold:
            yield

    @not_during_maintenance(backend=b, policy="raise")
    async def helper() -> str:
        return "ran"

    app = FastAPI()
    app.add_middleware(MaintenanceModeMiddleware, backend=b)

    @app.get("/migrate", dependencies=[Depends(decorated if form == "decorated" else with_block)])
    async def migrate() -> str:
        try:
            return await helper()
        except UnderMaintenance:
            return "refused"

    with TestClient(app) as client:
        assert client.get("/migrate").json() == "ran"
    assert not anyio.run(get_maintenance_mode, b)


async def test_a_named_scope_hold_does_not_open_global_maintenance_to_its_helpers() -> None:
    b = MemoryBackend()

    @not_during_maintenance(backend=b, policy="raise")  # global work
    async def reindex_everything() -> str:
        return "ran"

    await set_maintenance_mode(True, b, reason="a database migration, by an operator")
    try:
        async with under_maintenance(backend=b, scope="billing"):
            with pytest.raises(UnderMaintenance):
                await reindex_everything()
    finally:
        await set_maintenance_mode(False, b)


async def test_file_drain_cancelled_or_timed_out_leaves_the_file_clean(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    b = LocalFileBackend(path, refresh_interval=0.1)
    gate = Gate()

    @not_during_maintenance(backend=b)
    async def job() -> None:
        await gate.run()

    def stored() -> dict[str, Any]:
        return json.loads(path.read_text()) if path.exists() else {}

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await gate.entered.wait()
        with anyio.move_on_after(0.3):
            async with under_maintenance(backend=b, drain=10):
                raise AssertionError("the body must not run")
        assert stored().get("holds") == []
        with pytest.raises(DrainTimeout):
            await drain_seconds(b, drain=0.3)
        assert stored().get("holds") == []
        assert not await get_maintenance_mode(b)
        gate.release.set()
    assert await drain_seconds(b, drain=2) < PROMPT


async def test_cancel_or_timeout_during_the_drain_leaves_nothing_on() -> None:
    b = MemoryBackend()
    gate = Gate()
    body_ran: list[bool] = []

    @not_during_maintenance(backend=b)
    async def job() -> None:
        await gate.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await gate.entered.wait()

        with anyio.move_on_after(0.2) as scope:
            async with under_maintenance(backend=b, drain=10):
                body_ran.append(True)
        assert scope.cancelled_caught
        assert not await get_maintenance_mode(b)

        with pytest.raises(DrainTimeout):
            async with under_maintenance(backend=b, drain=0.2, on_drain_timeout="raise"):
                body_ran.append(True)
        assert not await get_maintenance_mode(b)

        def sync_drain() -> None:
            with under_maintenance(backend=b, drain=0.2, on_drain_timeout="raise"):
                body_ran.append(True)

        with pytest.raises(DrainTimeout):
            await anyio.to_thread.run_sync(sync_drain)
        assert not await get_maintenance_mode(b)

        # Cancelled from outside while draining, in a child task.
        async def drained() -> None:
            async with under_maintenance(backend=b, drain=10):
                body_ran.append(True)

        async with anyio.create_task_group() as inner:
            inner.start_soon(drained)
            await anyio.sleep(0.1)
            assert await get_maintenance_mode(b)
            inner.cancel_scope.cancel()
        assert not await get_maintenance_mode(b)
        gate.release.set()
    assert body_ran == []
    assert await drain_seconds(b, drain=0) < PROMPT


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_task_cancel_during_the_drain_leaves_nothing_on() -> None:
    b = MemoryBackend()
    gate = Gate()

    @not_during_maintenance(backend=b)
    async def job() -> None:
        await gate.run()

    async def drained() -> None:
        async with under_maintenance(backend=b, drain=10):
            raise AssertionError("the body must not run")

    job_task = asyncio.ensure_future(job())
    await gate.entered.wait()
    task = asyncio.ensure_future(drained())
    await asyncio.sleep(0.1)
    assert await get_maintenance_mode(b)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await get_maintenance_mode(b)
    gate.release.set()
    await job_task


# -- the middleware: what a drain waits for -----------------------------------------------


def _web_routes(gates: dict[str, Gate], backend: Backend) -> list[Any]:
    async def slow(request: Request) -> Response:
        await gates["slow"].run()
        return PlainTextResponse("slow")

    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            yield b"a"
            await gates["stream"].run()
            yield b"b"

        return StreamingResponse(chunks())

    async def background(request: Request) -> Response:
        return PlainTextResponse("bg", background=BackgroundTask(gates["bg"].run))

    async def boom(request: Request) -> Response:
        await gates["boom"].run()
        raise RuntimeError("boom")

    @exempt
    async def health(request: Request) -> Response:
        await gates["health"].run()
        return PlainTextResponse("ok")

    async def admin(request: Request) -> Response:
        took = await drain_seconds(backend, drain=2)
        return PlainTextResponse(f"{took:.3f}")

    def admin_sync(request: Request) -> Response:
        t0 = time.monotonic()
        with under_maintenance(backend=backend, drain=2, on_drain_timeout="raise"):
            took = time.monotonic() - t0
        return PlainTextResponse(f"{took:.3f}")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        gates["ws"].entered.set()
        await websocket.receive()
        gates["ws"].ended_at = time.monotonic()

    return [
        Route("/slow", slow, methods=["GET", "POST"]),
        Route("/stream", stream),
        Route("/bg", background),
        Route("/boom", boom),
        Route("/health", health),
        Route("/admin", admin, methods=["POST"]),
        Route("/admin_sync", admin_sync, methods=["POST"]),
        WebSocketRoute("/ws", ws),
    ]


def _gates() -> dict[str, Gate]:
    return {name: Gate() for name in ("slow", "stream", "bg", "boom", "health", "ws")}


@pytest.mark.parametrize("path", ["/slow", "/stream", "/bg"])
async def test_drain_waits_for_requests_until_the_app_returns(path: str) -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    gate = gates[path.strip("/")]
    got: list[tuple[int | None, bytes]] = []

    async def client() -> None:
        got.append(await call(app, path))

    async with anyio.create_task_group() as tg:
        tg.start_soon(client)
        await gate.entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            gate.release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=4)
        body = time.monotonic()
    assert gate.ended_at is not None and gate.ended_at <= body
    assert took < 0.3 + PROMPT
    assert got[0][0] == 200


async def test_requests_that_fail_or_lose_their_client_leave_no_count() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    gates["boom"].release.set()
    with pytest.raises(RuntimeError, match="boom"):
        await call(app, "/boom")  # (ServerErrorMiddleware re-raises after its 500)

    gone = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: call(app, "/stream", disconnect=gone))
        await gates["stream"].entered.wait()
        gone.set()  # the client leaves mid-stream: Starlette stops the response
    assert await drain_seconds(b, drain=0) < PROMPT


async def test_exempt_routes_and_own_requests_are_not_waited_for() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/health")
        await gates["health"].entered.wait()
        assert await drain_seconds(b, drain=2) < PROMPT  # an exempt route in flight
        status, took = await call(app, "/admin", "POST")
        assert status == 200 and float(took) < PROMPT  # an admin endpoint: not itself
        status, took = await call(app, "/admin_sync", "POST")
        assert status == 200 and float(took) < PROMPT  # a sync one, in a worker thread
        gates["health"].release.set()


async def test_admin_endpoint_waits_for_other_requests() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow")
        await gates["slow"].entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            gates["slow"].release.set()

        tg.start_soon(release)
        status, took = await call(app, "/admin", "POST")
    assert status == 200 and 0.25 < float(took) < 0.3 + PROMPT


async def test_websocket_sessions_are_waited_for_until_they_close() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    close = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(websocket_session, app, "/ws", close)
        await gates["ws"].entered.wait()

        async def leave() -> None:
            await anyio.sleep(0.3)
            close.set()

        tg.start_soon(leave)
        took = await drain_seconds(b, drain=4)
        body = time.monotonic()
    assert gates["ws"].ended_at is not None and gates["ws"].ended_at <= body
    assert took < 0.3 + PROMPT


async def test_close_websockets_ends_sessions_so_the_drain_need_not_wait() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b), close_websockets=True)
    await started(app)
    never = anyio.Event()
    sent: list[list[dict[str, Any]]] = []

    async def client() -> None:
        sent.append(await websocket_session(app, "/ws", never))

    async with anyio.create_task_group() as tg:
        tg.start_soon(client)
        await gates["ws"].entered.wait()
        assert await drain_seconds(b, drain=3) < PROMPT
    assert {"type": "websocket.close", "code": 1012, "reason": "maintenance"} in sent[0]


async def test_read_only_drain_waits_for_writes_but_not_for_reads() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow")  # a GET in flight
        await gates["slow"].entered.wait()
        assert await drain_seconds(b, drain=2, mode="read_only") < PROMPT
        gates["slow"].release.set()

    gates["slow"] = Gate()
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow", "POST")  # a write in flight
        await gates["slow"].entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            gates["slow"].release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=4, mode="read_only")
    assert 0.25 < took < 0.3 + PROMPT


async def test_scoped_drain_waits_for_its_scope_only() -> None:
    b = MemoryBackend()
    gates = _gates()
    billing = Gate()

    async def invoice(request: Request) -> Response:
        await billing.run()
        return PlainTextResponse("invoice")

    routes = [*_web_routes(gates, b), Route("/billing/invoice", invoice)]
    app = middleware_app(b, routes, scopes={"/billing/*": "billing"})
    await started(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow")  # not billing
        await gates["slow"].entered.wait()
        assert await drain_seconds(b, drain=2, scope="billing") < PROMPT
        tg.start_soon(call, app, "/billing/invoice")
        await billing.entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            billing.release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=4, scope="billing")
        assert 0.25 < took < 0.3 + PROMPT
        gates["slow"].release.set()


async def test_two_middlewares_on_one_store_are_both_waited_for() -> None:
    b = MemoryBackend()
    gates1, gates2 = _gates(), _gates()
    app1 = middleware_app(b, _web_routes(gates1, b))
    app2 = middleware_app(b, _web_routes(gates2, b))
    await started(app1)
    await started(app2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app1, "/slow")
        tg.start_soon(call, app2, "/slow")
        await gates1["slow"].entered.wait()
        await gates2["slow"].entered.wait()

        async def release() -> None:
            await anyio.sleep(0.2)
            gates1["slow"].release.set()
            await anyio.sleep(0.2)
            gates2["slow"].release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=4)
        body = time.monotonic()
    assert gates2["slow"].ended_at is not None and gates2["slow"].ended_at <= body
    assert took < 0.4 + PROMPT


async def test_head_on_a_fastapi_get_route_sees_the_503_while_draining() -> None:
    fastapi = pytest.importorskip("fastapi")
    b = MemoryBackend()
    api = fastapi.FastAPI()
    api.add_middleware(MaintenanceModeMiddleware, backend=b)

    @api.get("/items")
    async def items() -> dict[str, str]:
        return {"ok": "yes"}

    await started(api)
    gate = Gate()

    @not_during_maintenance(backend=b)
    async def job() -> None:
        await gate.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await gate.entered.wait()

        async def drained() -> None:
            async with under_maintenance(backend=b, drain=5):
                pass

        tg.start_soon(drained)
        await anyio.sleep(0.1)  # draining now
        assert (await call(api, "/items", "HEAD"))[0] == 503
        assert (await call(api, "/items"))[0] == 503
        gate.release.set()


# -- the middleware: mounted apps, answered and let-through requests ---------------------


async def test_mounted_subapp_middleware_requests_are_waited_for() -> None:
    b = MemoryBackend()
    gate = Gate()

    async def slow(request: Request) -> Response:
        await gate.run()
        return PlainTextResponse("slow")

    inner = middleware_app(b, [Route("/slow", slow)])
    app = Starlette(routes=[Mount("/sub", app=inner)])
    assert (await call(app, "/sub/nothing"))[0] == 404  # starts the inner middleware
    async with anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/sub/slow")
        await gate.entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            gate.release.set()

        tg.start_soon(release)
        await drain_seconds(b, drain=3)
        body = time.monotonic()
    assert gate.ended_at is not None and gate.ended_at <= body


async def test_requests_refused_with_503_are_not_waited_for() -> None:
    b = MemoryBackend()
    release = anyio.Event()

    async def handler(request: Request, state: Any) -> Response:
        await release.wait()  # a slow 503 (a slow client, a busy server)
        return PlainTextResponse("down", status_code=503)

    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    app = middleware_app(b, [Route("/", home)], response_handler=handler)
    await started(app)
    async with under_maintenance(backend=b), anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/")
        await anyio.sleep(0.1)  # its 503 is on its way

        async def later() -> None:
            await anyio.sleep(0.5)
            release.set()

        tg.start_soon(later)
        took = await drain_seconds(b, drain=1.5)
    assert took < 0.4  # refused work is no work: nothing to wait for


async def test_full_drain_ends_when_a_read_only_get_ends() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b))
    await started(app)
    async with under_maintenance(backend=b, mode="read_only"), anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow")  # a GET: passes in read-only mode
        await gates["slow"].entered.wait()

        async def release() -> None:
            await anyio.sleep(0.3)
            gates["slow"].release.set()

        tg.start_soon(release)
        took = await drain_seconds(b, drain=1.5)  # full: it refuses GETs, so it waits
        body = time.monotonic()
    assert gates["slow"].ended_at is not None and gates["slow"].ended_at <= body
    assert took < 0.3 + PROMPT


async def test_allowed_ip_request_during_maintenance_is_not_waited_for() -> None:
    b = MemoryBackend()
    gates = _gates()
    app = middleware_app(b, _web_routes(gates, b), allow_ips=["10.0.0.0/8"])
    await started(app)
    async with under_maintenance(backend=b), anyio.create_task_group() as tg:
        tg.start_soon(call, app, "/slow", "POST")  # an admin's request: let through
        await gates["slow"].entered.wait()
        try:
            took = await drain_seconds(b, drain=1.5)
        finally:
            gates["slow"].release.set()
    assert took < PROMPT


# -- the holder's own work ------------------------------------------------------------------


async def test_drained_hold_in_a_task_of_the_request_does_not_wait_for_it() -> None:
    b = MemoryBackend()
    took: list[float | str] = []

    async def migrate() -> None:
        try:
            took.append(await drain_seconds(b, drain=1.0))
        except DrainTimeout:
            took.append("timed out")

    async def admin(request: Request) -> Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate)
        return PlainTextResponse("done")

    @not_during_maintenance(backend=b)
    async def job() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(migrate)

    app = middleware_app(b, [Route("/admin", admin, methods=["POST"])])
    await started(app)
    assert (await call(app, "/admin", "POST"))[0] == 200
    await job()
    assert [isinstance(t, float) and t < PROMPT for t in took] == [True, True], took


async def test_drained_hold_in_a_streamed_endpoint_does_not_wait_for_its_request() -> None:
    b = MemoryBackend()

    @under_maintenance(backend=b, drain=1.0, on_drain_timeout="raise")
    async def run_migration() -> Any:  # streams its progress, as the docs' exports do
        yield b"migrated"

    async def migrate(request: Request) -> Response:
        return StreamingResponse(run_migration())

    app = middleware_app(b, [Route("/migrate", migrate, methods=["POST"])])
    await started(app)
    t0 = time.monotonic()
    try:
        status, body = await call(app, "/migrate", "POST")
    except BaseException as exc:  # (a DrainTimeout, in a group or not)
        pytest.fail(f"the drain waited for its own request: {exc!r}")
    assert (status, body) == (200, b"migrated")
    assert time.monotonic() - t0 < PROMPT


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sync_drained_hold_in_asyncio_to_thread_does_not_wait_for_its_job() -> None:
    b = MemoryBackend()

    def migrate() -> float:
        t0 = time.monotonic()
        with under_maintenance(backend=b, drain=1.0, on_drain_timeout="raise"):
            return time.monotonic() - t0

    @not_during_maintenance(backend=b)
    async def job() -> float:
        return await asyncio.to_thread(migrate)

    assert await job() < PROMPT


async def test_two_guarded_jobs_entering_drained_holds_do_not_deadlock() -> None:
    b = MemoryBackend()
    outcome: dict[str, float | str] = {}
    both = [anyio.Event(), anyio.Event()]

    @not_during_maintenance(backend=b)
    async def job(me: int) -> None:
        both[me].set()
        await both[1 - me].wait()  # both jobs run, then both start maintenance
        try:
            outcome[str(me)] = await drain_seconds(b, drain=1.0)
        except DrainTimeout:
            outcome[str(me)] = "timed out"

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, 0)
        tg.start_soon(job, 1)
    assert "timed out" not in outcome.values(), outcome


class Migration:
    """A drained hold that fails at once (DrainTimeout) if it waits for its own work: its
    work cannot end while the hold waits. ``seen`` collects how each entry went."""

    def __init__(self, backend: Backend, drain: float = 1.0) -> None:
        self.backend = backend
        self.drain = drain
        self.seen: list[str] = []

    def hold(self) -> Any:
        return under_maintenance(backend=self.backend, drain=self.drain, on_drain_timeout="raise")

    def run_sync(self) -> None:
        try:
            with self.hold():
                self.seen.append("ran")
        except DrainTimeout:
            self.seen.append("waited for its own work")

    async def run(self) -> None:
        try:
            async with self.hold():
                self.seen.append("ran")
        except DrainTimeout:
            self.seen.append("waited for its own work")


REQUEST_PLACES = [
    "sync-endpoint",
    "task-group",
    "run_in_threadpool",
    "anyio.to_thread",
    "streamed-async-body",
    "streamed-sync-body",
    "background-task",
    "sync-background-task",
]


@pytest.mark.parametrize("place", REQUEST_PLACES)
async def test_a_drained_hold_anywhere_in_a_request_does_not_wait_for_that_request(
    place: str,
) -> None:
    # The request runs inside its work (a context variable the middleware sets around the
    # app call): whatever copies its context -- a worker thread, a task of a task group,
    # the response's body and background task -- is that request's too.
    b = MemoryBackend()
    migration = Migration(b)

    async def async_endpoint(request: Request) -> Response:
        if place == "task-group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(migration.run)
        elif place == "run_in_threadpool":
            await run_in_threadpool(migration.run_sync)
        elif place == "anyio.to_thread":
            await anyio.to_thread.run_sync(migration.run_sync)
        elif place == "streamed-async-body":

            async def body() -> AsyncIterator[bytes]:
                await migration.run()
                yield b"done"

            return StreamingResponse(body())
        elif place == "streamed-sync-body":

            def sync_body() -> Iterator[bytes]:
                yield b"do"  # each step in a worker thread of its own
                migration.run_sync()
                yield b"ne"

            return StreamingResponse(sync_body())
        elif place == "background-task":
            return PlainTextResponse("done", background=BackgroundTask(migration.run))
        elif place == "sync-background-task":
            return PlainTextResponse("done", background=BackgroundTask(migration.run_sync))
        return PlainTextResponse("done")

    def sync_endpoint(request: Request) -> Response:  # runs in a worker thread
        migration.run_sync()
        return PlainTextResponse("done")

    endpoint = sync_endpoint if place == "sync-endpoint" else async_endpoint
    app = middleware_app(b, [Route("/admin", endpoint, methods=["POST"])])
    await started(app)
    with anyio.fail_after(5):
        assert await call(app, "/admin", "POST") == (200, b"done")
    assert migration.seen == ["ran"]


JOB_PLACES = [
    "the-job-itself",
    "asyncio.to_thread",
    "anyio.to_thread",
    "task-group",
    "trio-nursery",
    "trio.to_thread",
    "a-guarded-block",
    "a-guarded-generator-second-step",
    "a-guarded-async-generator-second-step",
    "a-request-the-job-serves-in-process",
]


@pytest.mark.parametrize(
    ("anyio_backend", "place"),
    [
        (runtime, place)
        for place in JOB_PLACES
        for runtime in ("asyncio", "trio")
        if not place.startswith(("asyncio", "trio")) or place.startswith(runtime)
    ],
)
async def test_a_drained_hold_anywhere_in_a_guarded_job_does_not_wait_for_that_job(
    place: str,
) -> None:
    b = MemoryBackend()
    migration = Migration(b)
    guard = not_during_maintenance(backend=b)

    async def admin(request: Request) -> Response:
        await migration.run()
        return PlainTextResponse("done")

    app = middleware_app(b, [Route("/admin", admin, methods=["POST"])])
    await started(app)

    @guard
    def steps() -> Iterator[None]:
        yield
        migration.run_sync()
        yield

    @guard
    async def async_steps() -> AsyncIterator[None]:
        yield
        await migration.run()
        yield

    @guard
    async def job() -> None:
        if place == "the-job-itself":
            await migration.run()
        elif place == "asyncio.to_thread":
            await asyncio.to_thread(migration.run_sync)
        elif place == "anyio.to_thread":
            await anyio.to_thread.run_sync(migration.run_sync)
        elif place == "task-group":
            async with anyio.create_task_group() as tg:
                tg.start_soon(migration.run)
        elif place == "trio-nursery":
            async with trio.open_nursery() as nursery:
                nursery.start_soon(migration.run)
        elif place == "trio.to_thread":
            await trio.to_thread.run_sync(migration.run_sync)
        elif place == "a-guarded-block":
            async with not_during_maintenance(backend=b):
                await anyio.to_thread.run_sync(migration.run_sync)
        elif place == "a-guarded-generator-second-step":
            await anyio.to_thread.run_sync(lambda: list(steps()))
        elif place == "a-guarded-async-generator-second-step":
            async for _ in async_steps():
                pass
        elif place == "a-request-the-job-serves-in-process":  # nested work: both its own
            assert await call(app, "/admin", "POST") == (200, b"done")

    with anyio.fail_after(5):
        await job()
    assert migration.seen == ["ran"]


@pytest.mark.parametrize("billing_on", [False, True], ids=["all-off", "another-scope-on"])
async def test_a_request_runs_inside_its_work_and_leaves_its_callers_context_as_it_was(
    billing_on: bool,
) -> None:
    # The middleware sets the request's work around the app call (on its short path while
    # everything is off, and on its general one) and resets it after, also when the app
    # raises: whoever awaited the app (a server's task, a test) is not inside it any more.
    from maintguard._core.inflight import current_work

    b = MemoryBackend()
    seen: list[Any] = []

    async def home(request: Request) -> Response:
        seen.append(current_work.get())
        return PlainTextResponse("home")

    async def boom(request: Request) -> Response:
        seen.append(current_work.get())
        raise RuntimeError("boom")

    app = middleware_app(b, [Route("/", home), Route("/boom", boom)])
    await started(app)
    if billing_on:  # a global route passes, counted, after a look at the scopes
        await set_maintenance_mode(True, b, scope="billing")
    outer = (10**15, None)
    token = current_work.set(outer)
    try:
        assert await call(app, "/") == (200, b"home")
        assert current_work.get() == outer
        with pytest.raises(RuntimeError, match="boom"):
            await call(app, "/boom")
        assert current_work.get() == outer
    finally:
        current_work.reset(token)
    assert [chain[1] for chain in seen] == [outer, outer]
    assert seen[0][0] != seen[1][0]  # each request its own key


async def test_a_drained_hold_in_an_unrelated_task_waits_for_the_request() -> None:
    # A task that was running before the request (no copy of its context) is not part of
    # it: its drained hold waits for the request like for any other.
    b = MemoryBackend()
    inside, release = anyio.Event(), anyio.Event()
    outcome: list[str] = []

    async def slow(request: Request) -> Response:
        inside.set()
        await release.wait()
        return PlainTextResponse("slow")

    async def worker_loop() -> None:  # started before the request
        await inside.wait()
        try:
            await drain_seconds(b, drain=0.3)
            outcome.append("did not wait")
        except DrainTimeout as exc:
            outcome.append(f"waited for {exc.pending}")
        release.set()

    app = middleware_app(b, [Route("/slow", slow)])
    await started(app)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker_loop)
        await anyio.sleep(0.01)
        assert await call(app, "/slow") == (200, b"slow")
    assert outcome == ["waited for 1"]


def test_a_plain_thread_is_not_its_starters_work_unless_given_the_context() -> None:
    # threading.Thread starts with an empty context: a drained hold there waits for the
    # job that started it. contextvars.copy_context().run hands the job's context over.
    b = MemoryBackend()
    migration = Migration(b, drain=0.3)

    @not_during_maintenance(backend=b)
    def job(copy: bool) -> None:
        run = contextvars.copy_context().run if copy else None
        target = (lambda: run(migration.run_sync)) if run else migration.run_sync
        thread = threading.Thread(target=target)
        thread.start()
        thread.join(5)

    job(copy=False)
    job(copy=True)
    assert migration.seen == ["waited for its own work", "ran"]


async def test_between_the_steps_of_a_guarded_generator_its_consumer_is_not_inside_it() -> None:
    # The generator's work is live while it is suspended; the code that iterates it is not
    # that work: a drained hold entered there waits for the generator (here: it times out,
    # since the generator cannot go on meanwhile).
    b = MemoryBackend()

    @not_during_maintenance(backend=b)
    def rows() -> Iterator[int]:
        yield 1
        yield 2

    @not_during_maintenance(backend=b)
    async def async_rows() -> AsyncIterator[int]:
        yield 1
        yield 2

    sync_rows = rows()
    assert next(sync_rows) == 1
    with pytest.raises(DrainTimeout):
        await drain_seconds(b, drain=0.2)
    assert list(sync_rows) == [2]
    agen = async_rows()
    assert await agen.__anext__() == 1
    with pytest.raises(DrainTimeout):
        await drain_seconds(b, drain=0.2)
    assert [r async for r in agen] == [2]
    assert await drain_seconds(b, drain=0) < PROMPT


# -- across processes: the file backend -------------------------------------------------------

WORKER = r"""
import json, os, pathlib, sys, time
from maintguard import not_during_maintenance
from maintguard.backends import LocalFileBackend

cfg = json.loads(sys.argv[1])
b = LocalFileBackend(cfg["path"], lease_ttl=cfg["ttl"], refresh_interval=cfg["refresh"])
marker = pathlib.Path(cfg["marker"])

def mark(text):
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, marker)

@not_during_maintenance(backend=b, scope=cfg["scope"], allow_read_only=cfg["ro"])
def job():
    mark("started")
    time.sleep(cfg["seconds"])
    mark("ended")

@not_during_maintenance(backend=b, scope=cfg["scope"])
def hello():
    mark("idle")

if cfg["trigger"]:
    hello()  # watching the store from now on
    trigger = pathlib.Path(cfg["trigger"])
    while not trigger.exists():
        time.sleep(0.02)
job()
time.sleep(cfg["linger"])
"""


class Worker:
    """Another process that runs one guarded job on a shared file."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        seconds: float,
        scope: str | None = None,
        ro: bool = False,
        ttl: float = 3.0,
        refresh: float = 0.2,
        trigger: bool = False,
        linger: float = 0.5,
    ) -> None:
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        self.marker = tmp_path / "marker"
        self.trigger = tmp_path / "trigger" if trigger else None
        cfg = {
            "path": str(tmp_path / "state.json"),
            "marker": str(self.marker),
            "seconds": seconds,
            "scope": scope,
            "ro": ro,
            "ttl": ttl,
            "refresh": refresh,
            "trigger": str(self.trigger) if self.trigger else None,
            "linger": linger,
        }
        self.proc = subprocess.Popen([sys.executable, str(script), json.dumps(cfg)])

    def state(self) -> str:
        try:
            return self.marker.read_text()
        except FileNotFoundError:
            return ""

    def wait_for(self, text: str, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        while self.state() != text:
            assert self.proc.poll() is None or self.state() == text, "the worker died"
            assert time.monotonic() < end, f"the worker never got to {text!r}"
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    made: list[Worker] = []

    def make(**options: Any) -> Worker:
        worker = Worker(tmp_path, **options)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def test_global_drain_waits_for_another_processs_guarded_job(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=1.5)
    worker.wait_for("started")
    b = LocalFileBackend(tmp_path / "state.json", lease_ttl=3.0, refresh_interval=0.2)
    with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):
        assert worker.state() == "ended"
    assert worker.proc.wait(5) == 0


def test_a_new_drain_token_is_not_answered_by_an_old_report(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=1.5, trigger=True)
    worker.wait_for("idle")
    b = LocalFileBackend(tmp_path / "state.json", lease_ttl=3.0, refresh_interval=0.2)
    with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):
        pass  # the idle worker reported zero for this drain
    assert worker.trigger is not None
    worker.trigger.write_text("go")
    worker.wait_for("started")
    with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):
        assert worker.state() == "ended"


def test_a_sigkilled_worker_stops_counting_when_its_lease_ends(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=30, ttl=1.0)
    worker.wait_for("started")
    os.kill(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(5)
    b = LocalFileBackend(tmp_path / "state.json", lease_ttl=1.0, refresh_interval=0.2)
    t0 = time.monotonic()
    with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):
        assert time.monotonic() - t0 < 3.0  # its lease (1 s), not the drain's 8 s


def test_named_scope_drain_waits_for_another_processs_job(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=2.0, scope="billing")
    worker.wait_for("started")
    b = LocalFileBackend(tmp_path / "state.json", lease_ttl=3.0, refresh_interval=0.2)
    with under_maintenance(backend=b, scope="billing", drain=8, on_drain_timeout="raise"):
        assert worker.state() == "ended"


def test_full_drain_beside_a_read_only_drain_waits_for_work_it_refuses(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=3.0, ro=True)  # allow_read_only=True: a read-only hold lets it on
    worker.wait_for("started")
    path = tmp_path / "state.json"
    b = LocalFileBackend(path, lease_ttl=3.0, refresh_interval=0.2)
    stop = threading.Event()

    @not_during_maintenance(backend=b)
    def local_job() -> None:  # keeps the read-only drain draining
        stop.wait(1.5)

    def read_only_drain() -> None:
        with under_maintenance(backend=b, mode="read_only", drain=8):
            pass

    threads = [threading.Thread(target=local_job), threading.Thread(target=read_only_drain)]
    threads[0].start()
    time.sleep(0.2)
    threads[1].start()
    end = time.monotonic() + 5
    while not any(w.get("reports") for w in json.loads(path.read_text()).get("workers", [])):
        assert time.monotonic() < end, "the worker never reported"
        time.sleep(0.02)
    try:
        with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):  # full
            assert worker.state() == "ended"
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)


def test_presence_of_a_live_worker_does_not_lapse(
    tmp_path: Path, workers: Callable[..., Worker]
) -> None:
    worker = workers(seconds=3.5, ttl=1.0, refresh=2.0)
    worker.wait_for("started")
    time.sleep(1.3)  # past its record's first lease
    b = LocalFileBackend(tmp_path / "state.json", lease_ttl=1.0, refresh_interval=2.0)
    with under_maintenance(backend=b, drain=8, on_drain_timeout="raise"):
        assert worker.state() == "ended"


# -- hostile or corrupt "workers" in the file ---------------------------------------------------

_LATER = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
_BAD_WORKERS = {
    "not an object": "worker",
    "reports a list": {"id": "x", "expires": _LATER, "reports": [["t", 0]]},
    "negative count": {"id": "x", "expires": _LATER, "reports": {"t": -1}},
    "bool count": {"id": "x", "expires": _LATER, "reports": {"t": True}},
    "float count": {"id": "x", "expires": _LATER, "reports": {"t": 1.5}},
    "id not a string": {"id": 5, "expires": _LATER},
    "pid a string": {"id": "x", "pid": "1", "expires": _LATER},
    "naive expiry": {"id": "x", "expires": "2030-01-01T00:00:00"},
    "numeric expiry": {"id": "x", "expires": 12345},
    "no expiry": {"id": "x"},
    "workers not a list": None,
}


@pytest.mark.parametrize("name", sorted(_BAD_WORKERS))
async def test_corrupt_workers_are_ignored_and_the_state_still_reads(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Whether maintenance is on never depends on a presence record: a bad one is dropped
    # with a warning (it once made the whole state unreadable, so on_error="open" read an
    # operator's "on" as off). Reading never rewrites the file.
    path = tmp_path / "state.json"
    value = _BAD_WORKERS[name]
    workers: Any = {"x": 1} if value is None else [value]
    path.write_text(json.dumps({"version": 1, "active": True, "reason": "op", "workers": workers}))
    before = path.read_text()
    b = LocalFileBackend(path, refresh_interval=0.1, on_error="open")
    state = await get_state(b)
    assert (state.active, state.reason) == (True, "op")
    assert path.read_text() == before  # reading wrote nothing
    assert any("presence record" in r.getMessage() or "'workers'" in r.getMessage()
               for r in caplog.records)  # fmt: skip

    @not_during_maintenance(backend=b, policy="raise")
    async def job() -> None:
        raise AssertionError("the job must not run")

    with pytest.raises(UnderMaintenance):
        await job()  # (the guard records its presence: the bad record is gone then)
    assert json.loads(path.read_text())["active"] is True


async def test_out_of_range_worker_expiry_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    worker = {"id": "x", "expires": "9999-12-31T23:59:59-05:00"}
    path.write_text(json.dumps({"version": 1, "active": True, "workers": [worker]}))
    b = LocalFileBackend(path, refresh_interval=0.1)
    state = await get_state(b)
    assert state.active and store_of(b).root.stored is not None
    assert store_of(b).root.stored.workers == ()
    assert any("presence record 'x' is ignored" in r.getMessage() for r in caplog.records)


async def test_middleware_keeps_answering_when_workers_turn_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "active": True, "reason": "operator"}))
    b = LocalFileBackend(path, refresh_interval=0.05)

    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    def replace(document: dict[str, Any]) -> None:  # as a careful peer writes: atomically
        tmp = tmp_path / "new.json"
        tmp.write_text(json.dumps(document))
        os.replace(tmp, path)

    app = middleware_app(b, [Route("/", home)])
    assert (await call(app, "/"))[0] == 503
    replace({"version": 1, "active": True, "reason": "still", "workers": [{"id": 1}]})
    await anyio.sleep(0.3)  # the bad presence record is dropped; the state reads as usual
    for _ in range(3):
        assert (await call(app, "/"))[0] == 503
    replace({"version": 1, "active": False, "workers": [{"id": 1}]})
    await anyio.sleep(0.3)
    assert (await call(app, "/"))[0] == 200  # what the state says: off, never a 500


async def test_dead_and_self_claiming_worker_records_do_not_hold_a_drain(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    b = LocalFileBackend(path, refresh_interval=0.1)
    now = datetime.now(timezone.utc)
    own = store_of(b).worker_id
    dead = [
        {
            "id": f"dead{i}",
            "host": "h",
            "pid": i,
            "expires": (now - timedelta(seconds=1)).isoformat(),
        }
        for i in range(2000)
    ]
    mine = {"id": own, "host": "h", "pid": os.getpid(), "expires": _LATER, "reports": {"z": 7}}
    path.write_text(json.dumps({"version": 1, "workers": [*dead, mine]}))
    assert await drain_seconds(b, drain=2) < 1.0
    # The drain's watcher removes this process's record as it stops: let that write land
    # before writing the file behind maintguard's lock, as a test may.
    store = store_of(b)
    with anyio.fail_after(5):
        while store.watching or store.reported is not None:  # noqa: ASYNC110
            await anyio.sleep(0.01)

    # A live record that never reports is waited for (fail closed), up to the drain time.
    alive = {"id": "alive", "host": "h", "pid": 1, "expires": _LATER}
    path.write_text(json.dumps({"version": 1, "workers": [alive]}))
    await anyio.sleep(0.3)
    with pytest.raises(DrainTimeout):
        await drain_seconds(b, drain=0.5)
    assert not await get_maintenance_mode(b)

    # This process records its presence: expired records go, the live one stays.
    path.write_text(json.dumps({"version": 1, "workers": [*dead, alive]}))
    await anyio.sleep(0.3)

    @not_during_maintenance(backend=b)
    async def job() -> None:
        pass

    await job()
    ids = {w["id"] for w in json.loads(path.read_text())["workers"]}
    assert "alive" in ids and not any(i.startswith("dead") for i in ids)


class NaiveTimesBackend(Backend):
    """A user-written store listing another process's hold (with naive times, read as UTC,
    when ``naive``) and one other live process that never reports to drains."""

    def __init__(self, naive: bool) -> None:
        super().__init__(refresh_interval=0.1)
        self.naive = naive
        self.states: dict[str | None, StoredState] = {}

    async def read_state(self, scope: str | None) -> StoredState:
        state = self.states.get(scope, StoredState())
        if scope is not None:
            return state
        now = datetime.now(timezone.utc)
        at = now.replace(tzinfo=None) if self.naive else now
        other = HoldRecord(
            id="elsewhere:1:h", owner="other", host="elsewhere", pid=1, acquired=at,
            started=at, expires=None, reason="theirs",
        )  # fmt: skip
        worker = WorkerRecord(
            "elsewhere:2:w", "elsewhere", 2, datetime.now(timezone.utc) + timedelta(hours=1)
        )
        return StoredState(state.explicit, (*state.holds, other), (worker,))

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        holds = tuple(h for h in state.holds if h.host != "elsewhere")
        self.states[scope] = StoredState(state.explicit, holds)


@pytest.mark.parametrize("naive", [False, True])
async def test_mended_naive_times_keep_the_workers_a_drain_waits_for(naive: bool) -> None:
    b = NaiveTimesBackend(naive)
    with pytest.raises(DrainTimeout):  # the other process never reports: wait for it
        await drain_seconds(b, drain=0.5)
