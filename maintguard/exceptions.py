"""Every error maintguard raises derives from :class:`MaintGuardError`."""

from __future__ import annotations

from ._errors import (
    BackendError,
    ConfigurationError,
    DrainTimeout,
    MaintGuardError,
    PartialReadError,
    ReadOnlyBackendError,
)
from ._state import MaintenanceState

__all__ = [
    "BackendError",
    "ConfigurationError",
    "DrainTimeout",
    "MaintGuardError",
    "PartialReadError",
    "ReadOnlyBackendError",
    "UnderMaintenance",
]


class UnderMaintenance(MaintGuardError):
    """Ordinary work was refused because maintenance is on; ``state`` tells why and until when."""

    def __init__(self, state: MaintenanceState, message: str | None = None) -> None:
        self.state = state
        super().__init__(message or _describe(state))


def _describe(state: MaintenanceState) -> str:
    text = "maintenance is on"
    if state.scope is not None:
        text += f" (scope {state.scope!r})"
    if state.reason:
        text += f": {state.reason}"
    return text
