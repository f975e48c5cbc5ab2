"""The default backend: the argument, ``configure()``, a middleware's, the environment."""

from __future__ import annotations

import threading

from ..backends import Backend, EnvVarBackend, backend_from_url
from ..backends.env import getenv
from ..exceptions import ConfigurationError

__all__ = ["coerce", "configure", "register_default", "resolve_backend"]

_configured: Backend | None = None
_middleware_default: Backend | None = None
_from_env: dict[str, Backend] = {}
_lock = threading.Lock()


def coerce(backend: Backend | str) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        return backend_from_url(backend)
    raise ConfigurationError(
        f"backend must be a Backend or a URL string such as 'file:/run/app/maintenance.json', "
        f"not {backend!r}"
    )


def configure(backend: Backend | str | None) -> None:
    """Set the process's default backend (a :class:`Backend` or a URL string).

    ``configure(backend=None)`` forgets every chosen default, also one a middleware
    registered, and returns to ``MAINTGUARD_BACKEND`` or else the environment variable
    backend.

    >>> configure(backend="memory:")
    >>> configure(backend=None)
    """
    global _configured, _middleware_default
    with _lock:
        if backend is None:
            _configured = _middleware_default = None
            _from_env.clear()
        else:
            _configured = coerce(backend)


def register_default(backend: Backend) -> None:
    """Used by the middleware: its backend becomes the default unless ``configure`` chose one."""
    global _middleware_default
    with _lock:
        _middleware_default = backend


def resolve_backend(backend: Backend | str | None = None) -> Backend:
    """The backend a face uses now: the argument, configure(), middleware, env URL, env var."""
    if backend is not None:
        return backend if isinstance(backend, Backend) else coerce(backend)
    chosen = _configured or _middleware_default
    if chosen is not None:
        return chosen
    url = getenv("MAINTGUARD_BACKEND")
    found = _from_env.get(url)
    if found is None:
        with _lock:
            found = _from_env.get(url)
            if found is None:
                if url:
                    try:
                        found = backend_from_url(url)
                    except ConfigurationError as exc:
                        raise ConfigurationError(f"MAINTGUARD_BACKEND: {exc}") from None
                else:
                    found = EnvVarBackend()
                _from_env[url] = found
    return found
