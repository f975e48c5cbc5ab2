"""The store registry: which in-process state a backend object names.

Backend objects that name one store (the same file, variable, Redis URL and prefix) share
one :class:`Store`, so a hold taken through one is seen at once through the other. They
must agree on the store's options. A store lives as long as a backend object naming it;
a named scope's controller lives as long as something holds it (a frame, a reader such as
a middleware, a renewal), so per-tenant scopes do not pile up.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Hashable

from ..backends import Backend
from ..exceptions import ConfigurationError
from . import lifecycle
from .controller import ScopeController, Store

# (Store: see .controller)
__all__ = ["Store", "all_stores", "controller", "root_controller", "store_of"]

logger = logging.getLogger("maintguard")


_lock = threading.Lock()
_stores: weakref.WeakValueDictionary[Hashable, Store] = weakref.WeakValueDictionary()


def store_of(backend: Backend) -> Store:
    """The store ``backend`` names; a second object must agree on the store's options."""
    store: Store | None = backend.__dict__.get("_maintguard_store")
    if store is not None:
        return store
    with _lock:
        key = backend.store_key()
        store = _stores.get(key)
        if store is None:
            store = _stores[key] = Store(backend)
        elif store.backend is not backend:
            _check_options(store, backend)
        backend.__dict__["_maintguard_store"] = store
    return store


def controller(backend: Backend, scope: str | None) -> ScopeController:
    return store_of(backend).controller(scope)


def root_controller(backend: Backend) -> ScopeController:
    """The global scope's controller of ``backend``'s store: :func:`controller` without
    its calls once the store is known and read (a reader's hot path)."""
    store: Store | None = backend.__dict__.get("_maintguard_store")
    if store is not None:
        root = store.root
        if root.stored is not None:
            return root
    return store_of(backend).controller(None)


def all_stores() -> list[Store]:
    return list(_stores.values())


def _check_options(store: Store, backend: Backend) -> None:
    theirs = store.options
    ours = backend.options()
    differ = [k for k in ours if ours[k] != theirs.get(k)]
    if differ:
        both = ", ".join(f"{k}={ours[k]!r} here but {k}={theirs.get(k)!r} there" for k in differ)
        raise ConfigurationError(
            f"{backend.describe()} names a store already in use with other options ({both}); "
            "give every backend object for one store the same options, or reuse one object"
        )


def _after_fork_in_child() -> None:
    # A child process holds nothing its parent held and must not renew its records.
    global _lock
    _lock = threading.Lock()
    for store in all_stores():
        store._after_fork_in_child()


def _release_at_exit() -> None:
    # Holds still entered when the interpreter exits (a daemon thread's, an abandoned
    # generator's) end with the process: remove their records now rather than leaving
    # other processes to wait for the lease.
    for store in all_stores():
        if not store.backend.stores_holds:
            continue
        for ctrl in store.controllers():
            ctrl.release_all()


lifecycle.at_exit("holds", _release_at_exit)
lifecycle.after_fork("stores", _after_fork_in_child)
