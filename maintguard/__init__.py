"""maintguard: maintenance mode that nests, overlaps and always ends.

>>> from maintguard import under_maintenance, get_maintenance_mode
>>> @under_maintenance(reason="nightly reindex")
... async def reindex() -> None: ...
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .backends import Backend
from .core import add_listener, configure, remove_listener
from .exceptions import (
    BackendError,
    ConfigurationError,
    MaintGuardError,
    ReadOnlyBackendError,
    UnderMaintenance,
)
from .guards import (
    MaintenanceHold,
    get_maintenance_mode,
    get_state,
    maintenance_mode_on,
    set_maintenance_mode,
    under_maintenance,
)
from .state import EventKind, HoldRecord, MaintenanceEvent, MaintenanceState, Mode, Phase

try:
    __version__ = version("maintguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "Backend",
    "BackendError",
    "ConfigurationError",
    "EventKind",
    "HoldRecord",
    "MaintGuardError",
    "MaintenanceEvent",
    "MaintenanceHold",
    "MaintenanceState",
    "Mode",
    "Phase",
    "ReadOnlyBackendError",
    "UnderMaintenance",
    "__version__",
    "add_listener",
    "configure",
    "get_maintenance_mode",
    "get_state",
    "maintenance_mode_on",
    "remove_listener",
    "set_maintenance_mode",
    "under_maintenance",
]
