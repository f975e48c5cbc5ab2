"""maintguard's error classes, below every other module (they need none of them).

:mod:`maintguard.exceptions` is where users import them from; it adds the one error that
carries a state (:class:`~maintguard.exceptions.UnderMaintenance`). They are defined here
so that the value types (:mod:`maintguard._state`), which raise
:class:`ConfigurationError`, and :mod:`maintguard.exceptions`, which names a
:class:`~maintguard.MaintenanceState`, need not import each other.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "ConfigurationError",
    "DrainTimeout",
    "MaintGuardError",
    "PartialReadError",
    "ReadOnlyBackendError",
]


class MaintGuardError(Exception):
    """Base class of every maintguard error."""


class ConfigurationError(MaintGuardError, ValueError):
    """An option, URL or decorator use is wrong; the message says how to fix it."""


class BackendError(MaintGuardError):
    """A backend could not read or write the maintenance state."""


class PartialReadError(BackendError):
    """A whole-store read found some scopes unreadable (keys another program wrote).

    ``found`` has the scopes that could be read; each scope missing from it follows
    ``on_error``. ``complete`` is False when even the list of named scopes could not be
    read (then every named scope missing from ``found`` is unknown, not empty)."""

    def __init__(
        self, message: str, found: dict[str | None, Any], *, complete: bool = True
    ) -> None:
        self.found = found
        self.complete = complete
        super().__init__(message)


class ReadOnlyBackendError(BackendError):
    """A write was asked of a backend that can only be read (the environment variable)."""


class DrainTimeout(MaintGuardError):
    """A drained hold's in-flight work did not end within ``drain`` seconds and
    ``on_drain_timeout="raise"`` was asked: the hold was released and its body never ran.
    ``pending`` is how much work was still running (this process's, plus other processes
    that had not reported zero)."""

    def __init__(self, message: str, pending: int = 0) -> None:
        self.pending = pending
        super().__init__(message)


for _error in (
    MaintGuardError,
    ConfigurationError,
    BackendError,
    PartialReadError,
    ReadOnlyBackendError,
    DrainTimeout,
):
    _error.__module__ = "maintguard.exceptions"  # where users import them from
del _error
