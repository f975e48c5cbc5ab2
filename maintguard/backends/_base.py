"""The backend contract: read and write one scope's :class:`StoredState`."""

from __future__ import annotations

import abc
import itertools
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Mapping
from typing import ClassVar, Literal

from .._options import seconds
from .._state import StoredState
from ..exceptions import ConfigurationError

__all__ = ["PUBLIC_IO", "Backend", "OnError", "overrides"]

OnError = Literal["last_known", "open", "closed"]
"""What readers see when the state cannot be read at run time:
``"last_known"`` the last state read, ``"open"`` maintenance off, ``"closed"`` on."""

_ON_ERROR = ("last_known", "open", "closed")
PUBLIC_IO = ("read_state", "write_state", "update_state", "read_scopes")
"""The methods through which the core reads and writes a store, and a subclass may change."""
_tokens = itertools.count()
_MAX_LEASE = 365 * 86400.0  # longer ones overflow datetimes


class Backend(abc.ABC):
    """Where the maintenance state lives. Subclass it and implement two async methods.

    ``read_state(scope)`` returns the :class:`~maintguard.backends.StoredState` of a scope
    (``None`` is the global scope) and ``write_state(scope, state)`` stores it. Everything
    else — holds, leases, caching, change notification — works on top of these two.
    ``StoredState.to_dict()`` / ``StoredState.from_dict()`` turn the state into JSON-ready
    data and back.

    Both methods run on maintguard's own asyncio loop in a background thread, never on
    the request path, so they may use asyncio libraries even when the app runs on trio.
    Raise :class:`~maintguard.exceptions.BackendError` (or any exception, which is wrapped
    in one) when the store cannot be reached.

    maintguard calls ``update_state`` for every read-modify-write, under a lock that
    serialises writers in this process. ``mutate`` is one of the writes in
    :mod:`maintguard.backends` (put a hold record, put a presence record, set the
    explicit state, put a planned window): callable on the scope's state, and plain data
    a store that runs code of its own can apply natively. Override ``update_state`` when
    several processes share the store and it offers a lock or a transaction; the default
    reads, applies ``mutate`` and writes when something changed.

    A subclass of a built-in backend (to add logging, latency, encryption...) is called
    through every public method it overrides: the built-ins' shortcuts (the file read from
    the caller's thread, one Redis script per write, one read for every scope) are taken
    only while none of ``read_state``, ``write_state``, ``update_state`` and
    ``read_scopes`` is overridden. Overriding ``read_state`` or ``write_state`` of the file
    backend keeps its read-modify-write under the file's lock; of the Redis backend, it
    makes writes a read then a write (override ``update_state`` too to keep them atomic).
    """

    stores_holds: ClassVar[bool] = True
    """Hold records are written to the store so that other processes see them. Backends
    that only one process can see (memory) or that cannot be written (env) keep holds in
    memory."""
    read_only: ClassVar[bool] = False
    raise_on_first_read: ClassVar[bool] = True
    """A failed first read raises (the error is seen at start-up); later ones follow
    ``on_error``."""
    _fast_path: ClassVar[Literal["inline", "blocking"] | None] = None
    # What a built-in backend offers the core besides its public methods: the blocking
    # protocol below, the same reads and writes as plain calls. "blocking": the calls block
    # (the file), so the core makes them from a thread it picks instead of hopping through
    # the I/O loop; "inline": they never block (memory, env), so the core makes them in the
    # caller's thread. An offer only: whether it is taken, for a given class, is decided
    # in one place (maintguard._core.io.way), and never for a class that overrides a
    # public I/O method. The public methods stay complete without it.

    on_error: OnError = "last_known"
    lease_ttl: float = 30.0
    refresh_interval: float = 1.0

    def __init__(
        self,
        *,
        on_error: OnError = "last_known",
        lease_ttl: float = 30.0,
        refresh_interval: float = 1.0,
    ) -> None:
        if on_error not in _ON_ERROR:
            raise ConfigurationError(
                f"on_error must be one of {', '.join(map(repr, _ON_ERROR))}, not {on_error!r}"
            )
        self.on_error = on_error
        self.lease_ttl = seconds(
            "lease_ttl", lease_ttl, positive=True, at_most=_MAX_LEASE, limit="a year at most"
        )
        self.refresh_interval = seconds("refresh_interval", refresh_interval, infinite=True)

    @abc.abstractmethod
    async def read_state(self, scope: str | None) -> StoredState:
        """Return the stored state of ``scope``; a store with nothing in it is ``StoredState()``."""

    @abc.abstractmethod
    async def write_state(self, scope: str | None, state: StoredState) -> None:
        """Store ``state`` as the whole state of ``scope``."""

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        """Read, apply ``mutate``, write if it changed anything; return the new state."""
        current = await self.read_state(scope)
        new = mutate(current)
        if new != current:
            await self.write_state(scope, new)
        return new

    async def read_scopes(self, scopes: Collection[str | None]) -> Mapping[str | None, StoredState]:
        """Read several scopes at once; the watcher calls this once per refresh interval.

        The default reads each scope with :meth:`read_state`. Override it when the store
        can return every scope in one round trip (one file read, one Redis script). The
        result has an entry for each scope asked for; it may hold more.
        """
        return {scope: await self.read_state(scope) for scope in scopes}

    # The blocking protocol of the built-in backends (see `_fast_path`).
    def _read_scopes_blocking(
        self, scopes: Collection[str | None]
    ) -> Mapping[str | None, StoredState]:
        raise NotImplementedError

    def _read_blocking(self, scope: str | None) -> StoredState:
        return self._read_scopes_blocking((scope,))[scope]

    def _update_blocking(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        raise NotImplementedError

    def _changes(self) -> AsyncIterator[object] | None:
        """Notifications that the store may have changed (the watcher then reads at once),
        or None: the watcher polls every ``refresh_interval`` only. Iterated on the I/O
        loop; polling goes on beside it as the safety net."""
        return None

    def options(self) -> dict[str, object]:
        """The options two objects naming one store must agree on (checked at first use)."""
        # "io": the store's reads and writes go through the first object's methods, so an
        # object whose class overrides them must not be silently served by another's.
        io = _io_class(type(self))
        return {
            "lease_ttl": self.lease_ttl,
            "refresh_interval": self.refresh_interval,
            "on_error": self.on_error,
            "io": f"{io.__module__}.{io.__qualname__}",
        }

    def store_key(self) -> Hashable:
        """Backends with equal keys name the same store and share one in-process state.

        The default makes every instance its own store; override it to return, say, the
        connection URL, so that two objects naming one database share holds at once.
        """
        key = self.__dict__.get("_maintguard_key")
        if key is None:
            key = self.__dict__["_maintguard_key"] = (type(self).__qualname__, next(_tokens))
        return key

    def describe(self) -> str:
        """A short human name used in messages, logs and events."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


def overrides(cls: type, owner: type, *names: str) -> bool:
    """Whether ``cls`` (a subclass of ``owner``) replaces any of ``owner``'s methods ``names``.

    The core asks it before taking a built-in's fast path (see ``maintguard._core.io.way``),
    and a built-in's public method before a shortcut of its own past another (one read of
    the whole file for ``read_scopes``, a Redis script for ``update_state``): the shortcut
    is right for the built-in's methods, not for a subclass's."""
    return any(getattr(cls, name) is not getattr(owner, name) for name in names)


def _io_class(cls: type) -> type:
    """The class whose public I/O methods ``cls`` uses: the nearest one defining any."""
    for klass in cls.__mro__:
        if any(name in vars(klass) for name in PUBLIC_IO):
            return klass
    return cls  # pragma: no cover - Backend itself defines them
