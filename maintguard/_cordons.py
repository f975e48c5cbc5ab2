"""Cordons: take a host out of rotation, and put it back.

A cordon is stored in the store's global scope (like the explicit state), by host name:
every process on that host that serves the middleware's ``readiness_path`` answers it
with 503 from the moment it sees the cordon, and goes on serving every other request (the
load balancer stops sending them). A cordon never turns maintenance on.

``cordon(drain=S)`` then waits, for ``S`` seconds at most, until the in-flight work of that
host's processes has ended: the hold drain's machinery (:mod:`._core.drain`), limited to
one host. While it waits the cordon carries a drain token, and each process of the host
reports its work to it in its presence record; the token counts until ``drain_until``
only, so a waiter that dies leaves nothing that counts for long.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

from ._core import ScopeController, controller, resolve_backend
from ._core.controller import refresh_stale
from ._core.drain import drained, host_left
from ._core.drive import ASYNC
from ._core.identity import HOST, new_id, who
from ._core.inflight import own_keys
from ._core.presence import cordon_key, unfinished_on_host
from ._core.stack import to_datetime
from ._options import named_options, seconds_or_none
from ._state import Cordon, MaintenanceState, StoredState, host_problem
from .backends import Backend
from .exceptions import ConfigurationError, DrainTimeout

__all__ = ["check_host", "cordon", "cordoned", "list_cordons", "not_ready", "uncordon"]

logger = logging.getLogger("maintguard")

BackendArg = Backend | str | None
GRACE = 30.0
"""Seconds a drain token outlives the drain's own limit: reports stop counting after it
even when the waiter died without taking the token off."""
_ON_DRAIN_TIMEOUT = ("proceed", "raise")


def check_host(host: object) -> str:
    """``host`` checked as a host name in records (None: this host, :data:`HOST`)."""
    if host is None:
        return HOST
    problem = host_problem(host)
    if problem is not None:
        raise ConfigurationError(
            f"host must be a host name as records carry it (the machine's host name, or "
            f"MAINTGUARD_HOST where set): {problem}; `maintguard status` lists the cordoned "
            f"hosts and the hosts of holds"
        )
    assert isinstance(host, str)
    return host


def cordoned(stored: StoredState | None, host: str) -> Cordon | None:
    """``host``'s cordon in the global scope's ``stored`` state (None: not cordoned). Pure."""
    return None if stored is None else stored.cordon_of(host)


def not_ready(
    stored: StoredState | None, state: MaintenanceState, host: str, during_maintenance: bool
) -> str | None:
    """Why an instance on ``host`` should take no traffic (None: it should), from the global
    scope's ``stored`` state and its effective ``state``: ``"cordoned"`` while the host is
    cordoned; ``"maintenance"`` while maintenance is on, unless ``during_maintenance`` (it
    serves the maintenance page). The readiness rule, in one place. Pure."""
    if cordoned(stored, host) is not None:
        return "cordoned"
    if state.active and not during_maintenance:
        return "maintenance"
    return None


@named_options
async def cordon(
    host: str | None = None,
    *,
    reason: str | None = None,
    drain: float | timedelta | None = None,
    on_drain_timeout: str = "proceed",
    backend: BackendArg = None,
) -> Cordon:
    """Take ``host`` (default: this one) out of rotation: every process on it answers the
    middleware's ``readiness_path`` with 503 from when it sees the cordon; other requests
    still pass. Cordoning a host again keeps its ``since`` and updates the reason (given).

    ``drain``: then wait, ``drain`` seconds at most, until the in-flight work (guarded
    calls, requests) of that host's processes has ended, as their presence records report
    it (this process's own work, when it is on that host, less the request or job this
    runs in). When the time runs out, ``on_drain_timeout="proceed"`` (the default) logs a
    warning and returns; ``"raise"`` raises :class:`~maintguard.exceptions.DrainTimeout`.
    The host stays cordoned either way. Recorded in the audit trail.

    >>> async def before_restart() -> None:
    ...     await cordon(reason="kernel update", drain=60)
    """
    host = check_host(host)
    if reason is not None and not isinstance(reason, str):
        raise ConfigurationError(f"reason must be text or None, not {reason!r}")
    limit = seconds_or_none("drain", drain, spans=True)
    if on_drain_timeout not in _ON_DRAIN_TIMEOUT:
        raise ConfigurationError(
            f"on_drain_timeout must be 'proceed' or 'raise', not {on_drain_timeout!r}"
        )
    ctrl = _writer(backend)
    await refresh_stale(ctrl)
    now = _now(ctrl)
    before = cordoned(ctrl.stored, host)
    running = before if before is not None and before.draining(now) else None  # kept
    record = Cordon(
        host=host,
        since=now if before is None else before.since,
        by=who(),
        reason=reason if reason is not None or before is None else before.reason,
        drain=None if running is None else running.drain,
        drain_until=None if running is None else running.drain_until,
    )
    if limit is None:
        await ctrl.put_cordon(host, record, "cordon")
        return record
    # A drain already running shares its token (the host's processes report to one),
    # its limit pushed out to this one's when later.
    token = record.drain or new_id()
    until = max(record.drain_until or now, now + timedelta(seconds=limit + GRACE))
    record = replace(record, drain=token, drain_until=until)
    exclude = own_keys()
    await ctrl.put_cordon(host, record, "cordon")
    try:
        pending = await drained(ASYNC, ctrl, host_left(ctrl, token, host, exclude), exclude, limit)
    finally:
        with ASYNC.shield():
            await _drain_over(ctrl, host, token, until)
    if cordoned(ctrl.stored, host) is None:
        logger.warning(
            "maintguard: cordon of %r: the host was uncordoned while its drain waited; "
            "the drain stopped there",
            host,
        )
    elif pending:
        message = (
            f"cordon of {host!r}: in-flight work did not end within drain={limit:g}s "
            f"({_pending(ctrl, token, host, pending)}); the host stays cordoned"
        )
        if on_drain_timeout == "raise":
            raise DrainTimeout(message, pending)
        logger.warning("maintguard: %s; going on (on_drain_timeout='proceed')", message)
    return replace(record, drain=None, drain_until=None)


@named_options
async def uncordon(host: str | None = None, *, backend: BackendArg = None) -> bool:
    """Put ``host`` (default: this one) back in rotation: its processes answer the
    readiness path with 200 again (unless maintenance says otherwise). False when it was
    not cordoned. Recorded in the audit trail."""
    host = check_host(host)
    ctrl = _writer(backend)
    return await ctrl.put_cordon(host, None, "uncordon")


@named_options
async def list_cordons(*, backend: BackendArg = None) -> list[Cordon]:
    """The cordoned hosts of the store, by host name."""
    ctrl = _writer(backend)
    await refresh_stale(ctrl)
    stored = ctrl.stored
    return [] if stored is None else sorted(stored.cordons, key=lambda c: c.host)


def _pending(ctrl: ScopeController, token: str, host: str, pending: int) -> str:
    # What the drain still waited for: this process's work, and the processes of the host
    # that had not reported zero (named: one that never reports may run an older
    # maintguard, from before cordons).
    names = [
        f"pid {worker.pid}" + (" (no report)" if count is None else f" ({count} in flight)")
        for worker, count in unfinished_on_host(ctrl.store, cordon_key(token), host)
    ]
    here = pending - len(names)
    parts = ([f"{here} of this process's own"] if here > 0 else []) + names
    return f"still running on {host!r}: {', '.join(parts) or pending}"


async def _drain_over(ctrl: ScopeController, host: str, token: str, until: datetime) -> None:
    # The drain's token off the cordon, unless the host was uncordoned meanwhile or a
    # later drain now waits on it (it pushed the limit out). A failure is logged; the
    # token stops counting at its drain_until anyway.
    try:
        await refresh_stale(ctrl)
        found = cordoned(ctrl.stored, host)
        if found is not None and found.drain == token and found.drain_until == until:
            kept = replace(found, drain=None, drain_until=None)
            await ctrl.put_cordon(host, kept, None)
    except Exception as exc:
        logger.warning(
            "maintguard: cordon of %r: could not mark its drain over (%s); the host's "
            "processes stop reporting to it within %gs",
            host,
            exc,
            GRACE,
        )


def _now(ctrl: ScopeController) -> datetime:
    return to_datetime(ctrl.store.clock())


def _writer(backend: BackendArg) -> ScopeController:
    return controller(resolve_backend(backend), None)
