"""Guards for ordinary work: wait, skip or refuse while maintenance is on."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import weakref
from collections.abc import Callable, Generator
from contextvars import Token
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar, cast, overload

from ._core import (
    ScopeController,
    coerce,
    controller,
    dispatch,
    presence,
    resolve_backend,
    watch,
)
from ._core.changes import until
from ._core.controller import refresh_stale
from ._core.drive import ASYNC, BLOCKING, Runtime, drive
from ._core.inflight import current_work, inside_hold, new_key
from ._core.registry import Store
from ._core.tally import counts
from ._holds import SKIP, Kind, decorate, relayed, stepped
from ._options import named_options, seconds_or_none
from ._state import EventKind, MaintenanceEvent, MaintenanceState, Mode, check_scope
from .backends import Backend
from .exceptions import ConfigurationError, UnderMaintenance

__all__ = ["NotDuringMaintenance", "not_during_maintenance"]

logger = logging.getLogger("maintguard")

F = TypeVar("F", bound=Callable[..., Any])
Policy = Literal["wait", "skip", "raise"]
_POLICIES = ("wait", "skip", "raise")


class NotDuringMaintenance:
    """Ordinary work that must not run while maintenance is on.

    As a decorator it guards every call (sync or async; generators for their whole
    iteration); as ``with`` / ``async with`` it guards a block. The check comes before the
    work starts and never interrupts work already running; while the work runs it counts
    as in-flight work for drains. Work inside a hold's own context on the same store
    (the maintenance job calling a guarded helper) runs unchecked. ``"wait"`` returns once
    maintenance has ended, woken by the change (in other processes within the store's
    refresh interval), never blocking an event loop; ``timeout`` bounds the wait, then
    :class:`UnderMaintenance`. ``"skip"`` (decorators only) returns ``None`` without
    running the call; ``"raise"`` raises :class:`UnderMaintenance` at once. In read-only
    mode work is refused as in full mode unless ``allow_read_only=True``.

    ``lead`` (seconds or a timedelta) keeps long work from starting just before a planned
    window: a call is also refused while a window (:attr:`MaintenanceState.windows`)
    starts within ``lead``, and ``"wait"`` then waits until that window has ended. A
    read-only window does not count when ``allow_read_only=True``. Refused so,
    :class:`UnderMaintenance` carries the state (off or announced) and its message names
    the window ahead.
    """

    def __init__(
        self,
        *,
        policy: Policy = "wait",
        timeout: float | None = None,
        backend: Backend | str | None = None,
        scope: str | None = None,
        allow_read_only: bool = False,
        lead: float | timedelta | None = None,
    ) -> None:
        if policy not in _POLICIES:
            raise ConfigurationError(
                f"policy must be one of {', '.join(repr(p) for p in _POLICIES)}, not {policy!r}"
            )
        seconds_or_none("timeout", timeout)
        if not isinstance(allow_read_only, bool):
            raise ConfigurationError(
                f"allow_read_only must be True or False, not {allow_read_only!r}"
            )
        self.policy = policy
        self.timeout = timeout
        self.lead = seconds_or_none("lead", lead, spans=True)
        self._backend = None if backend is None else coerce(backend)  # a URL: once
        self._scope = check_scope(scope)
        self._allow_read_only = allow_read_only
        self._fixed: ScopeController | None = None
        self._blocks: dict[int, tuple[Admission, Token[Any]]] = {}  # with / async with entries
        self._entry = (self, self._scope)  # this guard's work entries (see core.inflight)
        self._watched: dict[Store, Callable[[], None]] = {}  # stores this guard keeps fresh
        if self.lead is not None:
            # The lead's rule on the common path; without a lead that path stays as it is.
            self._admit_now = self._admit_ahead  # type: ignore[method-assign]

    def __repr__(self) -> str:
        lead = "" if self.lead is None else f", lead={self.lead:g}"
        return f"not_during_maintenance(policy={self.policy!r}, scope={self._scope!r}{lead})"

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

    def _ahead(self, state: MaintenanceState, now: float) -> bool:
        """With a lead: a window of ``state`` starts within the lead from ``now`` (clock
        seconds), or has started. A read-only window does not count for work that
        read-only maintenance lets run (a full one right after it still does)."""
        lead = self.lead
        assert lead is not None
        for window in state.windows:  # earliest start first
            if window.start.timestamp() - now > lead:
                return False
            if not (self._allow_read_only and window.mode is Mode.READ_ONLY):
                return True
        return False

    def _admits(self, ctrl: ScopeController) -> Callable[[MaintenanceState], bool]:
        """The rule a call is let in by: :meth:`_free`, and with a lead no window ahead
        within it (judged by the store's clock, as the state's own times are)."""
        if self.lead is None:
            return self._free
        free, ahead, clock = self._free, self._ahead, ctrl.store.clock
        return lambda state: free(state) and not ahead(state, clock())

    def refused(self, entry: tuple[Any, ...], scope: str | None, mode: Mode) -> bool:
        """A drain of ``scope`` in ``mode`` waits for this guard's call (``entry``)."""
        return (scope is None or scope == entry[1]) and not (
            self._allow_read_only and mode is Mode.READ_ONLY
        )

    def _fresh(self, ctrl: ScopeController) -> bool:
        # Read inline now (memory, the environment), or kept fresh by this guard's watch.
        store = ctrl.store
        return ctrl.refresh_inline() or (
            ctrl.stored is not None and store in self._watched and store.present
        )

    def _admit_now(self) -> Admission | None:
        """The common case, without a coroutine: the controller is fresh and maintenance
        is off for this call. Its admission, or None: not decided here (:meth:`_admit`)."""
        ctrl = self._fixed or self._controller()
        if not self._fresh(ctrl):
            return None
        store = ctrl.store
        work = store.work
        key = new_key()
        work.live[key] = self._entry  # counted first, then the look: see core.inflight
        state = ctrl.snapshot
        if not state.active or self._free(state):
            return store, key
        work.end(key)
        return None

    def _admit_ahead(self) -> Admission | None:
        """:meth:`_admit_now` with a lead: a call it lets in is looked at again (still
        counted, so the look comes after) for a window ahead; one there is decided by
        :meth:`_admit`, which refuses or waits."""
        admission = NotDuringMaintenance._admit_now(self)
        if admission is not None:
            store, key = admission
            if self._ahead((self._fixed or self._controller()).snapshot, store.clock()):
                store.work.end(key)
                return None
        return admission

    async def _admit(self, rt: Runtime, what: str) -> Admission | None:
        """Admit one call: its work entry (end it with :func:`_end` when the call ends),
        or None: skip it. Raises UnderMaintenance to refuse it. Waits as ``rt`` does."""
        ctrl = self._controller()
        store = ctrl.store
        if not self._fresh(ctrl):
            await rt.io(self._keep_fresh(ctrl))
        work = store.work
        key = new_key()
        entry = self._entry
        end = math.inf if self.timeout is None else time.monotonic() + self.timeout
        admits = self._admits(ctrl)
        waited = False
        while True:
            work.live[key] = entry  # counted first, then the look: see core.inflight
            state = ctrl.snapshot
            if admits(state):
                if waited and counts.on:
                    counts.job("waited")
                return store, key
            work.end(key)  # not counted while it waits: a drain must not wait for it
            if inside_hold(store, self._scope):
                return store, 0  # the maintenance job's own helper: runs, uncounted
            if self.policy != "wait":
                self._refuse(ctrl, state, what)
                return None
            left = end - time.monotonic()
            if left <= 0:
                if counts.on:
                    counts.job("refused")
                raise self._refusal(state)
            waited = True
            stop = watch(ctrl.backend)  # changes by other processes must reach the wait
            try:
                # Woken by transitions and at the state's own boundaries (a window's start
                # and end among them): a window ahead is waited out to its end.
                await until(rt, ctrl, admits, None if left == math.inf else left)
            finally:
                stop()

    async def _keep_fresh(self, ctrl: ScopeController) -> None:
        # A store that is not in memory: record this process's presence (drains elsewhere
        # count its work) before the first look, keep the store watched while this guard
        # lives (guard checks then read memory only), and read now what is older than the
        # refresh bound (a guard made per call may find a copy that nothing kept fresh).
        store = ctrl.store
        if not store.present:  # not recorded yet, or a server's shutdown removed the record
            await presence.join(store)
        if store not in self._watched:
            stop = watch(ctrl.backend)
            if self._watched.setdefault(store, stop) is stop:
                weakref.finalize(self, stop)
            else:
                stop()  # another thread started it first
        await refresh_stale(ctrl)

    def _refusal(self, state: MaintenanceState) -> UnderMaintenance:
        return UnderMaintenance(state, self._why(state))

    def _why(self, state: MaintenanceState) -> str | None:
        """What refused a call in ``state`` when it was a window ahead (None: maintenance
        is on, as :class:`UnderMaintenance` says by itself)."""
        window = next(
            (w for w in state.windows if not (self._allow_read_only and w.mode is Mode.READ_ONLY)),
            None,
        )
        if not self._free(state) or window is None:
            return None
        return (
            f"maintenance window {window.id} starts at {window.start.isoformat()}, within "
            f"lead={self.lead:g}s"
        )

    def _refuse(self, ctrl: ScopeController, state: MaintenanceState, what: str) -> None:
        if counts.on:
            counts.job("refused" if self.policy == "raise" else "skipped")
        if self.policy == "raise":
            raise self._refusal(state)
        ahead = self._why(state)
        logger.info(
            "maintguard: %s skipped: %s%s",
            what,
            ahead or "maintenance is on",
            f" ({state.reason})" if state.reason and not ahead else "",
        )
        if dispatch.listeners:
            dispatch.emit(
                [MaintenanceEvent(EventKind.JOB_SKIPPED, ctrl.scope, ctrl.where, state, owner=what)]
            )

    # -- with / async with ------------------------------------------------------------------

    def _block(self) -> str:
        if self.policy == "skip":
            raise ConfigurationError(
                "a with block cannot be skipped: use policy='wait' or 'raise' here, or "
                "decorate a function with @not_during_maintenance(policy='skip')"
            )
        return "a guarded block"

    def _entered(self, admission: Admission | None) -> NotDuringMaintenance:
        assert admission is not None  # a block is never skipped
        # The block's body runs in the caller's frame: its context runs inside the work
        # until the exit. An uncounted block (a hold's helper) is linked under a key of its
        # own, which no table holds, so that its exit finds it.
        key = admission[1] or new_key()
        token = current_work.set((key, current_work.get()))
        self._blocks[key] = (admission, token)
        return self

    def _exited(self) -> None:
        # Each exit ends one entry: the innermost one this context runs inside, else (an
        # exit in another task or thread) the newest.
        blocks = self._blocks
        chain = current_work.get()
        head = True
        while chain is not None:
            key, chain = chain
            found = blocks.pop(key, None)
            if found is not None:
                if head:  # entered here and nothing since: the link goes
                    with contextlib.suppress(ValueError, RuntimeError):  # a copied context
                        current_work.reset(found[1])
                # (else it stays, naming work that has ended: it excludes nothing)
                break
            head = False
        else:
            try:
                _, found = blocks.popitem()
            except KeyError:
                raise RuntimeError(f"{self!r} was exited more often than entered") from None
        _end(*found[0])

    async def __aenter__(self) -> NotDuringMaintenance:
        what = self._block()
        return self._entered(self._admit_now() or await self._admit(ASYNC, what))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exited()

    def __enter__(self) -> NotDuringMaintenance:
        what = self._block()
        return self._entered(self._admit_now() or drive(self._admit(BLOCKING, what)))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exited()

    # -- decorator --------------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        return cast(
            F,
            decorate(
                func,
                self._make,
                "not_during_maintenance decorates functions and methods, not {!r}; pass "
                "options as keywords, e.g. @not_during_maintenance(policy='skip')",
            ),
        )

    def _make(self, kind: Kind, target: Callable[..., Any], what: str) -> Callable[..., Any]:
        if kind is Kind.ASYNC_GEN:
            return relayed(
                target, functools.partial(self._enter_steps, what), _leave_steps, current_work
            )
        if kind is Kind.GEN:
            return self._gen_call(target, what)
        if kind is Kind.ASYNC:
            return self._async_call(target, what)
        return self._sync_call(target, what)

    # While the call runs, its context runs inside its work (core.inflight.current_work):
    # a drained hold entered there, or in a worker thread or task it starts, does not wait
    # for it. A call let through uncounted (a hold's own helper) marks nothing. The common
    # case (maintenance off, the controller fresh) is _admit_now: no coroutine, no await.

    def _sync_call(self, target: Callable[..., Any], what: str) -> Callable[..., Any]:
        admit_now, admit = self._admit_now, self._admit

        def call(*args: Any, **kwargs: Any) -> Any:
            admission = admit_now() or drive(admit(BLOCKING, what))
            if admission is None:
                return None
            store, key = admission
            if not key:
                return target(*args, **kwargs)
            token = current_work.set((key, current_work.get()))
            try:
                return target(*args, **kwargs)
            finally:
                current_work.reset(token)
                store.work.end(key)

        return call

    def _async_call(self, target: Callable[..., Any], what: str) -> Callable[..., Any]:
        admit_now, admit = self._admit_now, self._admit

        async def call(*args: Any, **kwargs: Any) -> Any:
            admission = admit_now() or await admit(ASYNC, what)
            if admission is None:
                return None
            store, key = admission
            if not key:
                return await target(*args, **kwargs)
            token = current_work.set((key, current_work.get()))
            try:
                return await target(*args, **kwargs)
            finally:
                current_work.reset(token)
                store.work.end(key)

        return call

    def _gen_call(self, target: Callable[..., Any], what: str) -> Callable[..., Any]:
        admit_now, admit = self._admit_now, self._admit

        def call(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            admission = admit_now() or drive(admit(BLOCKING, what))
            if admission is None:
                return None
            store, key = admission
            if not key:
                return (yield from target(*args, **kwargs))
            try:
                # The body runs across yields, each step in the context of whoever resumes
                # it: inside the work during each step only.
                return (yield from stepped(target(*args, **kwargs), current_work, key))
            finally:
                store.work.end(key)

        return call

    async def _enter_steps(self, what: str) -> object:
        admission = self._admit_now() or await self._admit(ASYNC, what)
        if admission is None:
            return SKIP
        return admission, admission[1] or None  # each step runs inside its work


async def _leave_steps(admission: Admission) -> None:
    _end(*admission)


Admission = tuple[Store, int]
"""A call let in: its store and its work key (0: not counted, inside a hold of the store)."""


def _end(store: Store, key: int) -> None:
    if key:
        store.work.end(key)


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
    lead: float | timedelta | None = None,
) -> NotDuringMaintenance: ...
@named_options
def not_during_maintenance(
    func: Any = None,
    /,
    *,
    policy: Policy = "wait",
    timeout: float | None = None,
    backend: Backend | str | None = None,
    scope: str | None = None,
    allow_read_only: bool = False,
    lead: float | timedelta | None = None,
) -> Any:
    """Guard ordinary work against maintenance: bare ``@not_during_maintenance`` (waits),
    called with options, or as a ``with`` / ``async with`` object. ``lead``: also refuse
    (or wait) while a planned window starts within that many seconds (or timedelta).

    >>> @not_during_maintenance(policy="skip")
    ... async def send_newsletter() -> None: ...
    >>> @not_during_maintenance(lead=timedelta(hours=2))  # no 2-hour job just before a window
    ... def rebuild_index() -> None: ...
    """
    guard = NotDuringMaintenance(
        policy=policy,
        timeout=timeout,
        backend=backend,
        scope=scope,
        allow_read_only=allow_read_only,
        lead=lead,
    )
    return guard if func is None else guard(func)
