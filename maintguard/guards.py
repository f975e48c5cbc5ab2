"""The faces: holds as decorators and context objects, and the state functions."""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple, TypeVar, cast, overload

import anyio
import wrapt

from .backends import Backend
from .core import (
    Controller,
    Frame,
    controller,
    deliver,
    deliver_sync,
    has_listeners,
    logger,
    resolve_backend,
)
from .exceptions import ConfigurationError
from .state import (
    ExplicitState,
    MaintenanceEvent,
    MaintenanceState,
    Mode,
    check_retry_after,
    check_scope,
    check_until,
    utcnow,
)

__all__ = [
    "MaintenanceHold",
    "get_maintenance_mode",
    "get_state",
    "maintenance_mode_on",
    "set_maintenance_mode",
    "under_maintenance",
]

F = TypeVar("F", bound=Callable[..., Any])
BackendArg = Backend | str | None
Seconds = float | timedelta | datetime


class _Entry(NamedTuple):
    ctrl: Controller
    frame: Frame
    token: contextvars.Token[tuple[Any, ...]]


class MaintenanceHold:
    """Maintenance held for as long as a block or a call runs.

    The same object is a decorator and a context object for ``with`` and ``async with``.
    It can be entered again while entered (nested or by concurrent tasks or threads): each
    entry is its own frame of the hold stack. The backend is looked up at each entry.
    """

    def __init__(
        self,
        *,
        backend: BackendArg = None,
        scope: str | None = None,
        reason: str | None = None,
        retry_after: Seconds | None = None,
        mode: Mode | str = "full",
        drain: float | None = None,
        owner: str | None = None,
    ) -> None:
        if backend is not None and not isinstance(backend, Backend | str):
            raise ConfigurationError(f"backend must be a Backend or a URL string, not {backend!r}")
        if reason is not None and not isinstance(reason, str):
            raise ConfigurationError(f"reason must be a string, not {reason!r}")
        if drain is not None:
            raise ConfigurationError(
                "drain= is not available yet: it comes with the job guards; leave it out"
            )
        self._backend = backend
        self._scope = check_scope(scope)
        self._reason = reason
        self._retry_after = check_retry_after(retry_after)
        self._mode = Mode.parse(mode)
        self._owner = owner or _caller()
        self._entries: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
            "maintguard_hold", default=()
        )

    def __repr__(self) -> str:
        return f"<MaintenanceHold {self._owner} scope={self._scope!r} reason={self._reason!r}>"

    # -- the stack ----------------------------------------------------------------------

    def _begin(self) -> tuple[Controller, Frame, list[Any]]:
        ctrl = controller(resolve_backend(self._backend), self._scope)
        frame = Frame(self._owner, self._reason, self._retry_after, self._mode)
        return ctrl, frame, ctrl.push(frame)

    def _remember(self, ctrl: Controller, frame: Frame) -> None:
        entries = self._entries.get()
        token = self._entries.set(entries)  # placeholder: reset() below restores `entries`
        self._entries.set((*entries, _Entry(ctrl, frame, token)))

    def _forget(self) -> _Entry:
        entries = self._entries.get()
        if not entries:
            raise RuntimeError(f"{self!r} was exited in a task or thread that did not enter it")
        entry = entries[-1]
        self._entries.reset(entry.token)
        return entry

    # -- async with -----------------------------------------------------------------

    async def __aenter__(self) -> MaintenanceHold:
        ctrl, frame, events = self._begin()
        if ctrl.backend.stores_holds:
            try:
                await ctrl.sync_hold()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await _finish(ctrl, ctrl.remove(frame))
                raise
        self._remember(ctrl, frame)
        if events and has_listeners():
            with anyio.CancelScope(shield=True):
                await deliver(events)
        else:
            deliver_sync(events)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctrl, frame, _ = self._forget()
        events = ctrl.remove(frame)
        if ctrl.backend.stores_holds or (events and has_listeners()):
            # Cleanup must run to the end even when the holder is being cancelled.
            with anyio.CancelScope(shield=True):
                await _finish(ctrl, events)
        else:
            deliver_sync(events)

    # -- with -----------------------------------------------------------------------

    def __enter__(self) -> MaintenanceHold:
        ctrl, frame, events = self._begin()
        try:
            ctrl.sync_hold_blocking()
        except BaseException:
            _finish_sync(ctrl, ctrl.remove(frame))
            raise
        self._remember(ctrl, frame)
        deliver_sync(events)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctrl, frame, _ = self._forget()
        _finish_sync(ctrl, ctrl.remove(frame))

    # -- decorator ------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        return cast(F, _decorate(self, func))

    def _for(self, owner: str) -> MaintenanceHold:
        clone = object.__new__(MaintenanceHold)
        clone.__dict__.update(self.__dict__)
        clone._owner = owner
        clone._entries = contextvars.ContextVar("maintguard_hold", default=())
        return clone


async def _finish(ctrl: Controller, events: list[MaintenanceEvent]) -> None:
    # After a frame left the stack: bring the stored record in line, then tell listeners.
    try:
        await ctrl.sync_hold()
    except Exception as exc:
        _release_failed(ctrl, exc)
    await deliver(events)


def _finish_sync(ctrl: Controller, events: list[MaintenanceEvent]) -> None:
    try:
        ctrl.sync_hold_blocking()
    except Exception as exc:
        _release_failed(ctrl, exc)
    deliver_sync(events)


def _release_failed(ctrl: Controller, exc: Exception) -> None:
    logger.warning(
        "%s: could not remove this process's hold record (%s); other processes stop "
        "counting it when its lease runs out in %.0fs",
        ctrl.label,
        exc,
        ctrl.backend.lease_ttl,
    )


def _caller() -> str:
    # Where the hold object was created (outside maintguard), to tell holders apart.
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "maintguard."
    ):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


# -- decorating ---------------------------------------------------------------------------


def _decorate(hold: MaintenanceHold, func: Any) -> Any:
    target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
    if isinstance(target, type) or not callable(target):
        raise ConfigurationError(
            f"under_maintenance decorates functions and methods, not {func!r}; pass options "
            "as keywords, e.g. @under_maintenance(reason='nightly reindex')"
        )
    name = getattr(target, "__qualname__", None) or repr(target)
    hold = hold._for(f"{getattr(target, '__module__', '?')}.{name}")
    call = type(target).__call__ if not inspect.isfunction(target) else None
    if inspect.isasyncgenfunction(target):
        wrapper: Callable[..., Any] = _async_gen_wrapper(hold)
    elif inspect.isgeneratorfunction(target):
        wrapper = _gen_wrapper(hold)
    elif inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call):
        wrapper = _async_wrapper(hold)
    else:
        wrapper = _sync_wrapper(hold)
    return wrapt.FunctionWrapper(func, wrapper)


Args = tuple[Any, ...]
Kwargs = dict[str, Any]


def _sync_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        with hold:
            return wrapped(*args, **kwargs)

    return wrapper


def _async_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> Any:
        async with hold:
            return await wrapped(*args, **kwargs)

    return wrapper


def _gen_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> Generator[Any, Any, Any]:
        with hold:
            return (yield from wrapped(*args, **kwargs))

    return wrapper


def _async_gen_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> AsyncGenerator[Any, Any]:
        # The hold spans the whole iteration; values sent and exceptions thrown are passed on.
        async with hold:
            agen = wrapped(*args, **kwargs)
            try:
                value = await agen.__anext__()
                while True:
                    try:
                        sent = yield value
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        value = await agen.athrow(exc)
                    else:
                        value = await agen.asend(sent)
            except StopAsyncIteration:
                return
            finally:
                await agen.aclose()

    return wrapper


# -- public constructors --------------------------------------------------------------------


@overload
def under_maintenance(func: F, /) -> F: ...
@overload
def under_maintenance(
    func: None = None,
    /,
    *,
    backend: BackendArg = None,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    mode: Mode | str = "full",
    drain: float | None = None,
) -> MaintenanceHold: ...
def under_maintenance(
    func: Any = None,
    /,
    *,
    backend: BackendArg = None,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    mode: Mode | str = "full",
    drain: float | None = None,
) -> Any:
    """Hold maintenance on while the decorated function or the block runs.

    Holds nest and overlap: maintenance ends when the last holder ends, in any order, in
    any task, thread or process, including on exceptions and cancellation.

    >>> @under_maintenance(reason="nightly reindex", retry_after=600)
    ... async def reindex() -> None: ...
    >>> async def migrate() -> None:
    ...     async with under_maintenance(scope="billing"):
    ...         ...
    """
    hold = MaintenanceHold(
        backend=backend, scope=scope, reason=reason, retry_after=retry_after, mode=mode, drain=drain
    )
    return hold if func is None else hold(func)


def maintenance_mode_on(
    backend: BackendArg = None,
    *,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    mode: Mode | str = "full",
    drain: float | None = None,
) -> MaintenanceHold:
    """The same hold as :func:`under_maintenance`, under the name FastAPI users know.

    >>> async def sync_data() -> None:
    ...     async with maintenance_mode_on():
    ...         ...
    """
    given: object = backend  # checked at run time: @maintenance_mode_on without parentheses
    if callable(given) and not isinstance(given, Backend):
        raise ConfigurationError(
            "maintenance_mode_on takes a backend, not a function: use @maintenance_mode_on() "
            "or @under_maintenance"
        )
    return MaintenanceHold(
        backend=backend, scope=scope, reason=reason, retry_after=retry_after, mode=mode, drain=drain
    )


# -- state functions -----------------------------------------------------------------------


async def get_state(backend: BackendArg = None, scope: str | None = None) -> MaintenanceState:
    """The full effective state of ``scope`` (or the global scope).

    >>> async def show() -> None:
    ...     state = await get_state()
    ...     print(state.active, state.reason, state.holds)
    """
    ctrl = controller(resolve_backend(backend), check_scope(scope))
    if ctrl.parent is not None:
        await ctrl.parent.refresh()
    await ctrl.refresh()
    return ctrl.state()


async def get_maintenance_mode(backend: BackendArg = None, scope: str | None = None) -> bool:
    """True while maintenance is on for ``scope`` (a named scope also follows the global one).

    >>> async def check() -> bool:
    ...     return await get_maintenance_mode()
    """
    return (await get_state(backend, scope)).active


async def set_maintenance_mode(
    value: bool,
    backend: BackendArg = None,
    *,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    until: Seconds | None = None,
    mode: Mode | str = "full",
) -> None:
    """Set the explicit (operator) state; holds are not touched.

    ``until`` (an aware datetime, a timedelta or seconds from now) makes it switch itself
    off. Turning it off never removes the holds of running jobs: maintenance stays on
    until they end.

    >>> async def announce() -> None:
    ...     await set_maintenance_mode(True, reason="DB upgrade", until=timedelta(minutes=30))
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"set_maintenance_mode needs True or False, not {value!r}")
    now = utcnow()
    checked_retry_after = check_retry_after(retry_after)
    checked_until = check_until(until, now)
    checked_mode = Mode.parse(mode)
    if not value and (reason, retry_after, until) != (None, None, None):
        raise ConfigurationError("reason, retry_after and until only go with value=True")
    ctrl = controller(resolve_backend(backend), check_scope(scope))

    def make(old: ExplicitState) -> ExplicitState:
        if not value:
            return ExplicitState()
        since = old.since if old.in_force(now) and old.since else now
        return ExplicitState(True, reason, checked_retry_after, checked_until, checked_mode, since)

    await ctrl.set_explicit(make)
