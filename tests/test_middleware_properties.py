"""Property-based tests of the middleware: exact, fail-closed decisions and no 500s.

1. No path form reaches a blocked endpoint. One app combines every way an endpoint is
   exempted, scoped or forced; whichever endpoint actually ran must have been allowed to
   run, judged from that endpoint's own identity (written by hand in ``SPECS``) and what is
   on. The middleware's decision is never recomputed here.
2. Never a 500, never an exception: hostile scopes, headers, cookies, options, handlers,
   templates and stored states (as a buggy user-written backend returns them).

Both are sync Hypothesis tests that drive the ASGI app with ``anyio.run``.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket

from maintguard import (
    MaintenanceModeMiddleware,
    exempt,
    force_maintenance_mode_on,
    maintenance_scope,
    set_maintenance_mode,
)
from maintguard._state import ExplicitState, HoldRecord, Mode, StoredState
from maintguard.backends import Backend, MemoryBackend
from tests import asgi
from tests.asgi import Sent, http_scope, served, websocket_scope

EXAMPLES = int(os.environ.get("MAINTGUARD_PROPERTY_EXAMPLES", "60"))
SECRET = "s3cret-bypass-token-0123456789"
UTC = timezone.utc
ALL = ["GET", "POST", "DELETE", "OPTIONS"]  # Starlette adds HEAD to GET
SAFE = ("GET", "HEAD", "OPTIONS")
WEBSOCKET = "WEBSOCKET"  # drawn as a method: a WebSocket handshake instead of HTTP
EXEMPT_PATHS = ["/health", "/public/*"]
SCOPES = {"/billing/*": "billing"}

# -- the app: every endpoint records that it ran --------------------------------------------

ran: list[str] = []


@dataclass(frozen=True)
class Spec:
    """What one endpoint is, from its route and its marks: the oracle's only input."""

    name: str
    plain: str  # a plain path that reaches it
    methods: tuple[str, ...]  # the methods that reach it at ``plain``
    glob: bool = False  # its route template lies under an ``exempt_paths`` glob
    exempt: bool = False  # @exempt
    forced: bool = False  # @force_maintenance_mode_on
    scopes: frozenset[str] = frozenset()  # named scopes: by ``scopes=`` glob or decorator
    host: str = "testserver"


SPECS: dict[str, Spec] = {}
ANY = ("GET", "HEAD", "POST", "DELETE", "OPTIONS")
GET = ("GET", "HEAD")
BILLING = frozenset({"billing"})
REPORTS = frozenset({"reports"})


def spec(name: str, plain: str, methods: tuple[str, ...] = GET, **details: Any) -> None:
    SPECS[name] = Spec(name, plain, methods, **details)


spec("api_billing", "/billing/1", host="api.example.com", scopes=BILLING)
spec("health", "/health", ANY, glob=True)
spec("health_sub", "/health/deep", ANY)  # not exempt: the glob "/health" is exact
spec("public_forced", "/public/forced", forced=True, glob=True)
spec("public", "/public/page", ANY, glob=True)  # every plain path under "/public/"
spec("status", "/status", exempt=True)
spec("billing_status", "/billing/status", exempt=True, scopes=BILLING)
spec("ws_billing", "/billing/ws", (WEBSOCKET,), scopes=BILLING)
spec("billing_reports", "/billing/reports/7", ANY, scopes=BILLING | REPORTS)
spec("billing_x", "/billing/x", ANY, scopes=BILLING)
spec("reports", "/reports/2024/q1", ANY, scopes=REPORTS)
spec("export", "/export", forced=True)
spec("x_item", "/x/1", ANY)
spec("admin_home", "/admin/", ANY)
spec("admin_billing", "/admin/billing/x")  # "/admin/billing/{x}": not under "/billing/"
spec("admin_health", "/admin/health")  # the literal "health", not the exempt "/health"
spec("admin_status", "/admin/status", exempt=True)
spec("admin_deep", "/admin/deep/a/b", ANY)
spec("files", "/files/a.txt", (*ANY, "get", WEBSOCKET))  # a mounted ASGI app
spec("ops", "/ops/x", ("GET", "POST", "get", WEBSOCKET), exempt=True)
spec("nested_reports", "/nested/r/1", scopes=REPORTS)
spec("nested_x", "/nested/1", ANY)
spec("ws_status", "/ws/status/live", (WEBSOCKET,), exempt=True)
spec("ws_room", "/ws/lobby", (WEBSOCKET,))
spec("slug", "/anything", ANY)
spec("catch_all", "/a/b/c", ANY)  # and "/public/../x", "/public//x": not plain


class PlainRest(Convertor[str]):
    """The rest of a plain path: no ``//``, ``.`` or ``..`` segment, ``%``, ``\\``, NUL or LF.

    ``/public/{rest:maintguard_plain}`` takes every plain path under ``/public/`` (those an
    ``exempt_paths`` glob may exempt), so any other path under it reaches a blocked
    endpoint (``catch_all``): only the middleware's refusal of such paths keeps it blocked.
    """

    segment = r"(?!\.\.?(?:/|$))[^/\\%\x00\n]+"
    regex = rf"(?:{segment}(?:/{segment})*/?)?"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("maintguard_plain", PlainRest())


def endpoint(name: str) -> Callable[[Request], Any]:
    async def run(request: Request) -> Response:
        ran.append(name)
        return PlainTextResponse(name)

    run.__name__ = run.__qualname__ = name
    return run


def ws_endpoint(name: str) -> Callable[[WebSocket], Any]:
    async def run(websocket: WebSocket) -> None:
        ran.append(name)
        await websocket.accept()
        await websocket.close()

    run.__name__ = run.__qualname__ = name
    return run


def raw_app(name: str) -> Callable[..., Any]:
    """A plain ASGI app, mounted (the app is the endpoint); it answers any method."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ran.append(name)
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name.encode()})

    app.__name__ = app.__qualname__ = name
    return app


def build_routes() -> list[Any]:
    e, scoped = endpoint, maintenance_scope("reports")
    return [
        Host("api.example.com", app=Router([Route("/billing/{x}", e("api_billing"))])),
        Route("/health", e("health"), methods=ALL),
        Route("/health/{rest:path}", e("health_sub"), methods=ALL),
        Route("/public/forced", force_maintenance_mode_on(e("public_forced"))),
        Route("/public/{rest:maintguard_plain}", e("public"), methods=ALL),
        Route("/status", exempt(e("status"))),
        Route("/billing/status", exempt(e("billing_status"))),
        WebSocketRoute("/billing/ws", ws_endpoint("ws_billing")),
        Route("/billing/reports/{id:int}", scoped(e("billing_reports")), methods=ALL),
        Route("/billing/{x}", e("billing_x"), methods=ALL),
        Route("/reports/{rest:path}", scoped(e("reports")), methods=ALL),
        Route("/export", force_maintenance_mode_on(e("export"))),
        Route("/x/{id}", e("x_item"), methods=ALL),
        Mount(
            "/admin",
            routes=[
                Route("/", e("admin_home"), methods=ALL),
                Route("/billing/{x}", e("admin_billing")),
                Route("/health", e("admin_health")),
                Route("/status", exempt(e("admin_status"))),
                Mount("/deep", routes=[Route("/{rest:path}", e("admin_deep"), methods=ALL)]),
            ],
        ),
        Mount("/files", app=raw_app("files")),
        Mount("/ops", app=exempt(raw_app("ops"))),
        Mount(
            "/nested",
            app=Router(
                [
                    Route("/r/{n}", scoped(e("nested_reports"))),
                    Route("/{x}", e("nested_x"), methods=ALL),
                ]
            ),
        ),
        WebSocketRoute("/ws/status/{rest:path}", exempt(ws_endpoint("ws_status"))),
        WebSocketRoute("/ws/{room}", ws_endpoint("ws_room")),
        Route("/{slug}", e("slug"), methods=ALL),
        Route("/{a}/{rest:path}", e("catch_all"), methods=ALL),
    ]


class Inner:
    """Sits between the maintenance middleware and the app: records the app's own errors."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.raised: list[BaseException] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.raised.append(exc)
            raise


def build_app(backend: Backend, **options: Any) -> Starlette:
    app = Starlette(routes=build_routes())
    app.add_middleware(Inner)  # added first: it ends up inside the maintenance middleware
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, **options)
    return app


def inner_errors(app: Starlette) -> list[BaseException]:
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, Inner):
        layer = getattr(layer, "app", None)
    return layer.raised if layer is not None else []


# -- raw ASGI calls --------------------------------------------------------------------------


@dataclass
class Answer:
    messages: list[dict[str, Any]]
    ran: list[str]
    raised: BaseException | None

    def starts(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"].endswith("http.response.start")]

    def status(self) -> int | None:
        starts = self.starts()
        return starts[0]["status"] if starts else None


async def call(app: Any, scope: dict[str, Any]) -> Answer:
    """The app's answer to one scope (the client hangs up once it has been answered)."""
    sent = Sent()
    del ran[:]
    raised = None
    with anyio.fail_after(10):
        try:
            await asgi.call(app, scope, then="disconnect", sent=sent)
        except Exception as exc:
            raised = exc
    return Answer(sent, list(ran), raised)


def asgi_scope(
    method: str, raw: bytes, *, root: str = "", host: bytes = b"testserver", prefixed: bool = True
) -> dict[str, Any]:
    """What uvicorn sends: ``path`` is ``raw_path`` unquoted; both carry ``root_path``."""
    path = unquote(raw.decode("ascii"))
    if root and prefixed:
        path, raw = root + path, root.encode() + raw
    where: dict[str, Any] = {"raw_path": raw, "root_path": root, "host": host}
    where |= {"headers": [(b"accept", b"*/*")], "client": ("127.0.0.1", 5000)}
    if method == WEBSOCKET:
        return websocket_scope(path, **where)
    return http_scope(path, method, **where)


def run(func: Callable[..., Any], *args: Any, loop: str = "asyncio") -> None:
    """``anyio.run``, failing with the error itself rather than a task group's group of one."""
    try:
        anyio.run(func, *args, backend=loop)
    except Exception as exc:
        while len(getattr(exc, "exceptions", ())) == 1:
            exc = exc.exceptions[0]  # type: ignore[attr-defined]
        raise exc from None


# -- property 1: no path form reaches a blocked endpoint -------------------------------------

REAL = ["billing", "health", "public", "admin", "reports", "x", "1", "7", "status", "export"]
REAL += ["files", "ops", "nested", "r", "ws", "deep", "forced", "api"]
TRICKY = [".", "..", "", "%2e", "%2E%2e", "%2e%2e", "%2f", "%2F", "%5c", "%5C", "%00", "%0a"]
TRICKY += ["%0A", "%25", "%252e", "Billing", "HEALTH", "Public", "%62illing", "%68ealth"]
TRICKY += ["%70ublic", "health%0A", "billing%2fx", "public%2F..", "%2fbilling", "%41dmin"]
TRICKY += ["reports%2f2024", "admin%2Fstatus", "status%00", "status%20", "health%2F"]
built_paths = st.builds(
    lambda segments, slash, newline: (
        "/" + "/".join(segments) + ("/" if slash else "") + ("%0A" if newline else "")
    ),
    st.lists(st.sampled_from(REAL) | st.sampled_from(TRICKY), max_size=5),
    st.booleans(),
    st.booleans(),
)
plain_paths = st.sampled_from(sorted({s.plain for s in SPECS.values()}))


def _parts(path: str) -> list[str]:
    return path.split("/")  # "/a/b" -> ["", "a", "b"]


def _first(path: str, change: Callable[[str], str]) -> str:
    parts = _parts(path)
    parts[1] = change(parts[1])
    return "/".join(parts)


def _last(path: str, segment: str) -> str:
    return "/".join([*_parts(path)[:-1], segment])


def _after_first(path: str, inserted: str) -> str:
    parts = _parts(path)
    return "/".join([*parts[:2], inserted, *parts[2:]])


# Each turns a plain path into a tricky form of it: what a server passes on as it is.
TRICKS: list[Callable[[str], str]] = [
    lambda p: p + "%0A",
    lambda p: p + "/%0A",
    lambda p: p + "/",
    lambda p: p + "//",
    lambda p: p + "/.",
    lambda p: p + "/..",
    lambda p: p + "%2F",
    lambda p: p + "%00",
    lambda p: p + "%20",
    lambda p: "/" + p,
    lambda p: _last(p, ".."),
    lambda p: _last(p, "."),
    lambda p: _last(p, "%2e%2E"),
    lambda p: _last(p, ""),
    lambda p: _after_first(p, ".."),
    lambda p: _after_first(p, "."),
    lambda p: _after_first(p, ""),
    lambda p: _after_first(p, "%2e"),
    lambda p: _after_first(p, "..%5C.."),
    lambda p: _first(p, str.upper),
    lambda p: _first(p, str.capitalize),
    lambda p: _first(p, lambda s: f"%{ord(s[0]):02x}{s[1:]}" if s else s),
    lambda p: _first(p, lambda s: f"{s}%2F"),
    lambda p: _first(p, lambda s: f"{s}%5C"),
    lambda p: p + "/../billing/x",
    lambda p: p + "/%2e%2e/export",
    lambda p: "/public/.." + p,
    lambda p: "/public/%2E%2E" + p,
    lambda p: "/health/.." + p,
]
tricked_paths = st.builds(lambda trick, path: trick(path), st.sampled_from(TRICKS), plain_paths)
# For each endpoint, a method that reaches it at its plain path: tried with every trick.
methods_of_specs = st.fixed_dictionaries(
    {name: st.sampled_from(found.methods) for name, found in SPECS.items()}
)
requests = st.tuples(
    st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS", "get", WEBSOCKET]),
    st.one_of(plain_paths, built_paths, tricked_paths),
    st.sampled_from(["", "", "/pre", "/billing", "/health"]),  # root_path
    st.sampled_from([b"testserver", b"api.example.com", b"API.example.com"]),
    st.booleans(),  # path and raw_path start with root_path, as the ASGI spec says
)
modes = st.sampled_from(["full", "read_only"])
situations = st.fixed_dictionaries(  # scope -> None (off) or the mode it is on in
    {None: st.none() | modes, "billing": st.none() | modes, "reports": st.none() | modes}
)


def may_run(found: Spec, method: str, on: dict[str | None, str]) -> bool:
    """Whether ``found`` may run: from its identity and what is on, nothing else."""
    if found.forced:
        return False
    if found.exempt:
        return True
    blocking = [mode for name, mode in on.items() if name is None or name in found.scopes]
    if not blocking or found.glob:
        return True
    # Read-only lets safe methods through (a WebSocket session is not one), when every
    # scope that blocks the endpoint is read-only.
    return method in SAFE and all(mode == "read_only" for mode in blocking)


def check_decision(answer: Answer, method: str, on: dict[str | None, str], what: str) -> None:
    assert answer.raised is None, f"{what}: {answer.raised!r}"
    assert len(answer.ran) <= 1, what
    for name in answer.ran:
        assert may_run(SPECS[name], method, on), f"{name} ran for {what} while {on}"
    status = answer.status()
    assert status != 500, what
    if method == WEBSOCKET:
        kinds = {m["type"] for m in answer.messages}
        assert kinds <= {"websocket.accept", "websocket.close"}, (what, kinds)
    else:
        assert (status == 200) is bool(answer.ran), (what, status, answer.ran)


async def _decide(
    situation: dict[str | None, str | None], tricked: dict[str, str], drawn: list[Any]
) -> None:
    memory = MemoryBackend()
    app = build_app(memory, exempt_paths=EXEMPT_PATHS, scopes=SCOPES)
    on = {name: mode for name, mode in situation.items() if mode is not None}
    async with served(app):
        for name, mode in on.items():
            await set_maintenance_mode(True, memory, scope=name, mode=mode)
        # Every endpoint at its plain path: decided exactly. Allowed ones run (when
        # nothing is on, that is every endpoint but the forced ones); blocked ones do not.
        for found in SPECS.values():
            for method in found.methods:
                scope = asgi_scope(method, found.plain.encode(), host=found.host.encode())
                answer = await call(app, scope)
                what = f"{method} {found.plain}"
                check_decision(answer, method, on, what)
                expected = [found.name] if may_run(found, method, on) else []
                assert answer.ran == expected, (what, on, answer.messages)
        # Any path form: whatever ran was allowed to (one allowed may be refused: fail closed).
        for name, method in tricked.items():
            found = SPECS[name]
            for trick in TRICKS:
                raw = trick(found.plain)
                scope = asgi_scope(method, raw.encode(), host=found.host.encode())
                check_decision(await call(app, scope), method, on, f"{method} {raw}")
        for method, raw, root, host, prefixed in drawn:
            scope = asgi_scope(method, raw.encode(), root=root, host=host, prefixed=prefixed)
            what = f"{method} {scope['raw_path']!r} (root_path {root!r}, host {host!r})"
            check_decision(await call(app, scope), method, on, what)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    situation=situations,
    tricked=methods_of_specs,
    drawn=st.lists(requests, min_size=1, max_size=10, unique_by=lambda r: r[:2]),
)
# Found, fixed: an endpoint in two scopes, one by decorator and one by glob, is decided
# on the decorator scope's state alone (middleware._first_active takes the first scope on):
# billing on in full mode and reports on read-only let GET /billing/reports/7 through to
# @maintenance_scope("reports") under scopes={"/billing/*": "billing"}: 200, not 503.
@example(
    situation={None: None, "billing": "full", "reports": "read_only"},
    tricked={name: found.methods[0] for name, found in SPECS.items()},
    drawn=[("GET", "/billing/reports/7", "", b"testserver", True)],
)
def test_no_path_form_reaches_a_blocked_endpoint(
    situation: dict[str | None, str | None], tricked: dict[str, str], drawn: list[Any]
) -> None:
    run(_decide, situation, tricked, drawn)


# -- property 2: never a 500, never an exception ---------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, picked in proportion to its weight."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


surrogates = st.characters(categories=["Cs"])
weird_text = st.text(
    st.characters(exclude_categories=()) | surrogates | st.sampled_from("\r\n\x00\x1b\u2028"),
    max_size=20,
)
aware_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.sampled_from(
    [
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime.now(UTC) + timedelta(days=1),  # a future `until`: maintenance on
        datetime.now(UTC) - timedelta(days=1),  # a past one: off
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-23))),  # past year 9999
    ]
)
naive_times = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
garbage = st.sampled_from([5, -1, b"bytes", "soon", [], object()])
times = aware_times | naive_times | garbage  # what a buggy backend puts where times go
reasons = st.none() | weird_text | st.just("r" * 5000) | garbage
retries = (
    st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, -30, 1e999, 10**30, 2**64, 0])
    | st.integers()
    | times
)
stored_modes = st.sampled_from([Mode.FULL] * 3 + ["full", Mode.READ_ONLY, "read_only", "weird"])
# The dataclasses do not validate: built directly, they hold what a buggy backend returns.
explicit_states = st.builds(
    ExplicitState,
    active=st.sampled_from([True, True, True, False, 1, 0, "yes"]),
    reason=reasons,
    retry_after=retries,
    until=st.sampled_from([None, None, datetime.now(UTC) + timedelta(hours=1)]) | times,
    mode=stored_modes,
    since=st.none() | times,
)
hold_records = st.builds(
    HoldRecord,
    id=st.text(max_size=5),
    owner=weird_text,
    host=weird_text,
    pid=st.integers(),
    acquired=times,
    started=times,
    expires=st.none() | times,
    reason=reasons,
    retry_after=retries,
    mode=stored_modes,
)
stored_states = st.builds(
    StoredState, explicit_states, st.lists(hold_records, max_size=3).map(tuple)
)
stores = st.fixed_dictionaries(
    {None: stored_states}, optional={"billing": stored_states, "reports": stored_states}
)


class HostileBackend(Backend):
    """A user-written backend that returns whatever it was given, or cannot be read."""

    def __init__(self, states: dict[str | None, Any], fails: bool) -> None:
        super().__init__(refresh_interval=math.inf)
        self.states = states
        self.fails = fails

    async def read_state(self, scope: str | None) -> StoredState:
        if self.fails:
            raise RuntimeError("the store is down")
        return self.states.get(scope, StoredState())  # type: ignore[no-any-return]

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        self.states[scope] = state


class Flag:
    """Off while the middleware is built (its options are test-rendered), on afterwards."""

    on = False


def template_raising(state: Any) -> str:
    if Flag.on:
        raise RuntimeError("the template broke")
    return "<p>ok</p>"


def template_not_str(state: Any) -> Any:
    return b"bytes" if Flag.on else "<p>ok</p>"


templates = st.sampled_from(
    [
        None,
        "<p>$title $reason $until_text $retry_after $$ $unknown</p>",
        string.Template("<p>$reason_html $until_html</p>"),
        lambda state: f"<p>{state.reason!r} {state.until!r}</p>",
        template_raising,
        template_not_str,
    ]
)


class Truthless:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth value")


def raising(*args: Any) -> Any:
    raise RuntimeError("the handler broke")


async def raising_async(request: Request) -> Any:
    raise RuntimeError("the handler broke")


async def fails_midway(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": []})
    raise RuntimeError("broke after the start")


async def fails_before_start(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("broke before the start")


async def custom_async(request: Request, state: Any) -> Response:
    return PlainTextResponse("custom", status_code=503, headers={"retry-after": "5"})


response_handlers = st.sampled_from(
    [
        None,
        lambda request, state: PlainTextResponse("custom", status_code=503),
        custom_async,
        lambda request: PlainTextResponse("one argument", status_code=418),
        raising,
        raising_async,
        lambda request, state: None,
        lambda request, state: 42,
        lambda request, state: PlainTextResponse,  # a class, not a response
        lambda request, state: fails_midway,
        lambda request, state: fails_before_start,
    ]
)


async def exempt_async(request: Request) -> bool:
    return request.headers.get("x-let-me-in") == "yes"


exempt_handlers = st.sampled_from(
    [
        lambda request: True,
        lambda request: False,
        exempt_async,
        raising,
        raising_async,
        lambda request: Truthless(),
        lambda request: request.client.host == "10.0.0.5",  # raises without a client
    ]
)
options = st.fixed_dictionaries(  # every option, often at its default
    {
        "exempt_paths": st.sampled_from([[], [], EXEMPT_PATHS, EXEMPT_PATHS, ["/*"]]),
        "exempt_docs": st.booleans(),
        "scopes": st.sampled_from([None, SCOPES]),
        "allow_ips": st.sampled_from([[], ["10.0.0.0/8", "2001:db8::/32"], ["::ffff:0:0/96"]]),
        "trusted_proxies": st.sampled_from([[], ["127.0.0.1", "10.0.0.0/8"]]),
        "forwarded_header": st.sampled_from(["x-forwarded-for", "forwarded", "Forwarded"]),
        "bypass_secret": st.sampled_from([None, SECRET]),
        "template": templates,
        "response_handler": response_handlers,
        "exempt_handler": weighted((3, st.none()), (4, exempt_handlers)),
        "status_code": st.integers(400, 599).filter(lambda status: status != 500),
        "redirect_to": st.sampled_from([None, None, None, "https://status.example.com/", "/s"]),
        "close_websockets": st.booleans(),
    }
)

token = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}", fullmatch=True).map(str.encode)
header_names = token | st.sampled_from(
    [
        b"accept",
        b"cookie",
        b"x-forwarded-for",
        b"forwarded",
        b"x-maintenance-bypass",
        b"host",
        b"content-type",
        b"x-let-me-in",
        b"Accept",
    ]
)
header_values = (
    st.binary(max_size=40)
    | st.builds(lambda value: b"maintguard_bypass=" + value, st.binary(max_size=80))
    | st.sampled_from(
        [
            b"text/html",
            b"application/json;q=nan, */*;q=inf",
            b"10.0.0.5, 127.0.0.1",
            b'for="[2001:db8::1]:80";proto=https, for=unknown',
            b"for=10.0.0.5",
            SECRET.encode(),
            b"maintguard_bypass=9999999999.abc; maintguard_bypass=garbage",
            b"yes",
            b"\xc3\x28\xa0\xa1",
        ]
    )
)
cookie_lines = st.one_of(
    st.binary(max_size=60),
    st.builds(lambda value: b"maintguard_bypass=" + value, st.binary(max_size=80)),
    st.builds(
        lambda expires, signature: b"maintguard_bypass=%s.%s" % (expires, signature),
        st.sampled_from([b"", b"abc", b"1e5", b"-1", b"\xff", b"9" * 40, b"99999999999"]),
        st.sampled_from([b"", b"abc", b"\x00", b"0" * 64]),
    ),
    st.sampled_from([b"a=b; maintguard_bypass=1.2; maintguard_bypass", b";;=;", b"\xff=\xfe"]),
)
clients = st.sampled_from(
    [
        None,
        ("127.0.0.1", 5000),
        ("10.0.0.5", 1),
        ("::ffff:10.0.0.5", 1),
        ("2001:db8::7", 1),
        ("not-an-ip", 1),
        ("\udcff", 1),
        (b"10.0.0.5", 1),
        (1, 2),
        (),
        [None],
        "10.0.0.5",
        5,
    ]
)


fuzz_requests = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["http", "http", "http", "http", "websocket"]),
        "method": weighted(
            (8, st.sampled_from(["GET", "GET", "HEAD", "POST", "POST", "DELETE", "OPTIONS"])),
            (1, st.sampled_from(["get", "PATCH", "", "GET ", "G\x00T"])),
            (1, st.text(max_size=8)),
        ),
        # Mostly paths that reach an endpoint: their decisions go furthest.
        "path": weighted(
            (6, plain_paths),
            (2, st.sampled_from(["/export", "/public/forced", "/x/1", "/billing/x", "/ws/lobby"])),
            (2, tricked_paths.map(unquote)),
            (1, built_paths.map(unquote)),
            (1, st.text(st.characters(exclude_categories=()) | surrogates, max_size=30)),
            (1, st.sampled_from([f"/_maintenance/bypass/{SECRET}", "/_maintenance/bypass/x"])),
            (1, st.sampled_from(["", "/", "*", "billing/x", "/\udcff", "/public/\udc80"])),
        ),
        # "path": raw_path is the path encoded; "absent": the scope has no raw_path
        "raw_path": weighted(
            (4, st.just("path")),
            (1, st.sampled_from(["absent", None])),
            (1, st.binary(max_size=40)),
        ),
        "root_path": weighted(
            (5, st.just("")), (1, st.sampled_from(["/pre", "/billing"])), (1, weird_text)
        ),
        "headers": st.lists(st.tuples(header_names, header_values), max_size=8),
        "cookies": st.lists(cookie_lines, max_size=3),
        "client": clients,
        "scheme": st.sampled_from(["http", "https", "ws", "wss", "gopher"]),
        "query_string": st.binary(max_size=10),
        "denial": st.booleans(),  # the server offers websocket.http.response
    }
)


def fuzz_scope(drawn: dict[str, Any]) -> dict[str, Any]:
    scope = {key: drawn[key] for key in ("type", "scheme", "path", "root_path", "query_string")}
    headers = drawn["headers"] + [(b"cookie", line) for line in drawn["cookies"]]
    scope.update(headers=headers, client=drawn["client"], server=("testserver", 80))
    scope.update(asgi={"version": "3.0"}, http_version="1.1")
    if drawn["raw_path"] == "path":
        scope["raw_path"] = drawn["path"].encode("utf-8", "surrogatepass")
    elif drawn["raw_path"] != "absent":
        scope["raw_path"] = drawn["raw_path"]
    if drawn["type"] == "http":
        scope["method"] = drawn["method"]
    elif drawn["denial"]:
        scope["extensions"] = {"websocket.http.response": {}}
    return scope


WS_MESSAGES = {
    "websocket.accept",
    "websocket.close",
    "websocket.http.response.start",
    "websocket.http.response.body",
}


def check_sound(answer: Answer, scope: dict[str, Any], inner: list[BaseException]) -> None:
    if inner:  # the app's own error (Starlette on a hostile scope), not the middleware's
        return
    if answer.raised is not None:  # raised as it is: each cause is a distinct failure
        raise answer.raised
    starts = answer.starts()
    for start in starts:
        assert isinstance(start["status"], int) and start["status"] != 500, (start, scope)
        for name, value in start.get("headers", []):
            assert isinstance(name, bytes) and isinstance(value, bytes), (name, value)
            assert not {10, 13} & set(name + value), (name, value)
    if scope["type"] == "http":
        assert len(starts) == 1, (answer.messages, scope)
    else:
        kinds = {m["type"] for m in answer.messages}
        assert kinds <= WS_MESSAGES, (kinds, scope)
        assert len(starts) <= 1, (answer.messages, scope)


_BLOCKED_WEBSOCKET = {
    "type": "websocket",
    "method": "GET",
    "path": "/ws/lobby",
    "raw_path": b"/ws/lobby",
    "root_path": "",
    "headers": [],
    "client": ("127.0.0.1", 1),
    "scheme": "ws",
    "query_string": b"",
    "denial": False,
    "cookies": [],
}
_GET_X = {**_BLOCKED_WEBSOCKET, "type": "http", "path": "/x/1", "raw_path": b"/x/1"}


# Sent after the drawn requests of every example, under its options and stored state.
PROBES = [
    {**_BLOCKED_WEBSOCKET, "path": f"/_maintenance/bypass/{SECRET}", "raw_path": "path"},
    {
        **_GET_X,
        "method": "POST",
        "client": 5,
        "headers": [(b"x-forwarded-for", b"unknown, 10.0.0.5"), (b"accept", b"\xff")],
        "cookies": [b"maintguard_bypass=abc.def", b"maintguard_bypass=1e5.x; maintguard_bypass"],
    },
]


async def _fuzz(app: Starlette, drawn: list[dict[str, Any]]) -> None:
    for request in [*drawn, *PROBES]:
        scope = fuzz_scope(request)
        errors = inner_errors(app)
        del errors[:]  # this request's only
        check_sound(await call(app, scope), scope, errors)
    async with served(app) as answers:  # stops the watcher that the requests started
        pass
    assert answers[0]["type"] in ("lifespan.startup.complete", "lifespan.startup.failed")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chosen=options,
    states=stores,
    kind=st.sampled_from(["memory", "memory", "hostile", "hostile", "failing"]),
    drawn=st.lists(
        fuzz_requests, min_size=1, max_size=10, unique_by=lambda r: (r["path"], r["method"])
    ),
    loop=st.sampled_from(["asyncio", "trio"]),
)
# Found, fixed: with exempt_handler set, a WebSocket handshake to a blocked endpoint
# during maintenance raises AssertionError out of the middleware and sends nothing:
# _lets_through builds starlette.requests.Request(scope), which asserts type == "http".
# Expected: the refusal (accept + close 1013, or the 503 denial response).
@example(
    chosen={"exempt_handler": lambda request: False},
    states={None: StoredState(ExplicitState(active=True))},
    kind="memory",
    drawn=[_BLOCKED_WEBSOCKET],
    loop="asyncio",
)
# Found, fixed: a stored time that is naive (or not a datetime at all), as a user-written
# backend may return it, makes every request raise TypeError (500) from state.derive /
# ExplicitState.in_force / HoldRecord.live comparing it with an aware now: here
# ExplicitState(active=True, until=datetime(2100, 1, 1)). The same for until=5, a hold's
# expires=datetime(2100, 1, 1), or naive and aware `started` in two holds. Expected: the
# request is decided (the state read as unusable, or naive taken as UTC as the response
# already does) and answered; never a 500.
@example(
    chosen={},
    states={None: StoredState(ExplicitState(active=True, until=datetime(2100, 1, 1)))},
    kind="hostile",
    drawn=[_GET_X],
    loop="asyncio",
)
def test_never_a_500_never_an_exception(
    chosen: dict[str, Any],
    states: dict[str | None, Any],
    kind: str,
    drawn: list[dict[str, Any]],
    loop: str,
) -> None:
    backend: Backend
    if kind == "memory":
        backend = MemoryBackend()
        backend._states.update(states)  # as a buggy writer left them
    else:
        backend = HostileBackend(dict(states), fails=kind == "failing")
    Flag.on = False
    try:
        app = build_app(backend, **chosen)
        # Built now, while the template still renders: the options are checked here, and
        # the callable template raises (or returns bytes) only at request time.
        app.middleware_stack = app.build_middleware_stack()
        Flag.on = True
        run(_fuzz, app, drawn, loop=loop)
    finally:
        Flag.on = False
