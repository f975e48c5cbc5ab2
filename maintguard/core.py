"""The core: one controller per (store, scope) with the hold stack and the state machine.

Decisions are plain synchronous code under a thread lock (holds are entered from asyncio,
trio and threads at once). Backend I/O happens after deciding, on the I/O loop, and writes
*reconcile*: each write stores what the stack wants at the moment it is written, so writes
that finish in any order still leave the store matching the stack.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import _runner
from .backends import Backend, EnvVarBackend, backend_from_url
from .exceptions import BackendError, ConfigurationError, MaintGuardError, ReadOnlyBackendError
from .state import (
    EventKind,
    ExplicitState,
    HoldRecord,
    MaintenanceEvent,
    MaintenanceState,
    Mode,
    Phase,
    RetryAfter,
    StoredState,
    derive,
    strictest,
    utcnow,
)

__all__ = [
    "Listener",
    "add_listener",
    "configure",
    "controller",
    "remove_listener",
    "resolve_backend",
]

logger = logging.getLogger("maintguard")
T = TypeVar("T")
HOST = socket.gethostname()

Listener = Callable[[MaintenanceEvent], Awaitable[None] | None]


# -- frames: one per entered hold in this process -------------------------------------


@dataclass(eq=False, slots=True)
class Frame:
    owner: str
    reason: str | None
    retry_after: RetryAfter | None
    mode: Mode
    started: datetime = field(default_factory=utcnow)


# -- the store registry ---------------------------------------------------------------


class _Store:
    """The in-process state shared by every backend object that names one store."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.controllers: dict[str | None, Controller] = {}
        self._io_lock: asyncio.Lock | None = None
        self.named_active = False  # some named scope's own state is on (the middleware asks)
        self.watchers = 0
        self.watching = False

    def io_lock(self) -> asyncio.Lock:
        # Only ever used on the I/O loop, so creating it lazily there is safe.
        if self._io_lock is None:
            self._io_lock = asyncio.Lock()
        return self._io_lock


_registry_lock = threading.Lock()
_stores: weakref.WeakValueDictionary[Hashable, _Store] = weakref.WeakValueDictionary()


def _store(backend: Backend) -> _Store:
    store = backend.__dict__.get("_maintguard_store")
    if store is None:
        with _registry_lock:
            key = backend.store_key()
            store = _stores.get(key)
            if store is None:
                store = _stores[key] = _Store(backend)
            backend.__dict__["_maintguard_store"] = store
    return store


def controller(backend: Backend, scope: str | None) -> Controller:
    store = _store(backend)
    ctrl = store.controllers.get(scope)
    if ctrl is None:
        parent = None if scope is None else controller(backend, None)
        with store.lock:
            ctrl = store.controllers.get(scope)
            if ctrl is None:
                ctrl = store.controllers[scope] = Controller(store, scope, parent)
    return ctrl


def _after_fork_in_child() -> None:
    # A child process holds nothing its parent held and must not renew its records.
    global _registry_lock
    _registry_lock = threading.Lock()
    for store in list(_stores.values()):
        store.lock = threading.Lock()
        store._io_lock = None
        for ctrl in store.controllers.values():
            ctrl._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the controller ---------------------------------------------------------------------


class Controller:
    """The hold stack, cached stored state and phase of one (store, scope) in this process."""

    def __init__(self, store: _Store, scope: str | None, parent: Controller | None) -> None:
        self.store = store
        self.backend = store.backend
        self.scope = scope
        self.parent = parent
        self._lock = threading.Lock()
        self._frames: list[Frame] = []
        self._acquired: datetime | None = None
        self.hold_id = _new_hold_id()
        self._stored: StoredState | None = None
        self._read_at = -math.inf
        self._used = False
        self._phase = Phase.OFF
        self._error: str | None = None
        self._reading: asyncio.Future[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.own_active = False
        self._snapshot: MaintenanceState | None = None

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._frames = []
        self.hold_id = _new_hold_id()
        self._reading = self._renewer = None

    @property
    def label(self) -> str:
        return self.backend.describe() + ("" if self.scope is None else f" scope {self.scope!r}")

    # -- pure decisions ----------------------------------------------------------------

    def push(self, frame: Frame) -> list[MaintenanceEvent]:
        """Add a frame on top of the stack; return the events it causes."""
        with self._lock:
            if not self._frames:
                self._acquired = frame.started
            self._frames.append(frame)
            events = self._events(EventKind.HOLD_ACQUIRED, owner=frame.owner)
        return self._published(events)

    def remove(self, frame: Frame) -> list[MaintenanceEvent]:
        """Remove a frame wherever it stands: concurrent holders leave in any order."""
        with self._lock:
            self._frames.remove(frame)
            events = self._events(EventKind.HOLD_RELEASED, owner=frame.owner)
        return self._published(events)

    @property
    def snapshot(self) -> MaintenanceState:
        """The effective state as last published: hot paths read this, never a backend."""
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                snapshot = self._snapshot = self._derive(utcnow())
        return snapshot

    def republish(self) -> list[MaintenanceEvent]:
        """Derive the snapshot again: leases and `until` run out with time alone."""
        with self._lock:
            events = self._events(None)
        return self._published(events)

    def _published(self, events: list[MaintenanceEvent]) -> list[MaintenanceEvent]:
        # Named scopes include the global state: refresh theirs after a global change.
        store = self.store
        if self.parent is None:
            for child in list(store.controllers.values()):
                if child.parent is self:
                    with child._lock:
                        events += child._events(None)
        store.named_active = any(
            c.own_active for c in list(store.controllers.values()) if c.scope is not None
        )
        return events

    def _record(self, now: Any) -> HoldRecord | None:
        # Snapshot/restore: the record follows the top frame, and each detail comes from the
        # newest frame that sets it, so leaving the top frame restores the one below.
        frames = self._frames
        if not frames:
            return None
        top = frames[-1]
        newest_first = frames[::-1]
        return HoldRecord(
            id=self.hold_id,
            owner=top.owner,
            host=HOST,
            pid=os.getpid(),
            acquired=self._acquired or top.started,
            started=top.started,
            expires=now + _seconds(self.backend.lease_ttl) if self.backend.stores_holds else None,
            reason=next((f.reason for f in newest_first if f.reason is not None), None),
            retry_after=next(
                (f.retry_after for f in newest_first if f.retry_after is not None), None
            ),
            mode=strictest({f.mode for f in frames}),
        )

    def _level(self, now: Any) -> StoredState:
        stored = self._stored or _EMPTY
        own = self._record(now)
        holds = tuple(h for h in stored.holds if h.id != self.hold_id)
        return StoredState(stored.explicit, (*holds, own) if own else holds)

    def state(self) -> MaintenanceState:
        """The effective state from memory: no I/O, safe on any hot path."""
        with self._lock:
            return self._derive(utcnow())

    def _derive(self, now: datetime) -> MaintenanceState:
        # Called with self._lock held.
        levels = [self._level(now)]
        if self.parent is not None:
            with self.parent._lock:
                levels.append(self.parent._level(now))
        return derive(self.scope, levels, now)

    def _events(self, kind: EventKind | None, **details: Any) -> list[MaintenanceEvent]:
        # Called with self._lock held: a transition event when the phase this process sees
        # has changed, then the event for `kind`. Built only when someone will hear it.
        now = utcnow()
        state: MaintenanceState | None = None
        if self._frames:  # on, whatever else holds: derive only if someone asks
            self._snapshot = None
            self.own_active = True
            phase = Phase.ON
        else:
            state = self._snapshot = self._derive(now)
            stored = self._stored or _EMPTY
            self.own_active = stored.explicit.in_force(now) or any(
                h.live(now) for h in stored.holds if h.id != self.hold_id
            )
            phase = Phase.ON if state.active else Phase.OFF
        events: list[MaintenanceEvent] = []
        if phase is not self._phase:
            state = state or self._derive(now)
            events.append(
                MaintenanceEvent(
                    EventKind.TRANSITION,
                    self.scope,
                    self.backend.describe(),
                    state,
                    previous=self._phase,
                    phase=phase,
                )
            )
            self._phase = phase
        if kind is not None and (_listeners or logger.isEnabledFor(logging.DEBUG)):
            state = state or self._derive(now)
            events.append(
                MaintenanceEvent(kind, self.scope, self.backend.describe(), state, **details)
            )
        return events

    # -- I/O: reading -----------------------------------------------------------------

    def stale(self) -> bool:
        return time.monotonic() - self._read_at >= self.backend.refresh_interval

    async def refresh(self, *, force: bool = False) -> None:
        """Bring the cached stored state up to date if older than the refresh interval."""
        if not force and not self.stale():
            return
        if self.backend._inline:
            await deliver(self._read_inline())
        else:
            await deliver(await _runner.run(self._read()))

    def _read_inline(self) -> list[MaintenanceEvent]:
        try:
            stored = _drive(self.backend.read_state(self.scope))
        except Exception as exc:
            return self._read_failed(exc)
        return self._read_ok(stored)

    async def _read(self) -> list[MaintenanceEvent]:
        # On the I/O loop: concurrent refreshes share one read.
        if self._reading is not None:
            await asyncio.shield(self._reading)
            return []
        self._reading = asyncio.get_running_loop().create_future()
        try:
            try:
                stored = await self.backend.read_state(self.scope)
            except Exception as exc:
                return self._read_failed(exc)
            return self._read_ok(stored)
        finally:
            self._reading.set_result(None)
            self._reading = None

    def _read_ok(self, stored: StoredState) -> list[MaintenanceEvent]:
        if self._error is not None:
            logger.info("%s: maintenance state readable again", self.label)
            self._error = None
        return self._store_read(stored)

    def _store_read(self, stored: StoredState) -> list[MaintenanceEvent]:
        with self._lock:
            self._stored = stored
            self._read_at = time.monotonic()
            self._used = True
            events = self._events(None)
        return self._published(events)

    def _read_failed(self, exc: Exception) -> list[MaintenanceEvent]:
        error = _as_backend_error(exc, f"{self.label}: reading the maintenance state failed")
        if not self._used and self.backend.raise_on_first_read:
            self._used = True
            raise error from exc
        policy = self.backend.on_error
        message = f"{error} (following on_error={policy!r})"
        events: list[MaintenanceEvent] = []
        if message != self._error:
            logger.warning("%s", message)
            self._error = message
            events.append(self._error_event(error))
        if policy == "open":
            stored = _EMPTY
        elif policy == "closed":
            stored = StoredState(ExplicitState(active=True, reason="maintenance state unavailable"))
        else:
            stored = self._stored or _EMPTY
        return self._store_read(stored) + events

    def _error_event(self, error: BackendError) -> MaintenanceEvent:
        return MaintenanceEvent(
            EventKind.BACKEND_ERROR, self.scope, self.backend.describe(), self.state(), error=error
        )

    # -- I/O: writing -----------------------------------------------------------------

    async def sync_hold(self) -> None:
        """Make the store's record of this process's hold match the stack (async faces)."""
        if self.backend.stores_holds:
            await deliver(await _runner.run(self._write_hold()))

    def sync_hold_blocking(self) -> None:
        """The same for sync faces: the write runs on the I/O loop; this thread waits."""
        if self.backend.stores_holds:
            deliver_sync(_runner.run_sync(self._write_hold()))

    async def _write_hold(self) -> list[MaintenanceEvent]:
        def mutate(stored: StoredState) -> StoredState:
            now = utcnow()
            with self._lock:
                own = self._record(now)
            holds = tuple(h for h in stored.holds if h.id != self.hold_id and h.live(now))
            return replace(stored, holds=(*holds, own) if own else holds)

        new = await self._update(mutate)
        if self._renewer is None and self._frames:
            self._renewer = asyncio.get_running_loop().create_task(self._renew())
            self._renewer._maintguard_background = True  # type: ignore[attr-defined]
        return self._store_read(new)

    async def _renew(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.backend.lease_ttl / 3)
                if not self._frames:
                    return
                try:
                    await deliver(await self._write_hold())
                except Exception as exc:
                    error = _as_backend_error(exc, f"{self.label}: renewing the hold failed")
                    logger.warning("%s; retrying in %.1fs", error, self.backend.lease_ttl / 3)
                    await deliver([self._error_event(error)])
        finally:
            self._renewer = None

    async def set_explicit(self, make: Callable[[ExplicitState], ExplicitState]) -> None:
        if self.backend.read_only:
            raise _read_only(self.backend, self.scope)

        def mutate(stored: StoredState) -> StoredState:
            return replace(stored, explicit=make(stored.explicit))

        if self.backend._inline:
            with self.store.lock:
                new = _drive(self.backend.update_state(self.scope, mutate))
            events = self._store_read(new)
        else:
            events = await _runner.run(self._update_and_store(mutate))
        await deliver(events)

    async def _update_and_store(
        self, mutate: Callable[[StoredState], StoredState]
    ) -> list[MaintenanceEvent]:
        return self._store_read(await self._update(mutate))

    async def _update(self, mutate: Callable[[StoredState], StoredState]) -> StoredState:
        async with self.store.io_lock():
            try:
                return await self.backend.update_state(self.scope, mutate)
            except MaintGuardError:
                raise
            except Exception as exc:
                raise _as_backend_error(
                    exc, f"{self.label}: writing the maintenance state failed"
                ) from exc


_EMPTY = StoredState()


def _new_hold_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _as_backend_error(exc: BaseException, context: str) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"{context}: {exc!r}")


def _read_only(backend: Backend, scope: str | None) -> ReadOnlyBackendError:
    if isinstance(backend, EnvVarBackend):
        return backend._read_only_error(scope)
    return ReadOnlyBackendError(f"{backend.describe()} cannot be written")


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    # Run a coroutine that never suspends (the in-process backends) in this thread.
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("an in-process backend coroutine suspended")  # pragma: no cover


# -- listeners ----------------------------------------------------------------------------

_listeners: tuple[Listener, ...] = ()
_listeners_lock = threading.Lock()


def add_listener(listener: Listener) -> Listener:
    """Call ``listener(event)`` on every :class:`MaintenanceEvent`; returns it (a decorator).

    Sync listeners run in the thread that caused the event. Async listeners are awaited in
    the event loop of an async face, and on maintguard's I/O loop for sync faces and
    background work, so write them with anyio (or as plain functions) if you mix loops.
    A listener that raises is logged and does not disturb the hold.

    >>> @add_listener
    ... def on_event(event): ...
    >>> remove_listener(on_event)
    """
    global _listeners
    if not callable(listener):
        raise ConfigurationError(f"a listener must be callable, not {listener!r}")
    with _listeners_lock:
        _listeners = (*_listeners, listener)
    return listener


def has_listeners() -> bool:
    return bool(_listeners)


def remove_listener(listener: Listener) -> None:
    """Stop calling ``listener``; unknown listeners are ignored."""
    global _listeners
    with _listeners_lock:
        _listeners = tuple(x for x in _listeners if x is not listener)


def _log(event: MaintenanceEvent) -> None:
    if event.kind is EventKind.TRANSITION:
        s = event.state
        detail = f": {s.reason}" if s.reason else ""
        logger.info(
            "maintenance %s (%s%s)%s",
            event.phase.value if event.phase else "?",
            event.backend,
            "" if event.scope is None else f", scope {event.scope!r}",
            detail,
        )
    elif event.kind is not EventKind.BACKEND_ERROR:
        logger.debug("%s %s (%s)", event.kind.value, event.owner or "", event.backend)


def _call(listener: Listener, event: MaintenanceEvent) -> Awaitable[None] | None:
    try:
        return listener(event)
    except Exception:
        logger.exception("maintguard listener %r failed", listener)
        return None


async def _await_listener(result: Awaitable[None], listener: Listener) -> None:
    try:
        await result
    except Exception:
        logger.exception("maintguard listener %r failed", listener)


async def deliver(events: Iterable[MaintenanceEvent]) -> None:
    for event in events:
        _log(event)
        for listener in _listeners:
            result = _call(listener, event)
            if inspect.isawaitable(result):
                await _await_listener(result, listener)


def deliver_sync(events: Iterable[MaintenanceEvent]) -> None:
    for event in events:
        _log(event)
        for listener in _listeners:
            result = _call(listener, event)
            if inspect.isawaitable(result):
                _runner.run_sync(_await_listener(result, listener))


# -- the default backend ---------------------------------------------------------------

_configured: Backend | None = None
_middleware_default: Backend | None = None
_from_env: dict[str, Backend] = {}
_default_lock = threading.Lock()


def _coerce(backend: Backend | str) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        return backend_from_url(backend)
    raise ConfigurationError(
        f"backend must be a Backend or a URL string such as 'file:/run/app/maintenance.json', "
        f"not {backend!r}"
    )


def configure(backend: Backend | str | None) -> None:
    """Set the process's default backend (a :class:`Backend` or a URL string).

    ``configure(backend=None)`` forgets every chosen default, also one a middleware
    registered, and returns to ``MAINTGUARD_BACKEND`` or else the environment variable
    backend.

    >>> configure(backend="memory:")
    >>> configure(backend=None)
    """
    global _configured, _middleware_default
    with _default_lock:
        if backend is None:
            _configured = _middleware_default = None
            _from_env.clear()
        else:
            _configured = _coerce(backend)


def register_default(backend: Backend) -> None:
    """Used by the middleware: its backend becomes the default unless ``configure`` chose one."""
    global _middleware_default
    with _default_lock:
        _middleware_default = backend


def resolve_backend(backend: Backend | str | None = None) -> Backend:
    """The backend a face uses now: the argument, configure(), middleware, env URL, env var."""
    if backend is not None:
        return _coerce(backend)
    chosen = _configured or _middleware_default
    if chosen is not None:
        return chosen
    url = os.environ.get("MAINTGUARD_BACKEND", "")
    with _default_lock:
        found = _from_env.get(url)
        if found is None:
            if url:
                try:
                    found = backend_from_url(url)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"MAINTGUARD_BACKEND: {exc}") from None
            else:
                found = EnvVarBackend()
            _from_env[url] = found
        return found


# -- the watcher ------------------------------------------------------------------------


def watch(backend: Backend) -> Callable[[], None]:
    """Keep every scope of ``backend``'s store fresh in the background; returns ``stop``.

    One task per store on the I/O loop re-reads each scope every ``refresh_interval``
    (1 s when that is 0 or infinite) and republishes snapshots, so hot paths never read.
    """
    store = _store(backend)
    with store.lock:
        store.watchers += 1
        start = not store.watching
        store.watching = True
    if start:
        _runner.submit(_watch(store))
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with store.lock:
            if not stopped:
                stopped = True
                store.watchers -= 1

    return stop


async def _watch(store: _Store) -> None:
    asyncio.current_task()._maintguard_background = True  # type: ignore[union-attr]
    interval = store.backend.refresh_interval
    tick = interval if 0 < interval < math.inf else 1.0
    while True:
        with store.lock:
            if store.watchers <= 0:
                store.watching = False
                return
        for ctrl in list(store.controllers.values()):
            try:
                if interval < math.inf and ctrl.stale():
                    events = ctrl._read_inline() if store.backend._inline else await ctrl._read()
                else:
                    events = ctrl.republish()
                await deliver(events)
            except Exception as exc:  # the first read's error: keep watching
                logger.warning("%s: %s", ctrl.label, exc)
        await asyncio.sleep(tick)
