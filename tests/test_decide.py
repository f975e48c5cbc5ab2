"""One decision per request, and route knowledge learned per app.

1. Each app's middleware learns from its own routes whether any is forced or scoped: a
   forced route in one app costs another app's requests nothing, and a mark set after
   learning reaches only the apps that route to that endpoint.
2. Routes changed after learning (appended, inserted, replaced in place, in a mount) are
   followed; a request is never let through on routes that are no longer the app's.
3. The request path and a drain's question ("would this hold refuse this request?") are
   one function: over method x mode x route kind x hold scope, both answer as a model
   written here by hand (HEAD decided as GET, safe methods in read-only mode, exempt,
   scoped and forced routes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from maintguard import (
    MaintenanceModeMiddleware,
    exempt,
    force_maintenance_mode_on,
    maintenance_scope,
    set_maintenance_mode,
)
from maintguard._state import Mode
from maintguard.backends import MemoryBackend
from maintguard.starlette._decide import (
    APP,
    EXEMPT,
    FORCED,
    OFF,
    READ,
    REFUSE,
    PathRules,
    decide,
    hold_of,
)
from maintguard.starlette._matching import AppRoutes
from tests.asgi import http_scope

ran: list[str] = []


def endpoint(name: str) -> Callable[[Request], Any]:
    async def run(request: Request) -> Response:
        ran.append(name)
        return PlainTextResponse(name)

    run.__name__ = run.__qualname__ = name
    return run


async def call(app: Any, path: str, method: str = "GET") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(path, method), receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent[1:])


def guarded(routes: list[Any], backend: MemoryBackend, **options: Any) -> Starlette:
    app = Starlette(routes=routes)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, **options)
    return app


def middleware_of(app: Any) -> MaintenanceModeMiddleware:
    layer = app.middleware_stack
    while not isinstance(layer, MaintenanceModeMiddleware):
        layer = layer.app
    return layer


class CountingRoute(Route):
    """A route of a custom kind (its own ``matches``): every question asked of it counts."""

    asked = 0

    def matches(self, scope: Any) -> Any:
        CountingRoute.asked += 1
        return super().matches(scope)


# -- 1. learned per app --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_forced_route_in_one_app_leaves_another_apps_off_path_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = MemoryBackend()
    legacy = force_maintenance_mode_on(endpoint("legacy"))
    plain = endpoint("a-plain")
    forced_app = guarded([Route("/legacy", legacy), Route("/a/{id}", plain)], backend)
    other = guarded([CountingRoute(f"/r{i}/{{id}}", endpoint(f"r{i}")) for i in range(20)], backend)
    assert (await call(forced_app, "/legacy"))[0] == 503  # while off: forced
    assert (await call(other, "/r19/0"))[0] == 200
    found: list[int] = []
    real = AppRoutes.find

    def counting(self: AppRoutes, scope: Any) -> Any:
        found.append(id(self))
        return real(self, scope)

    monkeypatch.setattr(AppRoutes, "find", counting)
    CountingRoute.asked = 0
    for i in range(1, 4):  # a new id each time: nothing kept by path helps
        assert (await call(other, f"/r19/{i}")) == (200, b"r19")
    assert CountingRoute.asked == 3 * 20  # the app's own routing, nothing more
    learned = middleware_of(other)._routes
    assert found == [] and learned is not None and learned.quiet()
    assert (await call(forced_app, "/a/1")) == (200, b"a-plain")
    assert found == [id(middleware_of(forced_app)._routes)]  # the forced app looks

    # A mark set later reaches the app routing to that endpoint, and no other.
    force_maintenance_mode_on(plain)
    assert (await call(forced_app, "/a/2"))[0] == 503
    assert (await call(other, "/r19/9"))[0] == 200
    assert middleware_of(other)._routes is learned and learned.quiet()


@pytest.mark.anyio
async def test_marks_set_after_the_app_was_built_are_followed() -> None:
    backend = MemoryBackend()
    later_forced, later_exempt = endpoint("later-forced"), endpoint("later-exempt")
    later_scoped = endpoint("later-scoped")
    app = guarded(
        [Route("/f", later_forced), Route("/e", later_exempt), Route("/s", later_scoped)],
        backend,
    )
    assert (await call(app, "/f")) == (200, b"later-forced")
    force_maintenance_mode_on(later_forced)
    assert (await call(app, "/f"))[0] == 503  # while off
    maintenance_scope("billing")(later_scoped)
    await set_maintenance_mode(True, backend, scope="billing")
    assert (await call(app, "/s"))[0] == 503
    assert (await call(app, "/e"))[0] == 200  # billing is on, not the global scope
    await set_maintenance_mode(True, backend)
    assert (await call(app, "/e"))[0] == 503
    exempt(later_exempt)
    assert (await call(app, "/e")) == (200, b"later-exempt")


# -- 2. routes changed after learning ----------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("change", ["append", "insert", "replace-first", "mount"])
async def test_a_route_added_after_a_cached_miss_is_refused(change: str) -> None:
    backend = MemoryBackend()
    mount = Mount("/m", routes=[Route("/a", endpoint("m-a"))])
    app = guarded(
        [Route("/", endpoint("home")), Route("/other", endpoint("other")), mount], backend
    )
    await set_maintenance_mode(True, backend)
    path = "/m/late" if change == "mount" else "/late"
    for _ in range(2):  # the miss is decided once, then kept
        assert (await call(app, path))[0] == 404
    late = Route("/late", endpoint("late"))
    if change == "append":
        app.router.routes.append(late)
    elif change == "insert":
        app.router.routes.insert(0, late)
    elif change == "replace-first":  # same length, same last route: O(1) checks see nothing
        app.router.routes[0] = late
    else:
        mount.routes.append(late)
    del ran[:]
    assert (await call(app, path))[0] == 503
    assert ran == []


@pytest.mark.anyio
async def test_a_route_replaced_in_place_before_an_exempt_one_is_refused() -> None:
    backend = MemoryBackend()
    app = guarded(
        [
            Route("/x", endpoint("x")),
            Route("/health", exempt(endpoint("health"))),
            Route("/y", endpoint("y")),
        ],
        backend,
    )
    await set_maintenance_mode(True, backend)
    assert (await call(app, "/health")) == (200, b"health")
    routes = middleware_of(app)._routes
    assert routes is not None
    app.router.routes[0] = Route("/health", endpoint("shadow"))  # Starlette now runs this one
    assert routes.current() and not routes.unchanged()  # O(1) sees nothing; identity does
    del ran[:]
    assert (await call(app, "/health"))[0] == 503
    assert ran == []


@pytest.mark.anyio
async def test_a_forced_route_swapped_in_deep_in_a_list_is_forced_while_off() -> None:
    backend = MemoryBackend()
    app = guarded([Route(f"/r{i}", endpoint(f"r{i}")) for i in range(50)], backend)
    assert (await call(app, "/r10"))[0] == 200
    app.router.routes[10] = Route("/r10", force_maintenance_mode_on(endpoint("legacy")))
    assert (await call(app, "/r10"))[0] == 503
    assert (await call(app, "/r11"))[0] == 200


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["mount-middleware", "wrapped-router"])
async def test_a_middleware_inside_a_mount_decides_on_its_own_routes(how: str) -> None:
    # docs/explanation/invariants.md, docs/how-to/web-apps.md: the endpoint the request reaches is
    # found exactly as Starlette's routing finds it (nested Mount, root_path); forced routes answer
    # 503 while maintenance is off.
    backend = MemoryBackend()
    inner = [
        Route("/x", endpoint("inner-x")),
        Route("/legacy", force_maintenance_mode_on(endpoint("inner-legacy"))),
    ]
    if how == "mount-middleware":
        mount = Mount(
            "/sub",
            routes=inner,
            middleware=[Middleware(MaintenanceModeMiddleware, backend=backend)],
        )
    else:
        mount = Mount("/sub", app=MaintenanceModeMiddleware(Router(routes=inner), backend=backend))
    app = Starlette(routes=[mount, Route("/y", endpoint("outer-y"))])
    del ran[:]
    forced_while_off = await call(app, "/sub/legacy")
    await set_maintenance_mode(True, backend)
    blocked_while_on = await call(app, "/sub/x")
    assert (forced_while_off[0], blocked_while_on[0], ran) == (503, 503, [])


@pytest.mark.anyio
@pytest.mark.parametrize("mark", ["forced", "scoped"])
async def test_a_marked_route_replaced_inside_a_mount_loses_its_marks(mark: str) -> None:
    # docs/how-to/web-apps.md: routes changed later are noticed; only forced routes answer
    # 503 while maintenance is off; scopes block only their own routes.
    backend = MemoryBackend()
    old = endpoint("old")
    old = force_maintenance_mode_on(old) if mark == "forced" else maintenance_scope("billing")(old)
    mount = Mount("/m", routes=[Route("/x", old)])
    app = guarded([mount, Route("/y", endpoint("y"))], backend)
    if mark == "scoped":
        await set_maintenance_mode(True, backend, scope="billing")
    assert (await call(app, "/m/x"))[0] == 503  # decided, and kept
    mount.routes[0] = Route("/x", endpoint("new"))  # neither forced nor in billing
    del ran[:]
    assert (await call(app, "/m/x")) == (200, b"new")


# -- 3. one decision: the request path and a drain's question --------------------------------------


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
SAFE = ("GET", "HEAD", "OPTIONS")
ALLOWED = {  # the methods each kind of route serves
    "none": (),
    "get": ("GET", "HEAD"),
    "get-no-head": ("GET",),  # FastAPI's GET routes: a HEAD is the app's 405
    "post": ("POST",),
    "any": METHODS,
    "exempt": METHODS,
    "forced": METHODS,
    "scoped": METHODS,  # @maintenance_scope("billing")
}
HOLDS = (None, "billing", "other")


def property_routes() -> list[Any]:
    get_no_head = Route("/get-no-head", endpoint("get-no-head"))
    assert get_no_head.methods is not None
    get_no_head.methods.discard("HEAD")
    return [
        Route("/get", endpoint("get")),
        get_no_head,
        Route("/post", endpoint("post"), methods=["POST"]),
        Route("/any", endpoint("any"), methods=list(METHODS)),
        Route("/exempt", exempt(endpoint("exempt")), methods=list(METHODS)),
        Route("/forced", force_maintenance_mode_on(endpoint("forced")), methods=list(METHODS)),
        Route("/scoped", maintenance_scope("billing")(endpoint("scoped")), methods=list(METHODS)),
    ]


def refused_by_model(kind: str, method: str, mode: Mode, hold: str | None) -> bool:
    """A hold of ``hold`` in ``mode`` refuses this request: the rules, written by hand."""
    allowed = ALLOWED[kind]
    if method not in allowed and not (method == "HEAD" and "GET" in allowed):
        return False  # the app's own 404 or 405 (a HEAD is decided as the GET)
    if kind == "forced":
        return True
    if hold is not None and not (kind == "scoped" and hold == "billing"):
        return False  # a named hold covers its own scope's routes only
    if kind == "exempt":
        return False
    return not (mode is Mode.READ_ONLY and method in SAFE)


_apps: dict[tuple[str | None, Mode], Starlette] = {}


def held_app(hold: str | None, mode: Mode) -> Starlette:
    """An app under a hold of ``hold`` in ``mode`` (built once per pair)."""
    app = _apps.get((hold, mode))
    if app is None:
        backend = MemoryBackend()
        anyio.run(lambda: set_maintenance_mode(True, backend, scope=hold, mode=mode))
        app = _apps[(hold, mode)] = guarded(property_routes(), backend)
    return app


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(ALLOWED)),
    method=st.sampled_from(METHODS),
    mode=st.sampled_from([Mode.FULL, Mode.READ_ONLY]),
    hold=st.sampled_from(HOLDS),
)
def test_the_request_path_and_a_drain_decide_alike(
    kind: str, method: str, mode: Mode, hold: str | None
) -> None:
    app = held_app(hold, mode)
    path = "/nowhere" if kind == "none" else f"/{kind}"
    del ran[:]
    status, _ = anyio.run(call, app, path, method)
    refused_here = status == 503 and not ran
    scope = http_scope(path, method)
    asked = middleware_of(app).refused((scope, scope["root_path"]), hold, mode)
    expected = refused_by_model(kind, method, mode, hold)
    assert (refused_here, asked) == (expected, expected), (kind, method, mode, hold, status)


@pytest.mark.anyio
async def test_head_is_decided_as_get_on_fastapi_routes() -> None:
    backend = MemoryBackend()
    app = FastAPI()
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)

    @app.get("/items")
    async def items() -> dict[str, str]:
        return {"items": "all"}

    assert (await call(app, "/items", "HEAD"))[0] == 405  # off: the app's own answer
    await set_maintenance_mode(True, backend)
    assert (await call(app, "/items", "HEAD"))[0] == 503
    scope = http_scope("/items", "HEAD")
    middleware = middleware_of(app)
    assert middleware.refused((scope, ""), None, Mode.FULL)
    assert not middleware.refused((scope, ""), None, Mode.READ_ONLY)


def test_decide_is_a_plain_function_of_the_request_routes_and_states() -> None:
    get_no_head = Route("/g", endpoint("g"))
    assert get_no_head.methods is not None
    get_no_head.methods.discard("HEAD")
    app = Starlette(
        routes=[
            get_no_head,
            Route("/e", exempt(endpoint("e"))),
            Route("/f", force_maintenance_mode_on(endpoint("f"))),
            Route("/b/{id}", endpoint("b"), methods=["GET", "POST"]),
        ]
    )
    scope = {**http_scope("/"), "app": app}
    routes = AppRoutes(scope, app, exempt_docs=False)
    rules = PathRules(["/public/*"], [("/b/*", "billing")])
    full, read, billing = (
        hold_of(None, Mode.FULL),
        hold_of(None, Mode.READ_ONLY),
        hold_of("billing", Mode.FULL),
    )

    def verdict(path: str, method: str, states: Any) -> int:
        return decide(http_scope(path, method), routes, rules, states)[0]

    assert verdict("/g", "HEAD", full) == REFUSE  # decided as the GET
    assert verdict("/g", "HEAD", read) == READ
    assert verdict("/g", "POST", full) == APP  # the app's 405
    assert verdict("/missing", "GET", full) == APP
    assert verdict("/e", "POST", full) == APP
    assert verdict("/e", "GET", full) == EXEMPT
    assert verdict("/f", "GET", hold_of("other", Mode.FULL)) == FORCED
    assert verdict("/b/1", "POST", billing) == REFUSE
    assert verdict("/g", "GET", billing) == OFF
    assert verdict("/b/1", "GET", read) == READ
    assert verdict("/b/1", "POST", hold_of("other", Mode.FULL)) == OFF
