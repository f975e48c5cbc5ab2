"""A pure ASGI middleware that answers 503 while maintenance is on."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import anyio
from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._cordons import not_ready
from .._core import ScopeController as Controller
from .._core import (
    Store,
    coerce,
    controller,
    presence,
    register_default,
    resolve_backend,
    store_of,
    watch,
)
from .._core.changes import wait_until
from .._core.controller import refresh_store
from .._core.defaults import warn_two_stores
from .._core.identity import HOST
from .._core.inflight import Work, current_work, new_key
from .._core.tally import counts
from .._options import named_options
from .._state import MaintenanceState, Mode, check_scope
from .._state_json import as_json, url
from ..backends import Backend, EnvVarBackend
from ..exceptions import ConfigurationError, MaintGuardError
from ._access import Bypass, ClientRule
from ._announce import Announcer, announce_name
from ._decide import (
    FORCED,
    OFF,
    READ,
    REFUSE,
    PathRules,
    States,
    decide,
    hold_of,
)
from ._endpoints import OwnEndpoint
from ._handlers import (
    ExemptHandler,
    ResponseHandler,
    check_exempt_handler,
    check_response_handler,
    exempt_by,
    respond_with,
)
from ._matching import AppRoutes, route_path
from ._responses import Prepared, Template, check_template, counting_second, prepare

__all__ = ["MaintenanceModeMiddleware"]

logger = logging.getLogger("maintguard")
_FIRST_READ_LIMIT = 1.0  # seconds a first request waits for the first read (no lifespan)
_LEAVE_LIMIT = 3.0  # seconds a shutdown waits to remove the presence record (a dead store)

_FULL_HOLD = hold_of(None, Mode.FULL)  # would maintenance, when it begins, refuse this?
_HEADER_VALUE = re.compile(r"[\x21-\x7e]+")


class MaintenanceModeMiddleware:
    """Answer 503 (HTML, problem+json or text, with ``Retry-After``) while maintenance is on.

    >>> from starlette.applications import Starlette
    >>> app = Starlette()
    >>> app.add_middleware(MaintenanceModeMiddleware, exempt_paths=["/health"])

    While maintenance is off a request costs one in-memory check. While it is on, the
    endpoint the request would reach is found as Starlette's own routing finds it, and the
    request passes if the endpoint is ``@exempt``, its path matches ``exempt_paths``, the
    mode is read-only and the method safe, the client is in ``allow_ips``, it carries the
    bypass secret (header or cookie), ``exempt_handler`` says so, or no route matches.
    Every option is checked here; at request time nothing it does answers 500.

    ``announce_header`` (a header name such as ``"x-maintenance-window"``): while a planned
    window is announced (within its ``announce`` before the start:
    :attr:`~maintguard.Phase.ANNOUNCED` unless maintenance is on already) or in force, every
    response carries ``<name>: <start>/<end>``, the window as an ISO 8601 interval in UTC,
    the maintenance responses too. A request let through while maintenance is off is told of
    the global scope's windows (its state read once, from memory); a request decided in
    named scopes, of theirs too.

    ``status_path`` (a path such as ``"/_maintenance/status"``): ``GET`` or ``HEAD`` there
    answers 200 with the state as JSON (``maintguard status --json``'s object, and
    ``scopes``, one per named scope the app knows), during maintenance too; hold records,
    the store's URL and who planned a window only for a client ``allow_ips`` or the bypass
    secret lets through. Any other method: 405. A route of the app at that path is refused
    when the middleware is built, or when the routes are learned at start-up.

    ``readiness_path`` (a path such as ``"/_maintenance/ready"``, for a load balancer's or
    Kubernetes' readiness probe): ``GET`` or ``HEAD`` there answers 200 ``{"ready": true}``
    while this instance should take traffic, else 503 ``{"ready": false, "cause": ...}``:
    ``"cordoned"`` while this host is cordoned (:func:`maintguard.cordon`; the host is
    ``MAINTGUARD_HOST``, or the machine's host name), ``"maintenance"`` during maintenance
    of the global scope when ``ready_during_maintenance=False`` (by default an instance
    stays ready during maintenance: it serves the maintenance page). Checked as
    ``status_path`` is; the two need paths of their own.
    """

    @named_options
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
        forwarded_header: str = "x-forwarded-for",
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
        announce_header: str | None = None,
        status_path: str | None = None,
        readiness_path: str | None = None,
        ready_during_maintenance: bool = True,
    ) -> None:
        self.app = app
        self._given = coerce(backend) if backend is not None else None
        if self._given is not None:
            store_of(self._given)  # a conflict with another object for this store: now
            register_default(self._given)
        if isinstance(exempt_paths, str):
            raise ConfigurationError("exempt_paths takes a list of globs, e.g. ['/health']")
        exempt_paths = list(exempt_paths)
        self._exempt_docs = _flag(exempt_docs, "exempt_docs")
        if scopes is not None and not isinstance(scopes, Mapping):
            raise ConfigurationError("scopes takes a mapping of path globs to scope names")
        self._rules = PathRules(
            exempt_paths, [(g, _scope_name(name)) for g, name in (scopes or {}).items()]
        )
        self._clients = ClientRule(allow_ips, trusted_proxies, forwarded_header)
        self._bypass = Bypass(
            bypass_secret,
            header=bypass_header,
            path=bypass_path,
            cookie=bypass_cookie,
            max_age=bypass_max_age,
        )
        self._exempt_handler = check_exempt_handler(exempt_handler)
        self._response_handler = check_response_handler(response_handler)
        # Some client may be let through while maintenance is on.
        self._by_client = (
            self._clients.enabled or self._bypass.enabled or self._exempt_handler is not None
        )
        self._redirect_to = _redirect_target(redirect_to)
        if isinstance(status_code, bool) or not isinstance(status_code, int):
            raise ConfigurationError(f"status_code must be an int such as 503, not {status_code!r}")
        if not 400 <= status_code <= 599:
            raise ConfigurationError(
                f"status_code must be an error status (400-599), not {status_code!r}"
            )
        self._status = status_code
        self._template = check_template(template)
        self._close_websockets = _flag(close_websockets, "close_websockets")
        name = announce_name(announce_header)
        self._announcer = None if name is None else Announcer(app, name)
        # What a request let through while maintenance is off runs: the app itself, or
        # with a header to announce, the app behind a look at the global scope's state;
        # with a status or readiness path, behind a look at the request's path first (so
        # without one, the off path has nothing more to do).
        self._pass: ASGIApp = self._announcer or app
        status = OwnEndpoint.of(
            "status_path", status_path, exempt_paths=exempt_paths, bypass=self._bypass
        )
        readiness = OwnEndpoint.of(
            "readiness_path",
            readiness_path,
            exempt_paths=exempt_paths,
            bypass=self._bypass,
            taken=() if status is None else (status,),
        )
        self._ready_during_maintenance = _flag(ready_during_maintenance, "ready_during_maintenance")
        if readiness is None and not self._ready_during_maintenance:
            raise ConfigurationError(
                "ready_during_maintenance=False needs a readiness_path (such as "
                "'/_maintenance/ready') for the readiness probe to answer 503 during maintenance"
            )
        self._endpoints = tuple(e for e in (status, readiness) if e is not None)
        for endpoint in self._endpoints:
            problem = endpoint.collision(AppRoutes({}, app, exempt_docs=False))
            if problem is not None:
                raise ConfigurationError(problem)
        if self._endpoints:
            self._behind_own = self._pass
            self._pass = self._own_or_pass
        self._ctrl: Controller | None = None  # the global scope's, while started
        self._root: Controller | None = None  # the same, kept once stopped (for requests)
        self._work = Work()  # the store's in-flight work, and this middleware's table in it
        self._live: dict[int, tuple[Scope, str]] = {}
        self._drains = self._work.drains  # drains waiting (woken when a request ends)
        self._scoped: dict[str, Controller] = {}
        self._stop_watch: Callable[[], None] | None = None
        self._start_lock = threading.Lock()
        self._routes = AppRoutes.unlearned()  # learned at start-up, again when they change
        self._prepared: dict[Any, tuple[MaintenanceState, Prepared, int | None]] = {}

    # -- entry -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The common case, kept short: an HTTP request while maintenance is off. It counts
        # as in-flight work (for drains) from before the look until the app returns: after
        # its last body message, and any background task run after it. `active` is kept by
        # every change, and by the watcher at every boundary in time (an `until`, a lease,
        # a planned window's start and end), so it is exact when it says off; when it says
        # on, the general path looks at the snapshot. An app with forced routes, or whose
        # routes changed since they were learned, looks at them too.
        ctrl = self._ctrl
        if ctrl is not None and scope["type"] == "http":
            live = self._live
            key = new_key()
            # The root path as this middleware sees it: routing rewrites it on the way in.
            live[key] = (scope, scope.get("root_path", ""))
            routes = self._routes
            one = routes.one  # AppRoutes.quiet(), in place for most apps: a list compared
            try:
                off = not (ctrl.active or ctrl.store.named_active) and (
                    one[0].routes == one[1] if one is not None else routes.quiet()
                )
            except Exception:  # a route of the user's whose == raises: look closer
                off = False
            if off:
                token = current_work.set((key, current_work.get()))  # see _general
                try:
                    await self._pass(scope, receive, send)
                finally:
                    current_work.reset(token)
                    live.pop(key, None)  # (a drain may hold it back while its holder waits)
                    if self._drains:
                        self._work.wake()
                return
            await self._general(scope, receive, send, key)  # counted already
        else:
            await self._general(scope, receive, send)

    async def _general(self, scope: Scope, receive: Receive, send: Send, key: int = 0) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            ctrl = self._ctrl or await self._start(scope)
            own = self._own_endpoint(scope) if self._endpoints and kind == "http" else None
            if own is not None:
                if key:
                    self._end(key)  # counted by the entry: the answer is no app's work
                await self._answer(own, scope, send, ctrl)
                return
            live = self._live
            if not key:
                key = new_key()
                live[key] = (scope, scope.get("root_path", ""))  # counted, then the look
            app = self._pass
            if (
                ctrl.active
                or ctrl.store.named_active
                or not self._routes.quiet()
                or (self._close_websockets and kind == "websocket")
            ):
                passed = None
                try:
                    passed = await self._guard(scope, receive, send, ctrl, key)
                finally:
                    if passed is None:  # answered here, or let through while on
                        self._end(key)
                if passed is None:
                    return
                app = passed
            # Passed while maintenance is off for it: in flight until the app returns (an
            # HTTP request's last body message and background tasks, a WebSocket session's
            # close). The app runs inside `key` (core.inflight.current_work): a drained hold
            # entered there, or in a thread or task it starts, does not wait for its request.
            token = current_work.set((key, current_work.get()))
            try:
                await app(scope, receive, send)
            finally:
                current_work.reset(token)
                live.pop(key, None)
                if self._drains:
                    self._work.wake()
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # -- lifespan and the watcher ------------------------------------------------------------

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Start once the app's own startup has run (it may configure() the backend). When
        # the state cannot be read, fail the startup with the reason, then raise as
        # Starlette's router does: the app's lifespan unwinds and the server exits.
        failed = False

        async def hooked_send(message: Message) -> None:
            nonlocal failed
            kind = message["type"]
            if failed:
                return  # the app reporting our failure again: ours is out already
            if kind == "lifespan.startup.complete":
                try:
                    await self._start(scope, at_startup=True)
                except MaintGuardError as exc:
                    failed = True
                    await _fail_startup(send, exc)
                    raise
            elif kind.startswith("lifespan.shutdown."):
                await self._shut_down()
            await send(message)

        asked = False

        async def hooked_receive() -> Message:
            nonlocal asked
            asked = True
            return await receive()

        try:
            try:
                await self.app(scope, hooked_receive, hooked_send)
            except Exception:
                if asked or failed:
                    raise
                # The app does not speak lifespan (it raised at once, as the ASGI spec asks
                # of such apps): speak it here, so an unreadable state still fails start-up.
                await self._own_lifespan(scope, receive, send)
        finally:
            self._stop()

    async def _own_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._start(scope, at_startup=True)
                except MaintGuardError as exc:
                    await _fail_startup(send, exc)
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shut_down()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start(self, scope: Scope, *, at_startup: bool = False) -> Controller:
        if self._given is not None:
            register_default(self._given)
        try:
            backend = self._given or resolve_backend()
        except MaintGuardError:
            if at_startup:
                raise
            logger.exception("maintguard: no usable backend; reading MAINTGUARD_MODE instead")
            backend = EnvVarBackend()
        if self._given is not None:
            self._warn_if_not_default(self._given)
        ctrl = controller(backend, None)
        routes = self._learn(scope, ctrl, at_startup=at_startup)
        # Named scopes must be read (and then watched) before any request asks for them;
        # holding their controllers keeps them alive (and watched) while the app runs.
        names = {name for _, name in self._rules.scoped} | routes.scopes
        scoped = {name: controller(backend, name) for name in names}
        store = store_of(backend)
        # Without a lifespan the first request waits for this: not for long.
        with anyio.move_on_after(None if at_startup else _FIRST_READ_LIMIT) as waiting:
            try:  # recorded before the first look: a drain elsewhere then counts our requests
                await presence.join(store)
            except Exception as exc:
                store.presence_failing = True  # said here: the watcher's retries stay quiet
                # Reading may still work (a missing file is "off"), so the app starts and
                # serves: say what an unwritable store means, and its usual cause.
                logger.warning(
                    "maintguard: this app cannot write its maintenance store, %s (%s). It "
                    "serves and follows what is stored there ('off' while nothing is), but "
                    "holds and `maintguard on` on this store fail the same way here, drained "
                    "holds in other processes do not wait for this process's requests, and "
                    "maintenance switched on at any other path never reaches this app. The "
                    "usual cause is a wrong path or a directory not created yet: check that "
                    "the app and your operators name the same store.",
                    backend.describe(),
                    exc,
                )
            # A read that fails fails the start-up, where it can be fixed; without a
            # lifespan it is logged and on_error decides from this very request on.
            await refresh_store(store, [ctrl, *scoped.values()], may_raise=at_startup)
        if waiting.cancelled_caught:  # the watcher goes on reading; on_error meanwhile
            late = TimeoutError(f"no answer within {_FIRST_READ_LIMIT:g}s")
            for waited in (ctrl, *scoped.values()):
                waited.read_failed(late, may_raise=False)
        with self._start_lock:
            if self._ctrl is None:
                self._work = store.work
                self._live = store.work.table(self)
                self._drains = store.work.drains
                self._stop_watch = stop = watch(backend)
                weakref.finalize(self, stop)  # started without a lifespan: stops when freed
                self._scoped.update(scoped)
                self._root = self._ctrl = ctrl
                if self._announcer is not None:
                    self._announcer.root = ctrl
        return self._ctrl

    def _warn_if_not_default(self, backend: Backend) -> None:
        try:
            default = resolve_backend()
        except MaintGuardError:
            return
        if store_of(default) is not store_of(backend):
            warn_two_stores(backend, default, "configure() chose it")

    def _learn(self, scope: Scope, ctrl: Controller, *, at_startup: bool = False) -> AppRoutes:
        routes = AppRoutes(scope, self.app, exempt_docs=self._exempt_docs)
        for name in routes.scopes:
            self._scope_ctrl(ctrl, name)
        self._routes = routes
        for endpoint in self._endpoints:
            self._check_own_path(endpoint, routes, at_startup)
        return routes

    def _check_own_path(self, endpoint: OwnEndpoint, routes: AppRoutes, at_startup: bool) -> None:
        """A route of the app at a status or readiness path fails the start-up (said
        there); found later (no lifespan, routes added since), it is logged once, and the
        endpoint goes on answering there."""
        if at_startup:
            when = (
                " (found at start-up, when the app's routes were learned: when the "
                "middleware was built, they were not known or had no route there yet)"
            )
            problem = endpoint.collision(routes, when=when)
            if problem is not None:
                raise ConfigurationError(problem)
        elif not endpoint.warned:
            problem = endpoint.collision(routes, when=", and it does from now on")
            if problem is not None:
                endpoint.warned = True
                logger.error("maintguard: %s", problem)

    def _scope_ctrl(self, ctrl: Controller, name: str) -> Controller:
        found = self._scoped.get(name)
        if found is None or found.backend is not ctrl.backend:
            # A scope first seen now: keep it (and so its state) from now on.
            found = self._scoped[name] = controller(ctrl.backend, name)
        return found

    def _stop(self) -> Store | None:
        """Stop watching; the store this middleware watched until now, if any."""
        with self._start_lock:
            stop, self._stop_watch, ctrl, self._ctrl = self._stop_watch, None, self._ctrl, None
        if stop is None:
            return None
        stop()
        return ctrl.store if ctrl is not None else None

    async def _shut_down(self) -> None:
        # Done before the server hears that shutdown is complete: uvicorn then re-raises
        # the SIGTERM it caught, so neither the watcher nor atexit would remove this
        # process's presence record, and the next drain would wait for its lease.
        store = self._stop()
        if store is not None:
            await presence.leave_at_shutdown(store, _LEAVE_LIMIT)

    # -- the decision ----------------------------------------------------------------------

    def _end(self, key: int) -> None:
        """Request ``key`` is no longer in flight (more than once is fine)."""
        if self._live.pop(key, None) is not None and self._drains:
            self._work.wake()

    async def _guard(
        self, scope: Scope, receive: Receive, send: Send, ctrl: Controller, key: int
    ) -> ASGIApp | None:
        """Answer or pass the request; return the app to run when it passes because
        maintenance is off for it (then it stays in flight), else None. A request answered
        here, or let through while maintenance is on (no hold refuses it), stops counting
        as soon as that is decided."""
        routes = self._routes
        if not routes.current():
            routes = self._learn(scope, ctrl)
        websocket = scope["type"] == "websocket"
        if not websocket and self._bypass.enabled and self._bypass.is_grant_path(route_path(scope)):
            self._end(key)
            await self._bypass.grant(scope, send, time.time())
            return None
        verdict, shown, state, names = decide(scope, routes, self._rules, self)
        if (verdict < REFUSE or not ctrl.active) and not routes.unchanged():
            # Decided on the word of routes that changed since (let through; or refused by a
            # route's own mark, forced or scoped, while the global scope is off): learned
            # again, decided again (a drain's question would wait instead: _would_refuse).
            routes = self._learn(scope, ctrl)
            verdict, shown, state, names = decide(scope, routes, self._rules, self)
        if verdict == OFF:
            if websocket and self._close_websockets:
                # Closed when maintenance begins, unless it would let the session through.
                verdict = self._would_refuse(scope, routes, _FULL_HOLD)
                if verdict == FORCED or (
                    verdict == REFUSE and not (self._by_client and await self._client_passes(scope))
                ):
                    watched = self._watched(ctrl, names)
                    return functools.partial(self._watched_websocket, watched=watched)
            return self.app if self._announcer is None else self._announcer.app_for(scope, state)
        if verdict == READ:  # stays in flight: a full hold would refuse it
            return self.app if self._announcer is None else self._announcer.app_for(scope, state)
        self._end(key)
        if verdict < REFUSE or (
            verdict == REFUSE and self._by_client and await self._client_passes(scope)
        ):
            if self._announcer is not None:
                send = self._announcer.send(send, state)
            await self.app(scope, receive, send)
        else:
            if counts.on:  # metrics: the scope the response shows ("" for the global one)
                counts.request_refused(state.scope)
            if websocket:
                await self._refuse_websocket(scope, receive, send, state, shown)
            else:
                await self._respond(scope, receive, send, state, shown)
        return None

    def _would_refuse(self, scope: Scope, routes: AppRoutes, states: States) -> int:
        """The verdict of :func:`decide` under ``states`` that are not in force (a hold's),
        REFUSE when it would let the request through on routes changed since learned."""
        verdict = decide(scope, routes, self._rules, states)[0]
        if verdict < REFUSE and not routes.unchanged():
            return REFUSE  # cannot tell now: as refused (a drain waits for it)
        return verdict

    async def _client_passes(self, scope: Scope) -> bool:
        """A request maintenance refuses goes through all the same: its client's address
        is in ``allow_ips``, it carries the bypass secret, or ``exempt_handler`` says so."""
        if self._trusted_client(scope):
            return True
        if self._exempt_handler is not None:
            request = Request(scope) if scope["type"] == "http" else HTTPConnection(scope)
            return await exempt_by(self._exempt_handler, request)  # type: ignore[arg-type]
        return False

    def _trusted_client(self, scope: Scope) -> bool:
        """The client passes maintenance by who it is: its address is in ``allow_ips``,
        or it carries the bypass secret (what the status endpoint shows holds to)."""
        if self._clients.enabled and self._clients.allows(scope):
            return True
        return self._bypass.enabled and self._bypass.carried(scope, time.time())

    def state_of(self, names: Sequence[str]) -> tuple[str | None, MaintenanceState]:
        """The state in force for a request in the named scopes ``names`` (none: the global
        scope's), and the scope it shows (:class:`._decide.States`)."""
        ctrl = self._root
        if ctrl is None:  # pragma: no cover - requests are decided once started
            raise RuntimeError("maintguard: the middleware decides requests once started")
        if not names:
            return None, ctrl.snapshot
        shown, state = _first_active(self._watched(ctrl, names))
        return shown.scope, state

    def _watched(self, ctrl: Controller, names: Sequence[str]) -> list[Controller]:
        if not names:
            return [ctrl]
        return [self._scope_ctrl(ctrl, name) for name in names]

    def refused(self, entry: tuple[Scope, str], scope: str | None, mode: Mode) -> bool:
        """Whether a drain of ``scope`` in ``mode`` waits for the request of ``entry``:
        a hold of that scope and mode would refuse it. Judged as the request path judges,
        on the route Starlette runs, from the request as it came in (routing rewrites
        ``root_path`` on the way); routes changed since they were learned: it waits."""
        routes = self._routes  # not learned yet: the decision waits (fail closed)
        request, root_path = entry
        probe = {**request, "root_path": root_path}
        return self._would_refuse(probe, routes, hold_of(scope, mode)) >= REFUSE

    # -- answers ---------------------------------------------------------------------------------

    def _own_endpoint(self, scope: Scope) -> OwnEndpoint | None:
        for endpoint in self._endpoints:
            if endpoint.is_for(scope):
                return endpoint
        return None

    async def _own_or_pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The off path with a status or readiness path: a look at the path, then what it
        # ran before.
        ctrl = self._root
        if ctrl is not None and scope["type"] == "http":  # (a WebSocket goes to the app)
            for endpoint in self._endpoints:
                if endpoint.is_for(scope):
                    work = current_work.get()
                    if work is not None:
                        self._end(work[0])  # counted on the way in: no app's work
                    await self._answer(endpoint, scope, send, ctrl)
                    return
        await self._behind_own(scope, receive, send)

    async def _answer(
        self, endpoint: OwnEndpoint, scope: Scope, send: Send, ctrl: Controller
    ) -> None:
        if endpoint.option == "readiness_path":
            await endpoint.answer(scope, send, lambda: self._readiness(ctrl))
            return
        trusted = self._trusted_client(scope)

        def build() -> tuple[int, dict[str, Any]]:
            where = url(ctrl.backend) if trusted else None
            cordons = ctrl.stored.cordons if trusted and ctrl.stored is not None else None
            shown = as_json(ctrl.snapshot, where, holders=trusted, cordons=cordons)
            shown["scopes"] = {
                name: as_json(self._scope_ctrl(ctrl, name).snapshot, holders=trusted)
                for name in sorted(self._scoped)
            }
            return 200, shown

        await endpoint.answer(scope, send, build)

    def _readiness(self, ctrl: Controller) -> tuple[int, dict[str, Any]]:
        cause = not_ready(ctrl.stored, ctrl.snapshot, HOST, self._ready_during_maintenance)
        return (200, {"ready": True}) if cause is None else (503, {"ready": False, "cause": cause})

    def _prepared_for(self, key: Any, state: MaintenanceState) -> Prepared:
        cached = self._prepared.get(key)
        if cached is not None and cached[0] is state and cached[2] is None:
            return cached[1]  # this very state, and its response counts down to nothing
        second = counting_second(state)
        if cached is None or cached[0] is not state or cached[2] != second:
            cached = (state, prepare(state, self._status, self._template), second)
            if len(self._prepared) > 256:  # keys are scopes: few; never let them pile up
                self._prepared.clear()
            self._prepared[key] = cached
        return cached[1]

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, state: MaintenanceState, key: Any
    ) -> None:
        if self._announcer is not None:
            send = self._announcer.send(send, state)
        if self._response_handler is not None:
            response = await respond_with(self._response_handler, Request(scope, receive), state)
            if response is not None:
                started = False

                async def tracked(message: Message) -> None:
                    nonlocal started
                    started = True
                    await send(message)

                try:
                    await response(scope, receive, tracked)
                    return
                except Exception:
                    logger.exception("maintguard: response_handler's response failed to send")
                    if started:
                        return  # part of it is out: nothing else can be sent
        prepared = self._prepared_for(key, state)
        if self._redirect_to is not None:
            headers = [(b"location", self._redirect_to), (b"content-length", b"0")]
            headers += [h for h in prepared.text[0] if h[0] in (b"retry-after", b"cache-control")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers, body = prepared.negotiated(scope.get("headers", ()))
        await send({"type": "http.response.start", "status": prepared.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    async def _refuse_websocket(
        self, scope: Scope, receive: Receive, send: Send, state: MaintenanceState, key: Any
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            if self._announcer is not None:
                send = self._announcer.send(send, state)
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
        self, scope: Scope, receive: Receive, send: Send, *, watched: list[Controller]
    ) -> None:
        # Close an open session with 1012 (service restart) when maintenance begins: woken
        # by the state change, not by polling.
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:

            async def close_when_maintenance_begins(ctrl: Controller) -> None:
                await wait_until(ctrl, _is_active)
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):  # the session ended meanwhile
                        await send(
                            {"type": "websocket.close", "code": 1012, "reason": "maintenance"}
                        )

            for ctrl in watched:
                tg.start_soon(close_when_maintenance_begins, ctrl)
            try:
                await self.app(scope, receive, send)
            except Exception as exc:
                error = exc  # raised as the app raised it, not wrapped in a group
            tg.cancel_scope.cancel()
        if error is not None:
            raise error


# -- helpers ------------------------------------------------------------------------------------


async def _fail_startup(send: Send, exc: MaintGuardError) -> None:
    text = f"maintguard: {exc}"
    logger.error("%s", text)
    await send({"type": "lifespan.startup.failed", "message": text})


def _is_active(state: MaintenanceState) -> bool:
    return state.active


def _first_active(ctrls: list[Controller]) -> tuple[Controller, MaintenanceState]:
    """The strictest of ``ctrls`` in maintenance (full mode over read-only) and its state,
    else the first one's: a request in two scopes is judged by the stricter."""
    found = None
    for ctrl in ctrls:
        state = ctrl.snapshot
        if state.active:
            if state.mode is Mode.FULL:
                return ctrl, state
            found = found or (ctrl, state)
    return found or (ctrls[0], ctrls[0].snapshot)


def _flag(value: object, option: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{option} must be True or False, not {value!r}")
    return value


def _scope_name(name: object) -> str:
    checked = check_scope(name)  # type: ignore[arg-type]
    if checked is None:
        raise ConfigurationError("scopes: each path glob names a scope such as 'billing', not None")
    return checked


def _redirect_target(url: str | None) -> bytes | None:
    if url is None:
        return None
    if not isinstance(url, str) or not _HEADER_VALUE.fullmatch(url):
        raise ConfigurationError(
            f"redirect_to must be a URL or path without spaces or control characters, not {url!r}"
        )
    return url.encode("ascii")
