"""A pure ASGI middleware that answers 503 while maintenance is on."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import logging
import posixpath
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Host, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..backends import Backend, EnvVarBackend
from ..core import ScopeController as Controller
from ..core import coerce, controller, register_default, resolve_backend, store_of, watch
from ..core.controller import refresh_store
from ..exceptions import ConfigurationError, MaintGuardError
from ..state import MaintenanceState, Mode, Phase, check_scope
from . import routes
from .responses import Prepared, Template, choose, prepare

__all__ = ["MaintenanceModeMiddleware"]

T = TypeVar("T")

logger = logging.getLogger("maintguard")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ExemptHandler = Callable[[Request], Awaitable[bool] | bool]
ResponseHandler = Callable[[Request, MaintenanceState], Awaitable[Response] | Response]

_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_FORCED = MaintenanceState(active=True, phase=Phase.ON)
_ENCODED_TRICK = re.compile(rb"%(2e|2f|5c|25)", re.IGNORECASE)
_NONE, _PARTIAL, _FULL = 0, 1, 2


class MaintenanceModeMiddleware:
    """Answer 503 (HTML, problem+json or text, with ``Retry-After``) while maintenance is on.

    >>> from starlette.applications import Starlette
    >>> app = Starlette()
    >>> app.add_middleware(MaintenanceModeMiddleware, exempt_paths=["/health"])

    While maintenance is off a request costs one in-memory check. While it is on, the
    endpoint the request would reach is found with Starlette's own route matching, and the
    request passes if the endpoint is ``@exempt``, its path matches ``exempt_paths``, the
    mode is read-only and the method safe, the client is in ``allow_ips``, it carries the
    bypass secret (header or cookie), ``exempt_handler`` says so, or no route matches.
    """

    def __init__(
        self,
        app: ASGIApp,
        backend: Backend | str | None = None,
        *,
        exempt_paths: Iterable[str] = (),
        exempt_docs: bool = False,
        scopes: Mapping[str, str] | None = None,
        allow_ips: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        bypass_secret: str | None = None,
        bypass_header: str = "x-maintenance-bypass",
        bypass_path: str = "/_maintenance/bypass",
        bypass_cookie: str = "maintguard_bypass",
        bypass_max_age: float = 12 * 3600,
        exempt_handler: ExemptHandler | None = None,
        response_handler: ResponseHandler | None = None,
        redirect_to: str | None = None,
        status_code: int = 503,
        template: Template | None = None,
        close_websockets: bool = False,
    ) -> None:
        self.app = app
        self._given = coerce(backend) if backend is not None else None
        if self._given is not None:
            register_default(self._given)
        if isinstance(exempt_paths, str):
            raise ConfigurationError("exempt_paths takes a list of globs, e.g. ['/health']")
        self._exempt_paths = _globs(exempt_paths, "exempt_paths")
        self._exempt_docs = exempt_docs
        self._scopes = [(_glob(g, "scopes"), check_scope(s)) for g, s in (scopes or {}).items()]
        self._allow = _networks(allow_ips, "allow_ips")
        self._trusted = _networks(trusted_proxies, "trusted_proxies")
        if bypass_secret is not None and (
            not isinstance(bypass_secret, str) or len(bypass_secret) < 16
        ):
            raise ConfigurationError("bypass_secret must be a string of 16 characters or more")
        self._secret = bypass_secret.encode() if bypass_secret else None
        self._bypass_header = bypass_header.lower().encode()
        self._bypass_prefix = bypass_path.rstrip("/") + "/"
        self._bypass_cookie = bypass_cookie
        self._bypass_max_age = int(bypass_max_age)
        for name, handler in (
            ("exempt_handler", exempt_handler),
            ("response_handler", response_handler),
        ):
            if handler is not None and not callable(handler):
                raise ConfigurationError(f"{name} must be callable, not {handler!r}")
        self._exempt_handler = exempt_handler
        self._response_handler = response_handler
        self._redirect_to = redirect_to.encode() if redirect_to else None
        if not isinstance(status_code, int) or not 400 <= status_code <= 599:
            raise ConfigurationError(
                f"status_code must be an error status (400-599), not {status_code!r}"
            )
        self._status = status_code
        self._template = template
        self._close_websockets = close_websockets
        self._ctrl: Controller | None = None
        self._scoped: dict[str, Controller] = {}
        self._stop_watch: Callable[[], None] | None = None
        self._start_lock = threading.Lock()
        self._routes_cache: dict[tuple[Any, ...], tuple[int, Any, routes.RoutePolicy]] = {}
        self._docs: frozenset[Any] | None = None
        self._prepared: dict[Any, tuple[MaintenanceState, Prepared]] = {}

    # -- entry -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            ctrl = self._ctrl or await self._start()
            if (
                ctrl.snapshot.active
                or ctrl.store.named_active
                or routes.forced_routes_exist
                or (self._close_websockets and kind == "websocket")
            ):
                await self._guard(scope, receive, send, ctrl)
            else:
                await self.app(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- lifespan and the watcher ------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def hooked_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._start(at_startup=True)
            elif message["type"] == "lifespan.shutdown":
                self._stop()
            return message

        try:
            await self.app(scope, hooked_receive, send)
        finally:
            self._stop()

    async def _start(self, *, at_startup: bool = False) -> Controller:
        if self._given is not None:
            register_default(self._given)
        try:
            backend = self._given or resolve_backend()
        except MaintGuardError:
            if at_startup:
                raise
            logger.exception("maintguard: no usable backend; reading MAINTGUARD_MODE instead")
            backend = EnvVarBackend()
        ctrl = controller(backend, None)
        # Named scopes must be read (and then watched) before any request asks for them;
        # holding their controllers keeps them alive (and watched) while the app runs.
        names = {name for _, name in self._scopes} | routes.known_scopes
        scoped = {name: controller(backend, name) for name in names if name is not None}
        try:
            await refresh_store(store_of(backend), [ctrl, *scoped.values()], may_raise=True)
        except MaintGuardError:
            if at_startup:
                raise  # seen at start-up, where it can be fixed
            logger.exception("maintguard: the maintenance state could not be read")
        with self._start_lock:
            if self._ctrl is None:
                self._stop_watch = watch(backend)
                self._scoped = scoped
                self._ctrl = ctrl
        return self._ctrl

    def _scope_ctrl(self, ctrl: Controller, name: str) -> Controller:
        found = self._scoped.get(name)
        if found is None:  # a scope first seen now: keep it (and so its state) from now on
            found = self._scoped[name] = controller(ctrl.backend, name)
        return found

    def _stop(self) -> None:
        with self._start_lock:
            stop, self._stop_watch, self._ctrl = self._stop_watch, None, None
        if stop is not None:
            stop()

    # -- the decision ----------------------------------------------------------------------

    async def _guard(self, scope: Scope, receive: Receive, send: Send, ctrl: Controller) -> None:
        path = _route_path(scope)
        method = scope.get("method", "GET")
        if self._secret is not None and path.startswith(self._bypass_prefix):
            candidate = path[len(self._bypass_prefix) :].encode()
            if scope["type"] == "http" and hmac.compare_digest(candidate, self._secret):
                await self._grant_bypass(scope, send)
                return
        outcome, endpoint, policy = self._resolve(scope, "GET" if method == "HEAD" else method)
        if outcome != _FULL:  # no route: the app answers its own 404 or 405
            await self.app(scope, receive, send)
            return
        name = policy.scope or self._scope_for(path)
        state = ctrl.snapshot if name is None else self._scope_ctrl(ctrl, name).snapshot
        if policy.forced:
            state = state if state.active else _FORCED
        elif not state.active or await self._lets_through(
            scope, path, method, state, endpoint, policy
        ):
            if (
                self._close_websockets
                and scope["type"] == "websocket"
                and not state.active
                and not await self._lets_through(scope, path, method, _FORCED, endpoint, policy)
            ):
                await self._watched_websocket(scope, receive, send, ctrl, name)
            else:
                await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._refuse_websocket(scope, receive, send, state, name)
        else:
            await self._respond(
                scope, receive, send, state, name if not policy.forced else "forced"
            )

    async def _lets_through(
        self,
        scope: Scope,
        path: str,
        method: str,
        state: MaintenanceState,
        endpoint: Any,
        policy: routes.RoutePolicy,
    ) -> bool:
        if policy.exempt or endpoint in self._docs_endpoints(scope):
            return True
        clean = _clean(scope, path) if self._exempt_paths else None
        if clean is not None and any(g.match(clean) for g in self._exempt_paths):
            return True
        if state.mode is Mode.READ_ONLY and method in _SAFE:
            return True
        ip = self._client_ip(scope) if self._allow else None
        if ip is not None and any(ip in net for net in self._allow):
            return True
        if self._secret is not None and self._has_bypass(scope):
            return True
        if self._exempt_handler is not None:
            try:
                return bool(await _maybe_await(self._exempt_handler(Request(scope))))
            except Exception:
                logger.exception("maintguard: exempt_handler failed; the request is refused")
        return False

    # -- route matching --------------------------------------------------------------------

    def _resolve(self, scope: Scope, method: str) -> tuple[int, Any, routes.RoutePolicy]:
        key = (
            scope["type"],
            method,
            scope.get("root_path", ""),
            scope["path"],
            _header(scope, b"host"),
        )
        found = self._routes_cache.get(key)
        if found is None:
            app_routes = _routes_of(scope, self.app)
            if app_routes is None:  # not a Starlette app: every path is an endpoint
                found = (_FULL, None, routes.policy_of(None))
            else:
                outcome, endpoint = _match(app_routes, {**scope, "method": method})
                found = (outcome, endpoint, routes.policy_of(endpoint))
            if len(self._routes_cache) >= 4096:
                self._routes_cache.clear()
            self._routes_cache[key] = found
        return found

    def _docs_endpoints(self, scope: Scope) -> frozenset[Any]:
        if self._docs is None:
            app = scope.get("app")
            urls = set()
            if self._exempt_docs and app is not None:
                for attr in (
                    "docs_url",
                    "redoc_url",
                    "openapi_url",
                    "swagger_ui_oauth2_redirect_url",
                ):
                    if url := getattr(app, attr, None):
                        urls.add(url)
            found = set()
            for route in _routes_of(scope, self.app) or []:
                if getattr(route, "path", None) in urls and hasattr(route, "endpoint"):
                    found.add(route.endpoint)
            self._docs = frozenset(found)
        return self._docs

    def _scope_for(self, path: str) -> str | None:
        if self._scopes:
            normal = posixpath.normpath(path) if path else "/"
            for glob, name in self._scopes:
                if glob.match(normal):
                    return name
        return None

    # -- who may pass ------------------------------------------------------------------------

    def _client_ip(self, scope: Scope) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        client = scope.get("client")
        peer = _ip(client[0]) if client else None
        if peer is None or not any(peer in net for net in self._trusted):
            return peer
        # The peer is a proxy we trust: walk the chain from the nearest hop outwards.
        chain = _forwarded_for(scope)
        for hop in reversed(chain):
            ip = _ip(hop)
            if ip is None:
                return None
            if not any(ip in net for net in self._trusted):
                return ip
        return peer if not chain else _ip(chain[0])

    def _has_bypass(self, scope: Scope) -> bool:
        assert self._secret is not None
        token = _header(scope, self._bypass_header)
        if token is not None and hmac.compare_digest(token, self._secret):
            return True
        cookie = _cookie(scope, self._bypass_cookie)
        if cookie is None or "." not in cookie:
            return False
        expires, _, signature = cookie.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, self._sign(expires))

    def _sign(self, expires: str) -> str:
        assert self._secret is not None
        return hmac.new(
            self._secret, f"maintguard-bypass:{expires}".encode(), hashlib.sha256
        ).hexdigest()

    async def _grant_bypass(self, scope: Scope, send: Send) -> None:
        expires = str(int(time.time()) + self._bypass_max_age)
        secure = "; Secure" if scope.get("scheme") in ("https", "wss") else ""
        root = scope.get("root_path", "") or ""
        cookie = (
            f"{self._bypass_cookie}={expires}.{self._sign(expires)}; Path={root or '/'}; "
            f"Max-Age={self._bypass_max_age}; HttpOnly; SameSite=Lax{secure}"
        )
        headers = [
            (b"location", (root + "/").encode()),
            (b"set-cookie", cookie.encode()),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    # -- answers ---------------------------------------------------------------------------------

    def _prepared_for(self, key: Any, state: MaintenanceState) -> Prepared:
        cached = self._prepared.get(key)
        if cached is None or cached[0] is not state:
            cached = (state, prepare(state, self._status, self._template))
            self._prepared[key] = cached
        return cached[1]

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, state: MaintenanceState, key: Any
    ) -> None:
        if self._response_handler is not None:
            try:
                request = Request(scope, receive)
                response = await _maybe_await(self._response_handler(request, state))
                await response(scope, receive, send)
                return
            except Exception:
                logger.exception("maintguard: response_handler failed; sending the default page")
        prepared = self._prepared_for(key, state)
        if self._redirect_to is not None:
            headers = [(b"location", self._redirect_to), (b"content-length", b"0")]
            headers += [h for h in prepared.text[0] if h[0] in (b"retry-after", b"cache-control")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers, body = prepared.pick(choose(_header(scope, b"accept") or b""))
        await send({"type": "http.response.start", "status": prepared.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    async def _refuse_websocket(
        self, scope: Scope, receive: Receive, send: Send, state: MaintenanceState, key: Any
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            headers, body = self._prepared_for(key, state).pick("text")
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": self._status,
                    "headers": headers,
                }
            )
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1013, "reason": "maintenance"})

    async def _watched_websocket(
        self, scope: Scope, receive: Receive, send: Send, ctrl: Controller, name: str | None
    ) -> None:
        # Close an open session with 1012 (service restart) when maintenance begins.
        watched = ctrl if name is None else self._scope_ctrl(ctrl, name)
        async with anyio.create_task_group() as tg:

            async def close_when_maintenance_begins() -> None:
                while not watched.snapshot.active:  # noqa: ASYNC110 - set from another thread
                    await anyio.sleep(0.2)
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await send({"type": "websocket.close", "code": 1012, "reason": "maintenance"})

            tg.start_soon(close_when_maintenance_begins)
            await self.app(scope, receive, send)
            tg.cancel_scope.cancel()


# -- helpers ------------------------------------------------------------------------------------


async def _maybe_await(value: Awaitable[T] | T) -> T:
    if isinstance(value, Awaitable):
        return await value
    return value


def _glob(pattern: str, option: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigurationError(f"{option}: {pattern!r} must be a path glob starting with '/'")
    return re.compile(fnmatch.translate(pattern))


def _globs(patterns: Iterable[str], option: str) -> list[re.Pattern[str]]:
    return [_glob(p, option) for p in patterns]


def _networks(values: Iterable[str], option: str) -> list[Network]:
    if isinstance(values, str):
        raise ConfigurationError(
            f"{option} takes a list of addresses or networks, e.g. ['10.0.0.0/8']"
        )
    try:
        return [ipaddress.ip_network(v, strict=False) for v in values]
    except ValueError as exc:
        raise ConfigurationError(f"{option}: {exc}") from None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip().strip('"')
    if value.startswith("["):  # [v6]:port
        value = value[1 : value.find("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":")[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _forwarded_for(scope: Scope) -> list[str]:
    forwarded = _header(scope, b"forwarded")
    if forwarded is not None:
        hops = []
        for element in forwarded.decode("latin-1").split(","):
            for pair in element.split(";"):
                name, _, value = pair.strip().partition("=")
                if name.lower() == "for":
                    hops.append(value)
        return hops
    xff = _header(scope, b"x-forwarded-for")
    return [hop.strip() for hop in xff.decode("latin-1").split(",")] if xff else []


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == name:
                    return str(v)
    return None


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _clean(scope: Scope, path: str) -> str | None:
    # Path globs exempt only plain paths: no dot segments, doubled or encoded separators.
    raw = scope.get("raw_path")
    if raw is not None and _ENCODED_TRICK.search(raw):
        return None
    if "//" in path or "\\" in path or "%" in path or "\x00" in path:
        return None
    if any(segment in (".", "..") for segment in path.split("/")):
        return None
    return path


def _routes_of(scope: Scope, app: Any) -> list[Any] | None:
    owner = scope.get("app")
    for candidate in (getattr(owner, "router", None), owner, app):
        found = getattr(candidate, "routes", None)
        if isinstance(found, list):
            return found
    return None


def _match(app_routes: list[Any], scope: Scope) -> tuple[int, Any]:
    partial = None
    for route in app_routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            if isinstance(route, Mount | Host) and route.routes:
                return _match(route.routes, {**scope, **child})
            if "endpoint" not in child and callable(getattr(route, "_match", None)):
                return _match_included(route, scope)
            return _FULL, child.get("endpoint")
        if match is Match.PARTIAL and partial is None:
            partial = child.get("endpoint")
    if partial is not None:
        return _PARTIAL, partial
    return _NONE, None


def _match_included(router: Any, scope: Scope) -> tuple[int, Any]:
    # FastAPI includes an APIRouter as one route whose matches() names no endpoint; its
    # own dispatch asks _match(). Should that change, fail closed: an unknown endpoint.
    try:
        match, child, route, context = router._match(scope)
    except Exception:  # pragma: no cover - a FastAPI we do not know
        return _FULL, None
    if match is Match.NONE or route is None:
        return _NONE, None
    if callable(getattr(route, "_match", None)):
        return _match_included(route, scope)
    if isinstance(route, Mount | Host) and route.routes:
        return _match(route.routes, {**scope, **child})
    endpoint = child.get(
        "endpoint", getattr(getattr(context, "original_route", None), "endpoint", None)
    )
    return (_FULL if match is Match.FULL else _PARTIAL), endpoint
