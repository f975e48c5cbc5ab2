"""State read from an environment variable; read-only, holds kept in memory."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection

from .._state import ExplicitState, Mode, StoredState
from ..exceptions import BackendError, ReadOnlyBackendError
from ._base import Backend, OnError

__all__ = ["ACCEPTED", "EnvVarBackend", "environ_token", "getenv", "parse_flag"]

_ON = {"1", "on", "true", "yes"}
_OFF = {"0", "off", "false", "no", ""}
_READ_ONLY = {"read_only", "read-only", "readonly"}
ACCEPTED = "1, 0, on, off, true, false, yes, no, read_only (any case)"


def getenv(name: str) -> str:
    """``os.environ.get(name, "")``, decoded once per distinct value (see
    :func:`environ_token`)."""
    raw = environ_token(name)
    if raw is None:
        return ""
    if not isinstance(raw, bytes):
        return str(raw)
    text = _texts.get(raw)
    if text is None:
        if len(_texts) > 256:
            _texts.clear()
        text = _texts[raw] = os.fsdecode(raw)
    return text


def environ_token(name: str) -> object:
    """What ``name`` holds, undecoded (bytes on POSIX; None when unset): a cache key that
    changes exactly when the value does.

    os.environ keeps its contents as bytes in ``_data`` and decodes on every lookup; the
    state of maintenance is asked on hot paths, so look there directly when it exists.
    """
    try:
        data = os.environ._data  # type: ignore[attr-defined]
    except AttributeError:  # replaced by a plain mapping
        return os.environ.get(name)
    if _BYTES_KEYS:
        key = _keys.get(name)
        if key is None:
            if len(_keys) > 1024:  # per-tenant scopes: stay bounded
                _keys.clear()
            key = _keys[name] = os.fsencode(name)
        return data.get(key)
    return os.environ.get(name)


_keys: dict[str, bytes] = {}
_BYTES_KEYS = os.name == "posix" and type(getattr(os.environ, "_data", None)) is dict
_texts: dict[bytes, str] = {}


def parse_flag(text: str) -> ExplicitState | None:
    """Parse the plain values other tools write (``1``, ``off``, ...); ``None`` if unknown."""
    value = text.strip().lower()
    if value in _ON:
        return ExplicitState(active=True)
    if value in _OFF:
        return ExplicitState()
    if value in _READ_ONLY:
        return ExplicitState(active=True, mode=Mode.READ_ONLY)
    return None


class EnvVarBackend(Backend):
    """Maintenance is on while ``MAINTGUARD_MODE`` (or ``var_name``) says so.

    Accepted values: ``1``/``0``, ``on``/``off``, ``true``/``false``, ``yes``/``no`` and
    ``read_only``, in any case; unset is off. A named scope reads ``<var_name>_<SCOPE>``,
    e.g. ``MAINTGUARD_MODE_BILLING``. The variable is never modified: holds live in this
    process's memory and ``set_maintenance_mode`` raises ``ReadOnlyBackendError``.
    """

    stores_holds = False
    read_only = True
    raise_on_first_read = False
    _fast_path = "inline"

    def __init__(
        self, var_name: str = "MAINTGUARD_MODE", *, on_error: OnError = "last_known"
    ) -> None:
        super().__init__(on_error=on_error, refresh_interval=0.0)
        self.var_name = var_name
        self._parsed: dict[object, StoredState] = {}  # raw value -> state: one per value

    def variable(self, scope: str | None) -> str:
        if scope is None:
            return self.var_name
        return f"{self.var_name}_{re.sub(r'[^0-9A-Za-z]', '_', scope).upper()}"

    async def read_state(self, scope: str | None) -> StoredState:
        return self._read_blocking(scope)

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        raise self._read_only_error(scope)

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        # Refused even when ``mutate`` would change nothing, as the fast path refuses it;
        # a subclass that makes the store writable (``read_only = False`` and a
        # ``write_state`` of its own) is written through its methods.
        if not self.read_only:
            return await super().update_state(scope, mutate)
        raise self._read_only_error(scope)

    # -- the blocking protocol (see Backend._fast_path): the same, called in any thread -------

    def _read_blocking(self, scope: str | None) -> StoredState:
        name = self.var_name if scope is None else self.variable(scope)
        token = environ_token(name)
        state = self._parsed.get(token)
        if state is None:
            raw = getenv(name)
            explicit = parse_flag(raw)
            if explicit is None:
                raise BackendError(
                    f"environment variable {name}={raw!r} is not a maintenance value; "
                    f"use one of {ACCEPTED}"
                )
            if len(self._parsed) > 64:
                self._parsed.clear()
            state = self._parsed[token] = StoredState(explicit)
        return state

    def _read_scopes_blocking(
        self, scopes: Collection[str | None]
    ) -> dict[str | None, StoredState]:
        return {scope: self._read_blocking(scope) for scope in scopes}

    def _update_blocking(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        raise self._read_only_error(scope)

    def _read_only_error(self, scope: str | None) -> ReadOnlyBackendError:
        return ReadOnlyBackendError(
            f"the environment backend only reads {self.variable(scope)}: set the variable "
            "before the process starts, or use a file or Redis backend to switch at run time"
        )

    def store_key(self) -> tuple[str, str]:
        return ("env", self.var_name)

    def describe(self) -> str:
        return f"EnvVarBackend({self.var_name})"
