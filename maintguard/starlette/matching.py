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

Decisions fail closed: an error while matching gives "an endpoint we do not know", which
maintenance blocks. An index notices routes added, removed or replaced at the end of any
of its lists (their length and last route are checked before each use) and marks set after
the app was learned (:data:`.routes.generation`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from starlette.routing import PARAM_REGEX, Host, Match, Mount, Route, WebSocketRoute, compile_path

from . import routes as marks

__all__ = ["FULL", "NONE", "PARTIAL", "AppRoutes", "route_path"]

NONE, PARTIAL, FULL = 0, 1, 2
_UNKNOWN = (FULL, None)  # an endpoint we could not find: blocked during maintenance
_DOCS_ATTRS = ("docs_url", "redoc_url", "openapi_url", "swagger_ui_oauth2_redirect_url")

# Route kinds whose matching is Starlette's own, by their ``matches``.
_HTTP, _WEBSOCKET, _MOUNT = "http", "websocket", "mount"
_STANDARD: dict[Any, str] = {
    Route.matches: _HTTP,
    WebSocketRoute.matches: _WEBSOCKET,
    Mount.matches: _MOUNT,
}
try:  # FastAPI's routes match as Starlette's do outside an included router
    from fastapi.routing import APIRoute, APIWebSocketRoute

    _STANDARD[APIRoute.matches] = _HTTP
    _STANDARD[APIWebSocketRoute.matches] = _WEBSOCKET
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
        self.last = routes[-1] if routes else None
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
        routes = self.routes
        return len(routes) == self.size and (routes[-1] if routes else None) is self.last

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
            if _STANDARD.get(getattr(type(route), "matches", None)) == _HTTP:  # answers 405
                return PARTIAL, child.get("endpoint")
            return self._enter(route, child, scope)  # unknown: decide on its endpoint
        return self._low_priority(scope)

    def _enter(self, route: Any, child: Any, scope: Any) -> tuple[int, Any]:
        if isinstance(route, Mount | Host):
            inner = _router_of(route)
            if inner is None:  # a mounted ASGI app: the app is the endpoint
                return FULL, child.get("endpoint")
            node = self.children.get(id(route))
            if node is None or node.router is not inner[0] or not node.current():
                node = self.children[id(route)] = _Node(*inner)
            return node.find({**scope, **child})
        if callable(getattr(route, "_match", None)):  # a FastAPI included router
            return _included(route, scope)
        return FULL, child.get("endpoint")

    def _low_priority(self, scope: Any) -> tuple[int, Any]:
        # FastAPI tries its low-priority routes when nothing else matched.
        ask = getattr(self.router, "_match_low_priority", None)
        if not callable(ask):
            return NONE, None
        match, child, route, _ = ask(scope)
        if match is Match.NONE or route is None:
            return NONE, None
        return FULL, child.get("endpoint", getattr(route, "endpoint", None))


def _first_segment(path: str) -> str | None:
    # ``$`` in a route's pattern also matches before a final newline ("/a%0A" is "/a").
    if path.endswith("\n"):
        path = path[:-1]
    if not path.startswith("/"):
        return None
    end = path.find("/", 1)
    return path[1:end] if end > 0 else path[1:]


def _included(router: Any, scope: Any) -> tuple[int, Any]:
    # FastAPI includes an APIRouter as one route that names no endpoint; its own dispatch
    # asks _match(), and so do we.
    match, child, route, context = router._match(scope)
    if match is Match.NONE or route is None:
        return NONE, None
    if callable(getattr(route, "_match", None)):
        return _included(route, scope)
    if isinstance(route, Mount | Host):
        inner = _router_of(route)
        if inner is not None:
            return _Node(*inner).find({**scope, **child})
    endpoint = child.get(
        "endpoint", getattr(getattr(context, "original_route", None), "endpoint", None)
    )
    if match is Match.PARTIAL and isinstance(route, Route):
        return PARTIAL, endpoint
    return FULL, endpoint


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
    """The router inside a Mount or Host and its routes; None for a plain ASGI app."""
    base = getattr(route, "_base_app", None) or route.app
    router = getattr(base, "router", base)
    routes = getattr(router, "routes", None)
    return (router, routes) if isinstance(routes, list) and routes else None


def _top_router(scope: Any, app: Any) -> tuple[Any, list[Any]] | None:
    owner = scope.get("app")
    for candidate in (getattr(owner, "router", None), owner, app):
        routes = getattr(candidate, "routes", None)
        if isinstance(routes, list):
            return candidate, routes
    return None


class AppRoutes:
    """One app's routes: the endpoint a request reaches, and which endpoints are marked."""

    __slots__ = ("_lists", "_root", "docs", "forced", "generation", "scopes")

    def __init__(self, scope: Any, app: Any, *, exempt_docs: bool) -> None:
        top = _top_router(scope, app)
        self._root = None if top is None else _Node(*top)
        self.generation = marks.generation
        self.forced = False  # a route answers 503 while maintenance is off
        self.scopes: set[str] = set()  # scopes named by the app's route decorators
        self._lists: list[tuple[list[Any], int, Any]] = []
        endpoints = []
        docs_paths = _docs_paths(scope.get("app")) if exempt_docs else set()
        self.docs: list[Any] = []  # documentation endpoints (exempt_docs=True)
        if top is not None:
            for route, endpoint in self._walk(top[0], top[1]):
                endpoints.append(endpoint)
                if getattr(route, "path", None) in docs_paths:
                    self.docs.append(endpoint)
        for endpoint in endpoints:
            policy = marks.policy_of(endpoint)
            self.forced = self.forced or policy.forced
            if policy.scope is not None:
                self.scopes.add(policy.scope)

    def current(self) -> bool:
        """False once routes were added or replaced, or an endpoint marked, since learning."""
        if self.generation != marks.generation:
            return False
        for routes, size, last in self._lists:
            if len(routes) != size or (routes[-1] if routes else None) is not last:
                return False
        return True

    def is_docs(self, endpoint: Any) -> bool:
        return any(endpoint is docs for docs in self.docs)

    def find(self, scope: Any) -> tuple[int, Any]:
        """(NONE | PARTIAL | FULL, endpoint) the app would reach; never raises."""
        if self._root is None:  # not a Starlette app: every path is an endpoint
            return _UNKNOWN
        try:
            return self._root.find(scope)
        except Exception:  # a route's own matching failed: fail closed
            return _UNKNOWN

    def _walk(self, router: Any, routes: list[Any]) -> Iterator[tuple[Any, Any]]:
        self._lists.append((routes, len(routes), routes[-1] if routes else None))
        extra = getattr(router, "_low_priority_routes", None)
        if isinstance(extra, list):
            self._lists.append((extra, len(extra), extra[-1] if extra else None))
        for route in [*routes, *(extra or ())]:
            inner: tuple[Any, list[Any]] | None = None
            if isinstance(route, Mount | Host):
                inner = _router_of(route)
            elif callable(getattr(route, "_match", None)):  # a FastAPI included router
                original = getattr(route, "original_router", None)
                found = getattr(original, "routes", None)
                inner = (original, found) if isinstance(found, list) else None
            if inner is not None:
                yield from self._walk(*inner)
            else:
                yield route, getattr(route, "endpoint", getattr(route, "app", None))


def _docs_paths(app: Any) -> set[str]:
    return {url for attr in _DOCS_ATTRS if (url := getattr(app, attr, None))}
