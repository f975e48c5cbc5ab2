"""The Starlette middleware: each test builds its own small app."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from maintguard import (
    ConfigurationError,
    MaintenanceModeMiddleware,
    configure,
    exempt,
    force_maintenance_mode_on,
    get_maintenance_mode,
    maintenance_mode_on,
    maintenance_scope,
    set_maintenance_mode,
    sync,
    under_maintenance,
)
from maintguard._state import StoredState
from maintguard.backends import LocalFileBackend, MemoryBackend
from tests.asgi import call, request, websocket_scope

SECRET = "s3cret-bypass-token-0123456789"


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def fresh() -> Any:
    """A new endpoint function: marks from route decorators stay on the function they mark."""

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("ok")

    return endpoint


def on(backend: Any, **options: Any) -> None:
    sync.set_maintenance_mode(True, backend, **options)


def off(backend: Any) -> None:
    sync.set_maintenance_mode(False, backend)


def make_app(backend: Any, routes: list[Any], **options: Any) -> Starlette:
    app = Starlette(routes=routes)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, **options)
    return app


@pytest.fixture
def memory() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def client_for(memory: MemoryBackend) -> Iterator[Any]:
    clients: list[TestClient] = []

    def build(routes: list[Any], backend: Any = None, **options: Any) -> TestClient:
        client = TestClient(make_app(backend or memory, routes, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


# -- off and on --------


def test_off_passes_and_on_answers_503(client_for: Any, memory: MemoryBackend) -> None:
    client = client_for([Route("/", ok)])
    assert client.get("/").text == "ok"
    on(memory, reason="DB upgrade", retry_after=120)
    response = client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "120"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "DB upgrade" in response.text
    off(memory)
    assert client.get("/").status_code == 200


def test_no_backend_read_per_request(tmp_path: Path) -> None:
    reads = []

    class Counting(LocalFileBackend):
        async def read_state(self, scope: str | None) -> StoredState:
            reads.append(scope)
            return await super().read_state(scope)

    backend = Counting(tmp_path / "m.json", refresh_interval=30)
    with TestClient(make_app(backend, [Route("/", ok)])) as client:
        before = len(reads)
        for _ in range(300):
            assert client.get("/").status_code == 200
        # No read on the request path (the watcher may read once, told of its own
        # presence record's write by the OS).
        assert len(reads) - before <= 1
        on(backend)  # (its read-modify-write reads through the override too)
        before = len(reads)
        for _ in range(300):
            assert client.get("/").status_code == 503
        assert len(reads) - before <= 1


def test_content_negotiation_and_head(client_for: Any, memory: MemoryBackend) -> None:
    client = client_for([Route("/", ok)])
    until = datetime.now(timezone.utc) + timedelta(minutes=30)
    on(memory, reason="Moving to a bigger database", until=until)
    page = client.get("/", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<html lang="en">' in page.text and "Moving to a bigger database" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    assert 'name="viewport"' in page.text
    assert f'datetime="{until.isoformat()}"' in page.text
    retry_at = parsedate_to_datetime(page.headers["retry-after"])
    assert abs((retry_at - until).total_seconds()) < 1
    problem = client.get("/", headers={"accept": "application/json"})
    assert problem.headers["content-type"] == "application/problem+json"
    body = problem.json()
    assert body["status"] == 503 and body["title"] == "Service Unavailable"
    assert body["detail"] == "Moving to a bigger database"
    assert body["until"] == until.isoformat() and 1790 <= body["retry_after"] <= 1800
    text = client.get("/", headers={"accept": "*/*"})
    assert text.headers["content-type"].startswith("text/plain")
    head = client.head("/")
    assert head.status_code == 503 and head.content == b"" and head.headers["retry-after"]


def test_html_escapes_reason(client_for: Any, memory: MemoryBackend) -> None:
    client = client_for([Route("/", ok)])
    on(memory, reason="<script>alert(1)</script>")
    page = client.get("/", headers={"accept": "text/html"}).text
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page


def test_bytes_prepared_once_per_state(
    client_for: Any, memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maintguard.starlette import _middleware as middleware

    calls = []
    real = middleware.prepare
    monkeypatch.setattr(middleware, "prepare", lambda *a: calls.append(a) or real(*a))
    client = client_for([Route("/", ok)])
    on(memory, reason="one")
    for _ in range(20):
        client.get("/")
    on(memory, reason="two")
    for _ in range(20):
        assert "two" in client.get("/").text
    assert len(calls) == 2


# -- exemptions by endpoint --------


def test_exempt_endpoints_and_methods_do_not_leak(client_for: Any, memory: MemoryBackend) -> None:
    @exempt
    async def health(request: Request) -> Response:
        return PlainTextResponse("healthy")

    @exempt
    async def read_item(request: Request) -> Response:
        return PlainTextResponse(request.path_params["id"])

    client = client_for(
        [
            Route("/health", health),
            Route("/healthz", ok),
            Route("/items/{id}", read_item, methods=["GET"]),
            Route("/items/{id}", ok, methods=["POST", "DELETE"]),
            Route("/items/{id}/edit", ok),
        ]
    )
    on(memory)
    assert client.get("/health").text == "healthy"
    assert client.head("/health").status_code == 200
    assert client.get("/healthz").status_code == 503  # a neighbouring path
    assert client.get("/items/7").text == "7"
    assert client.post("/items/7").status_code == 503  # same path, other method
    assert client.delete("/items/7").status_code == 503
    assert client.get("/items/7/edit").status_code == 503


def test_no_route_and_wrong_method_get_the_apps_own_answer(
    client_for: Any, memory: MemoryBackend
) -> None:
    client = client_for([Route("/only-post", ok, methods=["POST"])])
    on(memory)
    assert client.get("/nowhere").status_code == 404
    assert client.get("/only-post").status_code == 405
    assert client.post("/only-post").status_code == 503


def test_mount_host_and_root_path(memory: MemoryBackend) -> None:
    inner = Router([Route("/status", exempt(fresh())), Route("/work", ok)])
    sub_app = Starlette(routes=[Route("/ping", exempt(fresh())), Route("/job", ok)])
    app = make_app(
        memory,
        [
            Mount("/api", routes=[Mount("/v1", app=inner)]),
            Mount("/sub", app=sub_app),
            Host("admin.example.com", app=Router([Route("/", exempt(fresh()))])),
            Route("/", ok),
        ],
    )
    on(memory)
    with TestClient(app) as client:
        assert client.get("/api/v1/status").status_code == 200
        assert client.get("/api/v1/work").status_code == 503
        assert client.get("/sub/ping").status_code == 200
        assert client.get("/sub/job").status_code == 503
        assert client.get("/", headers={"host": "admin.example.com"}).status_code == 200
        assert client.get("/", headers={"host": "www.example.com"}).status_code == 503
    with TestClient(app, root_path="/prefix") as client:
        assert client.get("/prefix/api/v1/status").status_code == 200
        assert client.get("/prefix/api/v1/work").status_code == 503
        assert client.get("/prefix/").status_code == 503


# -- exemptions by path --------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/public/../admin", None),
        ("/public/%2E%2E/admin", b"/public/%2E%2E/admin"),
        ("/public/../admin", b"/public/%2e%2e/admin"),
        ("/public//admin", None),
        ("/public/x/admin", b"/public%2Fx/admin"),
        ("/public/./admin", None),
        ("/public/%2e%2e/admin", b"/public/%252e%252e/admin"),
    ],
)
async def test_path_tricks_never_reach_a_blocked_endpoint(path: str, raw: bytes | None) -> None:
    memory = MemoryBackend()

    async def anything(request: Request) -> Response:
        return PlainTextResponse("reached " + request.url.path)

    app = make_app(memory, [Route("/{path:path}", anything)], exempt_paths=["/public/*"])
    await set_maintenance_mode(True, memory)
    assert (await request(app, "/public/page")).status == 200
    assert (await request(app, path, raw_path=raw)).status == 503


def test_exempt_path_globs(client_for: Any, memory: MemoryBackend) -> None:
    client = client_for(
        [Route("/status", ok), Route("/static/{p:path}", ok), Route("/admin", ok)],
        exempt_paths=["/status", "/static/*"],
    )
    on(memory)
    assert client.get("/status").status_code == 200
    assert client.get("/static/css/site.css").status_code == 200
    assert client.get("/admin").status_code == 503
    # Not the exempt path: the app's own slash redirect answers, pointing at the exempt page.
    assert client.get("/status/", follow_redirects=False).status_code == 307


# -- other ways through --------


def test_read_only_mode_lets_safe_methods_through(client_for: Any, memory: MemoryBackend) -> None:
    client = client_for([Route("/", ok, methods=["GET", "POST", "OPTIONS"])])
    on(memory, mode="read_only")
    assert client.get("/").status_code == 200
    assert client.head("/").status_code == 200
    assert client.options("/").status_code == 200
    assert client.post("/").status_code == 503


@pytest.mark.anyio
async def test_allow_ips_and_trusted_proxies() -> None:
    memory = MemoryBackend()
    app = make_app(
        memory,
        [Route("/", ok)],
        allow_ips=["203.0.113.0/24", "2001:db8::/32"],
        trusted_proxies=["127.0.0.1"],
    )
    await set_maintenance_mode(True, memory)
    xff = (b"x-forwarded-for", b"203.0.113.9")
    assert (
        await request(app, "/", headers=[xff])
    ).status == 200  # via the trusted proxy at 127.0.0.1
    chain = [(b"x-forwarded-for", b"203.0.113.9, 198.51.100.1")]
    assert (await request(app, "/", headers=chain)).status == 503
    forwarded = (b"forwarded", b'for="[2001:db8::1]:4711"')
    assert (await request(app, "/", headers=[forwarded])).status == 503  # not the header read
    by_forwarded = make_app(
        memory,
        [Route("/", ok)],
        allow_ips=["203.0.113.0/24", "2001:db8::/32"],
        trusted_proxies=["127.0.0.1"],
        forwarded_header="forwarded",
    )
    assert (await request(by_forwarded, "/", headers=[forwarded])).status == 200
    assert (
        await request(by_forwarded, "/", headers=[xff])
    ).status == 503  # X-Forwarded-For ignored
    assert (await request(app, "/", headers=[(b"x-forwarded-for", b"not-an-ip")])).status == 503
    untrusted = make_app(memory, [Route("/", ok)], allow_ips=["203.0.113.0/24"])
    assert (await request(untrusted, "/", headers=[xff])).status == 503  # spoofed: peer not trusted
    direct = make_app(memory, [Route("/", ok)], allow_ips=["127.0.0.0/8"])
    assert (await request(direct, "/")).status == 200


def test_bypass_header_and_cookie(
    client_for: Any, memory: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for([Route("/", ok)], bypass_secret=SECRET)
    on(memory)
    assert client.get("/", headers={"x-maintenance-bypass": SECRET}).status_code == 200
    assert client.get("/", headers={"x-maintenance-bypass": SECRET[:-1] + "x"}).status_code == 503
    wrong = client.get("/_maintenance/bypass/not-the-secret", follow_redirects=False)
    assert wrong.status_code == 404
    granted = client.get(f"/_maintenance/bypass/{SECRET}", follow_redirects=False)
    assert granted.status_code == 303 and granted.headers["location"] == "/"
    cookie = granted.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Max-Age=43200" in cookie
    for response in (wrong, granted):
        assert SECRET not in response.text and SECRET not in str(response.headers)
    assert SECRET not in caplog.text
    assert client.get("/").status_code == 200  # the client keeps the cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    _, signature = value.split(".")
    signer = MaintenanceModeMiddleware(ok, memory, bypass_secret=SECRET)
    past = str(int(time.time()) - 5)

    def status_with(cookie_value: str) -> int:
        other = TestClient(client.app)
        other.cookies.set("maintguard_bypass", cookie_value)
        return other.get("/").status_code

    assert status_with(f"{int(time.time()) + 3600}.{signature}") == 503  # forged expiry
    assert status_with("garbage") == 503
    assert status_with(f"{past}.{signer._bypass._sign(past.encode()).decode()}") == 503  # expired
    assert status_with(value) == 200


def test_exempt_handler_forms(client_for: Any, memory: MemoryBackend) -> None:
    def sync_handler(request: Request) -> bool:
        return request.headers.get("x-staff") == "yes"

    async def async_handler(request: Request) -> bool:
        return request.headers.get("x-staff") == "yes"

    class Handler:
        async def __call__(self, request: Request) -> bool:
            return request.headers.get("x-staff") == "yes"

    def broken(request: Request) -> bool:
        raise RuntimeError("bug in user code")

    on(memory)
    for handler in (sync_handler, async_handler, Handler()):
        client = client_for([Route("/", ok)], exempt_handler=handler)
        assert client.get("/", headers={"x-staff": "yes"}).status_code == 200
        assert client.get("/").status_code == 503
    assert client_for([Route("/", ok)], exempt_handler=broken).get("/").status_code == 503


def test_response_handler_and_redirect(client_for: Any, memory: MemoryBackend) -> None:
    async def custom(request: Request, state: Any) -> Response:
        return JSONResponse({"down": state.reason}, status_code=503)

    def sync_custom(request: Request, state: Any) -> Response:
        return PlainTextResponse("custom", status_code=503)

    on(memory, reason="r")
    assert client_for([Route("/", ok)], response_handler=custom).get("/").json() == {"down": "r"}
    assert client_for([Route("/", ok)], response_handler=sync_custom).get("/").text == "custom"
    redirected = client_for([Route("/", ok)], redirect_to="/status").get(
        "/", follow_redirects=False
    )
    assert redirected.status_code == 302 and redirected.headers["location"] == "/status"


def test_status_code_option(client_for: Any, memory: MemoryBackend) -> None:
    on(memory)
    response = client_for([Route("/", ok)], status_code=423).get(
        "/", headers={"accept": "application/json"}
    )
    assert response.status_code == 423 and response.json()["status"] == 423


# -- scopes and forced routes --------


def test_scopes_by_decorator_and_by_glob(client_for: Any, memory: MemoryBackend) -> None:
    @maintenance_scope("billing")
    async def pay(request: Request) -> Response:
        return PlainTextResponse("paid")

    client = client_for(
        [Route("/pay", pay), Route("/billing/invoices", ok), Route("/search", ok)],
        scopes={"/billing/*": "billing"},
    )
    on(memory, scope="billing")
    assert client.get("/pay").status_code == 503
    assert client.get("/billing/invoices").status_code == 503
    assert client.get("/search").status_code == 200
    off(memory)
    sync.set_maintenance_mode(False, memory, scope="billing")
    assert client.get("/pay").status_code == 200
    on(memory)  # the global scope blocks every scope
    assert client.get("/pay").status_code == 503 and client.get("/search").status_code == 503


def test_forced_route_answers_503_while_off(client_for: Any) -> None:
    @force_maintenance_mode_on
    async def legacy(request: Request) -> Response:
        return PlainTextResponse("legacy")

    client = client_for([Route("/legacy", legacy), Route("/", ok)])
    assert client.get("/legacy").status_code == 503
    assert client.get("/").status_code == 200


# -- websockets --------


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hello")
    with contextlib.suppress(WebSocketDisconnect):
        await websocket.receive_text()


def test_websocket_refused_with_503_denial(client_for: Any, memory: MemoryBackend) -> None:
    from starlette.testclient import WebSocketDenialResponse

    client = client_for([WebSocketRoute("/ws", echo)])
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
    on(memory)
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws"):
        pass
    assert denied.value.status_code == 503


@pytest.mark.anyio
async def test_websocket_refused_with_1013_without_denial_extension() -> None:
    memory = MemoryBackend()
    app = make_app(memory, [WebSocketRoute("/ws", echo)])
    await set_maintenance_mode(True, memory)
    scope = websocket_scope(client=("127.0.0.1", 1), extensions={})
    sent = await call(app, scope, then="disconnect")
    assert sent.types == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1013


def test_open_websockets_closed_with_1012_when_maintenance_begins(
    client_for: Any, memory: MemoryBackend
) -> None:
    client = client_for([WebSocketRoute("/ws", echo)], close_websockets=True)
    with client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "hello"
        on(memory)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1012


# -- lifespan, default backend, watcher --------


def test_lifespan_passes_through_and_watcher_starts_and_stops(tmp_path: Path) -> None:
    from contextlib import asynccontextmanager

    from maintguard._core import store_of as _store

    events = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        events.append("startup")
        yield {"model": "loaded"}
        events.append("shutdown")

    async def model(request: Request) -> Response:
        return PlainTextResponse(request.state.model)

    backend = LocalFileBackend(tmp_path / "m.json")
    app = Starlette(routes=[Route("/model", model)], lifespan=lifespan)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    with TestClient(app) as client:
        assert client.get("/model").text == "loaded"
        assert _store(backend).watchers == 1
    assert events == ["startup", "shutdown"]
    assert _store(backend).watchers == 0


def test_corrupt_state_fails_startup_clearly(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("{broken")
    app = make_app(LocalFileBackend(path), [Route("/", ok)])
    with pytest.raises(Exception, match="does not hold a maintenance state"), TestClient(app):
        pass


def test_corrupt_state_without_lifespan_never_500s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.json"
    path.write_text("{broken")
    client = TestClient(make_app(LocalFileBackend(path), [Route("/", ok)]))  # no lifespan run
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 200
    assert "does not hold a maintenance state" in caplog.text


def test_changes_by_another_process_reach_requests_through_the_watcher(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)  # default: re-read at most once a second
    with TestClient(make_app(backend, [Route("/", ok)])) as client:
        assert client.get("/").status_code == 200
        path.write_text("1")  # what another process (or tool) writes
        deadline = time.monotonic() + 5
        while client.get("/").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        path.write_text("0")
        while client.get("/").status_code != 200:
            assert time.monotonic() < deadline + 5
            time.sleep(0.05)


def test_middleware_backend_is_the_default_for_holds(tmp_path: Path) -> None:
    # The FastAPI-maintenance docs' example, with the import changed to maintguard.
    backend = LocalFileBackend(file_path=tmp_path / "maintenance_mode.txt")
    seen = []

    async def run_migration(request: Request) -> Response:
        async with maintenance_mode_on():
            seen.append(await get_maintenance_mode(backend))
        return JSONResponse({"migration": "completed"})

    app = Starlette(
        routes=[
            # Not exempt, as in those docs: the request is past the middleware when it holds.
            Route("/admin/run-migration", run_migration, methods=["POST"]),
            Route("/", ok),
        ]
    )
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    with TestClient(app) as client:
        assert client.post("/admin/run-migration").json() == {"migration": "completed"}
    assert seen == [True]
    assert anyio.run(get_maintenance_mode, backend) is False
    configure(backend=None)  # forgets the middleware's default too
    from maintguard._core import resolve_backend

    assert resolve_backend() is not backend


def test_hold_in_another_thread_blocks_requests_at_once(
    client_for: Any, memory: MemoryBackend
) -> None:
    client = client_for([Route("/", ok)])
    with under_maintenance(backend=memory):
        assert client.get("/").status_code == 503
    assert client.get("/").status_code == 200


# -- configuration errors --------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"exempt_paths": "/health"}, "takes a list of globs"),
        ({"exempt_paths": ["health"]}, "must be a path glob starting with '/'"),
        ({"allow_ips": ["10.0.0.300"]}, "allow_ips"),
        ({"bypass_secret": "short"}, "16 characters or more"),
        ({"status_code": 200}, "error status"),
        ({"exempt_handler": "yes"}, "must be callable"),
        ({"backend": "nope"}, "has no scheme"),
    ],
)
def test_bad_middleware_options(options: dict[str, Any], message: str) -> None:
    backend = options.pop("backend", MemoryBackend())
    with pytest.raises(ConfigurationError, match=message):
        MaintenanceModeMiddleware(ok, backend, **options)


def test_route_decorator_misuse() -> None:
    with pytest.raises(ConfigurationError, match="needs a scope name"):
        maintenance_scope(ok)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not 'x'"):
        exempt("x")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="both exempt and force_maintenance_mode_on"):
        force_maintenance_mode_on(exempt(lambda request: None))


def test_problem_json_is_valid_json(client_for: Any, memory: MemoryBackend) -> None:
    on(memory)
    body = (
        client_for([Route("/", ok)])
        .get("/", headers={"accept": "application/problem+json"})
        .content
    )
    assert json.loads(body)["detail"]


def test_bad_default_backend_url(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAINTGUARD_BACKEND", "nonsense")
    app = Starlette(routes=[Route("/", fresh())])
    app.add_middleware(MaintenanceModeMiddleware)
    with pytest.raises(ConfigurationError, match="MAINTGUARD_BACKEND"), TestClient(app):
        pass  # at start-up: a clear error
    no_lifespan = TestClient(app)
    assert no_lifespan.get("/").status_code == 200  # on a request: logged, never a 500
    assert "no usable backend" in caplog.text


def test_template_string_and_callable(client_for: Any, memory: MemoryBackend) -> None:
    on(memory, reason="<b>upgrade</b>", retry_after=90)
    html = {"accept": "text/html"}
    page = client_for([Route("/", fresh())], template="<p>$reason in $retry_after s</p>")
    assert page.get("/", headers=html).text == "<p>&lt;b&gt;upgrade&lt;/b&gt; in 90 s</p>"
    custom = client_for([Route("/", fresh())], template=lambda state: f"<h1>{state.holds}</h1>")
    assert custom.get("/", headers=html).text == "<h1>0</h1>"


def test_a_misspelled_middleware_option_says_which_exist(memory: MemoryBackend) -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(MaintenanceModeMiddleware, backend=memory, exmpt_paths=["/health"])
    with pytest.raises(ConfigurationError) as info, TestClient(app):
        pass
    assert "no option 'exmpt_paths' (did you mean 'exempt_paths'?)" in str(info.value)
    assert "bypass_secret" in str(info.value)  # every option is named
