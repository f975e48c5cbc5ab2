"""State in a local file shared by every process on the machine."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import logging
import os
import random
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

import anyio

from .. import _ioloop as ioloop
from .._core import lifecycle
from .._state import StoredState
from ..exceptions import BackendError, ConfigurationError
from ._base import Backend, OnError, overrides
from ._env import parse_flag

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LocalFileBackend"]

_Scopes = dict[str | None, StoredState]

VERSION = 2
"""The newest format version this maintguard reads and writes: 2 stores planned windows.
A file without windows is written as version 1, which older maintguard still writes (the
audit trail, ``history``, and the cordons, ``cordons``, are optional fields that older
versions keep as unknown)."""
_WITHOUT_WINDOWS = 1

_STATE_KEYS = frozenset(StoredState().to_dict()) | {"workers", "windows", "history", "cordons"}
_TOP_KEYS = _STATE_KEYS | {"version", "plain", "scopes"}
_NEW_FILE_MODE = 0o644  # a new file: readable by every process that checks it
_READ_SIZE = 65536
_MAX_LINKS = 40  # as the kernel's ELOOP limit


class _Loaded:
    """One read of the file: the parsed scopes plus what a rewrite needs to keep."""

    __slots__ = ("mode", "plain", "raw", "scopes", "version")

    def __init__(
        self,
        scopes: _Scopes,
        raw: dict[str, Any] | None = None,
        plain: bool = False,
        version: int = VERSION,
        mode: int | None = None,
    ) -> None:
        self.scopes = scopes
        self.raw = raw  # the JSON object as read (None: plain text or no file)
        self.plain = plain  # written back in plain form once nothing more needs storing
        self.version = version
        self.mode = mode  # permission bits of the file (None: no file yet)


class LocalFileBackend(Backend):
    """Keeps the state in a JSON file: the explicit state plus one record per holding process.

    Every write goes to a temporary file renamed over the old one (a reader never sees half
    a document), under an exclusive lock for read-modify-write. A missing file means "off".

    If the path is a symbolic link (or a chain of them), the link is left alone and its
    target is replaced: the temporary file is made in the target's directory and renamed
    over the target. The lock is ``<target>.lock``, next to the real file, so that a backend
    given the link and one given the real path exclude each other.

    Plain files other tools write (``1``, ``0``, ``on``, ``off``, ``read_only``, ...) are
    read as the explicit state. While something more needs storing (a hold, a reason) the
    file holds JSON marked ``"plain": true``; once nothing more is stored, whichever
    process writes last turns it back into ``0``, ``1`` or ``read_only``. A file that
    started as JSON stays JSON. Fields this version does not know are kept on every
    rewrite; a file written in a newer format version is read as far as this version
    understands it and never modified.

    A live holder renews its lease every ``lease_ttl / 3`` seconds; a record whose lease has
    run out (its process was killed) no longer counts and is removed by the next write.
    Other processes see changes within ``refresh_interval`` seconds.

    Content that is not a maintenance state raises ``BackendError`` on first use and is
    never overwritten: fix or delete the file. A state whose ``active`` can be read keeps
    its meaning: an invalid detail (a negative ``retry_after``, an unknown mode, a time
    that is no time, a hold record's reason...) is ignored with one warning naming the
    field, and the next write stores the state as read, without it.
    """

    _fast_path = "blocking"

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
        try:
            self.path = Path(file_path).expanduser().absolute()
        except RuntimeError as exc:  # ~nosuchuser/...
            raise ConfigurationError(f"LocalFileBackend path {file_path!r}: {exc}") from None
        self._path = str(self.path)
        # The lock file stays open between writes (one open per process, not one per write).
        # Threads of this process take `_mutex` first: they share one open file description,
        # on which flock would not exclude them from each other.
        self._mutex = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_name = ""
        self._lock_pid = 0
        _instances.add(self)

    def store_key(self) -> tuple[str, str]:
        return ("file", os.path.realpath(self.path))

    def describe(self) -> str:
        return f"LocalFileBackend({self.path})"

    def _changes(self) -> AsyncIterator[object] | None:
        # OS file notifications (inotify and the like, through watchfiles, the `watch`
        # extra) on the file's directory: an atomic rename replaces the file's inode, so
        # the name is watched, not the file. Without watchfiles, polling alone.
        try:
            import watchfiles
        except ImportError:
            return None
        # What its first turn on the I/O loop would load lazily, loaded in this thread (see
        # maintguard._ioloop: a fork during a background import leaves the child stuck).
        _ = (anyio.Event, anyio.get_cancelled_exc_class, anyio.create_task_group)
        paths = {self._path, self._target()}
        folders = sorted({os.path.dirname(p) for p in paths if os.path.isdir(os.path.dirname(p))})
        if not folders:
            return None  # no folder yet: polling notices the file when it comes
        names = {os.path.basename(p) for p in paths}

        def ours(change: object, path: str) -> bool:
            return os.path.basename(path) in names

        _quiet_watchfiles()
        return watchfiles.awatch(*folders, watch_filter=ours, debounce=50, step=5, recursive=False)

    # -- the async face: one worker-thread hop each ------------------------------------------

    async def read_state(self, scope: str | None) -> StoredState:
        scopes = await anyio.to_thread.run_sync(self._read_scopes_blocking, (scope,))
        return scopes[scope]

    async def read_scopes(self, scopes: Collection[str | None]) -> Mapping[str | None, StoredState]:
        if overrides(type(self), LocalFileBackend, "read_state"):
            return await super().read_scopes(scopes)  # the subclass's reads, one per scope
        return await anyio.to_thread.run_sync(self._read_scopes_blocking, tuple(scopes))

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        await anyio.to_thread.run_sync(self._update_blocking, scope, lambda _: state)

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        if not overrides(type(self), LocalFileBackend, "read_state", "write_state"):
            return await anyio.to_thread.run_sync(self._update_blocking, scope, mutate)
        # A subclass reads or writes its own way: read, mutate and write through its
        # methods, still under the file's lock, so that no other process writes in between.
        lock = self._locked(self._target() + ".lock")
        held = False

        def acquire() -> None:
            nonlocal held
            lock.__enter__()
            held = True

        try:
            await anyio.to_thread.run_sync(acquire)  # (not abandoned when cancelled)
            token = _holding.set(self)  # the subclass's write_state must not lock again
            try:
                return await super().update_state(scope, mutate)
            finally:
                _holding.reset(token)
        finally:
            if held:  # unlocking never blocks: done here, whatever cancelled us
                lock.__exit__(None, None, None)

    # -- the blocking protocol (see Backend._fast_path): any thread, any number of threads
    # and processes at once; the async face above is these, one worker-thread hop each ------

    def _read_scopes_blocking(self, scopes: Collection[str | None]) -> _Scopes:
        """Every scope asked for (and every scope in the file) from one read of the file."""
        result = self._parse(*self._read(self._path, stat=False)).scopes
        for scope in scopes:
            if scope not in result:
                result[scope] = StoredState()
        return result

    def _update_blocking(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        """Read-modify-write of one scope under the exclusive lock; return the new state."""
        target = self._target()
        with self._locked(target + ".lock"):
            loaded = self._parse(*self._read(target, stat=True))
            if loaded.version > VERSION:
                raise self._newer(loaded.version)
            current = loaded.scopes.get(scope, StoredState())
            new = mutate(current)
            if new != current:
                loaded.scopes[scope] = new
                self._write(target, _render(loaded))
            return new

    # -- reading -------------------------------------------------------------------------------

    def _read(self, path: str, *, stat: bool) -> tuple[str | None, int | None]:
        """The file's text (None: no file) and, with ``stat``, its permission bits."""
        try:
            # Non-blocking, so that a FIFO at the path cannot hang the reader in open(2).
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            raise self._read_error(exc) from exc
        try:
            st_mode = os.fstat(fd).st_mode
            if not S_ISREG(st_mode):  # a FIFO, a device (/dev/zero never ends), a folder
                raise BackendError(
                    f"{self.path} is not a regular file: point the backend at a file "
                    "(it is created when first written)"
                )
            mode = st_mode & 0o777 if stat else None
            chunks = [os.read(fd, _READ_SIZE)]
            # A regular file returns less than asked only at its end.
            while len(chunks[-1]) == _READ_SIZE:
                chunks.append(os.read(fd, _READ_SIZE))
        except OSError as exc:
            raise self._read_error(exc) from exc
        finally:
            os.close(fd)
        try:
            return b"".join(chunks).decode("utf-8"), mode
        except UnicodeDecodeError as exc:
            raise self._corrupt("it is not UTF-8 text") from exc

    def _parse(self, text: str | None, mode: int | None) -> _Loaded:
        if text is None:
            return _Loaded({})
        flag = parse_flag(text)
        if flag is not None:
            return _Loaded({None: StoredState(flag)}, plain=True, mode=mode)
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, found {type(data).__name__}")
            version = data.get("version", VERSION)
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"'version' must be a positive integer, found {version!r}")
            plain = data.get("plain", False)
            if not isinstance(plain, bool):
                raise ValueError(f"'plain' must be bool, found {plain!r}")
        except ValueError as exc:
            raise self._corrupt(str(exc)) from exc
        try:
            # An invalid detail is dropped with a warning (what the file says about on or
            # off stands); a write stores the state as read, without it.
            where = self.describe()
            if version > VERSION:  # perhaps not invalid, only newer
                where += f" (format version {version}: upgrade maintguard to read all of it)"
            scopes: _Scopes = {None: StoredState.from_dict(data, where=where)}
            named = data.get("scopes", {})
            if not isinstance(named, dict):
                raise ValueError("'scopes' must be an object")
            for name, value in named.items():
                if not isinstance(value, dict):
                    raise ValueError(f"scope {name!r} must be an object")
                scopes[name] = StoredState.from_dict(value, where=f"{where} scope {name!r}")
        except ValueError as exc:
            if version > VERSION:
                raise BackendError(
                    f"{self.path} is in format version {version}, which this maintguard "
                    f"(format version {VERSION}) cannot read ({exc}). Upgrade maintguard."
                ) from exc
            raise self._corrupt(str(exc)) from exc
        return _Loaded(scopes, data, plain, version, mode)

    # -- writing -------------------------------------------------------------------------------

    def _target(self) -> str:
        """The file a write replaces: the path, or the end of its chain of symbolic links."""
        path = self._path
        for _ in range(_MAX_LINKS):
            try:
                link = os.readlink(path)
            except OSError:
                return path  # not a link (EINVAL), or missing: the write tells what is wrong
            path = os.path.join(os.path.dirname(path), link)  # an absolute link replaces all
        raise self._write_error(OSError(errno.ELOOP, os.strerror(errno.ELOOP)), path)

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        if _holding.get() is self:  # inside update_state's read-modify-write, which holds it
            yield
            return
        with self._mutex:
            fd = self._lock_fd
            if fd is None or name != self._lock_name or self._lock_pid != os.getpid():
                fd = self._open_lock(name)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_nlink == 0:
                    # Someone deleted (or renamed over) the lock file while we kept it open:
                    # lock the file that the others now open (closing this one unlocks it).
                    fd = self._open_lock(name)
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                if fd == self._lock_fd:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _open_lock(self, name: str) -> int:
        self._drop_lock()
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise self._write_error(exc, name) from exc
        self._lock_fd, self._lock_name, self._lock_pid = fd, name, os.getpid()
        return fd

    def _drop_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        # A descriptor inherited over fork is only closed here: closing never releases the
        # parent's lock, and a new open gives this process a lock of its own.
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _after_fork(self) -> None:
        self._mutex = threading.Lock()  # another thread may have held it at the fork
        self._drop_lock()

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", None) is not None:
            self._drop_lock()

    def _write(self, target: str, document: tuple[str, int | None]) -> None:
        text, mode = document
        data = text.encode("utf-8")
        directory, name = os.path.split(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        wanted = _NEW_FILE_MODE if mode is None else mode
        pid = self._lock_pid  # this process's, checked under the lock
        for _ in range(100):
            tmp = os.path.join(directory, f".{name}.{pid}.{_names.getrandbits(40):x}.tmp")
            try:
                fd = os.open(tmp, flags, wanted)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._write_error(exc, target) from exc
        else:  # pragma: no cover - 100 name collisions
            raise self._write_error(OSError(errno.EEXIST, os.strerror(errno.EEXIST)), target)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if wanted & _umask():
                    os.fchmod(fd, wanted)  # the umask took bits away
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._write_error(exc, target) from exc

    # -- errors --------------------------------------------------------------------------------

    def _newer(self, version: int) -> BackendError:
        return BackendError(
            f"{self.path} is in format version {version}, written by a newer maintguard; this "
            f"one writes format version {VERSION} and leaves the file as it is. Upgrade "
            "maintguard in every process that changes this file."
        )

    def _corrupt(self, detail: str) -> BackendError:
        return BackendError(
            f"{self.path} does not hold a maintenance state ({detail}). Fix the file or delete "
            "it to start from 'off'; maintguard does not overwrite it."
        )

    def _read_error(self, exc: OSError) -> BackendError:
        return BackendError(
            f"cannot read the maintenance state from {self.path}: {exc.strerror}. "
            "Check that the path names a readable file."
        )

    def _write_error(self, exc: OSError, target: str | None = None) -> BackendError:
        where = Path(target).parent if target else self.path.parent
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


# -- rendering -------------------------------------------------------------------------------


def _render(loaded: _Loaded) -> tuple[str, int | None]:
    """The new file content (and the permission bits to keep) for ``loaded.scopes``."""
    raw = loaded.raw or {}
    raw_named: dict[str, Any] = raw.get("scopes") or {}
    if (
        loaded.plain
        and not _unknown(raw, _TOP_KEYS)
        and not any(_unknown(v, _STATE_KEYS) for v in raw_named.values())
        and (text := _plain(loaded.scopes)) is not None
    ):
        return text, loaded.mode  # nothing more to store: back to the form other tools wrote
    windows = any(state.windows for state in loaded.scopes.values())
    document: dict[str, Any] = {"version": VERSION if windows else _WITHOUT_WINDOWS}
    if loaded.plain:
        document["plain"] = True  # "return to plain form when possible", for every process
    merged = _merge(raw, loaded.scopes.get(None, StoredState()))
    document.update((k, v) for k, v in merged.items() if k not in ("version", "plain", "scopes"))
    named: dict[str, Any] = {}
    for name, state in loaded.scopes.items():
        if name is None:
            continue
        known = raw_named.get(name)
        if state != StoredState() or _unknown(known, _STATE_KEYS):
            named[name] = _merge(known, state)
    if named:
        document["scopes"] = named
    return _dumps(document, "") + "\n", loaded.mode


def _dumps(obj: Mapping[str, Any], indent: str) -> str:
    """``obj`` as JSON for people to read: a field per line, a hold per line.

    Leaves go through ``json.dumps`` without ``indent``, which is the C encoder (with
    ``indent`` the whole document would go through the pure-Python one, several times slower).
    """
    inner = indent + "  "
    fields = []
    for key, value in obj.items():
        if (
            key in ("holds", "workers", "windows", "history", "cordons")
            and value
            and isinstance(value, list)
        ):
            text = ",\n".join(f"{inner}  {json.dumps(h)}" for h in value)
            text = f"[\n{text}\n{inner}]"
        elif key == "scopes" and not indent and value and isinstance(value, dict):
            text = ",\n".join(
                f"{inner}  {json.dumps(k)}: {_dumps(v, inner + '  ')}" for k, v in value.items()
            )
            text = f"{{\n{text}\n{inner}}}"
        else:
            text = json.dumps(value)
        fields.append(f"{inner}{json.dumps(key)}: {text}")
    body = ",\n".join(fields)
    return f"{{\n{body}\n{indent}}}" if fields else "{}"


def _merge(raw: Mapping[str, Any] | None, state: StoredState) -> dict[str, Any]:
    """``state`` as JSON, keeping the fields of ``raw`` (and of its holds and windows, by id)
    we don't know."""
    out = dict(raw) if raw else {}
    out.pop("workers", None)  # known, and written only when there are some
    out.pop("windows", None)
    out.pop("history", None)
    out.pop("cordons", None)
    new = state.to_dict()
    if raw and new["holds"]:
        old = {h.get("id"): h for h in raw.get("holds", ()) if isinstance(h, Mapping)}
        new["holds"] = [
            {**{k: v for k, v in old.get(h["id"], {}).items() if k != "drain"}, **h}
            for h in new["holds"]
        ]
    if raw and new.get("windows"):
        old = {w.get("id"): w for w in raw.get("windows", ()) if isinstance(w, Mapping)}
        new["windows"] = [
            {**{k: v for k, v in old.get(w["id"], {}).items() if k not in _WINDOW_KEYS}, **w}
            for w in new["windows"]
        ]
    if raw and new.get("cordons"):
        old = {c.get("host"): c for c in raw.get("cordons", ()) if isinstance(c, Mapping)}
        new["cordons"] = [
            {**{k: v for k, v in old.get(c["host"], {}).items() if k not in _CORDON_KEYS}, **c}
            for c in new["cordons"]
        ]
    if raw and new.get("history"):
        old = {_entry_key(e): e for e in raw.get("history", ()) if isinstance(e, Mapping)}
        new["history"] = [
            {**{k: v for k, v in old.get(_entry_key(e), {}).items() if k not in _ENTRY_KEYS}, **e}
            for e in new["history"]
        ]
    out.update(new)
    return out


def _entry_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    # Audit entries have no id: one is told from another by when, who and what.
    return tuple(str(entry.get(k)) for k in ("at", "actor", "pid", "kind"))


_ENTRY_KEYS = frozenset(
    {"at", "actor", "pid", "command", "kind", "scope", "reason", "window", "holds", "host"}
)
"""An audit entry's fields this version knows: others (a newer version's) are kept."""


_CORDON_KEYS = frozenset({"host", "since", "by", "reason", "drain", "drain_until"})
"""A cordon's fields this version knows: others (a newer version's) are kept on rewrites."""
_WINDOW_KEYS = frozenset(
    {"id", "start", "end", "every", "tz", "duration", "announce", "reason", "retry_after"}
    | {"mode", "created", "by", "skip"}
)
"""A window's fields this version knows: others (a newer version's) are kept on rewrites."""


def _unknown(raw: Mapping[str, Any] | None, known: frozenset[str]) -> bool:
    return raw is not None and not known.issuperset(raw)


def _plain(scopes: _Scopes) -> str | None:
    # Keep a file other tools wrote in their plain form while nothing else needs storing.
    # The audit trail is not kept there: other tools read the plain form, and it wins.
    state = scopes.get(None, StoredState())
    e = state.explicit
    if (
        state.holds
        or state.workers
        or state.windows
        or state.cordons
        or any(v != StoredState() for k, v in scopes.items() if k is not None)
    ):
        return None
    if e.reason is not None or e.retry_after is not None or e.until is not None:
        return None
    if not e.active:
        return "0\n"
    return "read_only\n" if e.mode.value == "read_only" else "1\n"


# -- watchfiles' log lines --------------------------------------------------------------------


class _WatcherChatter(logging.Filter):
    """Drops watchfiles' "1 change detected" (INFO) for the notifications maintguard's own
    watcher asks for: every switch would log it beside maintguard's own line. Only while
    nobody set a level on the ``watchfiles`` loggers (who does wants them), and only on
    maintguard's I/O thread (the app's own use of watchfiles is left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or not ioloop.on_io_thread():
            return True
        return any(logging.getLogger(name).level for name in ("watchfiles", record.name))


_chatter = _WatcherChatter()


def _quiet_watchfiles() -> None:
    logging.getLogger("watchfiles.main").addFilter(_chatter)  # (added once)


# -- process-wide state ----------------------------------------------------------------------

_names = random.Random()  # temporary file names; never the shared module's state
_umask_cache: int | None = None


def _umask() -> int:
    """This process's umask, read once (on Linux without changing it; else 0o777: "always
    chmod"). A fork inherits it. A process that changes its umask after its first write
    gets files created with the old one's bits, as if it had not changed it."""
    global _umask_cache
    if _umask_cache is None:
        value = 0o777
        with (
            contextlib.suppress(OSError, ValueError),
            open("/proc/self/status", encoding="ascii") as f,
        ):
            for line in f:
                if line.startswith("Umask:"):
                    value = int(line.split()[1], 8)
                    break
        _umask_cache = value
    return _umask_cache


_instances: weakref.WeakSet[LocalFileBackend] = weakref.WeakSet()
_holding: contextvars.ContextVar[LocalFileBackend | None] = contextvars.ContextVar(
    "maintguard_file_lock_held", default=None
)
"""The backend whose lock this task holds for a subclass's read-modify-write (worker
threads run in a copy of the task's context, so its write sees it)."""


def _reset_after_fork() -> None:
    for backend in list(_instances):
        backend._after_fork()


lifecycle.after_fork("file", _reset_after_fork)
