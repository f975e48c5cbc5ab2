"""The faces of planned maintenance: schedule, cancel and list windows; end one early.

Windows are stored with a scope's explicit state, so every process that reads the store
sees them; nobody needs to run at a window's start or end (see :mod:`._windows`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from ._core import ScopeController, controller, resolve_backend
from ._core.controller import refresh_stale
from ._core.identity import who
from ._core.stack import to_datetime
from ._state import ExplicitState, Mode, Occurrence, StoredState, Window, WindowRecord, check_scope
from ._windows import ended_early, planned, window
from .backends import Backend
from .exceptions import ConfigurationError

__all__ = [
    "cancel_window",
    "end_windows_now",
    "list_windows",
    "schedule_maintenance",
    "turn_off",
]

logger = logging.getLogger("maintguard")

BackendArg = Backend | str | None
Seconds = float | timedelta | datetime


async def schedule_maintenance(
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
    """Plan maintenance: on in every process from ``start`` until ``end``, by the clock
    alone (nothing is written then, and no process needs to be running).

    One-off: ``start`` an aware datetime, or a timedelta or seconds from now (default:
    now), and ``end`` (a datetime, or a timedelta/seconds after ``start``) or
    ``duration``. Recurring: ``every`` a 5-field cron expression evaluated in ``tz`` (an
    IANA zone, default UTC), ``duration`` required, ``start`` the earliest first run.
    ``announce``: how long before each start readers see ``Phase.ANNOUNCED`` (and
    ``MaintenanceState.next_window`` always names the window in force or next). Returns
    the window with its current or next occurrence. Bad input raises
    ``ConfigurationError`` naming the field.

    >>> async def plan() -> None:
    ...     await schedule_maintenance(every="0 3 * * SUN", tz="Europe/Berlin",
    ...                                duration=timedelta(hours=1), announce=3600)
    """
    ctrl = _writer(backend, scope)
    record = window(
        start=start,
        end=end,
        duration=duration,
        every=every,
        tz=tz,
        announce=announce,
        reason=reason,
        retry_after=retry_after,
        mode=mode,
        by=who(),
        now=_now(ctrl),
    )
    await _drop_ended(ctrl)
    await ctrl.put_window(record.id, record, "window scheduled")
    return record.view(record.upcoming[0])


async def cancel_window(
    window_id: str, *, backend: BackendArg = None, scope: str | None = None
) -> bool:
    """Remove window ``window_id`` (every occurrence); False when there is no such window."""
    if not isinstance(window_id, str) or not window_id:
        raise ConfigurationError(f"window_id must be a window's id, not {window_id!r}")
    ctrl = _writer(backend, scope)
    await _drop_ended(ctrl)
    return await ctrl.put_window(window_id, None, "window cancelled")


async def list_windows(*, backend: BackendArg = None, scope: str | None = None) -> list[Window]:
    """The windows of ``scope`` (not those of the global scope), each with its current or
    next occurrence, earliest first; windows that have ended for good are left out."""
    ctrl = _writer(backend, scope)
    await refresh_stale(ctrl)
    now = _now(ctrl)
    found = []
    for record in planned(_stored_windows(ctrl), now).windows:
        occurrence = record.current(now)
        if occurrence is not None:
            found.append(record.view(occurrence))
    return sorted(found, key=lambda w: (w.start, w.id))


async def turn_off(
    ctrl: ScopeController,
) -> list[tuple[WindowRecord, WindowRecord | None, Occurrence]]:
    """An operator turns maintenance off in ``ctrl``'s scope: the explicit state off (holds
    untouched), then the occurrence of every window in force ended
    (:func:`end_windows_now`); what was ended."""
    await ctrl.set_explicit(ExplicitState())
    return await end_windows_now(ctrl)


async def end_windows_now(
    ctrl: ScopeController,
) -> list[tuple[WindowRecord, WindowRecord | None, Occurrence]]:
    """Maintenance turned off by an operator: end the occurrence of every window of
    ``ctrl``'s scope in force now (a one-off window is removed, a recurring one skips this
    occurrence). Returns what was ended, each logged."""
    await _drop_ended(ctrl)
    now = _now(ctrl)
    ended = ended_early(planned(_stored_windows(ctrl), now).windows, now)
    for record, replacement, occurrence in ended:
        await ctrl.put_window(record.id, replacement, "window ended")
        logger.info(
            "maintguard: %s: window %s ended early (the occurrence %s to %s)%s",
            ctrl.label,
            record.id,
            occurrence[0].isoformat(),
            occurrence[1].isoformat(),
            "; it recurs" if replacement is not None else "; it is removed",
        )
    return ended


async def _drop_ended(ctrl: ScopeController) -> None:
    # One-off windows whose end has passed are removed at the next change of windows (or
    # `off`): they count for nothing, yet would count towards the limit of a scope, and
    # keep a state file in the format older maintguard cannot write.
    await refresh_stale(ctrl)
    now = _now(ctrl)
    for record in _stored_windows(ctrl).windows:
        if record.every is None and record.end is not None and record.end <= now:
            await ctrl.put_window(record.id, None)


def _stored_windows(ctrl: ScopeController) -> StoredState:
    stored = ctrl.stored
    return stored if stored is not None else StoredState()


def _now(ctrl: ScopeController) -> datetime:
    return to_datetime(ctrl.store.clock())  # the store's clock, as every decision takes it


def _writer(backend: BackendArg, scope: str | None) -> ScopeController:
    return controller(resolve_backend(backend), check_scope(scope))
