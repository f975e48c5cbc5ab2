"""Every built-in backend keeps one contract, whichever way the core calls it.

The core may call a built-in through a fast path of its own (the memory and env backends
in the caller's thread, the file's blocking calls from a thread the core picks), chosen in
one place (``maintguard._core.io.way``); every backend is also complete through its public
methods (``read_state``, ``write_state``, ``update_state``, ``read_scopes``). Each test
here runs the same body both ways, on every built-in backend:

- ``fast``: the built-in class itself, as the core takes its fast path (Redis has none);
- ``public``: a subclass that overrides every public I/O method by calling ``super()``, so
  that the core calls those and nothing else (the calls are counted to prove it).

What they must agree on: holds, the explicit state on and off, named scopes, leases,
planned windows, writes from concurrent threads losing nothing, and what ends up stored.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

import maintguard.sync
from maintguard import (
    ConfigurationError,
    Mode,
    Phase,
    ReadOnlyBackendError,
    get_state,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard._core import io
from maintguard._core.registry import store_of
from maintguard._state import (
    ExplicitState,
    HoldRecord,
    MaintenanceState,
    StoredState,
    WindowRecord,
    window_to_dict,
)
from maintguard._windows import LIMIT
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    PutHold,
    PutWindow,
    RedisBackend,
    SetExplicit,
)
from tests.stores import REDIS_URL, redis_prefix

KINDS = ("memory", "env", "file", "redis")
MODES = ("fast", "public")
BUILT_IN: dict[str, type[Backend]] = {
    "memory": MemoryBackend,
    "env": EnvVarBackend,
    "file": LocalFileBackend,
    "redis": RedisBackend,
}
FAST_WAY = {"memory": io.Way.INLINE, "env": io.Way.INLINE, "file": io.Way.BLOCKING}
PUBLIC_IO = ("read_state", "write_state", "update_state", "read_scopes")
_names = itertools.count()


# -- the public face alone: every public method overridden by a call to super() ---------


class Calls:
    """The public methods the ``public`` subclasses were called through."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: collections.Counter[str] = collections.Counter()

    def add(self, name: str) -> None:
        with self.lock:
            self.seen[name] += 1


CALLS = Calls()


def _through_public(base: type[Backend]) -> type[Backend]:
    def forward(name: str) -> Callable[..., Any]:
        async def method(self: Backend, *args: Any) -> Any:
            CALLS.add(name)
            return await getattr(super(cls, self), name)(*args)

        method.__name__ = name
        return method

    cls = type(f"Public{base.__name__}", (base,), {name: forward(name) for name in PUBLIC_IO})
    return cls


PUBLIC = {kind: _through_public(base) for kind, base in BUILT_IN.items()}


@dataclass
class Contract:
    """One store of one built-in backend, called ``mode``'s way."""

    kind: str
    mode: str
    cls: type[Backend]
    where: Any  # the store's name: a path, a variable, a key prefix, or the memory object

    @property
    def writable(self) -> bool:
        return self.kind != "env"

    def new(self) -> Backend:
        """An object naming the store (memory: its one object)."""
        make: Any = self.cls  # (each built-in's own arguments)
        if self.kind == "memory":
            return self.where  # type: ignore[no-any-return]
        if self.kind == "env":
            return make(self.where)  # type: ignore[no-any-return]
        if self.kind == "redis":
            return make(REDIS_URL, key_prefix=self.where, refresh_interval=0)  # type: ignore[no-any-return]
        return make(self.where, refresh_interval=0)  # type: ignore[no-any-return]

    def stored(self, *scopes: str | None) -> dict[str | None, StoredState]:
        """What the store holds, read through the plain built-in's public method."""
        if self.kind == "memory":
            reader = self.where
        elif self.kind == "env":
            reader = EnvVarBackend(self.where)
        elif self.kind == "redis":
            reader = RedisBackend(REDIS_URL, key_prefix=self.where)
        else:
            reader = LocalFileBackend(self.where)
        # (In a thread of its own: async tests call it too.)
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            found = thread.submit(anyio.run, reader.read_scopes, scopes).result()
        return {scope: found[scope] for scope in scopes}

    def served_by(self, *names: str) -> None:
        """The ``public`` way: the core called these public methods (no fast path)."""
        if self.mode == "public":
            with CALLS.lock:
                missing = [name for name in names if not CALLS.seen[name]]
            assert not missing, f"not called through {missing}: {dict(CALLS.seen)}"

    def set_env(self, scope: str | None, value: str | None) -> None:
        name = EnvVarBackend(self.where).variable(scope)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def make_contract(kind: str, mode: str, tmp_path: Path) -> Contract:
    cls = BUILT_IN[kind] if mode == "fast" else PUBLIC[kind]
    where: Any
    if kind == "memory":
        where = cls()
    elif kind == "env":
        where = f"MAINTGUARD_CONTRACT_{os.getpid()}_{next(_names)}"
    elif kind == "redis":
        where = redis_prefix()
    else:
        where = tmp_path / f"contract-{next(_names)}.json"
    return Contract(kind, mode, cls, where)


@pytest.fixture(params=[(k, m) for k in KINDS for m in MODES], ids="-".join)
def contract(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Contract]:
    kind, mode = request.param
    made = make_contract(kind, mode, tmp_path)
    with CALLS.lock:
        CALLS.seen.clear()
    yield made
    if kind == "env":
        for scope in (None, "billing", "jobs"):
            made.set_env(scope, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # (the faces on trio: tests/test_backends.py's contract)


def _plain(state: MaintenanceState) -> tuple[Any, ...]:
    """What readers see, without the times and ids that differ between runs."""
    holders = sorted((h.owner, h.reason, h.mode, h.pid) for h in state.holders)
    return (state.active, state.mode, state.reason, state.retry_after, state.holds, holders)


def _plain_stored(state: StoredState) -> tuple[Any, ...]:
    e = state.explicit
    holds = sorted((h.owner, h.reason, h.mode, h.pid) for h in state.holds)
    return (e.active, e.mode, e.reason, e.retry_after, e.until is not None, holds)


# -- which way the core calls ----------------------------------------------------------------


def test_the_core_calls_the_way_the_mode_says(contract: Contract) -> None:
    backend = contract.new()
    expected = FAST_WAY.get(contract.kind, io.Way.LOOP) if contract.mode == "fast" else io.Way.LOOP
    assert io.way(backend) is expected
    maintguard.sync.get_state(backend)
    contract.served_by("read_scopes", "read_state")  # (the base read_scopes reads each)


# -- the explicit state ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_explicit_on_and_off(contract: Contract) -> None:
    backend = contract.new()
    if not contract.writable:
        with pytest.raises(ReadOnlyBackendError):
            await set_maintenance_mode(True, backend, reason="upgrade")
        contract.set_env(None, "read_only")
        state = await get_state(contract.new())
        assert (state.active, state.mode) == (True, Mode.READ_ONLY)
        contract.set_env(None, "0")
        assert (await get_state(contract.new())).active is False
        return
    await set_maintenance_mode(True, backend, reason="upgrade", mode=Mode.READ_ONLY, retry_after=30)
    state = await get_state(contract.new())
    assert (state.active, state.reason, state.mode, state.explicit) == (
        True,
        "upgrade",
        Mode.READ_ONLY,
        True,
    )
    stored = contract.stored(None)[None].explicit
    assert (stored.active, stored.reason, stored.mode) == (True, "upgrade", Mode.READ_ONLY)
    await set_maintenance_mode(False, backend)
    assert (await get_state(contract.new())).active is False
    assert contract.stored(None)[None].explicit.active is False
    contract.served_by("update_state", "read_scopes")


def test_explicit_on_and_off_from_sync_code(contract: Contract) -> None:
    backend = contract.new()
    if not contract.writable:
        with pytest.raises(ReadOnlyBackendError):
            maintguard.sync.set_maintenance_mode(True, backend)
        contract.set_env(None, "on")
        assert maintguard.sync.get_state(contract.new()).active is True
        return
    maintguard.sync.set_maintenance_mode(True, backend, reason="sync")
    assert maintguard.sync.get_state(contract.new()).reason == "sync"
    maintguard.sync.set_maintenance_mode(False, backend)
    assert maintguard.sync.get_state(contract.new()).active is False
    stored = contract.stored(None)[None]
    assert replace(stored, history=()) == StoredState()  # off; the audit trail says who
    assert [(e.kind, e.reason) for e in stored.history] == [("off", None), ("on", "sync")]


def test_a_read_only_store_refuses_every_write_even_one_that_changes_nothing(
    contract: Contract,
) -> None:
    if contract.writable:
        pytest.skip("only the env backend is read-only")
    backend = contract.new()
    off = SetExplicit(ExplicitState(), datetime.now(timezone.utc))  # the store is off already
    with pytest.raises(ReadOnlyBackendError):
        io.update_blocking(backend, None, lambda: off, store_of(backend))
    with pytest.raises(ReadOnlyBackendError):
        anyio.run(backend.update_state, None, off)
    with pytest.raises(ReadOnlyBackendError):
        anyio.run(backend.write_state, None, StoredState())
    contract.served_by("update_state")


# -- named scopes ----------------------------------------------------------------------------


def test_named_scopes_stand_alone_and_follow_the_global_one(contract: Contract) -> None:
    backend = contract.new()
    if contract.writable:
        maintguard.sync.set_maintenance_mode(True, backend, scope="billing", reason="b")
    else:
        contract.set_env("billing", "1")
    reader = contract.new()
    assert maintguard.sync.get_state(reader, "billing").active is True
    assert maintguard.sync.get_state(reader).active is False
    assert maintguard.sync.get_state(reader, "jobs").active is False
    if contract.writable:
        assert contract.stored("billing")["billing"].explicit.reason == "b"
        assert contract.stored(None)[None].explicit.active is False
        maintguard.sync.set_maintenance_mode(True, backend, reason="all")
    else:
        contract.set_env(None, "1")
    reader = contract.new()
    assert maintguard.sync.get_state(reader, "jobs").active is True  # the global one is on
    assert maintguard.sync.get_state(reader).active is True


# -- holds -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_hold_is_seen_while_held_and_gone_after(contract: Contract) -> None:
    async with under_maintenance(backend=contract.new(), scope="jobs", reason="job"):
        state = await get_state(contract.new(), "jobs")
        assert (state.active, state.holds, state.reason) == (True, 1, "job")
        assert state.holders[0].pid == os.getpid()
        assert (await get_state(contract.new())).active is False  # its scope only
        if contract.kind in ("file", "redis"):  # stored, for other processes to see
            assert [h.reason for h in contract.stored("jobs")["jobs"].holds] == ["job"]
            contract.served_by("update_state")
    state = await get_state(contract.new(), "jobs")
    assert (state.active, state.holds) == (False, 0)
    assert contract.stored("jobs")["jobs"].holds == ()


def test_a_hold_from_sync_code(contract: Contract) -> None:
    with under_maintenance(backend=contract.new(), reason="sync job"):
        state = maintguard.sync.get_state(contract.new())
        assert (state.active, state.reason) == (True, "sync job")
    assert maintguard.sync.get_state(contract.new()).active is False
    assert contract.stored(None)[None].holds == ()


# -- leases ----------------------------------------------------------------------------------


def _record(hold_id: str, expires: datetime | None, reason: str = "elsewhere") -> HoldRecord:
    now = datetime.now(timezone.utc)
    return HoldRecord(hold_id, "other", "host", 1, now, now, expires, reason)


def test_a_record_whose_lease_ran_out_counts_for_nothing_and_is_dropped(
    contract: Contract,
) -> None:
    if not contract.writable:
        pytest.skip("the env backend stores no records")
    backend = contract.new()
    owner = store_of(backend)
    now = datetime.now(timezone.utc)
    gone = _record("gone", now - timedelta(seconds=5))
    live = _record("live", now + timedelta(seconds=60), reason="migration")

    def put(record: HoldRecord) -> None:
        write = PutHold(record.id, record, datetime.now(timezone.utc), 60.0)
        io.update_blocking(backend, None, lambda: write, owner)

    # Another process's records, as it would write them (its lease from its own clock).
    io.update_blocking(backend, None, lambda: lambda s: replace(s, holds=(gone,)), owner)
    assert all(not h.live(datetime.now(timezone.utc)) for h in contract.stored(None)[None].holds)
    if contract.kind != "memory":  # (memory keeps this process's holds in memory only)
        assert maintguard.sync.get_state(contract.new()).active is False
    put(live)
    assert [h.id for h in contract.stored(None)[None].holds] == ["live"]  # "gone" dropped
    if contract.kind != "memory":
        state = maintguard.sync.get_state(contract.new())
        assert (state.active, state.reason) == (True, "migration")

    # A renewal that finds its record gone (the lease ran out meanwhile) says so, and
    # writes it again.
    again = PutHold("late", _record("late", now + timedelta(seconds=60)), now, 60.0, renewal=True)
    io.update_blocking(backend, None, lambda: again, owner)
    assert again.lost is True
    assert sorted(h.id for h in contract.stored(None)[None].holds) == ["late", "live"]
    renewed = PutHold("late", _record("late", now + timedelta(seconds=90)), now, 60.0, renewal=True)
    io.update_blocking(backend, None, lambda: renewed, owner)
    assert renewed.lost is False
    contract.served_by("update_state")


# -- concurrent writers ----------------------------------------------------------------------


class _Owner:
    """What serialises one process's writes (the core's store): one per "process" here."""

    def __init__(self) -> None:
        self.write_lock = threading.Lock()


def _at_once(threads: int, write: Callable[[int], None]) -> list[BaseException]:
    """Run ``write(n)`` for n in range(threads), each in a thread, all started together;
    what any of them raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def run(n: int) -> None:
        try:
            start.wait()
            write(n)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return errors


@pytest.mark.parametrize("owners", ["one process", "a process per thread"])
def test_concurrent_writers_lose_no_write(contract: Contract, owners: str) -> None:
    # Threads each putting holds of their own into one scope at once: every record is
    # there at the end. "a process per thread": nothing in this process serialises them,
    # so the backend's write must be atomic itself (the file's lock, Redis' script, the
    # memory store's lock), through the fast path and the public update_state alike.
    if (contract.kind, contract.mode, owners) == ("redis", "public", "a process per thread"):
        pytest.skip(
            "documented: a Redis subclass that overrides read_state/write_state writes as a "
            "read then a write, atomic only within one process"
        )
    threads, each = 6, 8
    shared = _Owner() if owners == "one process" else None
    now = datetime.now(timezone.utc)

    def writer(n: int) -> None:
        backend = contract.new()
        owner = shared or _Owner()
        for i in range(each):
            hold_id = f"t{n}-{i}"
            write = PutHold(hold_id, _record(hold_id, now + timedelta(seconds=60)), now, 60.0)
            io.update_blocking(backend, "jobs", lambda write=write: write, owner)  # type: ignore[misc]

    errors = _at_once(threads, writer)
    if not contract.writable:
        assert len(errors) == threads
        assert all(isinstance(e, ReadOnlyBackendError) for e in errors)
        contract.served_by("update_state")
        return
    assert not errors
    ids = sorted(h.id for h in contract.stored("jobs")["jobs"].holds)
    assert ids == sorted(f"t{n}-{i}" for n in range(threads) for i in range(each))
    contract.served_by("update_state")


def test_concurrent_public_update_state_calls_lose_no_write(contract: Contract) -> None:
    # The same through the backend's own update_state, called from threads at once (each
    # running its own event loop), with no core in between.
    if not contract.writable:
        pytest.skip("the env backend refuses every write (see above)")
    if (contract.kind, contract.mode) == ("redis", "public"):
        pytest.skip("documented: a read then a write (see above)")
    threads, each = 6, 8
    now = datetime.now(timezone.utc)

    def writer(n: int) -> None:
        backend = contract.new()

        async def writes() -> None:
            for i in range(each):
                hold_id = f"t{n}-{i}"
                record = _record(hold_id, now + timedelta(seconds=60))
                await backend.update_state("jobs", PutHold(hold_id, record, now, 60.0))

        anyio.run(writes)

    assert not _at_once(threads, writer)
    assert len(contract.stored("jobs")["jobs"].holds) == threads * each


# -- planned windows -------------------------------------------------------------------------

T0 = datetime(2031, 3, 2, 1, 2, 3, 456789, tzinfo=timezone.utc)  # a Sunday, years ahead


def _one_off(window_id: str = "once", reason: str = "migration") -> WindowRecord:
    """A one-off window with every field it can have set to something not the default."""
    return WindowRecord(
        id=window_id,
        start=T0,
        end=T0 + timedelta(hours=2, microseconds=7),
        announce=1800.5,
        reason=reason,
        retry_after=T0 + timedelta(hours=3),
        mode=Mode.READ_ONLY,
        created=T0 - timedelta(days=1),
        by="ops@db1",
    )


def _recurring(window_id: str = "weekly") -> WindowRecord:
    """A recurring window with every field it can have set to something not the default."""
    return WindowRecord(
        id=window_id,
        start=T0,
        duration=3600.25,
        every="0 3 * * SUN",
        tz="Europe/Berlin",
        announce=600.0,
        reason="weekly reindex",
        retry_after=120.5,
        mode=Mode.READ_ONLY,
        created=T0 - timedelta(days=2),
        by="cron@db1",
        skip=(T0 + timedelta(days=7, minutes=58), T0 + timedelta(days=14, minutes=58)),
    )


def _put_window(
    backend: Backend,
    scope: str | None,
    window_id: str,
    record: WindowRecord | None,
    limit: int = LIMIT,
    owner: Any = None,
) -> PutWindow:
    """Store (or remove) a window the way the core's operator writes do; the write, to
    look at what the backend set on it."""
    write = PutWindow(window_id, record, limit)
    io.update_blocking(backend, scope, lambda: write, owner or store_of(backend))
    return write


def _window_ids(contract: Contract, scope: str | None) -> list[str]:
    return sorted(w.id for w in contract.stored(scope)[scope].windows)


def _by_id(windows: tuple[WindowRecord, ...]) -> dict[str, dict[str, Any]]:
    return {w.id: window_to_dict(w) for w in windows}


def _writable_only(contract: Contract) -> None:
    if not contract.writable:
        backend = contract.new()
        with pytest.raises(ReadOnlyBackendError):
            _put_window(backend, None, "once", _one_off())
        with pytest.raises(ReadOnlyBackendError):
            maintguard.sync.schedule_maintenance(3600, duration=60, backend=backend)
        pytest.skip("the env backend stores no windows (it refuses them: above)")


@pytest.mark.parametrize("scope", [None, "billing"])
def test_windows_round_trip_with_every_field(contract: Contract, scope: str | None) -> None:
    _writable_only(contract)
    backend = contract.new()
    for record in (_one_off(), _recurring()):
        assert _put_window(backend, scope, record.id, record).found is False
    stored = contract.stored(scope)[scope]
    assert _by_id(stored.windows) == _by_id((_one_off(), _recurring()))
    assert sorted(stored.windows, key=lambda w: w.id) == [_one_off(), _recurring()]
    state = maintguard.sync.get_state(contract.new(), scope)
    assert state.active is False
    assert state.next_window is not None
    assert (state.next_window.id, state.next_window.start) == ("once", T0)
    contract.served_by("update_state", "read_scopes")


def test_put_window_adds_replaces_and_removes_and_says_what_it_found(contract: Contract) -> None:
    _writable_only(contract)
    backend = contract.new()
    assert _put_window(backend, "billing", "once", _one_off()).found is False
    assert _by_id(contract.stored("billing")["billing"].windows) == _by_id((_one_off(),))
    moved = _one_off(reason="moved")
    assert _put_window(backend, "billing", "once", moved).found is True
    [stored] = contract.stored("billing")["billing"].windows
    assert (stored.id, stored.reason) == ("once", "moved")
    assert _put_window(backend, "billing", "weekly", _recurring()).found is False
    assert _window_ids(contract, "billing") == ["once", "weekly"]
    assert _put_window(backend, "billing", "once", None).found is True
    assert _window_ids(contract, "billing") == ["weekly"]
    assert _put_window(backend, "billing", "once", None).found is False  # gone already
    assert _put_window(backend, "billing", "weekly", None).found is True
    assert contract.stored("billing", None) == {"billing": StoredState(), None: StoredState()}
    contract.served_by("update_state")


def test_windows_through_the_faces(contract: Contract) -> None:
    _writable_only(contract)
    backend = contract.new()
    window = maintguard.sync.schedule_maintenance(
        timedelta(hours=1), duration=600, reason="reindex", backend=backend, scope="billing"
    )
    listed = maintguard.sync.list_windows(backend=contract.new(), scope="billing")
    assert [(w.id, w.reason) for w in listed] == [(window.id, "reindex")]
    assert maintguard.sync.list_windows(backend=contract.new()) == []  # its scope only
    state = maintguard.sync.get_state(contract.new(), "billing")
    assert state.next_window is not None
    assert (state.active, state.next_window.id) == (False, window.id)
    assert maintguard.sync.cancel_window(window.id, backend=backend, scope="billing") is True
    assert maintguard.sync.cancel_window(window.id, backend=backend, scope="billing") is False
    assert maintguard.sync.list_windows(backend=contract.new(), scope="billing") == []
    assert contract.stored("billing")["billing"].windows == ()
    contract.served_by("update_state", "read_scopes")


def test_a_scope_keeps_at_most_the_limit_of_windows(contract: Contract) -> None:
    _writable_only(contract)
    backend = contract.new()
    names = [f"w{i:03}" for i in range(LIMIT)]
    for name in names:
        _put_window(backend, "jobs", name, _one_off(name))
    full = StoredState(windows=tuple(_one_off(name) for name in names))
    with pytest.raises(ConfigurationError) as own:  # what PutWindow itself says
        PutWindow("one-too-many", _one_off("one-too-many"))(full)
    with pytest.raises(ConfigurationError) as refused:
        _put_window(backend, "jobs", "one-too-many", _one_off("one-too-many"))
    assert str(refused.value) == str(own.value)
    assert _window_ids(contract, "jobs") == names  # nothing changed
    # A full scope still takes a window it has (a replacement), and a new one once there
    # is room.
    assert _put_window(backend, "jobs", "w007", _one_off("w007", reason="moved")).found is True
    assert _put_window(backend, "jobs", "w000", None).found is True
    assert _put_window(backend, "jobs", "one-more", _one_off("one-more")).found is False
    stored = {w.id: w for w in contract.stored("jobs")["jobs"].windows}
    assert sorted(stored) == sorted([*names[1:], "one-more"])
    assert stored["w007"].reason == "moved"
    contract.served_by("update_state")


@pytest.mark.parametrize("scope", [None, "billing"])
def test_windows_survive_the_explicit_state_and_holds(
    contract: Contract, scope: str | None
) -> None:
    _writable_only(contract)
    backend = contract.new()
    both = _by_id((_one_off(), _recurring()))
    for record in (_one_off(), _recurring()):
        _put_window(backend, scope, record.id, record)
    maintguard.sync.set_maintenance_mode(True, backend, scope=scope, reason="op")
    assert _by_id(contract.stored(scope)[scope].windows) == both
    maintguard.sync.set_maintenance_mode(True, backend, scope=scope, reason="op again")
    assert _by_id(contract.stored(scope)[scope].windows) == both
    maintguard.sync.set_maintenance_mode(False, backend, scope=scope)
    assert _by_id(contract.stored(scope)[scope].windows) == both
    with under_maintenance(backend=contract.new(), scope=scope, reason="job"):
        assert _by_id(contract.stored(scope)[scope].windows) == both
        state = maintguard.sync.get_state(contract.new(), scope)
        assert state.next_window is not None
        assert (state.active, state.reason, state.next_window.id) == (True, "job", "once")
    stored = contract.stored(scope)[scope]
    assert (stored.explicit.active, stored.holds, _by_id(stored.windows)) == (False, (), both)
    state = maintguard.sync.get_state(contract.new(), scope)
    assert state.next_window is not None
    assert (state.active, state.next_window.id) == (False, "once")
    contract.served_by("update_state", "read_scopes")


def test_a_scope_that_only_has_windows_is_read_back(contract: Contract) -> None:
    _writable_only(contract)
    backend = contract.new()
    now = datetime.now(timezone.utc)
    current = WindowRecord(
        id="now", start=now - timedelta(minutes=1), end=now + timedelta(hours=1), reason="window"
    )
    _put_window(backend, "jobs", "later", _one_off("later"))
    _put_window(backend, "jobs", "now", current)
    stored = contract.stored(None, "jobs")
    assert stored[None] == StoredState()
    assert sorted(w.id for w in stored["jobs"].windows) == ["later", "now"]
    state = maintguard.sync.get_state(contract.new(), "jobs")
    assert state.next_window is not None
    assert (state.active, state.phase, state.reason, state.next_window.id) == (
        True,
        Phase.ON,
        "window",
        "now",
    )
    assert maintguard.sync.get_state(contract.new()).active is False  # its scope only
    # An operator's off ends the window in force (it is removed); the planned one stays.
    maintguard.sync.set_maintenance_mode(False, contract.new(), scope="jobs")
    assert _window_ids(contract, "jobs") == ["later"]
    state = maintguard.sync.get_state(contract.new(), "jobs")
    assert state.next_window is not None
    assert (state.active, state.next_window.id) == (False, "later")
    contract.served_by("update_state", "read_scopes")


def test_write_state_stores_the_windows_it_is_given_and_no_others(contract: Contract) -> None:
    if not contract.writable:
        pytest.skip("the env backend refuses every write")
    backend = contract.new()
    anyio.run(backend.write_state, "billing", StoredState(windows=(_one_off(), _recurring())))
    assert _by_id(contract.stored("billing")["billing"].windows) == _by_id(
        (_one_off(), _recurring())
    )
    on = ExplicitState(active=True, reason="op")
    anyio.run(backend.write_state, "billing", StoredState(on, windows=(_recurring("other"),)))
    stored = contract.stored("billing")["billing"]
    assert (stored.explicit.reason, _by_id(stored.windows)) == (
        "op",
        _by_id((_recurring("other"),)),
    )
    anyio.run(backend.write_state, "billing", StoredState(windows=(_one_off(),)))
    stored = contract.stored("billing")["billing"]
    assert (stored.explicit.active, _by_id(stored.windows)) == (False, _by_id((_one_off(),)))
    anyio.run(backend.write_state, "billing", StoredState())
    assert contract.stored("billing")["billing"] == StoredState()


UNREADABLE_WINDOW = {"start": "2031-01-01T00:00:00+00:00", "end": "the day after"}


def _store_by_hand(contract: Contract, window_id: str, data: dict[str, Any]) -> None:
    """Add a window to the global scope as a hand edit would, unchecked."""
    if contract.kind == "file":
        path = Path(contract.where)
        document = json.loads(path.read_text())
        document.setdefault("windows", []).append(data | {"id": window_id})
        path.write_text(json.dumps(document))
        return
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.hset("{" + contract.where + "}:windows", window_id, json.dumps(data))
    finally:
        client.close()


def test_a_window_that_cannot_be_read_is_dropped_with_a_warning(
    contract: Contract, caplog: pytest.LogCaptureFixture
) -> None:
    _writable_only(contract)
    if contract.kind == "memory":
        pytest.skip("a memory store holds only what maintguard put there")
    backend = contract.new()
    maintguard.sync.set_maintenance_mode(True, backend, reason="op")
    _put_window(backend, None, "once", _one_off())
    _store_by_hand(contract, "bad", UNREADABLE_WINDOW)
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        stored = contract.stored(None)[None]
        state = maintguard.sync.get_state(contract.new())
    assert _by_id(stored.windows) == _by_id((_one_off(),))  # the rest is read
    assert (stored.explicit.active, stored.explicit.reason) == (True, "op")
    assert (state.active, state.reason) == (True, "op")  # never switched off
    assert state.next_window is not None and state.next_window.id == "once"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("window 'bad' is ignored" in w for w in warnings), warnings
    # The next write leaves it where it is (an operator mends or removes it), and works.
    assert _put_window(backend, None, "weekly", _recurring()).found is False
    assert _window_ids(contract, None) == ["once", "weekly"]


@pytest.mark.parametrize("owners", ["one process", "a process per thread"])
def test_concurrent_window_and_hold_writers_lose_nothing(contract: Contract, owners: str) -> None:
    # Threads each putting windows and holds of their own into one scope at once: each
    # kind of write leaves the other's records alone, and none is lost (see
    # test_concurrent_writers_lose_no_write for what "a process per thread" asks).
    if not contract.writable:
        pytest.skip("the env backend refuses every write (see above)")
    if (contract.kind, contract.mode, owners) == ("redis", "public", "a process per thread"):
        pytest.skip("documented: a read then a write (see above)")
    threads, each = 6, 6
    shared = _Owner() if owners == "one process" else None
    now = datetime.now(timezone.utc)

    def writer(n: int) -> None:
        backend = contract.new()
        owner = shared or _Owner()
        for i in range(each):
            name = f"t{n}-{i}"
            _put_window(backend, "jobs", name, _one_off(name), owner=owner)
            hold = PutHold(name, _record(name, now + timedelta(seconds=60)), now, 60.0)
            io.update_blocking(backend, "jobs", lambda hold=hold: hold, owner)  # type: ignore[misc]

    assert not _at_once(threads, writer)
    expected = sorted(f"t{n}-{i}" for n in range(threads) for i in range(each))
    stored = contract.stored("jobs")["jobs"]
    assert sorted(w.id for w in stored.windows) == expected
    assert sorted(h.id for h in stored.holds) == expected
    contract.served_by("update_state")


def test_concurrent_writers_never_pass_the_window_limit(contract: Contract) -> None:
    # Writers that each believe there is room: the check and the write are one step.
    if not contract.writable:
        pytest.skip("the env backend refuses every write (see above)")
    if (contract.kind, contract.mode) == ("redis", "public"):
        pytest.skip("documented: a read then a write (see above)")
    threads, each, limit = 4, 5, 10
    refused: list[str] = []

    def writer(n: int) -> None:
        backend, owner = contract.new(), _Owner()
        for i in range(each):
            name = f"t{n}-{i}"
            try:
                _put_window(backend, "jobs", name, _one_off(name), limit, owner)
            except ConfigurationError:
                refused.append(name)

    assert not _at_once(threads, writer)
    stored = _window_ids(contract, "jobs")
    assert len(stored) == limit
    assert sorted(stored + refused) == sorted(
        f"t{n}-{i}" for n in range(threads) for i in range(each)
    )


# -- both ways store the same ----------------------------------------------------------------


def _script(contract: Contract) -> list[Any]:
    """A day of an operator and a job on one store; what readers saw and what was stored."""
    seen: list[Any] = []
    scopes = (None, "billing", "jobs")

    def look() -> None:
        reader = contract.new()
        seen.append([_plain(maintguard.sync.get_state(reader, scope)) for scope in scopes])
        seen.append([_plain_stored(s) for s in contract.stored(*scopes).values()])

    backend = contract.new()
    if contract.writable:
        maintguard.sync.set_maintenance_mode(
            True, backend, reason="upgrade", mode=Mode.READ_ONLY, retry_after=30
        )
        maintguard.sync.set_maintenance_mode(True, backend, scope="billing", reason="b")
    else:
        contract.set_env(None, "read_only")
        contract.set_env("billing", "1")
    look()
    with under_maintenance(backend=contract.new(), scope="jobs", reason="job"):
        look()
    if contract.writable:
        maintguard.sync.set_maintenance_mode(False, backend)
    else:
        contract.set_env(None, None)
    look()
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_both_ways_show_and_store_the_same(kind: str, tmp_path: Path) -> None:
    fast = make_contract(kind, "fast", tmp_path)
    public = make_contract(kind, "public", tmp_path)
    try:
        seen_fast = _script(fast)
        with CALLS.lock:
            CALLS.seen.clear()
        seen_public = _script(public)
    finally:
        if kind == "env":
            for made in (fast, public):
                for scope in (None, "billing"):
                    made.set_env(scope, None)
    assert seen_public == seen_fast
    assert CALLS.seen["update_state"] or kind == "env"  # the public way was the one taken
    assert seen_fast[-2][0][0] is False and seen_fast[-2][1][0] is True  # (a real script)
