"""Planned maintenance windows: checking what is asked, and when each occurs.

Pure functions over values, the clock passed in. A window is stored as a
:class:`~maintguard._state.WindowRecord`; readers never evaluate cron on a hot path:
:func:`planned` computes each window's next occurrences when a state is taken in (a read,
a write) and again when the watcher wakes at a boundary, and deciding reads them.

Recurring windows use `cronsim <https://pypi.org/project/cronsim/>`_, which follows
Debian's cron on daylight-saving nights, in the window's IANA zone:

- spring forward: an occurrence whose local start does not exist that night (02:30 when
  clocks jump from 02:00 to 03:00) starts at the first minute that exists after the jump
  (03:00 local);
- fall back: an occurrence at a fixed local time that happens twice (02:30 when clocks go
  back from 03:00 to 02:00) starts once, at the first of the two; expressions with a
  wildcard or step hour (``*/30 * * * *``) run in both.

An occurrence lasts ``duration`` seconds of real time, whatever the clocks do.
"""

from __future__ import annotations

import itertools
import math
import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ConfigurationError
from ._state import (
    Mode,
    Occurrence,
    StoredState,
    WindowRecord,
    check_reason,
    check_retry_after,
    warn_invalid,
)

__all__ = [
    "AHEAD",
    "LIMIT",
    "LONGEST",
    "check_cron",
    "check_zone",
    "ended_early",
    "occurrences",
    "plan_due",
    "planned",
    "window",
]

LIMIT = 100
"""The most windows one scope keeps."""
LONGEST = timedelta(days=366)
"""No window lasts longer than a year."""
_HOST_ZONES = frozenset({"localtime", "posixrules"})  # names of this machine's own zone
AHEAD = 3
"""Occurrences planned ahead for each recurring window (re-planned at each boundary)."""


def check_cron(expression: object) -> str:
    """A 5-field cron expression, or ConfigurationError naming the field."""
    from cronsim import CronSim, CronSimError

    if not isinstance(expression, str) or len(expression.split()) != 5:
        raise ConfigurationError(
            f"every must be a 5-field cron expression such as '0 3 * * SUN' (minute hour "
            f"day-of-month month day-of-week), not {expression!r}"
        )
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except CronSimError as exc:
        raise ConfigurationError(
            f"every {expression!r} is not a valid cron expression: {exc}"
        ) from None
    return " ".join(expression.split())


def check_zone(name: object) -> tzinfo:
    """The IANA zone ``name`` (None: UTC), or ConfigurationError naming the field."""
    if name is None:
        return timezone.utc
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(
            f"tz must be an IANA zone name such as 'Europe/Berlin', not {name!r}"
        )
    if name in _HOST_ZONES:
        raise ConfigurationError(
            f"tz {name!r} is whatever zone each machine is set to, so processes on different "
            "machines would switch at different times: name the zone, e.g. 'Europe/Berlin'"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"tz {name!r} is not a known IANA time zone (e.g. 'UTC', 'Europe/Berlin', "
            "'America/New_York'; pip install tzdata where the system has no zone data)"
        ) from None


def _moment(name: str, value: object, now: datetime) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(
                f"{name} must be timezone-aware, e.g. datetime(2027, 1, 1, 3, tzinfo=timezone.utc)"
            )
        return value.astimezone(timezone.utc)
    return now + _span(name, value)


def _span(name: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        span = value
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        span = timedelta(seconds=value)
    else:
        raise ConfigurationError(
            f"{name} must be an aware datetime, a timedelta or seconds, not {value!r}"
        )
    if span < timedelta(0):
        raise ConfigurationError(f"{name} must not be negative, not {value!r}")
    if span > LONGEST:
        raise ConfigurationError(f"{name} must be at most a year, not {value!r}")
    return span


def window(
    *,
    start: datetime | timedelta | float | None,
    end: datetime | timedelta | float | None,
    duration: timedelta | float | None,
    every: str | None,
    tz: str | None,
    announce: timedelta | float | None,
    reason: str | None,
    retry_after: float | timedelta | datetime | None,
    mode: Mode | str,
    by: str,
    now: datetime,
) -> WindowRecord:
    """The record of a window to schedule, every field checked (ConfigurationError naming
    the field); its occurrences planned from ``now``."""
    first = now if start is None else _moment("start", start, now)
    ahead = None if announce is None else _span("announce", announce).total_seconds()
    if every is not None:
        expression = check_cron(every)
        check_zone(tz)
        if end is not None:
            raise ConfigurationError("a recurring window takes duration=, not end=")
        if duration is None:
            raise ConfigurationError("a recurring window needs duration= (how long each lasts)")
        length = _span("duration", duration)
        if length <= timedelta(0):
            raise ConfigurationError(f"duration must be more than 0 seconds, not {duration!r}")
        record = WindowRecord(
            id=_new_id(),
            start=first,
            duration=length.total_seconds(),
            every=expression,
            tz=tz,
        )
    else:
        if tz is not None:
            raise ConfigurationError("tz applies to a recurring window (every=) only")
        if (end is None) == (duration is None):
            raise ConfigurationError("a one-off window takes end= or duration= (one of them)")
        last = first + _span("duration", duration) if end is None else _moment("end", end, first)
        if last <= first:
            raise ConfigurationError(
                f"end ({last.isoformat()}) must be after start ({first.isoformat()})"
            )
        if last - first > LONGEST:
            raise ConfigurationError("a window must last at most a year")
        if last <= now:
            raise ConfigurationError(
                f"the window is in the past: it ended at {last.isoformat()} (now {now.isoformat()})"
            )
        record = WindowRecord(id=_new_id(), start=first, end=last)
    record = replace(
        record,
        announce=ahead,
        reason=check_reason(reason),
        retry_after=check_retry_after(retry_after),
        mode=Mode.parse(mode),
        created=now,
        by=by,
    )
    try:
        planned_record = _plan(record, now)
    except ValueError as exc:
        raise ConfigurationError(f"every {every!r}: {exc}") from None
    if not planned_record.upcoming:
        raise ConfigurationError(f"every {every!r} never occurs from {first.isoformat()} on")
    if record.every is not None:
        _no_overlap(record, now)
    return planned_record


def _no_overlap(record: WindowRecord, now: datetime) -> None:
    # An occurrence must end before the next begins (over the next few): a duration longer
    # than the time between them would keep maintenance on for good.
    previous = None
    for occurrence in itertools.islice(occurrences(record, now), 20):
        if previous is not None and occurrence[0] < previous[1]:
            raise ConfigurationError(
                f"duration ({record.duration:g}s) is longer than the time between two "
                f"occurrences of every {record.every!r} ({previous[0].isoformat()} and "
                f"{occurrence[0].isoformat()}): shorten it"
            )
        previous = occurrence


def _new_id() -> str:
    return secrets.token_hex(4)


def occurrences(record: WindowRecord, after: datetime) -> Any:
    """The occurrences of ``record`` that end after ``after``, earliest first (a generator;
    skipped ones left out). Raises ValueError when it cannot be evaluated."""
    if record.every is None:
        if record.end is not None and record.end > after:
            yield (record.start, record.end)
        return
    from cronsim import CronSim, CronSimError

    assert record.duration is not None
    length = timedelta(seconds=record.duration)
    zone = _zone(record.tz)
    # Begin early enough to find an occurrence that started before `after` and still runs.
    begin = max(record.start, after - length) - timedelta(minutes=1)
    try:
        found = CronSim(record.every, begin.astimezone(zone))
    except CronSimError as exc:
        raise ValueError(
            f"'every' {record.every!r} is not a valid cron expression: {exc}"
        ) from None
    skipped = set(record.skip)
    for local in found:
        start = local.astimezone(timezone.utc)
        if start < record.start or start in skipped:
            continue
        end = start + length
        if end > after:
            yield (start, end)


def _zone(name: str | None) -> tzinfo:
    try:
        return check_zone(name)
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None


def _plan(record: WindowRecord, now: datetime) -> WindowRecord:
    upcoming = tuple(itertools.islice(occurrences(record, now), AHEAD))
    return replace(record, upcoming=upcoming)


def planned(
    stored: StoredState,
    now: datetime,
    where: str = "a stored state",
    previous: StoredState | None = None,
) -> StoredState:
    """``stored`` with each window's next occurrences planned from ``now``. A window that
    cannot be evaluated (a hand edit) is dropped with a warning naming it; the rest of the
    state stands; beyond :data:`LIMIT` windows (more than any write stores) the rest are
    dropped with a warning too. A window unchanged since ``previous`` (the copy read
    before) keeps its plan while it has enough occurrences left: a store read every
    second does not evaluate cron every second. The same object when there are no
    windows."""
    if not stored.windows:
        return stored
    known = {w.id: w for w in previous.windows} if previous is not None else {}
    kept = []
    problems = []
    windows = stored.windows
    if len(windows) > LIMIT:
        problems.append(
            f"{len(windows) - LIMIT} of its {len(windows)} windows are ignored: a scope keeps "
            f"at most {LIMIT}"
        )
        windows = windows[:LIMIT]
    for record in windows:
        before = known.get(record.id)
        if before is not None and before == record and not _low((before,), now):
            kept.append(before)
            continue
        try:
            kept.append(_plan(record, now))
        except (ValueError, OverflowError) as exc:
            problems.append(f"window {record.id!r} is ignored: {exc}")
    warn_invalid(f"{where} (windows)", problems)
    return replace(stored, windows=tuple(kept))


def plan_due(levels: Sequence[StoredState], now: datetime) -> bool:
    """Whether a recurring window has fewer than two planned occurrences left after
    ``now`` (the watcher then plans ahead again)."""
    return any(_low(level.windows, now) for level in levels)


def _low(windows: Sequence[WindowRecord], now: datetime) -> bool:
    return any(
        w.every is not None and sum(1 for o in w.upcoming if o[1] > now) < 2 for w in windows
    )


def ended_early(
    windows: Sequence[WindowRecord], now: datetime
) -> list[tuple[WindowRecord, WindowRecord | None, Occurrence]]:
    """What turning maintenance off at ``now`` does to the windows in force: each as
    ``(window, what replaces it, the occurrence ended)``: a one-off window is removed
    (None), a recurring one skips this occurrence."""
    out: list[tuple[WindowRecord, WindowRecord | None, Occurrence]] = []
    for record in windows:
        occurrence = record.current(now)
        if occurrence is None or occurrence[0] > now:
            continue
        if record.every is None:
            out.append((record, None, occurrence))
            continue
        # Every occurrence in force now (they overlap when a hand-edited duration is
        # longer than the time between them): skipping one would leave maintenance on.
        in_force: list[datetime] = []
        for found in occurrences(record, now):
            if found[0] > now or len(in_force) >= LIMIT:
                break
            in_force.append(found[0])
        length = timedelta(seconds=record.duration or 0)
        skip = tuple(t for t in record.skip if t + length > now)  # past ones go
        out.append((record, replace(record, skip=(*skip, *in_force)), occurrence))
    return out
