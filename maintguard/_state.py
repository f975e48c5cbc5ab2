"""Immutable values: the stored state, hold records, the effective state and events.

Nothing here does I/O (but for warning of a stored detail that cannot be read).
:func:`derive` is the one rule that turns what is stored (the operator's explicit state
plus the live holds) into what readers see.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ._errors import ConfigurationError
from ._options import seconds

__all__ = [
    "AuditEntry",
    "Cordon",
    "EventKind",
    "ExplicitState",
    "HoldRecord",
    "MaintenanceEvent",
    "MaintenanceState",
    "Mode",
    "Phase",
    "RetryAfter",
    "StoredState",
    "Window",
    "WindowRecord",
    "WorkerRecord",
    "derive",
    "phase_of",
]

logger = logging.getLogger("maintguard")
STORED_LOGGER = "maintguard.stored"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""A time that stands for "unknown" where one is needed (the oldest there is)."""
_stored_logger = logging.getLogger(STORED_LOGGER)  # stored details ignored (see warn_invalid)

RetryAfter = float | datetime
"""Seconds to wait, or the aware datetime at which to come back."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Mode(str, enum.Enum):
    """How much is refused while maintenance is on."""

    FULL = "full"
    """Everything that is not exempt is refused."""
    READ_ONLY = "read_only"
    """Safe methods (GET, HEAD, OPTIONS) still pass; writes are refused."""

    @classmethod
    def _missing_(cls, value: object) -> Mode | None:
        # The spellings the backends accept: read_only, read-only, readonly, any case.
        if isinstance(value, str):
            text = value.strip().lower().replace("-", "_")
            if text == "readonly":
                text = "read_only"
            for mode in cls:
                if mode.value == text:
                    return mode
        return None

    @classmethod
    def parse(cls, value: Mode | str) -> Mode:
        try:
            return cls(value)
        except ValueError:
            raise ConfigurationError(
                f"unknown maintenance mode {value!r}: use 'full' or 'read_only' "
                "('read-only' and 'readonly' also work)"
            ) from None


def strictest(modes: Iterable[Mode]) -> Mode:
    """Read-only only when every source says so: anything else (full, or a value a
    user-written store should never hold) counts as full."""
    return Mode.READ_ONLY if all(m is Mode.READ_ONLY for m in modes) else Mode.FULL


class Phase(str, enum.Enum):
    """The state machine one process sees: ``OFF → DRAINING → ON → OFF`` (or ``OFF → ON``);
    readers also see ``ANNOUNCED`` while off before a planned window."""

    OFF = "off"
    DRAINING = "draining"
    ON = "on"
    ANNOUNCED = "announced"
    """Off, and a planned window starts within its ``announce`` (readers only: the
    controller's own machine stays ``OFF → DRAINING → ON → OFF``)."""


@dataclass(frozen=True, slots=True)
class ExplicitState:
    """What an operator set: on or off, with optional details. ``until`` makes it expire."""

    active: bool = False
    reason: str | None = None
    retry_after: RetryAfter | None = None
    until: datetime | None = None
    mode: Mode = Mode.FULL
    since: datetime | None = None

    def in_force(self, now: datetime) -> bool:
        return self.active and (self.until is None or self.until > now)


@dataclass(frozen=True, slots=True)
class HoldRecord:
    """One process's hold on maintenance, as stored in a shared backend.

    ``started`` is when the innermost (newest) frame of the process began, which orders
    holds for choosing the details shown; ``acquired`` is when the process took the hold.
    ``expires`` is the lease: a record past it no longer counts.
    """

    id: str
    owner: str
    host: str
    pid: int
    acquired: datetime
    started: datetime
    expires: datetime | None = None
    reason: str | None = None
    retry_after: RetryAfter | None = None
    mode: Mode = Mode.FULL
    drain: str | None = None
    """While the holder waits for in-flight work before its body runs: the drain's token,
    for which every other process reports its in-flight count (``WorkerRecord.reports``)."""
    running: bool = False
    """With ``drain``: another hold of the same process runs its body meanwhile, so the
    record keeps maintenance ON (not DRAINING) while it asks others to report."""

    def live(self, now: datetime) -> bool:
        return self.expires is None or self.expires > now

    @property
    def draining(self) -> bool:
        """Maintenance held by this record waits for in-flight work: no body runs yet."""
        return self.drain is not None and not self.running


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One process that watches a shared store, so that drains know whom to wait for.

    ``reports`` gives, for each drain asked by another process (by its token), how much
    of this process's in-flight work that drain waits for. A record past ``expires`` (its
    process died) no longer counts.
    """

    id: str
    host: str
    pid: int
    expires: datetime
    reports: tuple[tuple[str, int], ...] = ()

    def live(self, now: datetime) -> bool:
        return self.expires > now

    def report(self, token: str) -> int | None:
        """The in-flight count reported for drain ``token``; None: not reported yet."""
        for key, count in self.reports:
            if key == token:
                return count
        return None


Occurrence = tuple[datetime, datetime]
"""One occurrence of a window: ``[start, end)``, aware UTC."""


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """A planned maintenance window as stored with a scope's explicit state.

    A one-off window has ``start`` and ``end``. A recurring one has ``every`` (a 5-field
    cron expression evaluated in the IANA zone ``tz``), ``duration`` (seconds each
    occurrence lasts) and ``start``, the earliest time an occurrence may begin.
    ``skip`` lists the starts of occurrences ended early (``maintguard off`` during
    one). ``announce``: seconds before a start during which readers see
    :attr:`Phase.ANNOUNCED`.

    ``upcoming`` is not stored: the occurrences that have not ended as of the last
    planning, earliest first, computed ahead (by the reader that took the state in, or
    the watcher at a boundary) so that deciding needs no cron evaluation.
    """

    id: str
    start: datetime
    end: datetime | None = None
    duration: float | None = None
    every: str | None = None
    tz: str | None = None
    announce: float | None = None
    reason: str | None = None
    retry_after: RetryAfter | None = None
    mode: Mode = Mode.FULL
    created: datetime | None = None
    by: str | None = None
    skip: tuple[datetime, ...] = ()
    upcoming: tuple[Occurrence, ...] = field(default=(), compare=False, repr=False)

    def announced_from(self, start: datetime) -> datetime | None:
        """When the occurrence starting at ``start`` is announced (None: never)."""
        if self.announce is None:
            return None
        try:
            return start - timedelta(seconds=self.announce)
        except OverflowError:  # a start near year 1: announced since ever
            return datetime.min.replace(tzinfo=timezone.utc)

    def current(self, now: datetime) -> Occurrence | None:
        """The occurrence in force at ``now`` or the next one (as last planned)."""
        for occurrence in self.upcoming:
            if occurrence[1] > now:
                return occurrence
        return None

    def view(self, occurrence: Occurrence) -> Window:
        return Window(
            id=self.id,
            start=occurrence[0],
            end=occurrence[1],
            every=self.every,
            tz=self.tz,
            announce=None if self.announce is None else timedelta(seconds=self.announce),
            reason=self.reason,
            retry_after=self.retry_after,
            mode=self.mode,
            created=self.created,
            by=self.by,
        )


@dataclass(frozen=True, slots=True)
class Window:
    """A planned maintenance window as readers see it: ``start`` and ``end`` (aware UTC)
    are those of the occurrence in force, or else of the next one."""

    id: str
    start: datetime
    end: datetime
    every: str | None = None
    """The cron expression of a recurring window (None: one-off)."""
    tz: str | None = None
    announce: timedelta | None = None
    reason: str | None = None
    retry_after: RetryAfter | None = None
    mode: Mode = Mode.FULL
    created: datetime | None = None
    by: str | None = None
    """Who scheduled it (``user@host``, or the program)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change an operator (or a program) made through the operators' writes: who
    (``actor``, ``user@host``; ``pid``; ``command``, the command line), when (``at``,
    aware UTC), what (``kind``: ``"on"``, ``"off"``, ``"window scheduled"``,
    ``"window cancelled"``, ``"window ended"``, ``"holds removed"``, ``"cordon"``,
    ``"uncordon"``), where (``scope``, None: global) and why (``reason``), with the
    ``window`` id, the ``holds`` ids or the cordoned ``host`` where they apply."""

    at: datetime
    actor: str
    kind: str
    pid: int = 0
    command: str = ""
    scope: str | None = None
    reason: str | None = None
    window: str | None = None
    holds: tuple[str, ...] = ()
    host: str | None = None


def host_problem(host: object) -> str | None:
    """What is wrong with ``host`` as a host name in records (None: nothing): the one rule
    for names given to cordon and names read back from a store."""
    if not isinstance(host, str) or not host:
        return f"a host name is text, not {host!r}"
    if host != host.strip() or not host.isprintable():
        return f"a host name has no spaces around it and no control characters: {host!r}"
    if len(host) > 255:
        return f"a host name has at most 255 characters, not {len(host)}"
    return None


@dataclass(frozen=True, slots=True)
class Cordon:
    """A host taken out of rotation: every process on ``host`` (the name its records carry:
    ``MAINTGUARD_HOST``, or the machine's host name) answers the middleware's readiness
    path with 503, and goes on serving other requests. Who cordoned it (``by``,
    ``user@host``), since when (``since``, aware UTC) and why (``reason``).

    ``drain`` (a token) is set while :func:`maintguard.cordon` waits for the host's
    in-flight work, until ``drain_until`` at most: the host's processes report their work
    to it (a drain whose waiter died stops counting then)."""

    host: str
    since: datetime
    by: str | None = None
    reason: str | None = None
    drain: str | None = None
    drain_until: datetime | None = None

    def draining(self, now: datetime) -> bool:
        """Whether a drain waits for this host's work at ``now``."""
        return self.drain is not None and self.drain_until is not None and self.drain_until > now


def windows_in_force(
    levels: Iterable[StoredState], now: datetime
) -> list[tuple[WindowRecord, Occurrence]]:
    """The windows of ``levels`` whose planned occurrence covers ``now``."""
    found = []
    for level in levels:
        for window in level.windows:
            occurrence = window.current(now)
            if occurrence is not None and occurrence[0] <= now:
                found.append((window, occurrence))
    return found


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a backend stores for one scope: the explicit state and the hold records.

    ``workers`` (kept in the global scope's state only) records the processes that watch
    the store, for drains that span processes.
    """

    explicit: ExplicitState = field(default_factory=ExplicitState)
    holds: tuple[HoldRecord, ...] = ()
    workers: tuple[WorkerRecord, ...] = ()
    windows: tuple[WindowRecord, ...] = ()
    """Planned maintenance windows of this scope (see :class:`WindowRecord`)."""
    history: tuple[AuditEntry, ...] = ()
    """The audit trail of operators' changes, newest first (kept in the global scope's
    state only, for the whole store; see :class:`AuditEntry`)."""
    cordons: tuple[Cordon, ...] = ()
    """The cordoned hosts (kept in the global scope's state only; see :class:`Cordon`)."""

    def cordon_of(self, host: str) -> Cordon | None:
        """``host``'s cordon (None: not cordoned)."""
        for found in self.cordons:
            if found.host == host:
                return found
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back (for user-written backends)."""
        data = explicit_to_dict(self.explicit)
        data["holds"] = [hold_to_dict(h) for h in self.holds]
        if self.workers:
            data["workers"] = [worker_to_dict(w) for w in self.workers]
        if self.windows:
            data["windows"] = [window_to_dict(w) for w in self.windows]
        if self.history:
            data["history"] = [entry_to_dict(e) for e in self.history]
        if self.cordons:
            data["cordons"] = [cordon_to_dict(c) for c in self.cordons]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> StoredState:
        """Parse :meth:`to_dict` output (a hand-edited one too).

        What says whether maintenance is on — ``active``, the hold records' ids and leases —
        and the presence records drains wait on must be readable, or this raises
        ``ValueError`` saying what is wrong (the backend then follows ``on_error``). An
        invalid detail (a negative ``retry_after``, a reason that is not text, an unknown
        mode, a time that is no time...) is dropped with a warning naming the field and
        ``where`` (the store), logged once while it lasts.
        """
        problems: list[str] = []
        state = stored_from_dict(data, problems)
        warn_invalid(where or "a stored maintenance state", problems)
        return state


# -- the JSON forms of the parts (what `StoredState.to_dict` is made of) ------------------


def explicit_to_dict(e: ExplicitState) -> dict[str, Any]:
    return {
        "active": e.active,
        "reason": e.reason,
        "retry_after": _dump_retry_after(e.retry_after),
        "until": _dump_time(e.until),
        "mode": e.mode.value,
        "since": _dump_time(e.since),
    }


def stored_from_dict(data: Any, problems: list[str]) -> StoredState:
    """:meth:`StoredState.from_dict`, noting the details it drops in ``problems``."""
    explicit = explicit_from_dict(data, problems)
    holds = data.get("holds", [])
    if not isinstance(holds, list):
        raise ValueError("'holds' must be a list")
    workers = data.get("workers", [])
    if not isinstance(workers, list):
        if problems is None:
            raise ValueError("'workers' must be a list")
        problems.append(f"'workers' is ignored: a list of presence records, not {workers!r}")
        workers = []
    windows = data.get("windows", [])
    if not isinstance(windows, list):
        problems.append(f"'windows' is ignored: a list of windows, not {windows!r}")
        windows = []
    history = data.get("history", [])
    if not isinstance(history, list):
        problems.append(f"'history' is ignored: a list of audit entries, not {history!r}")
        history = []
    cordons = data.get("cordons", [])
    if not isinstance(cordons, list):
        problems.append(f"'cordons' is ignored: a list of cordons, not {cordons!r}")
        cordons = []
    return StoredState(
        explicit,
        tuple(hold_from_dict(h, problems) for h in holds),
        tuple(w for w in (worker_from_dict(w, problems) for w in workers) if w is not None),
        tuple(w for w in (window_from_dict(w, problems) for w in windows) if w is not None),
        tuple(e for e in (entry_from_dict(e, problems) for e in history) if e is not None),
        tuple(c for c in (cordon_from_dict(c, problems) for c in cordons) if c is not None),
    )


def explicit_from_dict(data: Any, problems: list[str] | None = None) -> ExplicitState:
    """The explicit state in ``data``: ``active`` must be readable; an invalid detail is
    dropped and noted in ``problems`` (without ``problems``, it raises ``ValueError``)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected an object, found {type(data).__name__}")
    detail = _Details(data, problems, "")
    return ExplicitState(
        active=_get(data, "active", bool, False),
        reason=detail("reason", _text),
        retry_after=detail("retry_after", _load_retry_after),
        until=detail("until", _load_time),
        mode=detail("mode", _load_mode, Mode.FULL),
        since=detail("since", _load_time),
    )


class _Details:
    """Reads the optional fields of one record: a value that cannot be read is dropped
    (the default stands) and noted, or raises when nobody collects the notes."""

    __slots__ = ("data", "label", "problems")

    def __init__(self, data: Mapping[str, Any], problems: list[str] | None, label: str) -> None:
        self.data, self.problems, self.label = data, problems, label

    def __call__(self, key: str, load: Callable[[Any], Any], default: Any = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return load(value)
        except (ValueError, TypeError, OverflowError) as exc:
            if self.problems is None:
                raise ValueError(f"{key!r}: {exc}") from None
            self.problems.append(f"{self.label}{key!r} is ignored: {exc}")
            return default


def warn_invalid(where: str, problems: list[str]) -> None:
    """Log each dropped detail of ``where`` once while it lasts: a watcher reads the same
    file every second, and one warning per problem is what an operator needs. A problem
    that goes away (the field was fixed) and comes back is logged again."""
    before = _warned.get(where)
    if not problems:
        if before:
            del _warned[where]
        return
    now = frozenset(problems)
    if now == before:
        return
    if len(_warned) > 1024:  # per-tenant scopes: stay bounded
        _warned.clear()
    _warned[where] = now
    for problem in problems:
        if before is None or problem not in before:
            _stored_logger.warning(
                "%s: %s. Fix or remove the field; the rest of the state is read as usual.",
                where,
                problem,
            )


_warned: dict[str, frozenset[str]] = {}


def hold_to_dict(h: HoldRecord) -> dict[str, Any]:
    return {
        "id": h.id,
        "owner": h.owner,
        "host": h.host,
        "pid": h.pid,
        "acquired": _dump_time(h.acquired),
        "started": _dump_time(h.started),
        "expires": _dump_time(h.expires),
        "reason": h.reason,
        "retry_after": _dump_retry_after(h.retry_after),
        "mode": h.mode.value,
        **({"drain": h.drain} if h.drain is not None else {}),
        **({"running": True} if h.running else {}),
    }


def worker_to_dict(w: WorkerRecord) -> dict[str, Any]:
    return {
        "id": w.id,
        "host": w.host,
        "pid": w.pid,
        "expires": _dump_time(w.expires),
        "reports": dict(w.reports),
    }


def window_to_dict(w: WindowRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"id": w.id, "start": _dump_time(w.start)}
    if w.every is not None:
        data.update(every=w.every, tz=w.tz, duration=w.duration)
    else:
        data["end"] = _dump_time(w.end)
    data.update(
        announce=w.announce,
        reason=w.reason,
        retry_after=_dump_retry_after(w.retry_after),
        mode=w.mode.value,
        created=_dump_time(w.created),
        by=w.by,
    )
    if w.skip:
        data["skip"] = [_dump_time(t) for t in w.skip]
    return data


def window_from_dict(data: Any, problems: list[str] | None = None) -> WindowRecord | None:
    """A stored window. What says when it is in force (``id``, ``start``, and ``end`` or
    ``every`` with ``duration``) must be readable: a window that cannot be evaluated is
    dropped and noted in ``problems`` (it is never taken for "no maintenance" by
    switching anything off: the rest of the state is read as usual). An invalid detail is
    dropped as for a hold. Without ``problems`` it raises ``ValueError``."""
    label = "a window"
    try:
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object, found {data!r}")
        window_id = _get(data, "id", str)
        if not window_id:
            raise ValueError("'id' is missing")
        label = f"window {window_id!r}"
        start = _load_time(data.get("start"))
        if start is None:
            raise ValueError("'start' is missing")
        every, tz, end, duration = data.get("every"), data.get("tz"), None, None
        if every is not None:
            if not isinstance(every, str) or (tz is not None and not isinstance(tz, str)):
                raise ValueError(f"'every' and 'tz' must be text, found {every!r}, {tz!r}")
            duration = data.get("duration")
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                raise ValueError(f"'duration' must be seconds, found {duration!r}")
            if not math.isfinite(duration) or not 0 < duration <= _YEAR:
                raise ValueError(f"'duration' must be 0 to {_YEAR:g} seconds, found {duration!r}")
            duration = float(duration)
        else:
            end = _load_time(data.get("end"))
            if end is None or end <= start:
                raise ValueError(f"'end' must be a time after 'start', found {data.get('end')!r}")
    except (ValueError, TypeError, OverflowError) as exc:
        if problems is None:
            raise
        problems.append(f"{label} is ignored: {exc}")
        return None
    detail = _Details(data, problems, f"{label}: ")
    skip = data.get("skip") or []
    return WindowRecord(
        id=window_id,
        start=start,
        end=end,
        duration=duration,
        every=every,
        tz=tz,
        announce=detail("announce", _load_span),
        reason=detail("reason", _text),
        retry_after=detail("retry_after", _load_retry_after),
        mode=detail("mode", _load_mode, Mode.FULL),
        created=detail("created", _load_time),
        by=detail("by", _text),
        skip=detail("skip", _load_times, ()) if skip else (),
    )


def entry_to_dict(e: AuditEntry) -> dict[str, Any]:
    data: dict[str, Any] = {
        "at": _dump_time(e.at),
        "actor": e.actor,
        "pid": e.pid,
        "command": e.command,
        "kind": e.kind,
        "scope": e.scope,
        "reason": e.reason,
    }
    if e.window is not None:
        data["window"] = e.window
    if e.holds:
        data["holds"] = list(e.holds)
    if e.host is not None:
        data["host"] = e.host
    return data


def entry_from_dict(data: Any, problems: list[str] | None = None) -> AuditEntry | None:
    """An audit entry: ``at``, ``actor`` and ``kind`` must be readable, or the entry is
    dropped and noted in ``problems`` (whether maintenance is on never depends on one); an
    invalid detail is dropped as for a hold. Without ``problems`` it raises ``ValueError``."""

    def required(data: Mapping[str, Any]) -> tuple[datetime, str, str]:
        at = _load_time(data.get("at"))
        if at is None:
            raise ValueError("'at' is missing")
        return at, _text(data.get("actor")), _text(data.get("kind"))

    found = _readable(data, problems, "an audit entry", required)
    if found is None:
        return None
    at, actor, kind = found
    detail = _Details(data, problems, f"audit entry of {at.isoformat()}: ")
    return AuditEntry(
        at=at,
        actor=actor,
        kind=kind,
        pid=detail("pid", _pid, 0),
        command=detail("command", _text, ""),
        scope=detail("scope", _text),
        reason=detail("reason", _text),
        window=detail("window", _text),
        holds=detail("holds", _names, ()),
        host=detail("host", _text),
    )


def cordon_to_dict(c: Cordon) -> dict[str, Any]:
    data: dict[str, Any] = {
        "host": c.host,
        "since": _dump_time(c.since),
        "by": c.by,
        "reason": c.reason,
    }
    if c.drain is not None:
        data["drain"] = c.drain
        data["drain_until"] = _dump_time(c.drain_until)
    return data


def cordon_from_dict(data: Any, problems: list[str] | None = None) -> Cordon | None:
    """A cordon: ``host`` and ``since`` must be readable, or the cordon is dropped and noted
    in ``problems`` (a cordon never decides whether maintenance is on); an invalid detail is
    dropped as for a hold. Without ``problems`` it raises ``ValueError``."""

    def required(data: Mapping[str, Any]) -> tuple[str, datetime]:
        host = data.get("host")
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"'host': {problem}")
        assert isinstance(host, str)
        since = _load_time(data.get("since"))
        if since is None:
            raise ValueError("'since' is missing")
        return host, since

    found = _readable(data, problems, "a cordon", required)
    if found is None:
        return None
    host, since = found
    detail = _Details(data, problems, f"cordon of {host!r}: ")
    return Cordon(
        host=host,
        since=since,
        by=detail("by", _text),
        reason=detail("reason", _text),
        drain=detail("drain", _text),
        drain_until=detail("drain_until", _load_time),
    )


T = TypeVar("T")


def _readable(
    data: Any,
    problems: list[str] | None,
    what: str,
    required: Callable[[Mapping[str, Any]], T],
) -> T | None:
    """``required(data)``: the fields a record cannot do without. When ``data`` is no
    object or one of them cannot be read, the record is dropped and noted in ``problems``
    as ``what`` (without ``problems``: ``ValueError``)."""
    try:
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object, found {data!r}")
        return required(data)
    except (ValueError, TypeError, OverflowError) as exc:
        if problems is None:
            raise ValueError(f"{what}: {exc}") from None
        problems.append(f"{what} is ignored: {exc}")
        return None


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of ids, found {value!r}")
    return tuple(value)


def _load_span(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be seconds, found {value!r}")
    if not math.isfinite(value) or not 0 <= value <= _YEAR:
        raise ValueError(f"must be 0 to {_YEAR:g} seconds (a year), found {value!r}")
    return float(value)


_YEAR = 366 * 86400.0


def _load_times(value: Any) -> tuple[datetime, ...]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of times, found {value!r}")
    times = tuple(_load_time(v) for v in value)
    return tuple(t for t in times if t is not None)


def _get(data: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{key!r} must be {kind.__name__}, found {value!r}")
    return value


def hold_from_dict(data: Any, problems: list[str] | None = None) -> HoldRecord:
    """A hold record: its ``id`` and lease (``expires``) must be readable — they say
    whether it holds maintenance —; other fields are details (see :func:`explicit_from_dict`).
    A ``started`` or ``acquired`` that cannot be read is taken from the other; a hold with
    a lease counts even when neither can be read (its start is then unknown)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a hold must be an object, found {data!r}")
    hold_id = data.get("id")
    if not isinstance(hold_id, str):
        raise ValueError(f"a hold's 'id' must be text, found {hold_id!r}")
    try:
        expires = _load_time(data.get("expires"))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"hold {hold_id!r}: its lease 'expires' cannot be read: {exc}") from None
    detail = _Details(data, problems, f"hold {hold_id!r}: ")
    acquired = detail("acquired", _load_time)
    started = detail("started", _load_time)
    if acquired is None and started is None:
        # With a lease, still a hold (its id and lease say so); with neither times nor a
        # lease, no record maintguard wrote: one that would hold maintenance for ever.
        if problems is None or expires is None:
            raise ValueError(f"hold {hold_id!r} lacks 'acquired' and 'started'")
        problems.append(f"hold {hold_id!r}: 'acquired' and 'started' are unknown")
        acquired = EPOCH  # the oldest: the details shown come from other holds first
    return HoldRecord(
        id=hold_id,
        owner=detail("owner", _text, ""),
        host=detail("host", _text, ""),
        pid=detail("pid", _pid, 0),
        acquired=acquired or started,
        started=started or acquired,
        expires=expires,
        reason=detail("reason", _text),
        retry_after=detail("retry_after", _load_retry_after),
        mode=detail("mode", _load_mode, Mode.FULL),
        drain=detail("drain", _text),
        running=detail("running", _flag, False),
    )


def worker_from_dict(data: Any, problems: list[str] | None = None) -> WorkerRecord | None:
    """A presence record (a process drains wait for). Whether maintenance is on never
    depends on it: one whose id or lease cannot be read is dropped, noted in ``problems``
    (a lease that cannot be judged would hold drains forever); reports that cannot be read
    count as none yet (drains wait for it until its lease ends). Without ``problems``,
    anything unreadable raises ``ValueError``."""

    def bad(problem: str) -> None:
        if problems is None:
            raise ValueError(problem)
        problems.append(problem)

    if not isinstance(data, Mapping):
        bad(f"a presence record that is not an object is ignored: {data!r}")
        return None
    worker_id = data.get("id")
    try:
        expires = _load_time(data.get("expires"))
    except (ValueError, TypeError, OverflowError):
        expires = None
    if not isinstance(worker_id, str) or expires is None:
        bad(f"presence record {worker_id!r} is ignored: its 'id' or lease 'expires' cannot be read")
        return None
    reports = data.get("reports", {})
    if not isinstance(reports, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in reports.items()
    ):
        bad(f"presence record {worker_id!r}: 'reports' is ignored: {reports!r}")
        reports = {}
    detail = _Details(data, problems, f"presence record {worker_id!r}: ")
    return WorkerRecord(
        id=worker_id,
        host=detail("host", _text, ""),
        pid=detail("pid", _pid, 0),
        expires=expires,
        reports=tuple(sorted(reports.items())),
    )


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, found {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, found {value!r}")
    return value


def _pid(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer, found {value!r}")
    return value


def _load_mode(value: Any) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise ValueError(f"unknown mode {value!r} (use 'full' or 'read_only')") from None


def _dump_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _load_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time, found {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time, found {value!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"time {value!r} has no time zone")
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:59-01:00
        raise ValueError(f"time {value!r} is out of range") from None


def _dump_retry_after(value: RetryAfter | None) -> float | str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _load_retry_after(value: Any) -> RetryAfter | None:
    if isinstance(value, bool):
        raise ValueError(f"must be seconds or a time, found {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"must be zero or more seconds, found {value!r}")
        return float(value)
    return _load_time(value)


# -- option checking shared by every face ------------------------------------------------


def check_retry_after(value: float | timedelta | datetime | None) -> RetryAfter | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, datetime):
        return _aware(value, "retry_after")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(
            f"retry_after must be seconds, a timedelta or an aware datetime, not {value!r}"
        )
    return seconds("retry_after", value)


def check_until(value: float | timedelta | datetime | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, datetime):
            until = _aware(value, "until")
        elif isinstance(value, timedelta):
            until = now + value
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            until = now + timedelta(seconds=value)
        else:
            raise ConfigurationError(
                f"until must be an aware datetime, a timedelta or seconds, not {value!r}"
            )
    except OverflowError:  # past year 9999, in UTC or as seconds from now
        raise ConfigurationError(
            f"until {value!r} is out of range: give a time before the year 9999"
        ) from None
    if until <= now:
        raise ConfigurationError(f"until ({until.isoformat()}) is not in the future")
    return until


def check_reason(reason: str | None) -> str | None:
    if reason is not None and not isinstance(reason, str):
        raise ConfigurationError(f"reason must be a string, not {reason!r}")
    return reason


def check_scope(scope: str | None) -> str | None:
    if scope is not None and (not isinstance(scope, str) or not scope.strip()):
        raise ConfigurationError(
            f"scope must be None (global) or a non-empty name such as 'billing', not {scope!r}"
        )
    return scope


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ConfigurationError(
            f"{name} must be timezone-aware, e.g. datetime.now(timezone.utc) + timedelta(...)"
        )
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # 9999-12-31T23:00-05:00
        raise ConfigurationError(f"{name} {value.isoformat()} is out of range") from None


# -- the effective state ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaintenanceState:
    """What readers of one (backend, scope) see.

    ``active`` is true while the operator's explicit state is on (and not past ``until``),
    at least one live hold exists, or a planned window is in force, in this scope or the
    global scope.
    """

    active: bool = False
    mode: Mode = Mode.FULL
    reason: str | None = None
    retry_after: RetryAfter | None = None
    since: datetime | None = None
    until: datetime | None = None
    holds: int = 0
    scope: str | None = None
    phase: Phase = Phase.OFF
    explicit: bool = False
    """True when the operator's explicit state is what keeps maintenance on (or helps)."""
    holders: tuple[HoldRecord, ...] = ()
    """The live hold records, newest first."""
    next_window: Window | None = None
    """The planned window in force, or else the next to start (in every phase), for a
    banner; None when none is planned."""
    windows: tuple[Window, ...] = ()
    """Every planned window of the scope (and of the global scope, for a named one), each
    with its occurrence in force or else its next, earliest start first."""

    def retry_after_seconds(self, now: datetime | None = None) -> int | None:
        """Whole seconds a client should wait, from ``retry_after`` or else ``until``."""
        target = self.retry_after if self.retry_after is not None else self.until
        if target is None:
            return None
        if isinstance(target, datetime):
            return max(0, math.ceil((target - (now or utcnow())).total_seconds()))
        return math.ceil(target)


OFF = MaintenanceState()


def derive(
    scope: str | None, levels: Iterable[StoredState], now: datetime, *, leases: bool = True
) -> MaintenanceState:
    """The effective state of ``scope`` from its own stored state and the global one.

    ``levels`` lists the scope's stored state first, then the global scope's. Details come
    from the newest live hold that sets them, else from an explicit state in force, else
    from a window in force; the mode is the strictest in force; ``until`` is the explicit
    state's, or a window's end when windows alone keep maintenance on. ``leases=False``:
    the levels' holds were judged live already (by the read that found them), and ``now``
    does not judge them again. Windows are judged by their planned occurrences (no cron
    evaluation here).
    """
    levels = tuple(levels)
    holds: list[HoldRecord] = []
    explicits: list[ExplicitState] = []
    for level in levels:
        holds.extend(h for h in level.holds if not leases or h.live(now))
        if level.explicit.in_force(now):
            explicits.append(level.explicit)
    planned = any(level.windows for level in levels)
    in_force = windows_in_force(levels, now) if planned else []
    phase = phase_of(bool(explicits) or bool(in_force), [h.draining for h in holds])
    next_window = _next_window(levels, in_force, now) if planned else None
    windows = _windows(levels, now) if planned else ()
    if phase is Phase.OFF:
        if next_window is None:
            return MaintenanceState(scope=scope) if scope is not None else OFF
        announced = any(
            (at := w.announced_from(o[0])) is not None and at <= now < o[0]
            for level in levels
            for w in level.windows
            if (o := w.current(now)) is not None
        )
        return MaintenanceState(
            scope=scope,
            phase=Phase.ANNOUNCED if announced else Phase.OFF,
            next_window=next_window,
            windows=windows,
        )
    holds.sort(key=lambda h: h.started, reverse=True)
    in_force.sort(key=lambda found: found[1][0], reverse=True)  # the newest occurrence first
    sources: list[HoldRecord | ExplicitState | WindowRecord] = [
        *holds,
        *explicits,
        *(window for window, _ in in_force),
    ]

    def first(attr: str) -> Any:
        return next((v for s in sources if (v := getattr(s, attr)) is not None), None)

    starts = [h.acquired for h in holds] + [e.since for e in explicits if e.since]
    starts += [occurrence[0] for _, occurrence in in_force]
    until = next((e.until for e in explicits if e.until is not None), None)
    if until is None and in_force and not holds and not explicits:
        until = _chained_end(levels, max(occurrence[1] for _, occurrence in in_force))
    return MaintenanceState(
        active=True,
        mode=strictest({s.mode for s in sources}),
        reason=first("reason"),
        retry_after=first("retry_after"),
        since=min(starts) if starts else None,
        until=until,
        holds=len(holds),
        scope=scope,
        phase=phase,
        explicit=bool(explicits),
        holders=tuple(holds),
        next_window=next_window,
        windows=windows,
    )


def _windows(levels: Sequence[StoredState], now: datetime) -> tuple[Window, ...]:
    found = [
        (occurrence, w)
        for level in levels
        for w in level.windows
        if (occurrence := w.current(now)) is not None
    ]
    found.sort(key=lambda pair: (pair[0][0], pair[1].id))
    return tuple(w.view(occurrence) for occurrence, w in found)


def _chained_end(levels: Sequence[StoredState], end: datetime) -> datetime:
    # Windows back to back or overlapping keep maintenance on without a pause: the end is
    # that of the last one in the chain (as far as occurrences are planned).
    planned = sorted(o for level in levels for w in level.windows for o in w.upcoming)
    for start, stop in planned:
        if start <= end < stop:
            end = stop
    return end


def _next_window(
    levels: Sequence[StoredState], in_force: list[tuple[WindowRecord, Occurrence]], now: datetime
) -> Window | None:
    # The window in force that ends last, else the one that starts first.
    if in_force:
        longest = max(in_force, key=lambda found: found[1][1])
        return longest[0].view(longest[1])
    best: tuple[WindowRecord, Occurrence] | None = None
    for level in levels:
        for record in level.windows:
            upcoming = record.current(now)
            if upcoming is not None and (best is None or upcoming[0] < best[1][0]):
                best = (record, upcoming)
    return None if best is None else best[0].view(best[1])


def phase_of(explicit: bool, holds: Iterable[bool]) -> Phase:
    """The phase rule, the one place it is stated.

    ``explicit``: an operator's state or a planned window is in force; ``holds``: for each
    live hold (a record, this process's frames, or the global scope a named one follows),
    whether it still waits for in-flight work before its body runs. ON while the
    operator's state, a window or any hold whose body runs keeps maintenance on; DRAINING
    while only holds still draining do; OFF when nothing does. Maintenance is active
    exactly when the phase is ON or DRAINING (readers see OFF as ANNOUNCED before a
    window: :func:`derive`).
    """
    if explicit:
        return Phase.ON
    phase = Phase.OFF
    for draining in holds:
        if not draining:
            return Phase.ON
        phase = Phase.DRAINING
    return phase


# -- events ----------------------------------------------------------------------------


class EventKind(str, enum.Enum):
    """What a :class:`MaintenanceEvent` reports."""

    TRANSITION = "transition"
    HOLD_ACQUIRED = "hold_acquired"
    HOLD_RELEASED = "hold_released"
    JOB_SKIPPED = "job_skipped"
    DRAIN_FINISHED = "drain_finished"
    DRAIN_TIMED_OUT = "drain_timed_out"
    BACKEND_ERROR = "backend_error"


@dataclass(frozen=True, slots=True)
class MaintenanceEvent:
    """The one object every listener receives.

    ``previous`` and ``phase`` are set for transitions; ``owner`` for holds and skipped jobs;
    ``error`` for backend errors. ``state`` is the effective state after the event.
    """

    kind: EventKind
    scope: str | None
    backend: str
    state: MaintenanceState
    at: datetime = field(default_factory=utcnow)
    previous: Phase | None = None
    phase: Phase | None = None
    owner: str | None = None
    error: BaseException | None = None
    actor: str | None = None
    """``user@host`` of the operator's write that caused the event (``maintguard on``,
    ``set_maintenance_mode``, a window scheduled...) in the process that made it; None for
    changes no operator write made here (a hold, a window starting by the clock, a change
    read from the store)."""
