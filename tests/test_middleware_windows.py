"""The Starlette middleware and planned windows: ``announce_header``, and the 503 answer
while a window keeps maintenance on.

Window boundaries are crossed with the store's clock (``Store.clock``, the documented test
clock): a window an hour ahead is announced, started and ended by moving it, and the
state is read once after each move (``get_state``) so that the middleware's own look at
the state has seen the boundary.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import maintguard.starlette._responses as responses
from maintguard import (
    ConfigurationError,
    MaintenanceModeMiddleware,
    Phase,
    exempt,
    get_state,
    maintenance_scope,
    schedule_maintenance,
    set_maintenance_mode,
)
from maintguard._core import store_of
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend
from tests.asgi import Message, Sent, call, http_scope, request, says, served, websocket_scope
from tests.conftest import asyncio_only
from tests.stores import schedule_elsewhere

pytestmark = pytest.mark.anyio

UTC = timezone.utc
NAME = "X-Maintenance-Window"
HEADER = NAME.lower().encode()
HTML = [(b"accept", b"text/html")]
JSON = [(b"accept", b"application/problem+json")]


class Clock:
    """The store's clock, moved by hand (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def at(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


def zulu(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def app_with(backend: Backend, routes: list[Any] | None = None, **options: Any) -> Starlette:
    app = Starlette(routes=routes or [Route("/", says("home"))])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, **options)
    return app


class Planned:
    """A memory store on a hand-moved clock, with a one-off window an hour ahead (for an
    hour, announced half an hour before), in whole seconds."""

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        self.clock = Clock()
        store_of(self.backend).clock = self.clock
        self.start = datetime.fromtimestamp(int(self.clock.now), UTC) + timedelta(hours=1)
        self.end = self.start + timedelta(hours=1)
        self.interval = f"{zulu(self.start)}/{zulu(self.end)}".encode()

    async def schedule(self, **options: Any) -> None:
        options.setdefault("announce", timedelta(minutes=30))
        await schedule_maintenance(start=self.start, end=self.end, backend=self.backend, **options)

    async def at(self, moment: datetime, scope: str | None = None) -> Any:
        """Move the clock to ``moment``; the state then (read once: boundaries are seen)."""
        self.clock.at(moment)
        return await get_state(self.backend, scope)


@pytest.fixture
def planned() -> Planned:
    return Planned()


# -- the header before, during and after a window ---------------------------------------------


async def test_the_header_while_announced_and_running_and_not_before_or_after(
    planned: Planned,
) -> None:
    @exempt
    async def health(request: Request) -> Response:
        return PlainTextResponse("healthy")

    routes = [Route("/", says("home")), Route("/health", health)]
    app = app_with(planned.backend, routes, announce_header=NAME)
    async with served(app):
        await planned.schedule()
        assert (await planned.at(planned.start - timedelta(minutes=45))).phase is Phase.OFF
        before = await request(app, "/")
        assert before.status == 200 and HEADER not in before.headers

        assert (await planned.at(planned.start - timedelta(minutes=10))).phase is Phase.ANNOUNCED
        announced = await request(app, "/")
        assert announced.status == 200 and announced.body == b"home"
        assert announced.headers[HEADER] == planned.interval

        assert (await planned.at(planned.start + timedelta(minutes=5))).active
        refused = await request(app, "/")
        assert refused.status == 503 and refused.headers[HEADER] == planned.interval
        passed = await request(app, "/health")  # let through while on
        assert passed.status == 200 and passed.headers[HEADER] == planned.interval
        missing = await request(app, "/nowhere")  # the app's own 404
        assert missing.status == 404 and missing.headers[HEADER] == planned.interval

        assert not (await planned.at(planned.end + timedelta(seconds=1))).active
        after = await request(app, "/")
        assert after.status == 200 and HEADER not in after.headers


async def test_the_header_while_maintenance_is_on_already_follows_the_windows_own_times(
    planned: Planned,
) -> None:
    # An operator's maintenance keeps the phase ON: the window is announced all the same
    # from its `announce` before the start, and not before.
    app = app_with(planned.backend, announce_header=NAME)
    async with served(app):
        await planned.schedule()
        await set_maintenance_mode(True, planned.backend, reason="hotfix")
        state = await planned.at(planned.start - timedelta(minutes=45))
        assert state.phase is Phase.ON and state.next_window is not None
        early = await request(app, "/")
        assert early.status == 503 and HEADER not in early.headers
        assert (await planned.at(planned.start - timedelta(minutes=10))).phase is Phase.ON
        announced = await request(app, "/")
        assert announced.status == 503 and announced.headers[HEADER] == planned.interval
        assert b"hotfix" in announced.body


async def test_the_header_shows_the_interval_as_the_example_writes_it(planned: Planned) -> None:
    app = app_with(planned.backend, announce_header="x-maintenance-window")
    async with served(app):
        await planned.schedule()
        await planned.at(planned.start - timedelta(minutes=1))
        value = (await request(app, "/")).headers[b"x-maintenance-window"].decode()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value)
    start, end = (datetime.fromisoformat(part) for part in value.split("/"))
    assert (start, end) == (planned.start, planned.end)


async def test_a_window_in_fractions_of_a_second_is_covered_to_the_second() -> None:
    backend = MemoryBackend()
    app = app_with(backend, announce_header=NAME)
    async with served(app):
        window = await schedule_maintenance(
            start=timedelta(minutes=5, microseconds=250_000),
            duration=timedelta(minutes=10),
            announce=timedelta(hours=1),
            backend=backend,
        )
        assert window.start.microsecond and window.end.microsecond
        value = (await request(app, "/")).headers[HEADER].decode()
    start, end = (datetime.fromisoformat(part) for part in value.split("/"))
    assert start == window.start.replace(microsecond=0)  # rounded out: the interval covers it
    assert end == window.end.replace(microsecond=0) + timedelta(seconds=1)


async def test_a_window_not_announced_yet_leaves_send_as_it_is(planned: Planned) -> None:
    # The off path wraps `send` only while a window is announced or running.
    seen: list[Any] = []

    async def inner(scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError("no lifespan here")
        seen.append(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    middleware = MaintenanceModeMiddleware(inner, planned.backend, announce_header=NAME)
    sent = Sent()

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async with served(middleware):
        await middleware(http_scope("/"), receive, send)  # no window
        await planned.schedule()
        await middleware(http_scope("/"), receive, send)  # planned, not announced yet
        await planned.at(planned.start - timedelta(minutes=5))
        await middleware(http_scope("/"), receive, send)  # announced
    assert seen[0] is send and seen[1] is send
    assert seen[2] is not send
    assert [dict(m["headers"]).get(HEADER) for m in sent if "headers" in m] == [
        None,
        None,
        planned.interval,
    ]


async def test_the_off_path_reads_the_state_once_per_request(planned: Planned) -> None:
    inner = Starlette(routes=[Route("/", says("home"))])
    middleware = MaintenanceModeMiddleware(inner, planned.backend, announce_header=NAME)
    reads: list[str] = []
    async with served(middleware):
        announcer = middleware._announcer
        assert announcer is not None and announcer.root is not None
        root = announcer.root

        class Counting:
            store = root.store

            @property
            def snapshot(self) -> Any:
                reads.append("snapshot")
                return root.snapshot

        announcer.root = Counting()  # type: ignore[assignment]
        headers = []
        for step in ("no window", "planned", "announced"):
            if step == "planned":
                await planned.schedule()
            elif step == "announced":
                await planned.at(planned.start - timedelta(minutes=5))
            reads.clear()
            headers.append((await request(middleware, "/")).headers.get(HEADER))
            assert reads == ["snapshot"], step
    assert headers == [None, None, planned.interval]


async def test_without_announce_header_the_off_path_runs_the_app_itself(planned: Planned) -> None:
    inner = Starlette(routes=[Route("/", says("home"))])
    middleware = MaintenanceModeMiddleware(inner, planned.backend)
    assert middleware._pass is inner  # the request path is what it was: no look, no wrapper
    async with served(middleware):
        await planned.schedule()
        await planned.at(planned.start - timedelta(minutes=5))
        assert HEADER not in (await request(middleware, "/")).headers
        await planned.at(planned.start + timedelta(minutes=5))
        refused = await request(middleware, "/")
        assert refused.status == 503
        assert not any(b"window" in name for name in refused.headers)


async def test_the_off_path_never_evaluates_cron(monkeypatch: pytest.MonkeyPatch) -> None:
    # The planned occurrences are in the snapshot: deciding a request needs no cron.
    import cronsim

    backend = MemoryBackend()
    app = app_with(backend, announce_header=NAME)
    async with served(app):
        await schedule_maintenance(
            every="0 * * * *", duration=600, announce=timedelta(hours=1), backend=backend
        )
        here = threading.get_ident()
        evaluated: list[int] = []
        real = cronsim.CronSim

        class Counted(real):  # type: ignore[misc,valid-type]
            def __init__(self, *args: Any) -> None:
                evaluated.append(threading.get_ident())
                super().__init__(*args)

        monkeypatch.setattr(cronsim, "CronSim", Counted)
        # Each hour's window is announced from the end of the one before: either way the
        # header is sent (a 503 while the window runs).
        for _ in range(50):
            sent = await request(app, "/")
            assert re.fullmatch(rb"\S+Z/\S+Z", sent.headers[HEADER])
    assert here not in evaluated


# -- the maintenance answer while a window keeps maintenance on --------------------------------


async def test_the_503_answers_carry_the_header_and_show_the_windows_end(
    planned: Planned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses, "utcnow", planned.clock.utcnow)
    app = app_with(planned.backend, announce_header=NAME)
    async with served(app):
        await planned.schedule(reason="Database upgrade")
        state = await planned.at(planned.start + timedelta(minutes=10))
        assert state.until == planned.end and state.retry_after is None

        text = await request(app, "/")
        assert text.status == 503 and text.headers[HEADER] == planned.interval
        assert parsedate_to_datetime(text.headers[b"retry-after"].decode()) == planned.end
        assert b"Database upgrade" in text.body
        assert planned.end.strftime("%Y-%m-%d %H:%M UTC").encode() in text.body

        problem = await request(app, "/", headers=JSON)
        assert problem.status == 503 and problem.headers[HEADER] == planned.interval
        body = json.loads(problem.body)
        assert body["until"] == planned.end.isoformat()
        assert body["retry_after"] == 3000 and body["detail"] == "Database upgrade"

        page = await request(app, "/", headers=HTML)
        assert page.status == 503 and page.headers[HEADER] == planned.interval
        assert f'<time datetime="{planned.end.isoformat()}"'.encode() in page.body

        head = await request(app, "/", "HEAD")
        assert head.status == 503 and head.body == b"" and head.headers[HEADER] == planned.interval


async def test_retry_after_counts_down_to_the_windows_end(
    planned: Planned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responses, "utcnow", planned.clock.utcnow)
    app = app_with(planned.backend)
    async with served(app):
        await planned.schedule()
        waits = []
        for minutes in (1, 30, 59):
            state = await planned.at(planned.start + timedelta(minutes=minutes))
            sent = await request(app, "/", headers=JSON)
            assert sent.status == 503
            # The header is the window's end as an HTTP date; the seconds count down to it.
            assert parsedate_to_datetime(sent.headers[b"retry-after"].decode()) == planned.end
            seconds = state.retry_after_seconds(planned.clock.utcnow())
            waits.append((seconds, json.loads(sent.body)["retry_after"]))
        assert waits == [(3540, 3540), (1800, 1800), (60, 60)]


async def test_a_windows_own_retry_after_comes_before_its_end(planned: Planned) -> None:
    app = app_with(planned.backend)
    async with served(app):
        await planned.schedule(retry_after=120)
        await planned.at(planned.start + timedelta(minutes=10))
        sent = await request(app, "/", headers=JSON)
        assert sent.headers[b"retry-after"] == b"120"
        assert json.loads(sent.body)["until"] == planned.end.isoformat()


async def test_a_read_only_window_lets_reads_through_with_the_header(planned: Planned) -> None:
    routes = [Route("/", says("home"), methods=["GET", "POST"])]
    app = app_with(planned.backend, routes, announce_header=NAME)
    async with served(app):
        await planned.schedule(mode="read_only")
        await planned.at(planned.start + timedelta(minutes=10))
        read = await request(app, "/")
        assert read.status == 200 and read.headers[HEADER] == planned.interval
        write = await request(app, "/", "POST")
        assert write.status == 503 and write.headers[HEADER] == planned.interval


async def test_a_named_scopes_window_is_announced_on_that_scopes_requests(
    planned: Planned,
) -> None:
    @maintenance_scope("billing")
    async def billing(request: Request) -> Response:
        return PlainTextResponse("billing")

    routes = [Route("/", says("home")), Route("/billing", billing)]
    app = app_with(planned.backend, routes, announce_header=NAME)
    async with served(app):
        await planned.schedule(scope="billing")
        assert (await planned.at(planned.start + timedelta(minutes=1), "billing")).active
        refused = await request(app, "/billing")
        assert refused.status == 503 and refused.headers[HEADER] == planned.interval
        other = await request(app, "/")
        assert other.status == 200 and HEADER not in other.headers


async def test_redirects_handlers_and_websocket_denials_carry_the_header(
    planned: Planned,
) -> None:
    async def handler(request: Request, state: Any) -> Response:
        return PlainTextResponse("custom", status_code=503)

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    routes = [Route("/", says("home")), WebSocketRoute("/ws", echo)]
    apps = {
        "redirect": app_with(planned.backend, routes, announce_header=NAME, redirect_to="/s"),
        "handler": app_with(
            planned.backend, routes, announce_header=NAME, response_handler=handler
        ),
    }
    await planned.schedule()
    await planned.at(planned.start + timedelta(minutes=1))
    redirected = await request(apps["redirect"], "/")
    assert redirected.status == 302 and redirected.headers[HEADER] == planned.interval
    handled = await request(apps["handler"], "/")
    assert handled.body == b"custom" and handled.headers[HEADER] == planned.interval
    denial = websocket_scope(extensions={"websocket.http.response": {}})
    denied = await call(apps["handler"], denial, then="disconnect")
    assert denied.status == 503 and denied.headers[HEADER] == planned.interval


# -- what a store may hold ------------------------------------------------------------------


def hostile_window(path: Path, start: str, end: str, announce: float | None = None) -> None:
    window: dict[str, Any] = {"id": "odd", "start": start, "end": end}
    if announce is not None:
        window["announce"] = announce
    path.write_text(json.dumps({"version": 2, "active": False, "holds": [], "windows": [window]}))


@asyncio_only
async def test_a_window_that_cannot_be_written_never_fails_a_response(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Announced now (the store's clock half an hour before its start), ending half a second
    # before the year 10000: rounded up, its end is no time at all. The responses go
    # without the header, said once in the log. (An announcement longer than a year is
    # dropped when read: the store's clock is what brings this one near.)
    path = tmp_path / "m.json"
    hostile_window(path, "9999-12-31T23:00:00+00:00", "9999-12-31T23:59:59.5+00:00", 3600)
    backend = LocalFileBackend(path)
    store_of(backend).clock = lambda: datetime(9999, 12, 31, 22, 30, tzinfo=UTC).timestamp()
    app = app_with(backend, announce_header=NAME)
    with caplog.at_level(logging.WARNING, "maintguard"):
        async with served(app):
            assert (await get_state(backend)).phase is Phase.ANNOUNCED
            for _ in range(3):
                sent = await request(app, "/")
                assert sent.status == 200 and sent.body == b"home"
                assert HEADER not in sent.headers
    logged = [r.getMessage() for r in caplog.records if "cannot be announced" in r.getMessage()]
    assert len(logged) == 1 and "'odd'" in logged[0]


@asyncio_only
async def test_a_running_window_that_cannot_be_written_still_gets_its_503(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.json"
    began = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    hostile_window(path, began, "9999-12-31T23:59:59.5+00:00")
    backend = LocalFileBackend(path)
    app = app_with(backend, announce_header=NAME)
    with caplog.at_level(logging.WARNING, "maintguard"):
        async with served(app):
            assert (await get_state(backend)).active
            for accept in (HTML, JSON, []):
                sent = await request(app, "/", headers=accept)
                assert sent.status == 503 and HEADER not in sent.headers
                assert sent.headers[b"retry-after"]  # counting to the end, cut to a year
    assert any("cannot be announced" in r.getMessage() for r in caplog.records)


@pytest.mark.processes
@asyncio_only
async def test_a_window_another_process_wrote_is_announced_through_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.json"
    app = app_with(LocalFileBackend(path, refresh_interval=0.05), announce_header=NAME)
    start = datetime.fromtimestamp(int(time.time()), UTC) + timedelta(minutes=10)
    async with served(app):
        assert HEADER not in (await request(app, "/")).headers
        await anyio.to_thread.run_sync(
            lambda: schedule_elsewhere(path, start, duration=600, announce=3600)
        )
        deadline = time.monotonic() + 5
        while HEADER not in (sent := await request(app, "/")).headers:
            assert time.monotonic() < deadline, "the window never reached the app"
            await anyio.sleep(0.02)
    assert sent.headers[HEADER] == f"{zulu(start)}/{zulu(start + timedelta(minutes=10))}".encode()


# -- the option ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x maintenance", "announce_header must be a header name such as"),
        ("x-window:", "announce_header must be a header name such as"),
        ("", "announce_header must be a header name"),
        ("x-wïndow", "announce_header must be a header name"),
        (b"x-window", "announce_header must be a header name"),
        (5, "announce_header must be a header name"),
        ("Retry-After", "a header maintguard's own responses set"),
        ("content-type", "choose a name of its own"),
    ],
)
def test_a_bad_header_name_is_refused_with_the_fix(name: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        MaintenanceModeMiddleware(says("home"), MemoryBackend(), announce_header=name)  # type: ignore[arg-type]


def test_a_misspelled_announce_header_option_names_it() -> None:
    with pytest.raises(ConfigurationError, match="announce_header"):
        MaintenanceModeMiddleware(says("home"), MemoryBackend(), anounce_header="x-w")  # type: ignore[call-arg]


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_a_window_scheduled_here_switches_the_middleware_by_itself(
    tmp_path: Path, kind: str
) -> None:
    # Found: a window this process scheduled to start before its watcher's next wake-up
    # (up to 1 s later) was seen late, or not at all when it ended first: the watcher did
    # not look at the times again. Nothing reads the state here but the middleware itself.
    # (A file store's watcher is also woken by the file's own change notification; the
    # memory store's only by the write.)
    backend: Backend = (
        MemoryBackend() if kind == "memory" else LocalFileBackend(tmp_path / "state.json")
    )
    app = app_with(backend)
    async with served(app):
        assert (await request(app)).status == 200
        await anyio.sleep(0.1)  # the watcher has looked, and sleeps until its next tick
        window = await schedule_maintenance(start=0.3, duration=0.3, backend=backend)
        seen: list[tuple[float, int]] = []
        while time.time() < window.end.timestamp() + 0.2:
            seen.append((time.time(), (await request(app)).status))
            await anyio.sleep(0.005)
    start, end = window.start.timestamp(), window.end.timestamp()
    on = [t for t, status in seen if status == 503]
    assert on, "the middleware never answered 503 during the window"
    assert start <= on[0] <= start + 0.05 and end - 0.05 <= on[-1] < end
    assert all(status == 200 for t, status in seen if t < start or t >= end + 0.05)
