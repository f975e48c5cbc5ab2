"""The ``status_path`` option: the maintenance state as JSON, at one path of the app.

``GET`` (or ``HEAD``) on that path is answered by the middleware itself, whatever the
state: the global scope's object as ``maintguard status --json`` builds it
(:mod:`maintguard._state_json`), and ``scopes``, one object per named scope the app knows.
Hold records (owners, hosts, pids), the store's URL and who planned a window are shown
only to a caller the middleware would let through during maintenance by ``allow_ips`` or
the bypass secret; anyone else sees the state and how many holds there are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import Scope, Send

from ..exceptions import ConfigurationError
from ._access import Bypass
from ._matching import AppRoutes, route_path

__all__ = ["StatusEndpoint"]

logger = logging.getLogger("maintguard")

Headers = list[tuple[bytes, bytes]]

_READS = frozenset({"GET", "HEAD"})
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_FAILED = b'{"error": "the maintenance state could not be shown"}'
_NOT_ALLOWED = b'{"error": "method not allowed: use GET or HEAD"}'


class StatusEndpoint:
    """One middleware's status path (checked when built) and its answers."""

    __slots__ = ("path", "warned")

    def __init__(self, path: str) -> None:
        self.path = path
        self.warned = False  # a route found there after start-up: said once

    @classmethod
    def of(
        cls, path: object, *, exempt_paths: Iterable[str], bypass: Bypass
    ) -> StatusEndpoint | None:
        """The endpoint ``status_path=path`` asks for (None: none), or a
        :class:`ConfigurationError` saying how to fix the path."""
        if path is None:
            return None
        example = "such as '/_maintenance/status'"
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"status_path must be an absolute path starting with '/', {example}, not {path!r}"
            )
        if "?" in path or "#" in path:
            raise ConfigurationError(
                f"status_path {path!r} must be a plain path, {example}: no query ('?') or "
                "fragment ('#'); the endpoint answers its path whatever the query string"
            )
        if not path.isprintable() or " " in path:
            raise ConfigurationError(
                f"status_path {path!r} must be a path without spaces or control characters, "
                f"{example}"
            )
        if path in exempt_paths:
            raise ConfigurationError(
                f"status_path {path!r} is also in exempt_paths: the status endpoint is always "
                "exempt (it answers during maintenance too); remove it from exempt_paths"
            )
        if bypass.covers(path):
            raise ConfigurationError(
                f"status_path {path!r} lies under bypass_path, whose URLs grant the bypass "
                f"cookie: choose a status_path outside it, {example}"
            )
        return cls(path)

    def is_for(self, scope: Scope) -> bool:
        """Whether the HTTP request of ``scope`` is for this path (as Starlette routes it:
        less the ``root_path``); one string comparison for any other request."""
        return scope["path"].endswith(self.path) and route_path(scope) == self.path

    def collision(self, routes: AppRoutes, *, when: str = "") -> str | None:
        """What is wrong when a route of the app takes this path (None: none does, or the
        routes are not known); ``when`` says when it was found."""
        known, taker = routes.taker(self.path)
        if not known or taker is None:
            return None
        name = "" if taker is True else f" ({_name_of(taker)})"
        return (
            f"status_path {self.path!r} is also a route of the app{name}: the status endpoint "
            f"would answer there instead of it{when}. Choose another status_path, such as "
            "'/_maintenance/status', or move the route. A catch-all route ('/{path:path}', "
            "a mount at '/') takes every path: move it under a prefix to use status_path"
        )

    async def answer(self, scope: Scope, send: Send, build: Callable[[], dict[str, Any]]) -> None:
        """Answer the request: 200 with ``build()`` as JSON for GET and HEAD (HEAD: no body),
        405 for any other method, 503 (logged) when the object cannot be built or encoded."""
        method = scope.get("method")
        if method not in _READS:
            headers = [(b"allow", b"GET, HEAD"), _JSON, _NO_STORE]
            await _send(send, 405, headers, _NOT_ALLOWED, head=False)
            return
        try:
            body = json.dumps(build(), allow_nan=False).encode("ascii")
            status = 200
        except Exception:
            logger.exception("maintguard: the status endpoint could not show the state")
            body, status = _FAILED, 503
        await _send(send, status, [_JSON, _NO_STORE], body, head=method == "HEAD")


async def _send(send: Send, status: int, headers: Headers, body: bytes, *, head: bool) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _name_of(endpoint: Any) -> str:
    name = getattr(endpoint, "__name__", None)
    return name if isinstance(name, str) and name else type(endpoint).__name__
