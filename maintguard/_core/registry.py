"""The store registry: which in-process state a backend object names.

Backend objects that name one store (the same file, variable, Redis URL and prefix) share
one :class:`Store`, so a hold taken through one is seen at once through the other. They
must agree on the store's options. A store lives as long as a backend object naming it;
a named scope's controller lives as long as something holds it (a frame, a reader such as
a middleware, a renewal), so per-tenant scopes do not pile up.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Mapping

from .._state import StoredState
from ..backends import Backend
from ..exceptions import ConfigurationError
from . import presence
from .controller import HOST, ScopeController
from .inflight import Work

__all__ = ["Store", "all_stores", "controller", "store_of"]

logger = logging.getLogger("maintguard")


class Store:
    """What every backend object naming one store shares in this process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.options = backend.options()
        self.clock: Callable[[], float] = time.time  # wall-clock seconds; tests fake it
        self.lock = threading.Lock()  # the scope table and the watcher count
        self.write_lock = threading.Lock()  # serialises this process's writes
        self.sequence = itertools.count(1)  # numbers writes in the order they run
        self.used = False  # once read or written, read errors follow on_error
        self.named_active = False  # some named scope is on by its own state
        self.has_children = False  # a named scope was ever asked for
        self.watchers = 0
        self.watching = False
        self.work = Work()  # this process's in-flight work on the store
        self.seen: Mapping[str | None, StoredState] = {}  # every scope the last read returned
        # Presence (see .presence): this process's record in a shared store.
        self.worker_id = _worker_id()
        self.reported: tuple[tuple[str, int], ...] | None = None  # as written; None: absent
        self.present = False  # joined (a middleware, a guard): the watcher keeps the record
        self.presence_at = -math.inf
        self.presence_failing = False
        self.judged: dict[str, dict[int, bool]] = {}  # per drain token: entries judged
        self.noted_error: str | None = None
        self.read_error: Exception | None = None  # why the last read failed; None: it worked
        self._scopes: weakref.WeakValueDictionary[str, ScopeController] = (
            weakref.WeakValueDictionary()
        )
        self.held: set[ScopeController] = set()  # controllers with frames entered: kept
        self.root = ScopeController(self, None, None)

    def controller(self, scope: str | None) -> ScopeController:
        if scope is None:
            root = self.root
            if root.stored is None:
                root.start()
            return root
        ctrl = self._scopes.get(scope)
        if ctrl is None:
            with self.lock:
                ctrl = self._scopes.get(scope)
                if ctrl is None:
                    ctrl = self._scopes[scope] = ScopeController(self, scope, self.root)
                    self.has_children = True
        if ctrl.stored is None:
            ctrl.start()
        return ctrl

    def children(self) -> list[ScopeController]:
        return list(self._scopes.values())

    def controllers(self) -> list[ScopeController]:
        return [self.root, *self._scopes.values()]

    def named_changed(self) -> None:
        self.named_active = any(c.own_active for c in self.children())

    def read_ok(self) -> None:
        self.used = True
        self.read_error = None
        if self.noted_error is not None:
            self.noted_error = None
            logger.info("%s: maintenance state readable again", self.backend.describe())

    def note_error(self, message: str) -> bool:
        """Log a read error once while it lasts; True when it is new."""
        if message == self.noted_error:
            return False
        self.noted_error = message
        logger.warning("%s", message)
        return True

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.work = Work()  # the parent's work is not this process's
        self.worker_id = _worker_id()
        self.reported = None
        self.presence_at = -math.inf
        self.judged = {}
        self.held = set()
        for ctrl in self.controllers():
            ctrl.after_fork()


def _worker_id() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


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
        presence.leave_blocking(store)


atexit.register(_release_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
