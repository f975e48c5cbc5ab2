"""What the CLI prints of a state: a short summary for people, one JSON object for tools.

Pure functions of the state and the time ``now`` (plus, for the hint that a local holder
has died, a look at this machine's process table).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from .._core.identity import HOST
from .._state import HoldRecord, MaintenanceState, Phase, RetryAfter
from ..backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend, RedisBackend
from ..backends._redis import redact

__all__ = ["as_json", "holds_lines", "local", "summary", "text", "url"]


def summary(state: MaintenanceState, where: str, now: datetime) -> list[str]:
    """The lines of ``maintguard status``."""
    scope = "" if state.scope is None else f" (scope {text(state.scope)})"
    if not state.active:
        return [f"maintenance is off{scope} — {text(where)}"]
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
    rows.append(("on through", " and ".join(sources)))
    lines += [f"  {name + ':':<12} {value}" for name, value in rows]
    lines += holds_lines(state.holders, now)
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


def as_json(state: MaintenanceState, where: str) -> dict[str, Any]:
    """``maintguard status --json``: times in ISO 8601, UTC."""
    return {
        "backend": where,
        "scope": state.scope,
        "active": state.active,
        "phase": state.phase.value,
        "mode": state.mode.value,
        "reason": state.reason,
        "retry_after": _json_retry_after(state.retry_after),
        "since": _iso(state.since),
        "until": _iso(state.until),
        "explicit": state.explicit,
        "holds": [
            {
                "id": h.id,
                "owner": h.owner,
                "host": h.host,
                "pid": h.pid,
                "started": _iso(h.acquired),
                "expires": _iso(h.expires),
                "reason": h.reason,
                "mode": h.mode.value,
                "retry_after": _json_retry_after(h.retry_after),
                "draining": h.draining,
            }
            for h in state.holders
        ],
    }


def url(backend: Backend) -> str:
    """The URL of ``backend``'s store, as ``--backend`` takes it back (a Redis password
    written as ``***``: it is never printed)."""
    if isinstance(backend, LocalFileBackend):
        path = os.path.realpath(backend.path)  # the file read, as the store is known by
        return f"file://{path}" if path.startswith("//") else f"file:{path}"  # (kept whole)
    if isinstance(backend, RedisBackend):
        where = redact(backend.url)  # (as given, other options kept; the prefix was taken out)
        joiner = "&" if "?" in where else "?"
        return f"{where}{joiner}{urlencode({'key_prefix': backend.key_prefix})}"
    if isinstance(backend, EnvVarBackend):
        return f"env:{backend.var_name}"
    if isinstance(backend, MemoryBackend):
        return "memory:"
    return backend.describe()  # a backend of the app's own: no URL names it


# -- pieces --------------------------------------------------------------------------------


def local(moment: datetime) -> str:
    """This machine's local time, with its zone (UTC where the local time is out of range)."""
    try:
        return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except (OverflowError, ValueError):  # year 1 west of UTC, 9999 east of it
        return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


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


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _json_retry_after(value: RetryAfter | None) -> float | str | None:
    return _iso(value) if isinstance(value, datetime) else value
