"""The middleware's status endpoint (``status_path=``): raw ASGI calls, real file stores."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

import maintguard._state_json as state_json
from maintguard import (
    ConfigurationError,
    MaintenanceModeMiddleware,
    maintenance_mode_on,
    maintenance_scope,
    schedule_maintenance,
    set_maintenance_mode,
)
from maintguard.backends import LocalFileBackend
from tests.asgi import Sent, lifespan_startup, request, says, served

STATUS = "/_maintenance/status"
SECRET = "s3cret-bypass-token-0123456789"
ALLOWED = ("10.1.2.3", 50000)  # a client in allow_ips=["10.0.0.0/8"]
PUBLIC_KEYS = {
    "scope",
    "active",
    "phase",
    "mode",
    "reason",
    "retry_after",
    "since",
    "until",
    "next_window",
    "hold_count",
    "scopes",
}

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> LocalFileBackend:
    return LocalFileBackend(tmp_path / "state.json")


def app_with(store: LocalFileBackend, routes: list[Any] | None = None, **options: Any) -> Starlette:
    app = Starlette(routes=routes if routes is not None else [Route("/", says("home"))])
    options.setdefault("status_path", STATUS)
    app.add_middleware(MaintenanceModeMiddleware, backend=store, **options)
    return app


def file_url(store: LocalFileBackend) -> str:
    return f"file:{os.path.realpath(store.path)}"


def shown(sent: Sent) -> dict[str, Any]:
    assert sent.status == 200, (sent.status, sent.body)
    assert sent.headers[b"content-type"] == b"application/json"
    assert sent.headers[b"cache-control"] == b"no-store"
    found: dict[str, Any] = json.loads(sent.body)
    return found


# -- what it shows, to whom ------------------------------------------------------------------


async def test_off_a_public_caller_sees_the_state_and_the_app_still_answers(
    store: LocalFileBackend,
) -> None:
    app = app_with(store)
    async with served(app):
        data = shown(await request(app, STATUS))
        assert set(data) == PUBLIC_KEYS  # no backend, explicit or hold records
        assert data["active"] is False and data["phase"] == "off" and data["mode"] == "full"
        assert data["hold_count"] == 0 and data["next_window"] is None and data["scopes"] == {}
        assert (await request(app, "/")).body == b"home"
        assert (await request(app, STATUS + "/more")).status == 404  # the exact path only


async def test_during_maintenance_it_answers_200_while_the_app_answers_503(
    store: LocalFileBackend,
) -> None:
    app = app_with(store)
    async with served(app):
        await set_maintenance_mode(
            True, store, reason="DB upgrade", retry_after=120, until=timedelta(hours=1)
        )
        assert (await request(app, "/")).status == 503
        data = shown(await request(app, STATUS))
        assert data["active"] is True and data["phase"] == "on"
        assert data["reason"] == "DB upgrade" and data["retry_after"] == 120
        since, until = datetime.fromisoformat(data["since"]), datetime.fromisoformat(data["until"])
        assert timedelta(minutes=59) < until - since <= timedelta(hours=1, seconds=1)
        await set_maintenance_mode(True, store, mode="read-only")
        assert shown(await request(app, STATUS))["mode"] == "read_only"


async def test_under_a_root_path_it_answers_at_the_path_below_it(store: LocalFileBackend) -> None:
    app = app_with(store)
    async with served(app):
        await set_maintenance_mode(True, store)
        sent = await request(app, "/api" + STATUS, root_path="/api")
        assert shown(sent)["active"] is True


async def test_hold_records_only_for_allow_ips_and_the_bypass_secret(
    store: LocalFileBackend,
) -> None:
    app = app_with(
        store,
        allow_ips=["10.0.0.0/8"],
        bypass_secret=SECRET,
        exempt_handler=lambda request: True,  # lets every request through: not who it is
    )
    async with served(app):
        async with maintenance_mode_on(backend=store, reason="migration"):
            public = shown(await request(app, STATUS))
            assert set(public) == PUBLIC_KEYS
            assert public["hold_count"] == 1 and public["reason"] == "migration"
            wrong = [(b"x-maintenance-bypass", b"not-the-secret-at-all-0000")]
            assert set(shown(await request(app, STATUS, headers=wrong))) == PUBLIC_KEYS
            by_ip = shown(await request(app, STATUS, client=ALLOWED))
            by_secret = shown(
                await request(app, STATUS, headers=[(b"x-maintenance-bypass", SECRET.encode())])
            )
            for detailed in (by_ip, by_secret):
                assert detailed["hold_count"] == 1 and len(detailed["holds"]) == 1
                hold = detailed["holds"][0]
                assert hold["pid"] == os.getpid() and hold["host"] and hold["owner"]
                assert hold["reason"] == "migration"
                assert detailed["backend"] == file_url(store)
                assert detailed["explicit"] is False
        public = shown(await request(app, STATUS))
        assert public["active"] is False and public["hold_count"] == 0


async def test_the_bypass_cookie_shows_holds_too(store: LocalFileBackend) -> None:
    app = app_with(store, bypass_secret=SECRET)
    async with served(app):
        await set_maintenance_mode(True, store)
        grant = await request(app, f"/_maintenance/bypass/{SECRET}")
        cookie = grant.headers[b"set-cookie"].split(b";")[0]
        data = shown(await request(app, STATUS, headers=[(b"cookie", cookie)]))
        assert data["holds"] == [] and data["explicit"] is True


async def test_a_planned_window_is_shown_and_its_author_only_to_allowed_callers(
    store: LocalFileBackend,
) -> None:
    app = app_with(store, allow_ips=["10.0.0.0/8"])
    async with served(app):
        window = await schedule_maintenance(
            timedelta(hours=1),
            duration=timedelta(minutes=30),
            announce=timedelta(hours=2),
            reason="kernel update",
            backend=store,
        )
        public = shown(await request(app, STATUS))
        assert public["active"] is False and public["phase"] == "announced"
        planned = public["next_window"]
        assert planned["id"] == window.id and planned["reason"] == "kernel update"
        assert datetime.fromisoformat(planned["start"]) == window.start
        assert planned["announce"] == 7200 and planned["by"] is None
        allowed = shown(await request(app, STATUS, client=ALLOWED))
        assert allowed["next_window"]["by"] == window.by and window.by


async def test_named_scopes_the_app_knows_are_listed(store: LocalFileBackend) -> None:
    @maintenance_scope("billing")
    async def invoices(request: Request) -> Response:
        return PlainTextResponse("invoices")

    app = app_with(
        store,
        [Route("/", says("home")), Route("/invoices", invoices), Route("/reports/x", says("r"))],
        scopes={"/reports/*": "reports"},
    )
    async with served(app):
        await set_maintenance_mode(True, store, scope="billing", reason="ledger")
        data = shown(await request(app, STATUS))
        assert sorted(data["scopes"]) == ["billing", "reports"]
        assert data["active"] is False
        billing = data["scopes"]["billing"]
        assert billing["active"] is True and billing["scope"] == "billing"
        assert billing["reason"] == "ledger" and "holds" not in billing
        assert data["scopes"]["reports"]["active"] is False
        allowed = shown(await request(app, STATUS, client=("127.0.0.1", 1)))
        assert "holds" not in allowed  # no allow_ips here: nobody is shown hold records


# -- methods -------------------------------------------------------------------------------


async def test_head_has_the_headers_and_no_body(store: LocalFileBackend) -> None:
    app = app_with(store)
    async with served(app):
        await set_maintenance_mode(True, store, reason="upgrade")
        get = await request(app, STATUS)
        head = await request(app, STATUS, "HEAD")
        assert head.status == 200 and head.body == b""
        assert head.headers[b"content-type"] == b"application/json"
        assert head.headers[b"cache-control"] == b"no-store"
        assert head.headers[b"content-length"] == str(len(get.body)).encode()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
async def test_other_methods_get_405_with_allow(store: LocalFileBackend, method: str) -> None:
    app = app_with(store)
    async with served(app):
        for on in (False, True):
            await set_maintenance_mode(on, store)
            sent = await request(app, STATUS, method)
            assert sent.status == 405
            assert sent.headers[b"allow"] == b"GET, HEAD"
            assert sent.headers[b"cache-control"] == b"no-store"


# -- never a 500 ---------------------------------------------------------------------------


async def test_a_state_that_cannot_be_shown_answers_503_and_is_logged(
    store: LocalFileBackend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_with(store)
    async with served(app):
        await set_maintenance_mode(True, store, reason="upgrade")
        # A value JSON cannot carry, as a hostile store could hand one over.
        real = state_json.as_json

        def hostile(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**real(*args, **kwargs), "retry_after": float("nan")}

        monkeypatch.setattr("maintguard.starlette._middleware.as_json", hostile)
        with caplog.at_level(logging.ERROR, logger="maintguard"):
            sent = await request(app, STATUS)
        assert sent.status == 503
        assert sent.headers[b"content-type"] == b"application/json"
        assert json.loads(sent.body) == {"error": "the maintenance state could not be shown"}
        assert "status endpoint could not show the state" in caplog.text


# -- bad options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "says_"),
    [
        ("status", "starting with '/'"),
        ("", "starting with '/'"),
        (b"/status", "starting with '/'"),
        ("/status?x=1", "no query"),
        ("/status#top", "fragment"),
        ("/sta tus", "without spaces"),
        ("/status\n", "control characters"),
    ],
)
async def test_a_bad_status_path_is_refused_when_built(
    store: LocalFileBackend, path: Any, says_: str
) -> None:
    with pytest.raises(ConfigurationError, match="status_path") as raised:
        MaintenanceModeMiddleware(says("app"), backend=store, status_path=path)
    assert says_ in str(raised.value)


async def test_a_status_path_in_exempt_paths_or_under_the_bypass_path_is_refused(
    store: LocalFileBackend,
) -> None:
    with pytest.raises(ConfigurationError, match="remove it from exempt_paths"):
        MaintenanceModeMiddleware(
            says("app"), backend=store, status_path="/health", exempt_paths=["/health"]
        )
    with pytest.raises(ConfigurationError, match="lies under bypass_path"):
        MaintenanceModeMiddleware(
            says("app"),
            backend=store,
            status_path="/_maintenance/bypass/status",
            bypass_secret=SECRET,
        )


async def test_a_route_at_the_status_path_is_refused_when_built(store: LocalFileBackend) -> None:
    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    for routes in (
        [Route(STATUS, ping)],
        [Route(STATUS, ping, methods=["POST"])],  # another method: the path is still taken
        [Mount("/_maintenance", routes=[Route("/status", ping)])],
        [Route("/{anything:path}", ping)],  # a catch-all takes it too
    ):
        with pytest.raises(ConfigurationError) as raised:
            MaintenanceModeMiddleware(Starlette(routes=routes), backend=store, status_path=STATUS)
        text = str(raised.value)
        assert "is also a route of the app (ping)" in text
        assert "Choose another status_path" in text
    # Neighbours are no collision.
    neighbours = [Route(STATUS + "/x", ping), Route("/_maintenance/other", ping)]
    MaintenanceModeMiddleware(Starlette(routes=neighbours), backend=store, status_path=STATUS)


async def test_a_route_learned_at_startup_fails_the_startup_with_the_message(
    store: LocalFileBackend,
) -> None:
    inner = Starlette(routes=[Route("/", says("home"))])
    app = MaintenanceModeMiddleware(inner, backend=store, status_path=STATUS)
    inner.add_route(STATUS, says("mine"))  # after the middleware was built
    sent = await lifespan_startup(app)
    assert sent.types == ["lifespan.startup.failed"]
    message = sent[0]["message"]
    assert message.startswith("maintguard: status_path '/_maintenance/status' is also a route")
    assert "found at start-up" in message and "Choose another status_path" in message


async def test_a_route_added_after_startup_is_logged_once_and_never_a_500(
    store: LocalFileBackend, caplog: pytest.LogCaptureFixture
) -> None:
    inner = Starlette(routes=[Route("/", says("home"))])
    app = MaintenanceModeMiddleware(inner, backend=store, status_path=STATUS)
    async with served(app) as started:
        assert started.types == ["lifespan.startup.complete"]
        inner.add_route(STATUS, says("mine"))
        await set_maintenance_mode(True, store)
        with caplog.at_level(logging.ERROR, logger="maintguard"):
            for _ in range(3):
                assert (await request(app, "/")).status == 503  # the routes are learned again
                assert shown(await request(app, STATUS))["active"] is True
        assert caplog.text.count("is also a route of the app") == 1


async def test_without_a_status_path_the_path_is_the_apps(store: LocalFileBackend) -> None:
    app = app_with(store, [Route(STATUS, says("mine"))], status_path=None)
    async with served(app):
        assert (await request(app, STATUS)).body == b"mine"
