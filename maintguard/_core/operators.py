"""Operators' writes: the explicit state, planned windows, cordons, and removing other
processes' hold records; each change is recorded in the store's audit trail.

They go through the same ordered writes as this process's own record (:mod:`.persist`),
so a result that lands late never undoes a newer one. Recording comes after the change, as
a write of its own to the global scope (the trail is the whole store's): a recording that
fails is logged, never raised, and the change stands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Collection
from typing import Any

from .._state import AuditEntry, Cordon, ExplicitState, WindowRecord
from .._windows import LIMIT
from ..backends._writes import PutCordon, PutHold, PutWindow, Record, SetExplicit, Write
from ..exceptions import MaintGuardError, ReadOnlyBackendError
from . import io
from .drive import ASYNC
from .identity import command, pid, who
from .persist import Persisting
from .reading import as_backend_error
from .stack import to_datetime

__all__ = ["AUDIT_LOGGER", "KEEP", "Operators", "read_only_error"]

AUDIT_LOGGER = "maintguard.audit"
KEEP = 100
"""How many audit entries a store keeps (the newest; for the whole store, not per scope)."""
_audit_logger = logging.getLogger(AUDIT_LOGGER)


class Operators(Persisting):
    """The operators' writes of a scope controller."""

    async def set_explicit(self, explicit: ExplicitState) -> None:
        """Set the explicit (operator) state; holds are not touched. ``since`` is kept
        when the state is in force already. Recorded as ``on`` or ``off``."""
        actor = who()
        await self._operator_write(
            lambda: SetExplicit(explicit, to_datetime(self.store.clock())),
            "writing the state",
            actor,
        )
        await self.record("on" if explicit.active else "off", actor, reason=explicit.reason)

    async def remove_holds(self, hold_ids: Collection[str]) -> None:
        """Remove other processes' hold records from this scope (an operator's forced off).

        A holder that still runs writes its record again as soon as it sees it gone (a live
        holder never loses its hold to a lost record); this is for holders that died or
        hang. This process's own record is left to its frames.
        """
        actor = who()
        removed: list[str] = []
        try:
            for hold_id in hold_ids:
                if hold_id != self.hold_id:
                    await self._operator_write(
                        functools.partial(self._removal, hold_id),
                        f"removing hold {hold_id}",
                        actor,
                    )
                    removed.append(hold_id)
        except Exception:
            if removed:  # those removed before the failure are recorded too
                await self.record("holds removed", actor, holds=removed)
            raise
        if removed:
            await self.record("holds removed", actor, holds=removed)

    async def put_window(
        self, window_id: str, record: WindowRecord | None, audit: str | None = None
    ) -> bool:
        """Store window ``record`` (``None``: remove window ``window_id``); whether the
        window was there before. ``audit``: the kind of change to record (a window
        scheduled, cancelled, ended early), when the write changed something; None
        records nothing (a one-off window that has ended, tidied away)."""
        actor = who()
        write = PutWindow(window_id, record, LIMIT)
        await self._operator_write(
            lambda: write,
            f"{'removing' if record is None else 'storing'} window {window_id}",
            actor,
        )
        if audit is not None and (record is not None or write.found):
            reason = record.reason if record is not None and audit != "window ended" else None
            await self.record(audit, actor, reason=reason, window=window_id)
        return write.found

    async def put_cordon(self, host: str, record: Cordon | None, audit: str | None) -> bool:
        """Store ``record`` as ``host``'s cordon (``None``: remove it), in the global scope
        (cordons are the store's); whether the host was cordoned before. ``audit``: the
        kind of change to record (``"cordon"``, ``"uncordon"``) when the write changed
        something; None records nothing (a drain's end, tidied away)."""
        root = self.parent if isinstance(self.parent, Operators) else self
        actor = who()
        write = PutCordon(host, record)
        doing = f"{'uncordoning' if record is None else 'cordoning'} host {host!r}"
        await root._operator_write(lambda: write, doing, actor)
        if root.store.work.drains:
            root.store.work.wake()  # a cordon's drain here looks again (uncordoned: done)
        if audit is not None and (record is not None or write.found):
            reason = None if record is None else record.reason
            await root.record(audit, actor, reason=reason, host=host)
        return write.found

    async def record(
        self,
        kind: str,
        actor: str,
        *,
        reason: str | None = None,
        window: str | None = None,
        holds: Collection[str] = (),
        host: str | None = None,
    ) -> None:
        """Add an entry for a change made in this scope to the store's audit trail (kept
        in the global scope's state). Never raises but for cancellation: a failure is
        logged, and the change it records stands."""
        root = self.parent if isinstance(self.parent, Operators) else self  # global scope
        entry = AuditEntry(
            at=to_datetime(self.store.clock()),
            actor=actor,
            kind=kind,
            pid=pid(),
            command=command(),
            scope=self.scope,
            reason=reason,
            window=window,
            holds=tuple(holds),
            host=host,
        )
        try:
            await root._operator_write(
                lambda: Record(entry, KEEP), "recording the change in the audit trail", None
            )
        except Exception as exc:
            _audit_logger.warning(
                "%s: %r by %s was made, but could not be recorded in the audit trail: %s",
                self.label,
                kind,
                actor,
                exc,
            )

    def _removal(self, hold_id: str) -> PutHold:
        return PutHold(hold_id, None, to_datetime(self.store.clock()), self.backend.lease_ttl)

    async def _operator_write(
        self, make: Callable[[], Write], doing: str, actor: str | None
    ) -> None:
        if self.backend.read_only:
            raise read_only_error(self.backend, self.scope)
        turn, build = self._numbered(make)
        try:
            new = await io.update(ASYNC, self.backend, self.scope, build, self.store)
        except MaintGuardError:
            raise
        except Exception as exc:
            raise as_backend_error(exc, f"{self.label}: {doing} failed") from exc
        self.store.used = True
        with self._lock:
            change = self._apply_write(new, turn)
        self._announce(change, None, actor=actor)
        wake = self.store.wake_watcher
        if wake is not None:  # its next wake-up may now come too late (a window, an until)
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                wake()


def read_only_error(backend: Any, scope: str | None) -> ReadOnlyBackendError:
    make = getattr(backend, "_read_only_error", None)
    if make is not None:
        return make(scope)  # type: ignore[no-any-return]
    return ReadOnlyBackendError(f"{backend.describe()} cannot be written")
