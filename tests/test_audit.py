"""The audit trail: every operator's change is recorded with who, when, what, where, why.

On the memory, file and Redis stores: each operators' write records an entry (``on``,
``off``, a window scheduled, cancelled or ended early, holds removed), the store keeps the
newest 100, a recording that fails never fails the change, transitions carry the actor,
and writers in six processes at once lose no entry.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import maintguard
from maintguard import (
    AuditEntry,
    ConfigurationError,
    EventKind,
    MaintenanceEvent,
    ReadOnlyBackendError,
    _ioloop,
    sync,
)
from maintguard._core import controller, io, store_of
from maintguard._core.identity import who
from maintguard._state import HoldRecord, StoredState
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    PutHold,
    Record,
    RedisBackend,
)
from maintguard.exceptions import BackendError
from tests.conftest import redis_backend
from tests.stores import REDIS_URL, backend_of, redis_prefix

ROOT = Path(__file__).parents[1]
KINDS = ("memory", "file", "redis")


_backend = backend_of


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return _backend(str(request.param), tmp_path)


def _stored(backend: Backend) -> StoredState:
    """The global scope as a fresh backend object of another "process" reads it."""
    if isinstance(backend, LocalFileBackend):
        return LocalFileBackend(backend.path)._read_scopes_blocking([None])[None]
    if isinstance(backend, RedisBackend):
        import anyio

        reader = RedisBackend(REDIS_URL, key_prefix=backend.key_prefix)
        return anyio.run(reader.read_state, None)
    return backend._read_blocking(None)


def _stored_scope(backend: Backend, scope: str) -> StoredState:
    return io.read_scopes_blocking(backend, [scope])[scope]


# -- what is recorded -----------------------------------------------------------------------


def test_on_and_off_are_recorded_with_who_when_and_why(store: Backend) -> None:
    before = datetime.now(timezone.utc)
    sync.set_maintenance_mode(True, store, reason="DB upgrade")
    sync.set_maintenance_mode(True, store, scope="billing")
    sync.set_maintenance_mode(False, store)
    after = datetime.now(timezone.utc)
    history = sync.get_history(store)
    assert [(e.kind, e.scope, e.reason) for e in history] == [
        ("off", None, None),
        ("on", "billing", None),
        ("on", None, "DB upgrade"),
    ]
    for entry in history:
        assert entry.actor == who() and "@" in entry.actor
        assert entry.pid == os.getpid()
        assert entry.command == " ".join(sys.argv)[:200]
        assert entry.at.tzinfo is not None and entry.at.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= entry.at <= after + timedelta(seconds=1)
        assert (entry.window, entry.holds) == (None, ())
    # Another reader of the store sees the same trail (it is stored, not kept in memory).
    assert _stored(store).history == tuple(history)


def test_the_command_line_is_cut_to_200_characters(
    store: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["deploy.py", "x" * 500])
    sync.set_maintenance_mode(True, store)
    [entry] = sync.get_history(store)
    assert entry.command == ("deploy.py " + "x" * 500)[:200]


def test_windows_scheduled_cancelled_and_ended_are_recorded(store: Backend) -> None:
    later = sync.schedule_maintenance(
        timedelta(hours=1), duration=600, reason="reindex", backend=store, scope="billing"
    )
    now = sync.schedule_maintenance(0, duration=600, reason="now", backend=store)
    assert sync.cancel_window(later.id, backend=store, scope="billing") is True
    assert sync.cancel_window(later.id, backend=store, scope="billing") is False  # nothing
    sync.set_maintenance_mode(False, store)  # ends the window in force
    assert [(e.kind, e.scope, e.window, e.reason) for e in sync.get_history(store)] == [
        ("window ended", None, now.id, None),
        ("off", None, None, None),
        ("window cancelled", "billing", later.id, None),
        ("window scheduled", None, now.id, "now"),
        ("window scheduled", "billing", later.id, "reindex"),
    ]


def test_removing_holds_is_recorded_with_their_ids(store: Backend) -> None:
    now = datetime.now(timezone.utc)
    for hold_id in ("h1", "h2"):  # two holders elsewhere (that died, say)
        record = HoldRecord(hold_id, "job", "elsewhere", 1, now, now, now + timedelta(hours=1))
        io.update_blocking(
            store, "jobs", lambda r=record: PutHold(r.id, r, now, 3600.0), store_of(store)
        )
    _ioloop.run_sync(controller(store, "jobs").remove_holds(["h1", "h2"]))
    assert _stored_scope(store, "jobs").holds == ()
    [entry] = sync.get_history(store)
    assert (entry.kind, entry.scope, entry.holds) == ("holds removed", "jobs", ("h1", "h2"))


def test_history_filters_by_scope_and_limit(store: Backend) -> None:
    for scope in (None, "billing", None, "billing"):
        sync.set_maintenance_mode(True, store, scope=scope, reason=f"{scope}")
    assert [e.scope for e in sync.get_history(store, limit=3)] == ["billing", None, "billing"]
    assert [e.scope for e in sync.get_history(store, scope="billing")] == ["billing", "billing"]
    assert sync.get_history(store, scope="other") == []
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ConfigurationError, match="limit"):
            sync.get_history(store, limit=bad)  # type: ignore[arg-type]


def test_the_store_keeps_the_newest_100(store: Backend) -> None:
    for i in range(105):
        sync.set_maintenance_mode(True, store, reason=f"r{i}")
    history = sync.get_history(store)
    assert [e.reason for e in history] == [f"r{i}" for i in range(104, 4, -1)]
    assert len(_stored(store).history) == 100


def test_record_write_keeps_the_newest_first() -> None:
    at = datetime(2027, 1, 1, tzinfo=timezone.utc)
    entries = [AuditEntry(at + timedelta(seconds=i), "a@b", f"k{i}") for i in range(5)]
    state = StoredState()
    for entry in entries:
        state = Record(entry, keep=3)(state)
    assert [e.kind for e in state.history] == ["k4", "k3", "k2"]


# -- recording never fails the change -------------------------------------------------------


class _NoRecords(MemoryBackend):
    """A store that takes every write but the audit trail's."""

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        if isinstance(mutate, Record):
            raise BackendError("the trail is full of sand")
        return await super().update_state(scope, mutate)


def test_a_recording_that_fails_is_logged_and_the_change_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = _NoRecords()
    with caplog.at_level(logging.WARNING, logger="maintguard.audit"):
        sync.set_maintenance_mode(True, backend, reason="upgrade")  # does not raise
    assert sync.get_state(backend).active is True
    assert sync.get_state(backend).reason == "upgrade"
    assert sync.get_history(backend) == []
    [message] = [r.getMessage() for r in caplog.records if r.name == "maintguard.audit"]
    assert "'on'" in message and "could not be recorded" in message and "sand" in message


@pytest.mark.redis
def test_redis_a_history_key_of_another_type_fails_only_the_recording(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redis

    backend = redis_backend()
    client = redis.Redis.from_url(REDIS_URL)
    client.set("{" + backend.key_prefix + "}:history", "not a list")
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        sync.set_maintenance_mode(True, backend, reason="upgrade")
    client.close()
    assert sync.get_state(backend).active is True  # the change stands; reads go on
    assert sync.get_history(backend) == []
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "could not be recorded" in messages and "WRONGTYPE" in messages


def test_the_env_backend_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    var = f"MAINTGUARD_AUDIT_{os.getpid()}"
    monkeypatch.setenv(var, "1")
    backend = EnvVarBackend(var)
    with pytest.raises(ReadOnlyBackendError):
        sync.set_maintenance_mode(False, backend)
    assert sync.get_history(backend) == []


# -- events carry the actor -----------------------------------------------------------------


def test_transitions_an_operator_causes_carry_the_actor(store: Backend) -> None:
    events: list[MaintenanceEvent] = []
    listener = maintguard.add_listener(events.append)
    try:
        billing = controller(store, "billing")  # a named scope this process follows
        sync.get_state(store, "billing")
        sync.set_maintenance_mode(True, store)
        sync.set_maintenance_mode(False, store)
        with maintguard.under_maintenance(backend=store, scope="jobs"):
            pass
        assert maintguard.flush_listeners()
    finally:
        maintguard.remove_listener(listener)
    transitions = [
        (e.scope, e.phase.value if e.phase else None, e.actor)
        for e in events
        if e.kind is EventKind.TRANSITION
    ]
    me = who()
    assert (None, "on", me) in transitions and (None, "off", me) in transitions
    assert ("billing", "on", me) in transitions  # the global scope's switch reaches it
    assert ("jobs", "on", None) in transitions and ("jobs", "off", None) in transitions
    holds = [e for e in events if e.kind is EventKind.HOLD_ACQUIRED]
    assert holds and all(e.actor is None for e in holds)
    del billing


# -- how it is stored --------------------------------------------------------------------------


def test_file_stores_the_trail_at_the_top_in_format_1_unless_windows(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0)
    sync.set_maintenance_mode(True, backend, reason="upgrade")
    document = json.loads(path.read_text())
    assert document["version"] == 1  # older maintguard writes it, keeping "history"
    assert [(e["kind"], e["reason"]) for e in document["history"]] == [("on", "upgrade")]
    assert "scopes" not in document
    window = sync.schedule_maintenance(timedelta(hours=1), duration=60, backend=backend)
    assert json.loads(path.read_text())["version"] == 2
    sync.cancel_window(window.id, backend=backend)
    document = json.loads(path.read_text())
    assert document["version"] == 1 and len(document["history"]) == 3


def test_file_keeps_fields_it_does_not_know_of_entries_and_the_top(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0)
    sync.set_maintenance_mode(True, backend)
    document = json.loads(path.read_text())
    document["history"][0]["ticket"] = "OPS-12"
    document["future"] = {"kept": True}
    path.write_text(json.dumps(document))
    sync.set_maintenance_mode(False, backend)
    document = json.loads(path.read_text())
    assert [e["kind"] for e in document["history"]] == ["off", "on"]
    assert document["history"][1]["ticket"] == "OPS-12"
    assert document["future"] == {"kept": True}


def test_invalid_entries_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.json"
    good = {"at": "2027-01-01T00:00:00+00:00", "actor": "ops@vm", "kind": "on", "pid": "x"}
    path.write_text(
        json.dumps(
            {"version": 1, "active": True, "holds": [],
             "history": [good, {"actor": "ops@vm", "kind": "off"}, "junk"]}
        )
    )  # fmt: skip
    backend = LocalFileBackend(path, refresh_interval=0)
    with caplog.at_level(logging.WARNING, logger="maintguard.stored"):
        assert sync.get_state(backend).active is True  # the rest is read as usual
        [entry] = sync.get_history(backend)
    assert (entry.actor, entry.kind, entry.pid) == ("ops@vm", "on", 0)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "an audit entry is ignored" in messages and "'at' is missing" in messages
    assert "'pid' is ignored" in messages
    path.write_text(json.dumps({"version": 1, "active": False, "history": {"no": "list"}}))
    assert sync.get_history(LocalFileBackend(path, refresh_interval=0)) == []


def test_a_plain_file_keeps_its_plain_form_and_no_trail(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    backend = LocalFileBackend(path, refresh_interval=0)
    sync.set_maintenance_mode(True, backend)
    assert path.read_text() == "1\n"


@pytest.mark.redis
def test_redis_stores_the_trail_as_one_list_newest_first() -> None:
    import redis

    backend = redis_backend()
    sync.set_maintenance_mode(True, backend, reason="a")
    sync.set_maintenance_mode(True, backend, scope="billing", reason="b")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        key = "{" + backend.key_prefix + "}:history"
        assert client.type(key) == "list"
        assert [json.loads(v)["reason"] for v in client.lrange(key, 0, -1)] == ["b", "a"]
        assert not client.exists("{" + backend.key_prefix + "}:scope:billing:history")
    finally:
        client.close()


@pytest.mark.redis
def test_redis_write_state_round_trips_the_trail() -> None:
    import anyio

    backend = redis_backend()
    at = datetime(2027, 1, 1, tzinfo=timezone.utc)
    trail = tuple(
        AuditEntry(at + timedelta(seconds=i), "a@b", "on", 7, "cmd", None, f"r{i}")
        for i in range(3, 0, -1)
    )
    anyio.run(backend.write_state, None, StoredState(history=trail))
    assert _stored(backend).history == trail


# -- writers in many processes lose no entry ------------------------------------------------------

_WRITER = """
import sys, time
from maintguard import sync
from tests.stores import open_store
spec, name, count, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
backend = open_store(spec, refresh_interval=0)
time.sleep(max(0.0, start - time.time()))
for i in range(count):  # on (with a reason naming the process and the entry), off, ...
    if i % 2 == 0:
        sync.set_maintenance_mode(True, backend, reason=f"{name}-{i}")
    else:
        sync.set_maintenance_mode(False, backend)
"""


@pytest.fixture(params=["file", "redis"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        yield f"redis:{redis_prefix()}"
    else:
        yield f"file:{tmp_path / 'maintenance.json'}"


@pytest.mark.processes
@pytest.mark.parametrize("each", [16, 30])
def test_six_processes_recording_at_once_lose_no_entry(shared: str, each: int) -> None:
    writers = 6
    start = time.time() + 1.5  # every process imported and connected: they start together
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAINTGUARD_BACKEND", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, shared, f"p{n}", str(each), repr(start)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(writers)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    from tests.stores import open_store

    history = sync.get_history(open_store(shared, refresh_interval=0))
    expected = writers * each
    assert len(history) == min(expected, 100)
    pids = {e.pid for e in history}
    assert len(pids) == writers or expected > 100
    if expected <= 100:
        # Every entry of every process: each process's "on" with its reason, and its "off"s.
        ons = sorted(e.reason or "" for e in history if e.kind == "on")
        assert ons == sorted(f"p{n}-{i}" for n in range(writers) for i in range(0, each, 2))
        assert sum(e.kind == "off" for e in history) == writers * (each // 2)
    # Newest first, and each process's own entries in the order it made them.
    for pid in pids:
        mine = [e for e in history if e.pid == pid]
        assert [e.at for e in mine] == sorted((e.at for e in mine), reverse=True)


def test_threads_recording_at_once_lose_no_entry(store: Backend) -> None:
    def work(n: int) -> None:
        for i in range(5):
            sync.set_maintenance_mode(True, store, reason=f"t{n}-{i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reasons = sorted(e.reason or "" for e in sync.get_history(store))
    assert reasons == sorted(f"t{n}-{i}" for n in range(4) for i in range(5))
