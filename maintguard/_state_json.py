"""A state as one JSON object: what ``maintguard status --json`` prints and what the
middleware's status endpoint answers (one builder for both).

Pure functions of the state (and, for ``url``, of the backend): no I/O, no clock.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from ._state import AuditEntry, Cordon, MaintenanceState, RetryAfter, Window
from .backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend, RedisBackend
from .backends._redis import redact

__all__ = ["as_json", "cordon_json", "entry_json", "url", "window_json"]


def as_json(
    state: MaintenanceState,
    where: str | None = None,
    *,
    holders: bool = True,
    cordons: Iterable[Cordon] | None = None,
) -> dict[str, Any]:
    """``state`` as JSON, times in ISO 8601 UTC.

    ``where`` (the store's :func:`url`) is shown as ``backend``. With ``holders`` (the
    CLI, a caller the middleware lets through) the object also says whether the
    operator's switch is on (``explicit``), who planned the window (``by``) and every
    hold's record (owner, host, pid, ...); without it (a public caller) only how many
    holds there are (``hold_count``, in both). ``cordons`` (the store's, with the global
    scope's object) are shown as ``cordons`` with ``holders`` only.
    """
    found: dict[str, Any] = {} if where is None else {"backend": where}
    found.update(
        scope=state.scope,
        active=state.active,
        phase=state.phase.value,
        mode=state.mode.value,
        reason=state.reason,
        retry_after=_json_retry_after(state.retry_after),
        since=_iso(state.since),
        until=_iso(state.until),
    )
    if holders:
        found["explicit"] = state.explicit
    found["next_window"] = window_json(state.next_window, by=holders)
    found["hold_count"] = state.holds
    if holders:
        found["holds"] = [
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
        ]
        if cordons is not None:
            found["cordons"] = [cordon_json(c) for c in cordons]
    return found


def cordon_json(cordon: Cordon) -> dict[str, Any]:
    """A cordon as JSON: the :class:`~maintguard.Cordon` field names but the drain's token,
    times in ISO 8601 UTC; ``draining`` is the drain's limit while one waits."""
    return {
        "host": cordon.host,
        "since": _iso(cordon.since),
        "by": cordon.by,
        "reason": cordon.reason,
        "draining_until": _iso(cordon.drain_until) if cordon.drain is not None else None,
    }


def window_json(window: Window | None, *, by: bool = True) -> dict[str, Any] | None:
    """A window as JSON: the :class:`~maintguard.Window` field names, times in ISO 8601
    UTC, ``announce`` in seconds; ``by`` (who planned it, ``user@host``) null unless ``by``."""
    if window is None:
        return None
    return {
        "id": window.id,
        "start": _iso(window.start),
        "end": _iso(window.end),
        "every": window.every,
        "tz": window.tz,
        "announce": None if window.announce is None else window.announce.total_seconds(),
        "reason": window.reason,
        "retry_after": _json_retry_after(window.retry_after),
        "mode": window.mode.value,
        "created": _iso(window.created),
        "by": window.by if by else None,
    }


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as JSON: the :class:`~maintguard.AuditEntry` field names, ``at`` in
    ISO 8601 UTC."""
    return {
        "at": _iso(entry.at),
        "actor": entry.actor,
        "pid": entry.pid,
        "command": entry.command,
        "kind": entry.kind,
        "scope": entry.scope,
        "reason": entry.reason,
        "window": entry.window,
        "holds": list(entry.holds),
        "host": entry.host,
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


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _json_retry_after(value: RetryAfter | None) -> float | str | None:
    return _iso(value) if isinstance(value, datetime) else value
