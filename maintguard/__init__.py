"""maintguard: maintenance mode that nests, overlaps and always ends.

>>> from maintguard import under_maintenance, get_maintenance_mode
>>> @under_maintenance(reason="nightly reindex")
... async def reindex() -> None: ...
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from . import sync  # (maintguard.sync works after a plain `import maintguard`)
from ._audit import get_history
from ._cordons import cordon, list_cordons, uncordon
from ._core import add_listener, configure, flush_listeners, remove_listener
from ._guards import NotDuringMaintenance, not_during_maintenance
from ._holds import (
    MaintenanceHold,
    get_maintenance_mode,
    get_state,
    maintenance_mode_on,
    set_maintenance_mode,
    under_maintenance,
)
from ._schedule import cancel_window, list_windows, schedule_maintenance
from ._state import (
    AuditEntry,
    Cordon,
    EventKind,
    HoldRecord,
    MaintenanceEvent,
    MaintenanceState,
    Mode,
    Phase,
    Window,
)
from .backends import Backend
from .exceptions import (
    BackendError,
    ConfigurationError,
    DrainTimeout,
    MaintGuardError,
    ReadOnlyBackendError,
    UnderMaintenance,
)

if TYPE_CHECKING:
    from .starlette import (
        MaintenanceModeMiddleware,
        exempt,
        force_maintenance_mode_off,
        force_maintenance_mode_on,
        maintenance_scope,
    )

_STARLETTE = {
    "MaintenanceModeMiddleware",
    "exempt",
    "force_maintenance_mode_off",
    "force_maintenance_mode_on",
    "maintenance_scope",
}


def __getattr__(name: str) -> Any:
    # The web face imports starlette; load it only when first asked for.
    if name in _STARLETTE:
        try:
            from . import starlette as face
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from .exceptions import ConfigurationError

            raise ConfigurationError(
                f"maintguard.{name} needs Starlette: pip install 'maintguard[starlette]'"
            ) from exc
        return getattr(face, name)
    raise AttributeError(f"module 'maintguard' has no attribute {name!r}")


try:
    __version__ = version("maintguard")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AuditEntry",
    "Backend",
    "BackendError",
    "ConfigurationError",
    "Cordon",
    "DrainTimeout",
    "EventKind",
    "HoldRecord",
    "MaintGuardError",
    "MaintenanceEvent",
    "MaintenanceHold",
    "MaintenanceState",
    "Mode",
    "NotDuringMaintenance",
    "Phase",
    "ReadOnlyBackendError",
    "UnderMaintenance",
    "Window",
    "__version__",
    "add_listener",
    "cancel_window",
    "configure",
    "cordon",
    "flush_listeners",
    "get_history",
    "get_maintenance_mode",
    "get_state",
    "list_cordons",
    "list_windows",
    "maintenance_mode_on",
    "not_during_maintenance",
    "remove_listener",
    "schedule_maintenance",
    "set_maintenance_mode",
    "sync",
    "uncordon",
    "under_maintenance",
]
if TYPE_CHECKING or find_spec("starlette") is not None:
    # `from maintguard import *` works without Starlette: the web face is left out then.
    __all__ += [
        "MaintenanceModeMiddleware",
        "exempt",
        "force_maintenance_mode_off",
        "force_maintenance_mode_on",
        "maintenance_scope",
    ]
