"""Where the maintenance state lives: pick one, or subclass :class:`Backend`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from .._state import (
    AuditEntry,
    Cordon,
    ExplicitState,
    HoldRecord,
    StoredState,
    WindowRecord,
    WorkerRecord,
)
from ..exceptions import ConfigurationError
from ._base import Backend, OnError
from ._env import EnvVarBackend
from ._file import LocalFileBackend
from ._memory import MemoryBackend
from ._redis import RedisBackend, redact
from ._writes import PutCordon, PutHold, PutWindow, PutWorker, Record, SetExplicit, Write

__all__ = [
    "AuditEntry",
    "Backend",
    "Cordon",
    "EnvVarBackend",
    "ExplicitState",
    "HoldRecord",
    "LocalFileBackend",
    "MemoryBackend",
    "OnError",
    "PutCordon",
    "PutHold",
    "PutWindow",
    "PutWorker",
    "Record",
    "RedisBackend",
    "SetExplicit",
    "StoredState",
    "WindowRecord",
    "WorkerRecord",
    "Write",
    "backend_from_url",
]

_SCHEMES = "memory:, env:, env:VAR, file:PATH, redis://HOST[:PORT][/DB], rediss://..., unix://PATH"


def backend_from_url(url: str, **options: Any) -> Backend:
    """Build a backend from a URL: ``memory:``, ``env:``, ``env:VAR``, ``file:PATH``,
    ``redis://...``, ``rediss://...`` (TLS) or ``unix://...`` (Redis on a socket).

    ``file:`` takes a relative or absolute path (``file:/var/run/app/maintenance.json``,
    ``file:///var/run/...`` also works). Keyword options go to the backend's constructor
    (``backend_from_url("redis://cache:6379/2", key_prefix="shop")``); a Redis URL may name
    its prefix itself (``redis://cache:6379/2?key_prefix=shop``), as ``MAINTGUARD_BACKEND``
    and the CLI's ``--backend`` then must.

    >>> backend_from_url("env:APP_MAINTENANCE").var_name
    'APP_MAINTENANCE'
    """
    if not isinstance(url, str) or ":" not in url:
        raise ConfigurationError(f"backend URL {url!r} has no scheme: use one of {_SCHEMES}")
    scheme, _, rest = url.partition(":")
    scheme = scheme.lower()
    try:
        if scheme == "memory" and not rest:
            if options:
                raise TypeError(f"MemoryBackend takes no options ({', '.join(options)})")
            return _MEMORY
        if scheme == "env":
            return EnvVarBackend(rest or "MAINTGUARD_MODE", **options)
        if scheme == "file" and rest:
            path = rest[2:] if rest.startswith("//") else rest
            if path:
                return LocalFileBackend(path, **options)
        if scheme in ("redis", "rediss", "unix"):
            bare, prefix = _key_prefix_of(url)
            if prefix is not None:
                if options.get("key_prefix", prefix) != prefix:
                    raise ConfigurationError(
                        f"backend URL {redact(url)!r} says key_prefix={prefix!r} but "
                        f"key_prefix={options['key_prefix']!r} was passed: give one"
                    )
                options["key_prefix"] = prefix
            return RedisBackend(bare, **options)
    except TypeError as exc:
        raise ConfigurationError(f"backend URL {redact(url)!r}: {exc}") from exc
    raise ConfigurationError(
        f"backend URL {redact(url)!r} is not understood: use one of {_SCHEMES}"
    )


def _key_prefix_of(url: str) -> tuple[str, str | None]:
    """``redis://host/0?key_prefix=shop`` names the prefix in the URL, so that
    ``MAINTGUARD_BACKEND`` and the CLI's ``--backend`` can say it: the URL without it, and it."""
    try:
        split = urlsplit(url)
    except ValueError:  # not a URL: RedisBackend says what is wrong with it
        return url, None
    query = parse_qsl(split.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "key_prefix"]
    if not prefixes:
        return url, None
    if len(prefixes) > 1 or not prefixes[0]:
        raise ConfigurationError(
            f"backend URL {redact(url)!r}: give key_prefix once, non-empty "
            "(e.g. redis://cache:6379/0?key_prefix=shop)"
        )
    rest = urlencode([(key, value) for key, value in query if key != "key_prefix"])
    # Rebuilt as text: urlunsplit would write unix:///run/redis.sock as unix:/run/...
    base, _, after = url.partition("?")
    _, hashed, fragment = after.partition("#")
    return base + (f"?{rest}" if rest else "") + (f"#{fragment}" if hashed else ""), prefixes[0]


_MEMORY = MemoryBackend()
"""The one memory store ``memory:`` names in this process: every URL naming it reaches the
same state (a store made anew at each use would be one nobody else reads)."""
