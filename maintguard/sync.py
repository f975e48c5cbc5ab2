"""Blocking state functions, for scripts, operator tools and sync frameworks.

The same signatures as :func:`maintguard.get_maintenance_mode`,
:func:`maintguard.set_maintenance_mode`, :func:`maintguard.get_state`, the planned
windows' :func:`maintguard.schedule_maintenance`, :func:`maintguard.cancel_window` and
:func:`maintguard.list_windows`, the audit trail's :func:`maintguard.get_history`, and the
cordons' :func:`maintguard.cordon`, :func:`maintguard.uncordon` and
:func:`maintguard.list_cordons`, without ``await``.
They run on maintguard's I/O loop and block the calling thread until done, in any thread
that does not run an event loop (a worker thread of one is fine). In a loop's own thread
they raise :class:`~maintguard.exceptions.ConfigurationError` naming the function to await
instead, rather than freezing every task of that loop.

>>> from maintguard import sync
>>> def announce() -> None:
...     sync.set_maintenance_mode(True, "file:/run/app/maintenance.json", reason="DB upgrade")
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from . import _audit as audit
from . import _cordons as cordons
from . import _holds as guards
from . import _ioloop as ioloop
from . import _schedule as schedule
from ._holds import BackendArg, Seconds
from ._options import named_options
from ._state import AuditEntry, Cordon, MaintenanceState, Mode, Window
from .exceptions import ConfigurationError

__all__ = [
    "cancel_window",
    "cordon",
    "get_history",
    "get_maintenance_mode",
    "get_state",
    "list_cordons",
    "list_windows",
    "schedule_maintenance",
    "set_maintenance_mode",
    "uncordon",
]

T = TypeVar("T")


@named_options
def get_maintenance_mode(backend: BackendArg = None, scope: str | None = None) -> bool:
    """True while maintenance is on for ``scope`` (blocking)."""
    return _blocking("get_maintenance_mode", guards.get_maintenance_mode(backend, scope))


@named_options
def get_state(backend: BackendArg = None, scope: str | None = None) -> MaintenanceState:
    """The full effective state of ``scope`` (blocking)."""
    return _blocking("get_state", guards.get_state(backend, scope))


@named_options
def set_maintenance_mode(
    value: bool,
    backend: BackendArg = None,
    *,
    scope: str | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    until: Seconds | None = None,
    mode: Mode | str = "full",
) -> None:
    """Set the explicit (operator) state (blocking); holds are not touched."""
    _blocking(
        "set_maintenance_mode",
        guards.set_maintenance_mode(
            value,
            backend,
            scope=scope,
            reason=reason,
            retry_after=retry_after,
            until=until,
            mode=mode,
        ),
    )


def schedule_maintenance(
    start: datetime | timedelta | float | None = None,
    *,
    end: datetime | timedelta | float | None = None,
    duration: timedelta | float | None = None,
    every: str | None = None,
    tz: str | None = None,
    announce: timedelta | float | None = None,
    reason: str | None = None,
    retry_after: Seconds | None = None,
    mode: Mode | str = "full",
    backend: BackendArg = None,
    scope: str | None = None,
) -> Window:
    """Plan maintenance (blocking); see :func:`maintguard.schedule_maintenance`."""
    return _blocking(
        "schedule_maintenance",
        schedule.schedule_maintenance(
            start,
            end=end,
            duration=duration,
            every=every,
            tz=tz,
            announce=announce,
            reason=reason,
            retry_after=retry_after,
            mode=mode,
            backend=backend,
            scope=scope,
        ),
    )


def cancel_window(window_id: str, *, backend: BackendArg = None, scope: str | None = None) -> bool:
    """Remove a planned window (blocking); False when there is no such window."""
    return _blocking(
        "cancel_window", schedule.cancel_window(window_id, backend=backend, scope=scope)
    )


def list_windows(*, backend: BackendArg = None, scope: str | None = None) -> list[Window]:
    """The planned windows of ``scope`` (blocking); see :func:`maintguard.list_windows`."""
    return _blocking("list_windows", schedule.list_windows(backend=backend, scope=scope))


@named_options
def get_history(
    backend: BackendArg = None, *, scope: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    """The store's audit trail, newest first (blocking); see :func:`maintguard.get_history`."""
    return _blocking("get_history", audit.get_history(backend, scope=scope, limit=limit))


@named_options
def cordon(
    host: str | None = None,
    *,
    reason: str | None = None,
    drain: float | timedelta | None = None,
    on_drain_timeout: str = "proceed",
    backend: BackendArg = None,
) -> Cordon:
    """Take ``host`` out of rotation (blocking); see :func:`maintguard.cordon`."""
    return _blocking(
        "cordon",
        cordons.cordon(
            host, reason=reason, drain=drain, on_drain_timeout=on_drain_timeout, backend=backend
        ),
        interruptible=5.0,  # Ctrl-C ends a drain at once, its token taken off
    )


@named_options
def uncordon(host: str | None = None, *, backend: BackendArg = None) -> bool:
    """Put ``host`` back in rotation (blocking); see :func:`maintguard.uncordon`."""
    return _blocking("uncordon", cordons.uncordon(host, backend=backend))


@named_options
def list_cordons(*, backend: BackendArg = None) -> list[Cordon]:
    """The cordoned hosts (blocking); see :func:`maintguard.list_cordons`."""
    return _blocking("list_cordons", cordons.list_cordons(backend=backend))


def _blocking(name: str, coro: Coroutine[Any, Any, T], *, interruptible: float = 0.0) -> T:
    running = _running_loop()
    if running is not None:
        coro.close()
        raise ConfigurationError(
            f"maintguard.sync.{name}() blocks, and this thread runs {running} event loop: "
            f"here use `await maintguard.{name}(...)` instead"
        )
    return ioloop.run_sync(coro, interruptible=interruptible)


def _running_loop() -> str | None:
    """'an asyncio' or 'a trio' when this thread runs that event loop, else None."""
    if asyncio._get_running_loop() is not None:
        return "an asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            pass
        else:
            return "a trio"
    return None
