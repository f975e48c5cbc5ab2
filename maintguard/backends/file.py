"""State in a local file shared by every process on the machine."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from ..exceptions import BackendError, ConfigurationError
from ..state import StoredState
from .base import Backend, OnError
from .env import parse_flag

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LocalFileBackend"]

_Scopes = dict[str | None, StoredState]


class LocalFileBackend(Backend):
    """Keeps the state in a JSON file: the explicit state plus one record per holding process.

    Every write goes to a temporary file renamed over the old one (a reader never sees half
    a document), under an exclusive lock on ``<file>.lock`` for read-modify-write. A missing
    file means "off". Plain files other tools write (``1``, ``0``, ``on``, ``off``, ...) are
    read as the explicit state, and stay plain while nothing more needs storing.

    A live holder renews its lease every ``lease_ttl / 3`` seconds; a record whose lease has
    run out (its process was killed) no longer counts and is removed by the next write.
    Other processes see changes within ``refresh_interval`` seconds.

    Content that is not a maintenance state raises ``BackendError`` on first use and is
    never overwritten: fix or delete the file.
    """

    def __init__(
        self,
        file_path: str | os.PathLike[str],
        lease_ttl: float = 30.0,
        *,
        on_error: OnError = "last_known",
        refresh_interval: float = 1.0,
    ) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            raise ConfigurationError("LocalFileBackend needs POSIX file locks (fcntl)")
        if not isinstance(file_path, str | os.PathLike) or not str(file_path):
            raise ConfigurationError(f"LocalFileBackend needs a file path, not {file_path!r}")
        super().__init__(on_error=on_error, lease_ttl=lease_ttl, refresh_interval=refresh_interval)
        self.path = Path(file_path).expanduser().absolute()
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def store_key(self) -> tuple[str, str]:
        return ("file", os.path.realpath(self.path))

    def describe(self) -> str:
        return f"LocalFileBackend({self.path})"

    async def read_state(self, scope: str | None) -> StoredState:
        scopes, _ = await anyio.to_thread.run_sync(self._load)
        return scopes.get(scope, StoredState())

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        await self.update_state(scope, lambda _: state)

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        return await anyio.to_thread.run_sync(self._update, scope, mutate)

    # -- blocking helpers, run in worker threads -------------------------------------

    def _update(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        with self._locked():
            scopes, plain = self._load()
            current = scopes.get(scope, StoredState())
            new = mutate(current)
            if new != current:
                scopes[scope] = new
                self._save(scopes, plain)
            return new

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise self._write_error(exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load(self) -> tuple[_Scopes, bool]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, False
        except UnicodeDecodeError as exc:
            raise self._corrupt("it is not UTF-8 text") from exc
        except OSError as exc:
            raise BackendError(
                f"cannot read the maintenance state from {self.path}: {exc.strerror}. "
                "Check that the path names a readable file."
            ) from exc
        flag = parse_flag(text)
        if flag is not None:
            return {None: StoredState(flag)}, True
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            scopes: _Scopes = {None: StoredState.from_dict(data)}
            named = data.get("scopes", {})
            if not isinstance(named, dict):
                raise ValueError("'scopes' must be an object")
            for name, value in named.items():
                scopes[name] = StoredState.from_dict(value)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from exc
        return scopes, False

    def _save(self, scopes: _Scopes, plain: bool) -> None:
        text = _plain(scopes) if plain else None
        if text is None:
            document: dict[str, Any] = {"version": 1}
            document.update(scopes.get(None, StoredState()).to_dict())
            named = {
                k: v.to_dict() for k, v in scopes.items() if k is not None and v != StoredState()
            }
            if named:
                document["scopes"] = named
            text = json.dumps(document, indent=2) + "\n"
        try:
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise self._write_error(exc) from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, _mode_for(self.path))
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._write_error(exc) from exc

    def _corrupt(self, detail: str) -> BackendError:
        return BackendError(
            f"{self.path} does not hold a maintenance state ({detail}). Fix the file or delete "
            "it to start from 'off'; maintguard does not overwrite it."
        )

    def _write_error(self, exc: OSError) -> BackendError:
        where = self.path.parent
        if exc.errno == errno.ENOENT:
            fix = f"the directory {where} does not exist. Create it (mkdir -p {where})"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"{where} is not writable here ({exc.strerror}). Make it writable for this user"
        elif exc.errno == errno.ENOTDIR:
            fix = f"a part of {where} is not a directory"
        else:
            fix = exc.strerror or str(exc)
        return BackendError(
            f"cannot write the maintenance state to {self.path}: {fix}, "
            "or give LocalFileBackend a path in a writable directory."
        )


def _plain(scopes: _Scopes) -> str | None:
    # Keep a file other tools wrote in their plain form while nothing else needs storing.
    state = scopes.get(None, StoredState())
    e = state.explicit
    if state.holds or any(v != StoredState() for k, v in scopes.items() if k is not None):
        return None
    if e.reason is not None or e.retry_after is not None or e.until is not None:
        return None
    if not e.active:
        return "0\n"
    return "read_only\n" if e.mode.value == "read_only" else "1\n"


def _mode_for(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return 0o644  # a new file: readable by every process that checks it
