"""The core, one job per module, data flowing one way (faces -> core -> backends):

- :mod:`.stack` — the hold stack: pure, O(1), the clock passed in;
- :mod:`.controller` — one (store, scope): decisions under a lock, then I/O, then events;
- :mod:`.registry` — which store a backend object names, and its scopes;
- :mod:`.watcher` — keeps watched stores fresh in the background;
- :mod:`.dispatch` — listeners, called off the hold path;
- :mod:`.defaults` — which backend a face uses when none is given;
- :mod:`.io` — where backend calls run (the caller, a worker thread, the I/O loop).
"""

from __future__ import annotations

from .controller import ScopeController, as_backend_error, read_only_error
from .defaults import coerce, configure, register_default, resolve_backend
from .dispatch import Listener, add_listener, flush_listeners, remove_listener
from .registry import Store, controller, store_of
from .watcher import watch

__all__ = [
    "Listener",
    "ScopeController",
    "Store",
    "add_listener",
    "as_backend_error",
    "coerce",
    "configure",
    "controller",
    "flush_listeners",
    "read_only_error",
    "register_default",
    "remove_listener",
    "resolve_backend",
    "store_of",
    "watch",
]
