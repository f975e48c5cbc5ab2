"""The faces: holds as decorators and context objects, and the state functions."""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Generator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import anyio
import wrapt

from .backends import Backend
from .core import Frame, ScopeController, controller, resolve_backend
from .exceptions import ConfigurationError
from .state import (
    ExplicitState,
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


class _Entry:
    """One entry of a hold: the frame it pushed and where. Its exit pairs with it."""

    __slots__ = ("ctrl", "frame")

    def __init__(self, ctrl: ScopeController, frame: Frame) -> None:
        self.ctrl = ctrl
        self.frame = frame


class _Link:
    # The entries a context made, newest first (an immutable chain in a context variable).
    __slots__ = ("entry", "hold", "next")

    def __init__(self, hold: MaintenanceHold, entry: _Entry, next: _Link | None) -> None:
        self.hold = hold
        self.entry = entry
        self.next = next


_entered: contextvars.ContextVar[_Link | None] = contextvars.ContextVar(
    "maintguard_entered", default=None
)
_MISSING: Any = object()


class MaintenanceHold:
    """Maintenance held for as long as a block or a call runs.

    The same object is a decorator and a context object for ``with`` and ``async with``.
    It can be entered again while entered (nested, or by concurrent tasks and threads):
    each entry is its own frame of the hold stack, and each exit ends exactly one of them,
    wherever it runs. The backend is looked up at each entry.
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
        self._live: dict[_Entry, None] = {}  # entries not exited yet, oldest first

    def __repr__(self) -> str:
        return f"<MaintenanceHold {self._owner} scope={self._scope!r} reason={self._reason!r}>"

    # -- entries ---------------------------------------------------------------------------

    def _new_entry(self) -> _Entry:
        ctrl = controller(resolve_backend(self._backend), self._scope)
        frame = Frame(self._owner, self._reason, self._retry_after, self._mode, ctrl.store.clock())
        return _Entry(ctrl, frame)

    def _enter_sync(self) -> _Entry:
        # All or nothing: whatever interrupts the entry, nothing of it remains.
        entry = self._new_entry()
        ctrl, frame = entry.ctrl, entry.frame
        if ctrl.enter(frame):
            try:
                ctrl.write_blocking()
            except BaseException:
                _undo_blocking(ctrl, frame)
                raise
            ctrl.commit(frame)
        return entry

    async def _enter_async(self) -> _Entry:
        entry = self._new_entry()
        ctrl, frame = entry.ctrl, entry.frame
        if ctrl.enter(frame):
            try:
                await ctrl.write()
            except BaseException:
                await _undo(ctrl, frame)
                raise
            ctrl.commit(frame)
        return entry

    def _track(self, entry: _Entry) -> None:
        self._live[entry] = None
        _entered.set(_Link(self, entry, _entered.get()))

    def _claim(self) -> _Entry:
        # The entry an exit ends: the newest one this context made, else (the exit runs in
        # another task, thread or loop than the entry) the newest one still live.
        while True:
            entry = _pop_context_entry(self)
            if entry is None:
                try:
                    entry, _ = self._live.popitem()
                except KeyError:
                    raise RuntimeError(f"{self!r} was exited more often than entered") from None
                return entry
            if self._live.pop(entry, _MISSING) is not _MISSING:
                return entry

    # -- async with -----------------------------------------------------------------

    async def __aenter__(self) -> MaintenanceHold:
        self._track(await self._enter_async())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await _leave(self._claim())

    # -- with -----------------------------------------------------------------------

    def __enter__(self) -> MaintenanceHold:
        self._track(self._enter_sync())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _leave_blocking(self._claim())

    # -- decorator ------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        return cast(F, _decorate(self, func))

    def _for(self, owner: str) -> MaintenanceHold:
        clone = object.__new__(MaintenanceHold)
        clone.__dict__.update(self.__dict__)
        clone._owner = owner
        clone._live = {}
        return clone


def _pop_context_entry(hold: MaintenanceHold) -> _Entry | None:
    # Take the newest live entry of `hold` out of this context's chain, dropping entries
    # that other contexts have ended meanwhile.
    head = _entered.get()
    kept: list[_Link] = []
    link = head
    while link is not None and (link.hold is not hold or link.entry not in hold._live):
        if link.entry in link.hold._live:
            kept.append(link)
        link = link.next
    if link is None:
        if head is not None and len(kept) != _length(head):
            _entered.set(_rebuild(kept, None))
        return None
    _entered.set(_rebuild(kept, link.next))
    return link.entry


def _length(link: _Link | None) -> int:
    n = 0
    while link is not None:
        n, link = n + 1, link.next
    return n


def _rebuild(kept: list[_Link], rest: _Link | None) -> _Link | None:
    for link in reversed(kept):
        rest = _Link(link.hold, link.entry, rest)
    return rest


async def _leave(entry: _Entry) -> None:
    ctrl = entry.ctrl
    if ctrl.leave(entry.frame):
        # Cleanup runs to the end even when the holder is being cancelled; the write
        # itself runs outside this task, so even a native cancel cannot stop it halfway.
        with anyio.CancelScope(shield=True):
            try:
                await ctrl.write()
            except Exception as exc:
                ctrl.release_failed(exc)


def _leave_blocking(entry: _Entry) -> None:
    ctrl = entry.ctrl
    if ctrl.leave(entry.frame):
        try:
            ctrl.write_blocking()
        except Exception as exc:
            ctrl.release_failed(exc)


async def _undo(ctrl: ScopeController, frame: Frame) -> None:
    if ctrl.abort(frame):
        with anyio.CancelScope(shield=True):
            try:
                await ctrl.write()
            except Exception as exc:
                ctrl.release_failed(exc)


def _undo_blocking(ctrl: ScopeController, frame: Frame) -> None:
    if ctrl.abort(frame):
        try:
            ctrl.write_blocking()
        except Exception as exc:
            ctrl.release_failed(exc)


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

# The wrappers hold their entry themselves: the exit pairs with it wherever it runs (a
# generator closed by the garbage collector, or from another task or thread).


def _sync_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs) -> Any:
        entry = hold._enter_sync()
        try:
            return wrapped(*args, **kwargs)
        finally:
            _leave_blocking(entry)

    return wrapper


def _async_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> Any:
        entry = await hold._enter_async()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            await _leave(entry)

    return wrapper


def _gen_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> Generator[Any, Any, Any]:
        entry = hold._enter_sync()
        try:
            return (yield from wrapped(*args, **kwargs))
        finally:
            _leave_blocking(entry)

    return wrapper


def _async_gen_wrapper(hold: MaintenanceHold) -> Callable[..., Any]:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: Args, kwargs: Kwargs
    ) -> AsyncGenerator[Any, Any]:
        # The hold spans the whole iteration; values sent and exceptions thrown are passed on.
        entry = await hold._enter_async()
        try:
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
        finally:
            await _leave(entry)

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
    ctrl = controller(resolve_backend(backend), None if scope is None else check_scope(scope))
    if not ctrl.refresh_inline():
        if ctrl.parent is not None:
            await ctrl.parent.refresh()
        await ctrl.refresh()
    return ctrl.snapshot


async def get_maintenance_mode(backend: BackendArg = None, scope: str | None = None) -> bool:
    """True while maintenance is on for ``scope`` (a named scope also follows the global one).

    >>> async def check() -> bool:
    ...     return await get_maintenance_mode()
    """
    ctrl = controller(resolve_backend(backend), None if scope is None else check_scope(scope))
    if not ctrl.refresh_inline():
        if ctrl.parent is not None:
            await ctrl.parent.refresh()
        await ctrl.refresh()
    return ctrl.snapshot.active


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
