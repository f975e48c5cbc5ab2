"""Guards for ordinary work: wait, skip or refuse while maintenance is on."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncGenerator, Callable, Generator
from types import TracebackType
from typing import Any, Literal, TypeVar, cast, overload

import anyio
import wrapt

from .backends import Backend
from .core import ScopeController, controller, dispatch, io, resolve_backend, watch
from .core.changes import wait_until, wait_until_blocking
from .exceptions import ConfigurationError, UnderMaintenance
from .guards import SKIP, _refresh, relay
from .state import EventKind, MaintenanceEvent, MaintenanceState, Mode, check_scope

__all__ = ["NotDuringMaintenance", "not_during_maintenance"]

logger = logging.getLogger("maintguard")

F = TypeVar("F", bound=Callable[..., Any])
Policy = Literal["wait", "skip", "raise"]
_POLICIES = ("wait", "skip", "raise")


class NotDuringMaintenance:
    """Ordinary work that must not run while maintenance is on.

    As a decorator it guards every call (sync or async; generators for their whole
    iteration); as ``with`` / ``async with`` it guards a block. The check comes before the
    work starts and never interrupts work already running. ``"wait"`` returns once
    maintenance has ended, woken by the change (in other processes within the store's
    refresh interval), never blocking an event loop; ``timeout`` bounds the wait, then
    :class:`UnderMaintenance`. ``"skip"`` (decorators only) returns ``None`` without
    running the call; ``"raise"`` raises :class:`UnderMaintenance` at once. In read-only
    mode work is refused as in full mode unless ``allow_read_only=True``.
    """

    def __init__(
        self,
        *,
        policy: Policy = "wait",
        timeout: float | None = None,
        backend: Backend | str | None = None,
        scope: str | None = None,
        allow_read_only: bool = False,
    ) -> None:
        if policy not in _POLICIES:
            raise ConfigurationError(
                f"policy must be one of {', '.join(repr(p) for p in _POLICIES)}, not {policy!r}"
            )
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout < 0
        ):
            raise ConfigurationError(
                f"timeout must be None or a number of seconds >= 0, not {timeout!r}"
            )
        if not isinstance(allow_read_only, bool):
            raise ConfigurationError(
                f"allow_read_only must be True or False, not {allow_read_only!r}"
            )
        self.policy = policy
        self.timeout = timeout
        self._backend = backend
        self._scope = check_scope(scope)
        self._allow_read_only = allow_read_only
        self._fixed: ScopeController | None = None

    def __repr__(self) -> str:
        return f"not_during_maintenance(policy={self.policy!r}, scope={self._scope!r})"

    # -- deciding -----------------------------------------------------------------------

    def _controller(self) -> ScopeController:
        fixed = self._fixed
        if fixed is not None:
            return fixed
        ctrl = controller(resolve_backend(self._backend), self._scope)
        if isinstance(self._backend, Backend):  # always this store: keep its controller
            self._fixed = ctrl
        return ctrl

    def _free(self, state: MaintenanceState) -> bool:
        return not state.active or (self._allow_read_only and state.mode is Mode.READ_ONLY)

    async def _admit(self, what: str) -> bool:
        """True: run the work. False: skip it. Raises UnderMaintenance to refuse it."""
        ctrl = self._controller()
        if not ctrl.refresh_inline():
            await _refresh(ctrl)
        state = ctrl.snapshot
        if not state.active or self._free(state):
            return True
        if self.policy == "wait":
            stop = watch(ctrl.backend)  # changes by other processes must reach the wait
            try:
                with anyio.move_on_after(math.inf if self.timeout is None else self.timeout):
                    return self._free(await wait_until(ctrl, self._free))
            finally:
                stop()
            raise UnderMaintenance(ctrl.snapshot)
        return self._refuse(ctrl, state, what)

    def _admit_blocking(self, what: str) -> bool:
        ctrl = self._controller()
        if not ctrl.refresh_inline():
            io.run_sync(_refresh(ctrl))
        state = ctrl.snapshot
        if self._free(state):
            return True
        if self.policy == "wait":
            stop = watch(ctrl.backend)
            try:
                found = wait_until_blocking(ctrl, self._free, self.timeout)
            finally:
                stop()
            if found is not None:
                return True
            raise UnderMaintenance(ctrl.snapshot)
        return self._refuse(ctrl, state, what)

    def _refuse(self, ctrl: ScopeController, state: MaintenanceState, what: str) -> bool:
        if self.policy == "raise":
            raise UnderMaintenance(state)
        logger.info(
            "maintguard: %s skipped: maintenance is on%s",
            what,
            f" ({state.reason})" if state.reason else "",
        )
        if dispatch._listeners:
            dispatch.emit(
                [MaintenanceEvent(EventKind.JOB_SKIPPED, ctrl.scope, ctrl.where, state, owner=what)]
            )
        return False

    # -- with / async with ------------------------------------------------------------------

    def _block(self) -> str:
        if self.policy == "skip":
            raise ConfigurationError(
                "a with block cannot be skipped: use policy='wait' or 'raise' here, or "
                "decorate a function with @not_during_maintenance(policy='skip')"
            )
        return "a guarded block"

    async def __aenter__(self) -> NotDuringMaintenance:
        await self._admit(self._block())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __enter__(self) -> NotDuringMaintenance:
        self._admit_blocking(self._block())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    # -- decorator --------------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
        if isinstance(target, type) or not callable(target):
            raise ConfigurationError(
                f"not_during_maintenance decorates functions and methods, not {func!r}; pass "
                "options as keywords, e.g. @not_during_maintenance(policy='skip')"
            )
        what = f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"
        call = type(target).__call__ if not inspect.isfunction(target) else None
        if inspect.isasyncgenfunction(target):
            wrapper: Callable[..., Any] = self._async_gen_wrapper(what)
        elif inspect.isgeneratorfunction(target):
            wrapper = self._gen_wrapper(what)
        elif inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call):
            wrapper = self._async_wrapper(what)
        else:
            wrapper = self._sync_wrapper(what)
        return cast(F, wrapt.FunctionWrapper(func, wrapper))

    def _sync_wrapper(self, what: str) -> Callable[..., Any]:
        def wrapper(wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            return wrapped(*args, **kwargs) if self._admit_blocking(what) else None

        return wrapper

    def _async_wrapper(self, what: str) -> Callable[..., Any]:
        async def wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> Any:
            return await wrapped(*args, **kwargs) if await self._admit(what) else None

        return wrapper

    def _gen_wrapper(self, what: str) -> Callable[..., Any]:
        def wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> Generator[Any, Any, Any]:
            if self._admit_blocking(what):
                return (yield from wrapped(*args, **kwargs))
            return None

        return wrapper

    def _async_gen_wrapper(self, what: str) -> Callable[..., Any]:
        async def enter() -> object:
            return None if await self._admit(what) else SKIP

        def wrapper(
            wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
        ) -> AsyncGenerator[Any, Any]:
            return relay(wrapped(*args, **kwargs), enter)

        return wrapper


@overload
def not_during_maintenance(func: F, /) -> F: ...
@overload
def not_during_maintenance(
    func: None = None,
    /,
    *,
    policy: Policy = "wait",
    timeout: float | None = None,
    backend: Backend | str | None = None,
    scope: str | None = None,
    allow_read_only: bool = False,
) -> NotDuringMaintenance: ...
def not_during_maintenance(
    func: Any = None,
    /,
    *,
    policy: Policy = "wait",
    timeout: float | None = None,
    backend: Backend | str | None = None,
    scope: str | None = None,
    allow_read_only: bool = False,
) -> Any:
    """Guard ordinary work against maintenance: bare ``@not_during_maintenance`` (waits),
    called with options, or as a ``with`` / ``async with`` object.

    >>> @not_during_maintenance(policy="skip")
    ... async def send_newsletter() -> None: ...
    """
    guard = NotDuringMaintenance(
        policy=policy,
        timeout=timeout,
        backend=backend,
        scope=scope,
        allow_read_only=allow_read_only,
    )
    return guard if func is None else guard(func)
