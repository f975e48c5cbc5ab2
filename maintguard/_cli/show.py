"""What the CLI prints of a state: a short summary for people, one JSON object for tools.

Pure functions of the state and the time ``now`` (plus, for the hint that a local holder
has died, a look at this machine's process table). The JSON object is built in
:mod:`maintguard._state_json`, which the middleware's status endpoint shares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .._core.identity import HOST
from .._state import (
    AuditEntry,
    Cordon,
    HoldRecord,
    MaintenanceState,
    Occurrence,
    Phase,
    RetryAfter,
    Window,
)
from .._state_json import as_json, entry_json, url, window_json

__all__ = [
    "as_json",
    "cordon_lines",
    "entry_json",
    "entry_line",
    "holds_lines",
    "length",
    "local",
    "moment_in",
    "occurrence",
    "recurrence",
    "stamp",
    "summary",
    "text",
    "url",
    "window_json",
    "window_line",
    "window_rows",
]


def summary(state: MaintenanceState, where: str, now: datetime) -> list[str]:
    """The lines of ``maintguard status``."""
    scope = "" if state.scope is None else f" (scope {text(state.scope)})"
    window = state.next_window
    if not state.active:
        if state.phase is Phase.ANNOUNCED and window is not None:
            head = f"off, ANNOUNCED: a planned window starts {ahead(window.start, now)}"
            return [f"maintenance is {head}{scope} — {text(where)}", *window_rows(window, now)]
        return [f"maintenance is off{scope} — {text(where)}", *window_rows(window, now)]
    if state.phase is Phase.DRAINING:
        head = "DRAINING: on, new work refused; the holder waits for in-flight work to end"
    else:
        head = "ON"
    lines = [f"maintenance is {head}{scope} — {text(where)}"]
    rows: list[tuple[str, str]] = [("mode", state.mode.value.replace("_", "-"))]
    if state.reason is not None:
        rows.append(("reason", text(state.reason)))
    if state.since is not None:
        rows.append(("since", f"{local(state.since)} ({ago(state.since, now)})"))
    if state.until is not None:
        rows.append(("until", f"{local(state.until)} ({ahead(state.until, now)})"))
    if state.retry_after is not None:
        rows.append(("retry after", _retry_after(state.retry_after)))
    sources = []
    if state.explicit:
        sources.append("the operator's switch (maintguard on / set_maintenance_mode)")
    if state.holds:
        sources.append(f"{state.holds} hold{'s' if state.holds != 1 else ''}")
    if window is not None and in_force(window, now):
        sources.append(f"the planned window {text(window.id)}")
    rows.append(("on through", " and ".join(sources)))
    lines += [f"  {name + ':':<12} {value}" for name, value in rows]
    lines += holds_lines(state.holders, now)
    lines += window_rows(window, now)
    return lines


def in_force(window: Window, now: datetime) -> bool:
    return window.start <= now < window.end


def window_rows(window: Window | None, now: datetime) -> list[str]:
    """``status``'s lines about the window in force or the next one (none: no lines)."""
    if window is None:
        return []
    if in_force(window, now):
        rows = [
            ("window", f"{text(window.id)}, in force"),
            ("start", f"{local(window.start)} ({ago(window.start, now)})"),
        ]
    else:
        announced = window.announce is not None and window.start - window.announce <= now
        rows = [
            ("next window", f"{text(window.id)}{', announced' if announced else ''}"),
            ("start", f"{local(window.start)} ({ahead(window.start, now)})"),
        ]
    rows.append(("end", f"{local(window.end)} ({ahead(window.end, now)})"))
    if window.every is not None:
        rows.append(("recurs", recurrence(window)))
    if window.announce is not None:
        rows.append(("announce", f"{length(window.announce.total_seconds())} before"))
    if window.reason is not None:
        rows.append(("reason", text(window.reason)))
    head, *rest = rows
    return [f"  {head[0] + ':':<12} {head[1]}"] + [f"    {n + ':':<10} {v}" for n, v in rest]


def window_line(window: Window, now: datetime) -> str:
    """``schedule list``'s line of one window: id, start, end, every/tz, announce, reason,
    by (times in UTC)."""
    now_on = " (in force)" if in_force(window, now) else ""
    recurs = "once" if window.every is None else recurrence(window)
    announce = "-" if window.announce is None else length(window.announce.total_seconds())
    reason = "-" if window.reason is None else text(window.reason)
    by = "-" if window.by is None else text(window.by)
    return (
        f"{text(window.id)}  {stamp(window.start)} to {stamp(window.end)}{now_on}  {recurs}  "
        f"announce {announce}  by {by}  reason: {reason}"
    )


def occurrence(span: Occurrence, zone_name: str | None) -> str:
    """``start to end`` in UTC and, for a window with a zone, in that zone too."""
    start, end = span
    shown = f"{stamp(start)} to {stamp(end)}"
    zone = _zone(zone_name)
    if zone is None:
        return shown
    return f"{shown} ({stamp(start, zone)} to {stamp(end, zone)} in {text(zone_name)})"


def moment_in(moment: datetime, zone_name: str | None) -> str:
    """``moment`` in UTC and, for a window with a zone, in that zone too."""
    zone = _zone(zone_name)
    return stamp(moment) if zone is None else f"{stamp(moment)} ({stamp(moment, zone)})"


def entry_line(entry: AuditEntry) -> str:
    """One line of ``maintguard history``: when (UTC), what, where, why; who and how."""
    what = entry.kind
    if entry.window is not None:
        what += f" {entry.window}"
    if entry.holds:
        what += f" ({', '.join(entry.holds)})"
    if entry.host is not None:
        what += f" {entry.host}"
    if entry.scope is not None:
        what += f", scope {entry.scope}"
    if entry.reason is not None:
        what += f", reason {entry.reason!r}"
    how = f"{entry.actor}, pid {entry.pid}" + (f": {entry.command}" if entry.command else "")
    return text(f"{stamp(entry.at)}  {what} — {how}")


def cordon_lines(found: Iterable[Cordon], now: datetime) -> list[str]:
    """One line per cordoned host: since when, by whom, why, and a drain waiting."""
    lines = []
    for cordon in found:
        line = (
            f"  cordoned:    {text(cordon.host)} since {local(cordon.since)} "
            f"({ago(cordon.since, now)})"
        )
        if cordon.by is not None:
            line += f", by {text(cordon.by)}"
        if cordon.reason is not None:
            line += f", reason {text(repr(cordon.reason))}"
        if cordon.draining(now):
            line += ", draining"
        lines.append(line)
    return lines


def holds_lines(holds: Iterable[HoldRecord], now: datetime) -> list[str]:
    """One line per hold: owner, host, pid, since, lease left."""
    lines = []
    for hold in holds:
        lease = (
            "no lease"
            if hold.expires is None
            else f"lease {_span((hold.expires - now).total_seconds())} left"
        )
        lines.append(
            f"    - {text(hold.owner)}: host {text(hold.host)}, pid {hold.pid}{_gone(hold)}, "
            f"since {local(hold.acquired)} ({ago(hold.acquired, now)}), {lease}"
        )
    return lines


# -- pieces --------------------------------------------------------------------------------


def local(moment: datetime) -> str:
    """This machine's local time, with its zone (UTC where the local time is out of range)."""
    try:
        return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, ValueError):  # year 1 west of UTC, 9999 east of it
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def stamp(moment: datetime, zone: tzinfo = timezone.utc) -> str:
    """``moment`` in ``zone`` (default UTC), with the zone's abbreviation."""
    try:
        return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, ValueError):
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def length(seconds: float) -> str:
    """A span exactly, as ``--for`` takes it in words: ``1 h 30 min``, ``1 d``, ``45 s``."""
    left = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts) or "0 s"


def text(value: object) -> str:
    """Stored text as it may be shown on a terminal: control characters (escape sequences,
    newlines that would forge lines) written out, never sent."""
    shown = str(value)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)


def ago(moment: datetime, now: datetime) -> str:
    return f"{_span((now - moment).total_seconds())} ago"


def ahead(moment: datetime, now: datetime) -> str:
    return f"in {_span((moment - now).total_seconds())}"


def _span(seconds: float) -> str:
    seconds = max(0, math.floor(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)  # 1799.9 s after `--for 30m` reads "30 min"
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _retry_after(value: RetryAfter) -> str:
    if isinstance(value, datetime):
        return local(value)
    return f"{math.ceil(value)} s"


def _gone(hold: HoldRecord) -> str:
    # A holder on this machine whose process is gone: its record lasts until its lease ends.
    if hold.host != HOST or hold.pid <= 0 or hold.pid == os.getpid():
        return ""
    try:
        os.kill(hold.pid, 0)
    except ProcessLookupError:
        return " (no such process on this host now: its lease ends the hold)"
    except (OSError, OverflowError, ValueError):  # another user's; a pid out of range
        pass
    return ""


def recurrence(window: Window) -> str:
    """``every '0 3 * * SUN' in Europe/Berlin``."""
    return f"every '{text(window.every)}' in {text(window.tz or 'UTC')}"


def _zone(name: str | None) -> tzinfo | None:
    # The window's zone, for showing its times there too (None: UTC, or unknown here).
    if name is None or name in ("UTC", "Etc/UTC"):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
