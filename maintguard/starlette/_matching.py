"""Which endpoint Starlette will run for a request, and what one app's routes are marked.

Starlette routes a request to the first route that matches fully (path and method), else to
the first that matches partially (path only: a 405), asking routes one by one. Asking every
route here too would double an app's routing cost, so each list of routes is indexed by the
first path segment that every path a route can match must have (``/r7/{id}`` only matches
paths under ``/r7/``; ``/health`` only ``/health``). For a request, only the routes of its
first segment and the routes without a fixed one (``/{slug}``) are asked, in their order,
with their own ``matches``: the same answer as the router's, without the routes that cannot
match. Routes of other kinds (``Host``, FastAPI's included routers, custom ones) are asked
in their place, as the router asks them; FastAPI's low-priority routes as FastAPI asks them.
In an app whose routes all match on the path and method alone, an answer is kept per
request kind, method and path (a bounded table, emptied when full).

Decisions fail closed: an error while matching gives "an endpoint we do not know", which
maintenance blocks. A router's list is a plain list that anyone may change in place, so
what was learned is checked at two strengths: :meth:`AppRoutes.current` (each request that
finds an endpoint) looks at the length and last route of each list it uses, O(1), which
sees routes appended, inserted, removed or the list replaced; :meth:`AppRoutes.unchanged`
compares every list with the routes learned, by identity (a C loop, well under the cost of
one route's own matching per hundred routes), and is asked before a request passes on the
word of the routes (no route, an exempt one, one not forced or scoped). A route replaced
in place elsewhere in a list can then only make a request refused, never let through.
Marks set on a reached endpoint after learning make the learned routes stale
(:func:`.routes.tell_when_marked`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from starlette.routing import (
    PARAM_REGEX,
    Host,
    Match,
    Mount,
    Route,
    Router,
    WebSocketRoute,
    compile_path,
)

from . import _routes as marks

__all__ = ["FULL", "NONE", "PARTIAL", "AppRoutes", "Found", "route_path"]

NONE, PARTIAL, FULL = 0, 1, 2
Found = tuple[int, Any, marks.RoutePolicy]
_UNKNOWN: Found = (FULL, None, marks.policy_of(None))  # not found: blocked during maintenance
_NO_ROUTE = object()  # the last route of an empty list
_CACHED = 512  # answers kept per app, by request kind, method and path
_NESTING = (Mount, Host)  # routes with routes inside (``Mount | Host`` is built at each use)
_MAX_WRAPPERS = 16  # middleware layers looked through around a mounted app
_DOCS_ATTRS = ("docs_url", "redoc_url", "openapi_url", "swagger_ui_oauth2_redirect_url")

# Route kinds whose matching is Starlette's own, by their ``matches``.
_HTTP, _WEBSOCKET, _MOUNT = "http", "websocket", "mount"
_STANDARD: dict[Any, str] = {
    Route.matches: _HTTP,
    WebSocketRoute.matches: _WEBSOCKET,
    Mount.matches: _MOUNT,
}
_HANDLES_405: set[Any] = {Route.handle}  # a partial match of these answers 405, nothing more
try:  # FastAPI's routes match as Starlette's do outside an included router
    from fastapi.routing import APIRoute, APIWebSocketRoute

    _STANDARD[APIRoute.matches] = _HTTP
    _STANDARD[APIWebSocketRoute.matches] = _WEBSOCKET
    _HANDLES_405.add(APIRoute.handle)
except ImportError:  # pragma: no cover - FastAPI not installed
    pass


def route_path(scope: Any) -> str:
    """The path Starlette routes on: ``path`` less ``root_path`` (``get_route_path``)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


class _Block:
    """A run of routes matched by Starlette's own code, bucketed by fixed first segment."""

    __slots__ = ("buckets", "general")

    def __init__(self) -> None:
        self.buckets: dict[str, list[tuple[int, Any]]] = {}
        self.general: list[tuple[int, Any]] = []  # routes whose first segment varies

    def add(self, position: int, route: Any, segment: str | None) -> None:
        entry = (position, route)
        if segment is None:
            self.general.append(entry)
        else:
            self.buckets.setdefault(segment, []).append(entry)

    def candidates(self, segment: str | None) -> list[tuple[int, Any]]:
        """In route order, every route of this run that could match a path so starting."""
        fixed = self.buckets.get(segment) if segment is not None else None
        if not fixed:
            return self.general
        if not self.general:
            return fixed
        return sorted(fixed + self.general, key=_position)


def _position(entry: tuple[int, Any]) -> int:
    return entry[0]


class _Node:
    """One router's list of routes: indexed runs and routes asked in their place."""

    __slots__ = ("children", "last", "parts", "router", "routes", "size")

    def __init__(self, router: Any, routes: list[Any]) -> None:
        self.router = router
        self.routes = routes
        self.size = len(routes)
        self.last = routes[-1] if routes else _NO_ROUTE
        self.children: dict[int, _Node] = {}
        self.parts: list[_Block | Any] = []
        block: _Block | None = None
        for position, route in enumerate(routes):
            indexed, segment = _segment_of(route)
            if not indexed:
                self.parts.append(route)
                block = None
                continue
            if block is None:
                block = _Block()
                self.parts.append(block)
            block.add(position, route, segment)

    def current(self) -> bool:
        """O(1): the router still has this list, as long, with the same last route."""
        return _same_end(self.router, "routes", self.routes, self.size, self.last)

    def find(self, scope: Any) -> tuple[int, Any]:
        """(outcome, endpoint) for ``scope`` in this router, exactly as it would route."""
        segment = _first_segment(route_path(scope))
        partial = None
        for part in self.parts:
            for _, route in part.candidates(segment) if isinstance(part, _Block) else ((0, part),):
                match, child = route.matches(scope)
                if match is Match.FULL:
                    return self._enter(route, child, scope)
                if match is Match.PARTIAL and partial is None:
                    partial = (route, child)
        if partial is not None:
            route, child = partial
            if getattr(type(route), "handle", None) in _HANDLES_405:  # answers 405 itself
                return PARTIAL, child.get("endpoint")
            return self._enter(route, child, scope)  # unknown: decide on its endpoint
        return self._low_priority(scope)

    def _enter(self, route: Any, child: Any, scope: Any) -> tuple[int, Any]:
        if isinstance(route, _NESTING):
            inner = _router_of(route)
            if inner is None:  # a mounted ASGI app: the app is the endpoint
                return FULL, child.get("endpoint")
            node = self.children.get(id(route))
            if node is None or node.router is not inner[0] or not node.current():
                node = self.children[id(route)] = _Node(*inner)
            return node.find({**scope, **child})
        if callable(getattr(route, "_match", None)):  # a FastAPI included router
            return self._included(route, scope)
        return FULL, child.get("endpoint")

    def _included(self, router: Any, scope: Any) -> tuple[int, Any]:
        # FastAPI includes an APIRouter as one route that names no endpoint; its own
        # dispatch asks _match(), and so do we.
        match, child, route, context = router._match(scope)
        if match is Match.NONE or route is None:
            return NONE, None
        if callable(getattr(route, "_match", None)):
            return self._included(route, scope)
        if isinstance(route, _NESTING):
            return self._enter(route, child, scope)
        endpoint = child.get(
            "endpoint", getattr(getattr(context, "original_route", None), "endpoint", None)
        )
        if match is Match.PARTIAL and getattr(type(route), "handle", None) in _HANDLES_405:
            return PARTIAL, endpoint
        return FULL, endpoint

    def _low_priority(self, scope: Any) -> tuple[int, Any]:
        # FastAPI tries its low-priority routes when nothing else matched.
        ask = getattr(self.router, "_match_low_priority", None)
        if callable(ask):
            match, child, route, _ = ask(scope)
            if match is not Match.NONE and route is not None:
                return FULL, child.get("endpoint", getattr(route, "endpoint", None))
        # Then the router's default: its own 404, or an app of the user's.
        default = getattr(self.router, "default", None)
        if default is None or default == getattr(self.router, "not_found", None):
            return NONE, None
        return FULL, default


def _first_segment(path: str) -> str | None:
    # ``$`` in a route's pattern also matches before a final newline ("/a%0A" is "/a").
    if path.endswith("\n"):
        path = path[:-1]
    if not path.startswith("/"):
        return None
    end = path.find("/", 1)
    return path[1:end] if end > 0 else path[1:]


def _segment_of(route: Any) -> tuple[bool, str | None]:
    """(matched by Starlette's own code, the first segment every matching path has)."""
    matches = getattr(type(route), "matches", None)
    if matches not in _STANDARD:
        return False, None
    template = getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not isinstance(template, str) or not isinstance(regex, re.Pattern):
        return False, None
    if _STANDARD[matches] == _MOUNT:
        template += "/{path:path}"
    try:
        if compile_path(template)[0].pattern != regex.pattern or regex.flags != re.UNICODE:
            return False, None  # a pattern made some other way: ask the route in its place
    except Exception:
        return False, None
    param = PARAM_REGEX.search(template)
    literal = template if param is None else template[: param.start()]
    end = literal.find("/", 1)
    if end > 0:
        return True, literal[1:end]
    return True, (literal[1:] if param is None else None)


def _router_of(route: Mount | Host) -> tuple[Any, list[Any]] | None:
    """The router inside a Mount or Host (looking through middleware wrapping it) and its
    routes; None for a plain ASGI app."""
    return _router_within(getattr(route, "_base_app", None) or route.app)


def _router_within(app: Any) -> tuple[Any, list[Any]] | None:
    """The first router found going in from ``app`` through the ``.app`` of the middleware
    wrapping it, and its routes; None when a plain ASGI app comes first."""
    for _ in range(_MAX_WRAPPERS):
        router = getattr(app, "router", app)
        routes = getattr(router, "routes", None)
        if isinstance(routes, list):
            return router, routes
        inner = getattr(app, "app", None)
        if inner is None or inner is app:
            return None
        app = inner
    return None


def _same_end(holder: Any, attr: str, routes: list[Any], size: int, last: Any) -> bool:
    # The holder still has this very list, as long, ending with the same route: O(1).
    return (
        getattr(holder, attr, None) is routes
        and len(routes) == size
        and (routes[-1] if size else _NO_ROUTE) is last
    )


def _top_router(scope: Any, app: Any) -> tuple[Any, list[Any]] | None:
    # The routes the middleware's own app routes by: inside a Mount, scope["app"] is the
    # outer app, whose routes are not the ones this request will reach.
    found = _router_within(app)
    if found is not None:
        return found
    owner = scope.get("app")
    for candidate in (getattr(owner, "router", None), owner):
        routes = getattr(candidate, "routes", None)
        if isinstance(routes, list):
            return candidate, routes
    return None


class AppRoutes:
    """One app's routes: the endpoint a request reaches, and which endpoints are marked."""

    __slots__ = (
        "__weakref__",
        "_answers",
        "_endpoints",
        "_ends",
        "_lists",
        "_plain",
        "_root",
        "_seen",
        "docs",
        "forced",
        "one",
        "scopes",
        "stale",
    )

    def __init__(self, scope: Any, app: Any, *, exempt_docs: bool) -> None:
        top = _top_router(scope, app) if app is not None else None
        self._root = None if top is None else _Node(*top)
        self.forced = False  # a route answers 503 while maintenance is off
        self.scopes: set[str] = set()  # scopes named by the app's route decorators
        self.docs: list[Any] = []  # FastAPI's own documentation endpoints (exempt_docs=True)
        self.stale = False  # an endpoint reached was marked after learning
        # (holder, attribute, copy) of every list of routes the app routes through, and
        # (holder, attribute, list, length, last route) of the top router's lists.
        self._lists: list[tuple[Any, str, list[Any]]] = []
        self._ends: list[tuple[Any, str, list[Any], int, Any]] = []
        self._endpoints: set[int] = set()  # ids of the endpoints reached (marks tell by id)
        self._seen: set[int] = set()
        self._answers: dict[tuple[Any, ...], Found] | None = None
        if top is not None:
            cacheable = [True]
            for endpoint in self._walk(*top, cacheable):
                self._endpoints.add(id(endpoint))
                self._endpoints.add(id(getattr(endpoint, "__func__", endpoint)))
                policy = marks.policy_of(endpoint)
                self.forced = self.forced or policy.forced
                if policy.scope is not None:
                    self.scopes.add(policy.scope)
            if cacheable[0]:
                self._answers = {}
            for holder, attr, copy in self._lists[:2]:
                if holder is top[0]:
                    routes = getattr(holder, attr)
                    last = routes[-1] if routes else _NO_ROUTE
                    self._ends.append((holder, attr, routes, len(copy), last))
            if exempt_docs:
                paths = _docs_paths(scope.get("app"))
                for route in top[1]:  # FastAPI adds its docs routes to the app's own router
                    endpoint = getattr(route, "endpoint", None)
                    if getattr(route, "path", None) in paths and _is_fastapi_docs(endpoint):
                        self.docs.append(endpoint)
        if app is None:  # nothing learned yet: every check says so
            self.stale = True
        self._plain = not (self.forced or self.stale)  # while off, no look at the routes
        # Most apps route through one Starlette router, none of its routes forced: a
        # request while off then compares ``one[0].routes == one[1]`` (what :meth:`quiet`
        # does), which the middleware does in place. None for every other app.
        self.one: tuple[Any, list[Any]] | None = None
        if self._plain and len(self._lists) == 1:
            holder, _, copy = self._lists[0]
            if isinstance(holder, Router):
                self.one = (holder, copy)
        marks.tell_when_marked(self)

    @classmethod
    def unlearned(cls) -> AppRoutes:
        """Routes not learned yet: never current, so the first request learns them."""
        return cls(None, None, exempt_docs=False)

    def marked(self, target: Any) -> None:
        """``target`` was just marked: stale if it is one of this app's endpoints."""
        if id(target) in self._endpoints:
            self.stale = True
            self._plain = False
            self.one = None

    def quiet(self) -> bool:
        """While maintenance is off, a request needs no look at the routes: none is forced,
        and every list holds the routes learned (named scopes on make requests look anyway)."""
        one = self.one
        if one is None:
            return self._plain and self.unchanged()
        try:
            return bool(one[0].routes == one[1])
        except Exception:  # a route of the user's whose == raises: cannot tell
            return False

    def current(self) -> bool:
        """False once the top router's lists changed length or last route, or a reached
        endpoint was marked: O(1) per list, on each request that finds its endpoint.
        Lists further down are checked so when :meth:`find` enters them."""
        if self.stale:
            return False
        for holder, attr, routes, size, last in self._ends:
            if (
                getattr(holder, attr, None) is not routes
                or len(routes) != size
                or (routes[-1] if size else _NO_ROUTE) is not last
            ):
                return False
        return True

    def unchanged(self) -> bool:
        """Every list holds the very routes learned, in order, and no reached endpoint was
        marked since: asked before a request passes on the word of these routes."""
        if self.stale:
            return False
        try:
            for holder, attr, copy in self._lists:
                if getattr(holder, attr, None) != copy:
                    return False
        except Exception:  # a custom route whose == raises: cannot tell, so changed
            return False
        return True

    def taker(self, path: str) -> tuple[bool, Any]:
        """``(known, route)``: whether these routes are known (learned from a Starlette
        app), and what takes an HTTP request to ``path`` with any method: its endpoint, or
        True when one does but names none; None when no route does. Never raises."""
        root = self._root
        if root is None:
            return False, None
        probe = {
            "type": "http",
            "method": "GET",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "root_path": "",
            "query_string": b"",
            "headers": [],
        }
        try:
            outcome, endpoint = root.find(probe)
        except Exception:  # a route's own matching failed: cannot tell
            return False, None
        if outcome == NONE:
            return True, None
        return True, True if endpoint is None else endpoint

    def is_docs(self, endpoint: Any) -> bool:
        return any(endpoint is docs for docs in self.docs)

    def find(self, scope: Any) -> Found:
        """(NONE | PARTIAL | FULL, endpoint, its marks) the app would reach; never raises."""
        root = self._root
        if root is None:  # not a Starlette app: every path is an endpoint
            return _UNKNOWN
        answers = self._answers
        key: tuple[Any, ...] | None = None
        if answers is not None:
            try:
                key = (
                    scope["type"],
                    scope.get("method"),
                    scope.get("root_path", ""),
                    scope["path"],
                )
                found = answers.get(key)
            except Exception:  # not a key (no server sends such a scope): not kept
                key = found = None
            if found is not None:
                return found
        try:
            outcome, endpoint = root.find(scope)
            found = (outcome, endpoint, marks.policy_of(endpoint))
        except Exception:  # a route's own matching failed: fail closed
            return _UNKNOWN
        if key is not None and answers is not None:
            if len(answers) >= _CACHED:
                answers.clear()
            answers[key] = found
        return found

    def _walk(self, router: Any, routes: list[Any], cacheable: list[bool]) -> Iterator[Any]:
        """Every endpoint reachable through ``router``; each list is watched for changes.
        ``cacheable[0]`` turns false at a route that may match on more than path and method."""
        if id(router) in self._seen:  # a router mounted inside itself
            return
        self._seen.add(id(router))
        self._lists.append((router, "routes", list(routes)))
        extra = getattr(router, "_low_priority_routes", None)
        if isinstance(extra, list):
            self._lists.append((router, "_low_priority_routes", list(extra)))
            if extra:
                cacheable[0] = False
        default = getattr(router, "default", None)
        if default is not None and default != getattr(router, "not_found", None):
            yield default
        for route in [*routes, *(extra or ())]:
            if getattr(type(route), "matches", None) not in _STANDARD:
                cacheable[0] = False  # Host, an included router, a custom kind
            inner: tuple[Any, list[Any]] | None = None
            if isinstance(route, _NESTING):
                inner = _router_of(route)
            elif callable(getattr(route, "_match", None)):  # a FastAPI included router
                original = getattr(route, "original_router", None)
                found = getattr(original, "routes", None)
                inner = (original, found) if isinstance(found, list) else None
            if inner is not None:
                yield from self._walk(*inner, cacheable)
            else:
                yield getattr(route, "endpoint", getattr(route, "app", None))


def _is_fastapi_docs(endpoint: Any) -> bool:
    # The endpoints FastAPI.setup() adds for docs_url, redoc_url and openapi_url.
    return getattr(endpoint, "__module__", None) == "fastapi.applications" and getattr(
        endpoint, "__qualname__", ""
    ).startswith("FastAPI.setup.")


def _docs_paths(app: Any) -> set[str]:
    return {url for attr in _DOCS_ATTRS if (url := getattr(app, attr, None))}
