"""What maintenance does with one request: every rule on routes, paths, methods and states,
written once.

:func:`decide` is a plain function of the request (its ASGI scope), what the middleware
learned of its app's routes, its path options and the state of each scope; it does no I/O
and never awaits. The request path asks it with the states in force; a drain asks it, for a
request already in flight, with the state its hold would bring ("would this hold refuse
it?"), so the two cannot disagree. What needs awaiting or the client's own credentials
(``allow_ips``, the bypass secret, ``exempt_handler``) comes after, in the middleware, only
for a request this decides to refuse.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from .._state import MaintenanceState, Mode, Phase
from ..exceptions import ConfigurationError
from ._matching import FULL, PARTIAL, AppRoutes, route_path

__all__ = [
    "APP",
    "EXEMPT",
    "FORCED",
    "OFF",
    "READ",
    "REFUSE",
    "Decision",
    "PathRules",
    "States",
    "decide",
    "hold_of",
]

# Verdicts. Those below REFUSE let the request through on the word of the routes.
APP = 0  # no route matches (or only another method's): the app answers its own 404/405
OFF = 1  # maintenance is off for this request: it passes and is work in flight
READ = 2  # read-only maintenance and a safe HTTP method: passes, in flight
EXEMPT = 3  # exempt whatever the state: its endpoint's mark, the docs, an exempt path
REFUSE = 4  # maintenance is on for it: refused, unless the client is let through
FORCED = 5  # a @force_maintenance_mode_on endpoint: refused, whatever the state or client

Decision = tuple[int, Any, MaintenanceState, Sequence[str]]
"""(verdict, key of the response to send, the state judged, the named scopes of the request)."""


class States(Protocol):
    """Where :func:`decide` reads states: the ones in force, or those a hold would bring."""

    def state_of(self, names: Sequence[str]) -> tuple[Any, MaintenanceState]:
        """The state a request in the named scopes ``names`` is judged by (none: the
        global scope's), and the key its maintenance response is prepared under."""
        ...


SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_READS = frozenset({"GET", "HEAD"})
_FORCED = MaintenanceState(active=True, phase=Phase.ON)
_OFF = MaintenanceState()
_NO_NAMES: tuple[str, ...] = ()
_NOTHING: Decision = (APP, None, _OFF, _NO_NAMES)
_ENCODED_TRICK = re.compile(rb"%(2e|2f|5c|25)", re.IGNORECASE)


class PathRules:
    """The middleware's path options: ``exempt_paths`` and ``scopes`` globs."""

    __slots__ = ("by_path", "exempt", "scoped")

    def __init__(self, exempt_paths: Iterable[str] = (), scopes: Iterable[tuple[str, str]] = ()):
        self.exempt = tuple(glob(g, "exempt_paths") for g in exempt_paths)
        self.scoped = tuple((glob(g, "scopes"), name) for g, name in scopes)
        self.by_path = bool(self.exempt or self.scoped)  # rules need the request's path

    def names(self, named: str | None, path: str) -> Sequence[str]:
        """The named scopes a request is in: its endpoint's, then each glob's its path matches."""
        if not self.scoped:
            return _NO_NAMES if named is None else (named,)
        names = [named] if named is not None else []
        # A route's ``$`` also matches before a final newline: "/billing%0A" is "/billing".
        bare = path[:-1] if path.endswith("\n") else path
        for pattern, name in self.scoped:
            if name not in names and (pattern.match(path) or pattern.match(bare)):
                names.append(name)
        return names

    def exempts(self, scope: Any, path: str) -> bool:
        return bool(self.exempt and _clean(scope, path) and any(g.match(path) for g in self.exempt))


def decide(scope: Any, routes: AppRoutes, rules: PathRules, states: States) -> Decision:
    """What maintenance does with the request of ``scope``. Each rule, once:

    - the endpoint is the one Starlette runs; a ``HEAD`` that the app would refuse with
      405 (a ``GET`` route without ``HEAD``) is decided as the ``GET``, so monitors see 503;
    - no route matches: the app answers (its own 404 or 405);
    - a forced endpoint is refused whatever the state;
    - the request is judged by the strictest state among its named scopes (its endpoint's
      and its path's globs), else the global scope's: off lets it through;
    - exempt whatever the state: the endpoint's mark, the app's docs (GET, HEAD), an
      ``exempt_paths`` glob on a plain path;
    - read-only maintenance lets safe HTTP methods through (not WebSocket sessions);
    - anything else is refused (the client's own exemptions are asked after this).
    """
    outcome, endpoint, policy = routes.find(scope)
    method = scope.get("method")
    if outcome == PARTIAL and method == "HEAD":
        outcome, endpoint, policy = routes.find({**scope, "method": "GET"})
    if outcome != FULL:
        return _NOTHING
    path = route_path(scope) if rules.by_path else ""
    names = rules.names(policy.scope, path) if rules.scoped or policy.scope else _NO_NAMES
    key, state = states.state_of(names)
    if policy.forced:
        return FORCED, "forced", state if state.active else _FORCED, names
    if not state.active:
        return OFF, key, state, names
    if (
        policy.exempt
        or (routes.docs and method in _READS and routes.is_docs(endpoint))
        or (rules.exempt and rules.exempts(scope, path))
    ):
        return EXEMPT, key, state, names
    if state.mode is Mode.READ_ONLY and scope["type"] == "http" and method in SAFE:
        return READ, key, state, names
    return REFUSE, key, state, names


class _Held:
    """The states a hold of ``scope`` in ``mode`` brings: on for the requests it covers (all
    of them for the global scope), off for the others."""

    __slots__ = ("held", "scope")

    def __init__(self, scope: str | None, mode: Mode) -> None:
        self.scope = scope
        self.held = MaintenanceState(active=True, phase=Phase.ON, mode=mode, scope=scope)

    def state_of(self, names: Sequence[str]) -> tuple[Any, MaintenanceState]:
        if self.scope is None or self.scope in names:
            return self.scope, self.held
        return None, _OFF


def hold_of(scope: str | None, mode: Mode) -> States:
    """The states a hold of ``scope`` in ``mode`` would bring (a drain's question)."""
    return _Held(scope, mode)


def glob(pattern: str, option: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ConfigurationError(f"{option}: {pattern!r} must be a path glob starting with '/'")
    return re.compile(fnmatch.translate(pattern))


def _clean(scope: Any, path: str) -> bool:
    # Path globs exempt only plain paths: no dot segments, doubled or encoded separators.
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and _ENCODED_TRICK.search(raw):
        return False
    if "//" in path or "\\" in path or "%" in path or "\x00" in path or "\n" in path:
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))
