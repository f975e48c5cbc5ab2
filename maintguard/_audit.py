"""The face of the audit trail: who changed what, through the operators' writes.

Each change an operator or a program makes (``maintguard on``/``off``,
``set_maintenance_mode``, a window scheduled, cancelled or ended early, ``off --force``
removing holds) is recorded by the core (:mod:`._core.operators`) in the store's global
scope; this reads it back.
"""

from __future__ import annotations

from ._core import controller, resolve_backend
from ._core.controller import refresh_stale
from ._options import named_options
from ._state import AuditEntry, check_scope
from .backends import Backend
from .exceptions import ConfigurationError

__all__ = ["get_history"]

BackendArg = Backend | str | None


@named_options
async def get_history(
    backend: BackendArg = None, *, scope: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    """The audit trail of the store, newest first: at most the 100 newest changes made
    through the operators' writes, in every scope. ``scope``: only that scope's entries
    (``None``: all); ``limit``: at most that many. The env backend has none.

    >>> async def who_switched() -> str | None:
    ...     last = await get_history(limit=1)
    ...     return last[0].actor if last else None
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(f"limit must be a positive whole number, not {limit!r}")
    check_scope(scope)
    ctrl = controller(resolve_backend(backend), None)
    await refresh_stale(ctrl)
    stored = ctrl.stored
    entries = [] if stored is None else list(stored.history)
    if scope is not None:
        entries = [e for e in entries if e.scope == scope]
    return entries if limit is None else entries[:limit]
