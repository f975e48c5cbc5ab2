"""The paths the middleware answers itself: ``status_path`` and ``readiness_path``.

``GET`` (or ``HEAD``) on such a path is answered by the middleware, whatever the state,
and is no app's work (a drain does not wait for it). The status path answers the global
scope's object as ``maintguard status --json`` builds it (:mod:`maintguard._state_json`),
and ``scopes``, one object per named scope the app knows; hold records (owners, hosts,
pids), cordons, the store's URL and who planned a window are shown only to a caller the
middleware would let through during maintenance by ``allow_ips`` or the bypass secret. The
readiness path answers 200 while this instance should take traffic, else 503.

This module checks each path when the middleware is built and answers its requests; what
the answer says is the middleware's.
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

__all__ = ["OwnEndpoint"]

logger = logging.getLogger("maintguard")

Headers = list[tuple[bytes, bytes]]

_READS = frozenset({"GET", "HEAD"})
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_FAILED = b'{"error": "the maintenance state could not be shown"}'
_NOT_ALLOWED = b'{"error": "method not allowed: use GET or HEAD"}'


_EXAMPLES = {"status_path": "/_maintenance/status", "readiness_path": "/_maintenance/ready"}


class OwnEndpoint:
    """One path the middleware answers itself (checked when built), and its answers."""

    __slots__ = ("option", "path", "warned")

    def __init__(self, option: str, path: str) -> None:
        self.option = option  # "status_path", "readiness_path"
        self.path = path
        self.warned = False  # a route found there after start-up: said once

    @property
    def what(self) -> str:
        return f"the {self.option.removesuffix('_path')} endpoint"

    @classmethod
    def of(
        cls,
        option: str,
        path: object,
        *,
        exempt_paths: Iterable[str],
        bypass: Bypass,
        taken: Iterable[OwnEndpoint] = (),
    ) -> OwnEndpoint | None:
        """The endpoint ``option=path`` asks for (None: none), or a
        :class:`ConfigurationError` saying how to fix the path. ``taken``: the endpoints
        of the middleware's other options."""
        if path is None:
            return None
        example = f"such as {_EXAMPLES[option]!r}"
        what = f"the {option.removesuffix('_path')} endpoint"
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"{option} must be an absolute path starting with '/', {example}, not {path!r}"
            )
        if "?" in path or "#" in path:
            raise ConfigurationError(
                f"{option} {path!r} must be a plain path, {example}: no query ('?') or "
                f"fragment ('#'); {what} answers its path whatever the query string"
            )
        if not path.isprintable() or " " in path:
            raise ConfigurationError(
                f"{option} {path!r} must be a path without spaces or control characters, {example}"
            )
        if path in exempt_paths:
            raise ConfigurationError(
                f"{option} {path!r} is also in exempt_paths: {what} is always exempt (it "
                f"answers during maintenance too); remove it from exempt_paths"
            )
        if bypass.covers(path):
            raise ConfigurationError(
                f"{option} {path!r} lies under bypass_path, whose URLs grant the bypass "
                f"cookie: choose a {option} outside it, {example}"
            )
        for other in taken:
            if other.path == path:
                raise ConfigurationError(
                    f"{option} {path!r} is also the {other.option}: each endpoint needs a path "
                    f"of its own, {example}"
                )
        return cls(option, path)

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
            f"{self.option} {self.path!r} is also a route of the app{name}: {self.what} "
            f"would answer there instead of it{when}. Choose another {self.option}, such as "
            f"{_EXAMPLES[self.option]!r}, or move the route. A catch-all route "
            f"('/{{path:path}}', a mount at '/') takes every path: move it under a prefix to "
            f"use {self.option}"
        )

    async def answer(
        self, scope: Scope, send: Send, build: Callable[[], tuple[int, dict[str, Any]]]
    ) -> None:
        """Answer the request: ``build()``'s status and object as JSON for GET and HEAD
        (HEAD: no body), 405 for any other method, 503 (logged) when the object cannot be
        built or encoded."""
        method = scope.get("method")
        if method not in _READS:
            headers = [(b"allow", b"GET, HEAD"), _JSON, _NO_STORE]
            await _send(send, 405, headers, _NOT_ALLOWED, head=False)
            return
        try:
            status, shown = build()
            body = json.dumps(shown, allow_nan=False).encode("ascii")
        except Exception:
            logger.exception("maintguard: %s could not show the state", self.what)
            body, status = _FAILED, 503
        await _send(send, status, [_JSON, _NO_STORE], body, head=method == "HEAD")


async def _send(send: Send, status: int, headers: Headers, body: bytes, *, head: bool) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _name_of(endpoint: Any) -> str:
    name = getattr(endpoint, "__name__", None)
    return name if isinstance(name, str) and name else type(endpoint).__name__
