"""The faces: holds as decorators and context objects, and the state functions."""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import sys
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextvars import ContextVar, Token
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar, cast, overload

from ._core import ScopeController, coerce, controller, resolve_backend
from ._core.controller import refresh_stale
from ._core.defaults import default_root
from ._core.drain import drained, hold_left
from ._core.drive import ASYNC, BLOCKING, Runtime, drive
from ._core.inflight import (
    HeldMark,
    current_work,
    ended,
    entered_in_work,
    held,
    held_mark,
    mark_held,
    own_keys,
    unmark_held,
)
from ._core.registry import root_controller
from ._core.stack import Presents
from ._options import named_options, seconds_or_none
from ._schedule import turn_off
from ._state import (
    EventKind,
    ExplicitState,
    MaintenanceState,
    Mode,
    check_reason,
    check_retry_after,
    check_scope,
    check_until,
    utcnow,
)
from .backends import Backend
from .exceptions import ConfigurationError, DrainTimeout

__all__ = [
    "MaintenanceHold",
    "get_maintenance_mode",
    "get_state",
    "maintenance_mode_on",
    "set_maintenance_mode",
    "under_maintenance",
]

logger = logging.getLogger("maintguard")

F = TypeVar("F", bound=Callable[..., Any])
BackendArg = Backend | str | None
Seconds = float | timedelta | datetime


Entry = tuple[ScopeController, list[int]]  # a controller, and one object's frame keys there


def _token() -> object:
    # Who is running: the current asyncio or trio task, else the thread. An exit prefers
    # the entry its own task or thread made.
    loop = _running_loop()
    if loop is not None:
        return _current_task(loop)
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            return trio.lowlevel.current_task()
        except RuntimeError:
            pass
    return threading.get_ident()


_MISSING = Token.MISSING
_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task


class MaintenanceHold:
    """Maintenance held for as long as a block or a call runs.

    The same object is a decorator and a context object for ``with`` and ``async with``.
    It can be entered again while entered (nested, or by concurrent tasks and threads), and
    each exit ends exactly one entry, wherever it runs (another task, thread or event loop
    than the entry's). Entered again while its own frame is the newest, it counts on that
    frame; otherwise it pushes a frame of its own. The backend is looked up at each entry.
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
        on_drain_timeout: str = "proceed",
        owner: str | None = None,
    ) -> None:
        if backend is not None and not isinstance(backend, Backend | str):
            raise ConfigurationError(f"backend must be a Backend or a URL string, not {backend!r}")
        drain = seconds_or_none("drain", drain, limit="to wait for in-flight work")
        if on_drain_timeout not in _ON_DRAIN_TIMEOUT:
            raise ConfigurationError(
                f"on_drain_timeout must be 'proceed' or 'raise', not {on_drain_timeout!r}"
            )
        self._drain = None if drain is None else float(drain)
        self._raise_on_drain_timeout = on_drain_timeout == "raise"
        # A URL names its store once, here: a backend made anew at every entry would be a
        # store of its own (memory:) and a controller more each time.
        self._backend = None if backend is None else coerce(backend)
        self._scope = check_scope(scope)
        self._presents = Presents(
            owner or _caller(),
            check_reason(reason),
            check_retry_after(retry_after),
            Mode.parse(mode),
        )
        self._ctrl: ScopeController | None = None  # the last controller, for its backend
        self._start_tracking()

    def _start_tracking(self) -> None:
        # The keys of the frames this object holds on each controller, oldest first (the
        # controller counts entries made again on its own top frame). An exit counts the
        # newest one out, wherever it runs. Lists are kept once made, so no entry races a
        # removal. `_owners` (the task or thread) is only recorded when the object holds
        # frames on two controllers at once (the default backend changed in between), to
        # choose which one an exit ends.
        self._live: dict[ScopeController, list[int]] = {}
        self._owners: dict[ScopeController, object] = {}
        # The marks of the with / async with entries (core.inflight.held) by id, oldest
        # first: an exit takes off the one its own context runs inside, else the newest.
        self._marks: dict[int, HeldMark] = {}
        # A backend object given: the controller and the frame keys never change (and a
        # conflict of options with another object for the same store is reported now).
        self._fixed: Entry | None = None
        if isinstance(self._backend, Backend):
            fixed = controller(self._backend, self._scope)
            self._fixed = (fixed, self._keys(fixed))

    @property
    def _owner(self) -> str:
        return self._presents.owner

    def __repr__(self) -> str:
        p = self._presents
        return f"<MaintenanceHold {p.owner} scope={self._scope!r} reason={p.reason!r}>"

    # -- entries ---------------------------------------------------------------------------

    def _controller(self) -> ScopeController:
        if self._fixed is not None:
            return self._fixed[0]
        backend = resolve_backend(self._backend)
        ctrl = self._ctrl
        if ctrl is None or ctrl.backend is not backend:
            ctrl = self._ctrl = controller(backend, self._scope)
        return ctrl

    def _entry(self) -> Entry:
        ctrl = self._controller()
        keys = self._live.get(ctrl)
        return ctrl, keys if keys is not None else self._keys(ctrl)

    def _keys(self, ctrl: ScopeController) -> list[int]:
        live = self._live
        keys = live.get(ctrl)
        if keys is None:
            if live:
                self._owners.setdefault(ctrl, _token())
            keys = live.setdefault(ctrl, [])
        return keys

    def _claim(self) -> Entry:
        # Which controller's frames an exit counts down: the only one, almost always.
        live = self._live
        if len(live) == 1:
            for ctrl, keys in live.items():
                return ctrl, keys
        held = [c for c, keys in list(live.items()) if keys]
        if not held:
            raise RuntimeError(f"{self!r} was exited more often than entered")
        token = _token()  # the default backend changed while entered: this task's own first
        owned = [c for c in held if self._owners.get(c) == token]
        unknown = [c for c in held if c not in self._owners]
        ctrl = (owned or unknown or held)[-1]
        return ctrl, live[ctrl]

    def _exited_too_often(self) -> RuntimeError:
        return RuntimeError(f"{self!r} was exited more often than entered")

    def _mark(self, ctrl: ScopeController, keys: list[int]) -> None:
        # The block runs inside this entry (guards let its helpers work) until its exit:
        # core.inflight.mark_held, written out on this hot path.
        key = keys[-1]
        chain = held.get()
        if chain is not None:
            head = chain[0]
            if head[1] == key and id(head) in self._marks:
                # Entered again, counted on its own frame, by the context already inside
                # that frame through this object: counted on the mark too (no new link).
                head[4] += 1
                return
            while chain is not None and chain[0][1] not in chain[0][0]:
                chain = chain[1]  # entries that ended elsewhere: their links go
        mark: HeldMark = [ctrl.stack.frames, key, None, 0, 0]
        if current_work.get() is not None:
            entered_in_work(mark)  # code of that work elsewhere runs inside it too
        self._marks[id(mark)] = mark
        mark[2] = held.set((mark, chain))

    def _unmark(self) -> int:
        # The entry this context runs inside (the innermost, if several), else -- an exit
        # in another task or thread than the entry's -- the newest. O(1) when the object
        # has one entry (whatever the links above it) or its entry is the newest link here.
        # Returns the frame that entry counts on when it is this context's own (the exit
        # then ends that frame, not another task's newer one), else 0. (Frame keys are
        # unique in the process: the controller's leave ignores a key not among its own.)
        marks = self._marks
        chain = held.get()
        if chain is not None:
            mark = chain[0]
            if mark[4] and id(mark) in marks:  # an entry counted again on this mark
                mark[4] -= 1
                return mark[1]  # type: ignore[no-any-return]
            if marks.pop(id(mark), None) is not None:  # on top here: the common case
                token = mark[2]
                frame: int = mark[1]
                mark[1] = 0  # core.inflight.ended, written out on this hot path
                if mark[3]:
                    ended(mark)
                try:
                    held.reset(token)
                except (ValueError, RuntimeError):  # linked in the context this one copies
                    return frame
                mark[2] = None
                below = token.old_value
                if below is not _MISSING and below is not None and not below[0][1]:
                    unmark_held(below[0], below)  # ended links below it, linked here
                return frame
            # Several entries of this object: this context's own, if it linked one (the
            # walk is as deep as this context's own links). One entry: that one, at once.
            link = chain[1] if len(marks) > 1 else None
            while link is not None:
                found = marks.pop(id(link[0]), None)
                if found is not None:
                    frame = found[1]
                    if found[4]:  # counted again on it: one count less, the mark stays
                        found[4] -= 1
                        marks[id(found)] = found
                        return frame
                    unmark_held(found, chain)
                    return frame
                link = link[1]
        try:
            mark = marks.popitem()[1]
        except KeyError:
            return 0  # exited too often: the exit raises
        if mark[4]:  # counted again on it: one count less, the mark stays
            mark[4] -= 1
            marks[id(mark)] = mark
            return 0
        unmark_held(mark, chain)
        return 0

    # -- async with -----------------------------------------------------------------

    async def __aenter__(self) -> MaintenanceHold:
        ctrl, keys = entry = self._fixed or self._entry()
        pending = _DRAIN if self._drain is not None else ctrl.enter(self._presents, keys)
        if pending is not None:  # (inline, as _enter_now: no coroutine on this hot path)
            await self._enter_rest(ASYNC, entry, pending)
        self._mark(ctrl, keys)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctrl, keys = self._fixed or self._claim()
        write = ctrl.leave(keys, self._unmark())
        if write:
            await _write_release(ASYNC, ctrl)
        elif write is None:
            raise self._exited_too_often()

    # -- with -----------------------------------------------------------------------

    def __enter__(self) -> MaintenanceHold:
        ctrl, keys = entry = self._fixed or self._entry()
        pending = _DRAIN if self._drain is not None else ctrl.enter(self._presents, keys)
        if pending is not None:  # (inline, as _enter_now)
            drive(self._enter_rest(BLOCKING, entry, pending))
        self._mark(ctrl, keys)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctrl, keys = self._fixed or self._claim()
        write = ctrl.leave(keys, self._unmark())
        if write:
            drive(_write_release(BLOCKING, ctrl))
        elif write is None:
            raise self._exited_too_often()

    # -- one entry: the part that is done at once, then (one body) what waits ----------------
    #
    # The faces above and the decorators' wrappers enter the same way: `_enter_now` in the
    # caller (on memory and the environment that is all: no coroutine, no thread hop), then,
    # only when it says so, `_enter_rest` driven by the caller's runtime. The decorators'
    # calls each hold an entry of their own (a new key list) and mark their context
    # themselves.

    def _enter_blocking(self, entry: Entry) -> Entry:
        pending = self._enter_now(*entry)
        if pending is not None:
            drive(self._enter_rest(BLOCKING, entry, pending))
        return entry

    async def _enter_async(self, entry: Entry) -> Entry:
        pending = self._enter_now(*entry)
        if pending is not None:
            await self._enter_rest(ASYNC, entry, pending)
        return entry

    def _enter_now(self, ctrl: ScopeController, keys: list[int]) -> int | None:
        """Enter one frame if nothing needs writing or waiting: None. Else what
        :meth:`_enter_rest` must do: the key of the frame whose record is written first,
        or :data:`_DRAIN`."""
        if self._drain is not None:
            return _DRAIN
        return ctrl.enter(self._presents, keys)

    async def _enter_rest(self, rt: Runtime, entry: Entry, pending: int) -> None:
        if pending == _DRAIN:
            await self._enter_drained(rt, *entry)
        else:
            await _write_entry(rt, entry[0], pending, entry[1])

    # -- drains: enter (maintenance on at once), wait for in-flight work, then the body ------

    async def _enter_drained(self, rt: Runtime, ctrl: ScopeController, keys: list[int]) -> None:
        exclude = own_keys()  # the holder's own request or job
        token = ctrl.begin_drain()
        try:
            key = ctrl.enter(self._presents, keys, drain=True)
            if key is not None:
                await _write_entry(rt, ctrl, key, keys)
            elif ctrl.sync_record():  # counted on a frame already stored: store the drain
                await _write_release(rt, ctrl)
        except BaseException:
            if ctrl.end_drain():
                await _write_release(rt, ctrl)
            raise
        frame = keys[-1]
        try:
            assert self._drain is not None
            left = hold_left(ctrl, token, self._presents.mode, exclude)
            pending = await drained(rt, ctrl, left, exclude, self._drain)
        except BaseException:  # cancelled while draining: nothing of the hold remains
            if ctrl.end_drain(frame):
                await _write_release(rt, ctrl)
            await _leave(rt, (ctrl, keys))
            raise
        runs = self._drained(ctrl, pending)
        if not runs:  # left while still draining: DRAINING -> OFF, never ON
            await _leave(rt, (ctrl, keys))
        if ctrl.end_drain(frame):
            await _write_release(rt, ctrl)
        if not runs:
            raise self._timed_out(ctrl, pending)

    def _drained(self, ctrl: ScopeController, pending: int) -> bool:
        """Tell of the drain's end; False when the body must not run."""
        owner = self._presents.owner
        if not pending:
            ctrl.drain_event(EventKind.DRAIN_FINISHED, owner)
            return True
        ctrl.drain_event(EventKind.DRAIN_TIMED_OUT, owner)
        if self._raise_on_drain_timeout:
            return False
        logger.warning(
            "maintguard: %s: in-flight work on %s did not end within drain=%ss; "
            "going on (on_drain_timeout='proceed')",
            owner,
            ctrl.label,
            _seconds(self._drain),
        )
        return True

    def _timed_out(self, ctrl: ScopeController, pending: int) -> DrainTimeout:
        return DrainTimeout(
            f"{self._presents.owner}: in-flight work on {ctrl.label} did not end within "
            f"drain={_seconds(self._drain)}s ({pending} still running); the hold was "
            "released and its body did not run (on_drain_timeout='raise'). Give the drain "
            "more time, or use on_drain_timeout='proceed' to run anyway.",
            pending,
        )

    # -- decorator ------------------------------------------------------------------

    def __call__(self, func: F) -> F:
        return cast(
            F,
            decorate(
                func,
                _holding(self),
                "under_maintenance decorates functions and methods, not {!r}; pass options "
                "as keywords, e.g. @under_maintenance(reason='nightly reindex')",
            ),
        )

    def _for(self, owner: str) -> MaintenanceHold:
        clone = object.__new__(MaintenanceHold)
        clone.__dict__.update(self.__dict__)
        clone._presents = self._presents._replace(owner=owner)
        clone._start_tracking()
        return clone


_ON_DRAIN_TIMEOUT = ("proceed", "raise")


def _seconds(value: float | None) -> str:
    return f"{value:g}" if value is not None else "?"


_DRAIN = -1
"""What :meth:`MaintenanceHold._enter_now` returns for a drained hold (frame keys are > 0)."""


async def _write_entry(rt: Runtime, ctrl: ScopeController, key: int, keys: list[int]) -> None:
    # All or nothing: whatever interrupts the entry's write, nothing of it remains.
    try:
        await ctrl.write(rt)
    except BaseException:
        ctrl.abort(key)
        await _write_release(rt, ctrl, entering=True)
        raise
    ctrl.commit(key, keys)


async def _leave(rt: Runtime, entry: Entry) -> None:
    if entry[0].leave(entry[1]):
        await _write_release(rt, entry[0])


def _leave_blocking(entry: Entry) -> None:
    # (a coroutine only when a write follows: none on the memory and environment backends)
    if entry[0].leave(entry[1]):
        drive(_write_release(BLOCKING, entry[0]))


async def _write_release(rt: Runtime, ctrl: ScopeController, *, entering: bool = False) -> None:
    # Cleanup runs to the end even when the holder is being cancelled; the write itself
    # runs outside this task (the runtime hands it over), so even a native asyncio cancel
    # cannot stop it halfway. `entering`: the cleanup of a failed entry, whose own error
    # the holder sees.
    with rt.shield():
        try:
            await ctrl.write(rt)
        except Exception as exc:
            ctrl.release_failed(exc, entering)


def _caller() -> str:
    # Where the hold object was created (outside maintguard), to tell holders apart.
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        "maintguard."
    ):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


# -- decorating ---------------------------------------------------------------------------
#
# A decorated function is a plain closure (functools.update_wrapper: name, docs, __wrapped__,
# so inspect.signature follows it), not an object proxy: calling a closure costs a fraction
# of calling a proxy. A closure is a function, so it binds as a method; it pickles and
# copies as a module function does, by its module and qualified name (those of the
# function it wraps); an async one is a coroutine function to inspect, a generator one a
# generator function, an async generator one an async generator function.


class Kind(enum.Enum):
    """What a decorated callable is, which decides the closure around it."""

    ASYNC_GEN = "an async generator function: held or guarded for its whole iteration"
    GEN = "a generator function: held or guarded for its whole iteration"
    ASYNC = "a coroutine function, or an object whose __call__ is one"
    SYNC = "anything else callable"


Make = Callable[[Kind, Callable[..., Any], str], Callable[..., Any]]
"""``make(kind, target, what)``: the closure that calls ``target``; ``what`` names it."""


def decorate(func: Any, make: Make, refusal: str) -> Any:
    """``func`` under the closure ``make`` gives for it. A ``classmethod`` or
    ``staticmethod`` object is opened (inspect cannot see a coroutine function inside one)
    and made again around the closure. ``refusal`` (``{!r}``: ``func``) is raised as a
    :class:`ConfigurationError` for what is not a function (a class, options passed
    positionally)."""
    again = type(func) if isinstance(func, classmethod | staticmethod) else None
    target = func.__func__ if again is not None else func
    if isinstance(target, type) or not callable(target):
        raise ConfigurationError(refusal.format(func))
    name = getattr(target, "__qualname__", None) or repr(target)
    what = f"{getattr(target, '__module__', '?')}.{name}"
    if inspect.isasyncgenfunction(target):
        kind = Kind.ASYNC_GEN
    elif inspect.isgeneratorfunction(target):
        kind = Kind.GEN
    elif inspect.iscoroutinefunction(target) or (
        not inspect.isfunction(target) and inspect.iscoroutinefunction(type(target).__call__)
    ):
        kind = Kind.ASYNC
    else:
        kind = Kind.SYNC
    call = functools.update_wrapper(make(kind, target, what), target)
    return call if again is None else again(call)


def _holding(hold: MaintenanceHold) -> Make:
    def make(kind: Kind, target: Callable[..., Any], what: str) -> Callable[..., Any]:
        each = hold._for(what)
        if kind is Kind.ASYNC_GEN:
            return relayed(target, functools.partial(_enter_marked, each), _leave_marked, held)
        if kind is Kind.GEN:
            return _gen_call(each, target)
        if kind is Kind.ASYNC:
            return _async_call(each, target)
        return _sync_call(each, target)

    return make


# The closures hold their entry themselves: the exit pairs with it wherever it runs (a
# generator closed by the garbage collector, or from another task or thread). The context
# that enters runs inside the entry (core.inflight.held) until the exit, as with a `with`
# block around the body: for a generator, the context of its first step, so the code that
# iterates it (a FastAPI endpoint between the halves of a `yield` dependency) runs its
# guarded helpers too.


def _sync_call(hold: MaintenanceHold, target: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        entry = hold._enter_blocking((hold._controller(), []))
        mark = held_mark(entry[0], entry[1][-1])
        mark_held(mark)
        try:
            return target(*args, **kwargs)
        finally:
            unmark_held(mark, held.get())
            _leave_blocking(entry)

    return call


def _async_call(hold: MaintenanceHold, target: Callable[..., Any]) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        entry = await hold._enter_async((hold._controller(), []))
        mark = held_mark(entry[0], entry[1][-1])
        mark_held(mark)
        try:
            return await target(*args, **kwargs)
        finally:
            unmark_held(mark, held.get())
            await _leave(ASYNC, entry)

    return call


def _gen_call(hold: MaintenanceHold, target: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        entry = hold._enter_blocking((hold._controller(), []))
        mark = held_mark(entry[0], entry[1][-1])
        mark_held(mark)
        try:
            return (yield from target(*args, **kwargs))
        finally:
            unmark_held(mark, held.get())
            _leave_blocking(entry)

    return call


async def _enter_marked(hold: MaintenanceHold) -> tuple[tuple[Entry, HeldMark], None]:
    entry = await hold._enter_async((hold._controller(), []))
    mark = held_mark(entry[0], entry[1][-1])
    mark_held(mark)
    return (entry, mark), None  # (marks no step)


async def _leave_marked(entered: tuple[Entry, HeldMark]) -> None:
    unmark_held(entered[1], held.get())
    await _leave(ASYNC, entered[0])


SKIP = object()
"""Returned by a relay's ``enter``: the generator is not iterated at all."""


def stepped(
    gen: Generator[Any, Any, Any], var: ContextVar[Any], link: Any
) -> Generator[Any, Any, Any]:
    """Iterate ``gen`` (as ``yield from`` does) with ``(link, outer)`` set in ``var`` while
    each of its steps runs, in the context of whoever resumes it, and reset after it: the
    body of a guarded generator runs inside its work across its yields, and the code that
    iterates it does not between its steps."""
    step: Callable[[Any], Any] = gen.send
    arg: Any = None
    while True:
        token = var.set((link, var.get()))
        try:
            value = step(arg)
        except StopIteration as stop:
            return stop.value
        finally:
            var.reset(token)
        try:
            arg = yield value
        except GeneratorExit:
            token = var.set((link, var.get()))
            try:
                gen.close()
            finally:
                var.reset(token)
            raise
        except BaseException as exc:
            step, arg = gen.throw, exc
        else:
            step = gen.send


def relayed(
    target: Callable[..., AsyncGenerator[Any, Any]],
    enter: Callable[[], Awaitable[Any]],
    leave: Callable[[Any], Awaitable[None]],
    var: ContextVar[Any],
) -> Callable[..., AsyncGenerator[Any, Any]]:
    """An async generator function that iterates ``target(...)`` between ``enter()`` and
    ``leave(what)``, passing values sent and exceptions thrown on: a decorator's span over
    a whole iteration. ``enter`` returns ``(what, link)``, or :data:`SKIP` (``target`` is
    not called); unless ``link`` is None, ``(link, outer)`` is set in ``var`` while each
    step of the generator runs, as :func:`stepped` does."""

    async def call(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        entered = await enter()
        if entered is SKIP:
            return
        what, link = entered
        try:
            agen = target(*args, **kwargs)
            try:
                token = None if link is None else var.set((link, var.get()))
                try:
                    value = await agen.__anext__()
                finally:
                    if token is not None:
                        var.reset(token)
                while True:
                    try:
                        sent = yield value
                    except GeneratorExit:
                        raise
                    except BaseException as exc:
                        step = agen.athrow(exc)
                    else:
                        step = agen.asend(sent)
                    token = None if link is None else var.set((link, var.get()))
                    try:
                        value = await step
                    finally:
                        if token is not None:
                            var.reset(token)
            except StopAsyncIteration:
                return
            finally:
                token = None if link is None else var.set((link, var.get()))
                try:
                    await agen.aclose()
                finally:
                    if token is not None:
                        var.reset(token)
        finally:
            await leave(what)

    return call


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
    on_drain_timeout: str = "proceed",
) -> MaintenanceHold: ...
@named_options
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
    on_drain_timeout: str = "proceed",
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
        backend=backend,
        scope=scope,
        reason=reason,
        retry_after=retry_after,
        mode=mode,
        drain=drain,
        on_drain_timeout=on_drain_timeout,
    )
    return hold if func is None else hold(func)


@named_options
def maintenance_mode_on(
    backend: BackendArg = None,
    *,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    mode: Mode | str = "full",
    drain: float | None = None,
    on_drain_timeout: str = "proceed",
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
        backend=backend,
        scope=scope,
        reason=reason,
        retry_after=retry_after,
        mode=mode,
        drain=drain,
        on_drain_timeout=on_drain_timeout,
    )


# -- state functions -----------------------------------------------------------------------


async def get_state(backend: BackendArg = None, scope: str | None = None) -> MaintenanceState:
    """The full effective state of ``scope`` (or the global scope).

    >>> async def show() -> None:
    ...     state = await get_state()
    ...     print(state.active, state.reason, state.holds)
    """
    ctrl = _reader(backend, scope)
    if not ctrl.refresh_inline():
        await refresh_stale(ctrl)
    return ctrl.snapshot


async def get_maintenance_mode(backend: BackendArg = None, scope: str | None = None) -> bool:
    """True while maintenance is on for ``scope`` (a named scope also follows the global one).

    >>> async def check() -> bool:
    ...     return await get_maintenance_mode()
    """
    if scope is not None:
        ctrl = controller(resolve_backend(backend), check_scope(scope))
    elif backend is None:
        ctrl = default_root()
    elif isinstance(backend, Backend):
        ctrl = root_controller(backend)
    else:
        ctrl = controller(coerce(backend), None)
    if not ctrl.refresh_inline():
        await refresh_stale(ctrl)
    return ctrl.snapshot.active


def _reader(backend: BackendArg, scope: str | None) -> ScopeController:
    # The controller a state function reads: the global scope's without the calls of
    # resolving the default backend and the store once they are known.
    if scope is not None:
        return controller(resolve_backend(backend), check_scope(scope))
    if backend is None:
        return default_root()
    if isinstance(backend, Backend):
        return root_controller(backend)
    return controller(coerce(backend), None)


@named_options
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
    until they end. Turning it off during a planned window ends that window's occurrence
    (a one-off window is removed, a recurring one skips this occurrence; logged).

    >>> async def announce() -> None:
    ...     await set_maintenance_mode(True, reason="DB upgrade", until=timedelta(minutes=30))
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"set_maintenance_mode needs True or False, not {value!r}")
    now = utcnow()
    check_reason(reason)
    checked_retry_after = check_retry_after(retry_after)
    checked_until = check_until(until, now)
    checked_mode = Mode.parse(mode)
    if not value and (reason, retry_after, until) != (None, None, None):
        raise ConfigurationError("reason, retry_after and until only go with value=True")
    ctrl = controller(resolve_backend(backend), check_scope(scope))

    if value:
        await ctrl.set_explicit(
            ExplicitState(True, reason, checked_retry_after, checked_until, checked_mode, since=now)
        )
    else:
        await turn_off(ctrl)  # and a window in force ends now (a recurring one skips it)
