"""The Starlette/FastAPI face: the middleware and the route decorators."""

from __future__ import annotations

from ._middleware import MaintenanceModeMiddleware
from ._routes import (
    exempt,
    force_maintenance_mode_off,
    force_maintenance_mode_on,
    maintenance_scope,
)

__all__ = [
    "MaintenanceModeMiddleware",
    "exempt",
    "force_maintenance_mode_off",
    "force_maintenance_mode_on",
    "maintenance_scope",
]
