"""Route decorators: mark an endpoint; the middleware reads the mark. Nothing is wrapped."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, overload

from .._state import check_scope
from ..exceptions import ConfigurationError

__all__ = [
    "Learner",
    "RoutePolicy",
    "exempt",
    "force_maintenance_mode_off",
    "force_maintenance_mode_on",
    "maintenance_scope",
    "policy_of",
    "tell_when_marked",
]

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__maintguard_route__"


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    exempt: bool = False
    forced: bool = False
    scope: str | None = None


_NONE = RoutePolicy()


class Learner(Protocol):
    """What one app learned of its routes: told when an endpoint is marked afterwards."""

    def marked(self, target: Any) -> None: ...


# What each middleware learned of its own app's routes. A mark set after an app was learned
# (a decorator applied to an endpoint already routed) tells every learner, and each one
# that reaches that endpoint learns its routes again; nothing here steers requests.
_learners: weakref.WeakSet[Any] = weakref.WeakSet()


def tell_when_marked(learner: Learner) -> None:
    """Call ``learner.marked(target)`` whenever an endpoint is marked from now on."""
    _learners.add(learner)


def policy_of(endpoint: Any) -> RoutePolicy:
    policy = getattr(endpoint, _ATTR, None)
    if policy is None and hasattr(endpoint, "__func__"):  # a bound method
        policy = getattr(endpoint.__func__, _ATTR, None)
    return policy if isinstance(policy, RoutePolicy) else _NONE


def _mark(func: Any, name: str, **change: Any) -> Any:
    target = func.__func__ if isinstance(func, classmethod | staticmethod) else func
    if isinstance(target, str) or not callable(target):
        raise ConfigurationError(f"@{name} goes on an endpoint function or class, not {func!r}")
    current = policy_of(target)
    merged = RoutePolicy(**{**_as_dict(current), **change})
    if merged.exempt and merged.forced:
        raise ConfigurationError(
            f"{getattr(target, '__qualname__', target)!r} is marked both exempt and "
            "force_maintenance_mode_on: keep one"
        )
    try:
        setattr(getattr(target, "__func__", target), _ATTR, merged)
    except (AttributeError, TypeError) as exc:
        raise ConfigurationError(f"@{name} cannot mark {func!r}: {exc}") from exc
    for learner in list(_learners):
        learner.marked(getattr(target, "__func__", target))
    return func


def _as_dict(policy: RoutePolicy) -> dict[str, Any]:
    return {"exempt": policy.exempt, "forced": policy.forced, "scope": policy.scope}


@overload
def exempt(func: F, /) -> F: ...
@overload
def exempt(func: None = None, /) -> Callable[[F], F]: ...
def exempt(func: Any = None, /) -> Any:
    """Keep this endpoint answering during maintenance (health checks, status pages).

    Works above or below ``@app.get``/``@router.get``, or on a ``Route(endpoint=...)``;
    the function is returned unchanged, so signatures, dependencies and OpenAPI stay.

    >>> @exempt
    ... async def health(): ...
    """
    if func is None:
        return lambda f: _mark(f, "exempt", exempt=True)
    return _mark(func, "exempt", exempt=True)


force_maintenance_mode_off = exempt


@overload
def force_maintenance_mode_on(func: F, /) -> F: ...
@overload
def force_maintenance_mode_on(func: None = None, /) -> Callable[[F], F]: ...
def force_maintenance_mode_on(func: Any = None, /) -> Any:
    """This endpoint answers with the maintenance response even while maintenance is off.

    >>> @force_maintenance_mode_on
    ... async def legacy_export(): ...
    """

    if func is None:
        return lambda f: _mark(f, "force_maintenance_mode_on", forced=True)
    return _mark(func, "force_maintenance_mode_on", forced=True)


def maintenance_scope(scope: str) -> Callable[[F], F]:
    """Block this endpoint while the named scope (or the global scope) is on.

    >>> @maintenance_scope("billing")
    ... async def invoices(): ...
    """
    if callable(scope):
        raise ConfigurationError(
            "maintenance_scope needs a scope name: write @maintenance_scope('billing')"
        )
    name = check_scope(scope)

    def mark(func: F) -> F:
        return _mark(func, "maintenance_scope", scope=name)  # type: ignore[no-any-return]

    return mark
