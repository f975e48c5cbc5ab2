"""The default backend: the argument, ``configure()``, a middleware's, the environment."""

from __future__ import annotations

import logging
import threading

from .._options import named_options
from ..backends import Backend, EnvVarBackend, backend_from_url
from ..backends._env import environ_token, getenv
from ..exceptions import ConfigurationError
from .controller import ScopeController
from .registry import all_stores, root_controller, store_of

__all__ = [
    "warn_two_stores",
    "chosen",
    "coerce",
    "configure",
    "default_root",
    "record",
    "register_default",
    "resolve_backend",
    "restore",
    "stop_recording",
]

_configured: Backend | None = None
_middleware_default: Backend | None = None
_from_env: dict[object, Backend] = {}  # by the raw MAINTGUARD_BACKEND value
_env_root: tuple[object, ScopeController] | None = None
"""The raw MAINTGUARD_BACKEND value and the global scope's controller of the backend it
names, for :func:`default_root`; forgotten whenever a default is chosen or restored."""
_generation = 0  # counts those times
_lock = threading.Lock()
_recorders: list[set[Backend]] = []
logger = logging.getLogger("maintguard")


def coerce(backend: Backend | str) -> Backend:
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        return backend_from_url(backend)
    raise ConfigurationError(
        f"backend must be a Backend or a URL string such as 'file:/run/app/maintenance.json', "
        f"not {backend!r}"
    )


@named_options
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
        _forget_env_root()
        _note()
    if _configured is not None:
        _warn_if_watched_elsewhere(_configured)


Chosen = tuple[Backend | None, Backend | None]


def chosen() -> Chosen:
    """The defaults chosen in code (``configure()``'s, a middleware's), to restore later."""
    with _lock:
        return _configured, _middleware_default


def restore(saved: Chosen) -> None:
    """Put back what :func:`chosen` returned (the pytest plugin, after each test)."""
    global _configured, _middleware_default
    with _lock:
        _configured, _middleware_default = saved
        _forget_env_root()
        _note()


def record() -> set[Backend]:
    """Note every default chosen from now on into the set returned, until it is passed to
    :func:`stop_recording` (the pytest plugin judges leaks on each, whoever replaced it)."""
    noted: set[Backend] = set()
    with _lock:
        _recorders.append(noted)
        _note()
    return noted


def stop_recording(noted: set[Backend]) -> None:
    with _lock:
        _recorders[:] = [r for r in _recorders if r is not noted]


def _note() -> None:
    # Under the lock, after a default was chosen.
    for noted in _recorders:
        noted.update(b for b in (_configured, _middleware_default) if b is not None)


def warn_two_stores(followed: Backend, default: Backend, why: str) -> None:
    """The one warning for a process where a middleware follows one store while holds and
    state functions without ``backend=`` use another (``why``: how that came about)."""
    logger.warning(
        "maintguard: this middleware follows %s, but holds and set_maintenance_mode() "
        "without backend= use %s (%s): they do not reach its requests. Pass the same "
        "backend to both, or configure() it before the app starts.",
        followed.describe(),
        default.describe(),
        why,
    )


def _warn_if_watched_elsewhere(backend: Backend) -> None:
    # A middleware already following another store keeps following it: say so.
    chosen = store_of(backend)
    for store in all_stores():
        if store.watchers > 0 and store is not chosen:
            warn_two_stores(store.backend, backend, "configure() chose it after the app started")


def register_default(backend: Backend) -> None:
    """Used by the middleware: its backend becomes the default unless ``configure`` chose one."""
    global _middleware_default
    with _lock:
        previous, _middleware_default = _middleware_default, backend
        _forget_env_root()
        _note()
    if previous is not None and previous is not backend and _configured is None:
        before, now = store_of(previous), store_of(backend)
        if before is not now and before.watchers > 0:
            warn_two_stores(previous, backend, "a middleware built later, e.g. a mounted app's")


def resolve_backend(backend: Backend | str | None = None) -> Backend:
    """The backend a face uses now: the argument, configure(), middleware, env URL, env var."""
    if backend is not None:
        return backend if isinstance(backend, Backend) else coerce(backend)
    chosen = _configured or _middleware_default
    if chosen is not None:
        return chosen
    return _from_environment(environ_token("MAINTGUARD_BACKEND"))


def _from_environment(token: object) -> Backend:
    # The backend MAINTGUARD_BACKEND names while it holds `token` (its raw value).
    found = _from_env.get(token)
    if found is None:
        url = getenv("MAINTGUARD_BACKEND")
        with _lock:
            found = _from_env.get(token)
            if found is None:
                if url:
                    try:
                        found = backend_from_url(url)
                    except ConfigurationError as exc:
                        raise ConfigurationError(f"MAINTGUARD_BACKEND: {exc}") from None
                else:
                    found = EnvVarBackend()
                _from_env[token] = found
    return found


def default_root() -> ScopeController:
    """The global scope's controller of the backend a face uses by default now (what
    ``resolve_backend()`` names): ``get_maintenance_mode()``'s hot path. The environment's
    is kept by the raw MAINTGUARD_BACKEND value it came from, so a change of the variable
    (``os.environ[...] = ...`` between two calls) is seen at the next call."""
    chosen = _configured or _middleware_default
    if chosen is not None:
        return root_controller(chosen)
    global _env_root
    token = environ_token("MAINTGUARD_BACKEND")
    cached = _env_root
    if cached is not None and cached[0] == token:
        return cached[1]
    generation = _generation
    root = root_controller(_from_environment(token))
    if root.stored is not None:  # read once already (a failed first read is tried again)
        with _lock:
            if generation == _generation:  # no default chosen meanwhile
                _env_root = (token, root)
    return root


def _forget_env_root() -> None:
    # Under the lock.
    global _env_root, _generation
    _env_root = None
    _generation += 1
