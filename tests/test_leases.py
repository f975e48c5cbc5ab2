"""Another process's hold is judged expired only by a read that finds its lease past
(docs/how-to/many-servers.md): a reader whose copy shows a lease running out reads the store
again at that moment before it drops the hold. So a live holder with a lease shorter than
a reader's ``refresh_interval`` is never seen off between its renewals, and a dead one still
stops counting once its lease has run out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from maintguard import (
    MaintenanceModeMiddleware,
    UnderMaintenance,
    get_state,
    not_during_maintenance,
    sync,
    under_maintenance,
)
from maintguard._core import controller, store_of, watch
from maintguard._state import ExplicitState
from maintguard.backends import Backend, HoldRecord, LocalFileBackend, StoredState
from tests.stores import file_holds, new_spec, open_store

SCRIPT = Path(__file__).with_name("holder_process.py")
ROOT = Path(__file__).parents[1]
LEASE = 1.5  # a holder renews every LEASE / 3; readers refresh far less often
READER = {"lease_ttl": LEASE, "refresh_interval": 5.0}


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # No OS file notifications: a holder's renewal must not be what wakes the reader.
    monkeypatch.setattr(LocalFileBackend, "_changes", lambda self: None)
    return new_spec(str(request.param), tmp_path)


@pytest.fixture
def holder(tmp_path: Path, store: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding maintenance with a short lease until the test ends."""
    args = [sys.executable, str(SCRIPT), "hold", store, str(tmp_path), "short", str(LEASE)]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "entered-short").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.02)
    yield proc
    (tmp_path / "leave-short").touch()
    if proc.poll() is None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sample(look: Callable[[], bool], seconds: float = 3 * LEASE) -> list[bool]:
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(look())
        time.sleep(0.02)
    return seen


def ends_after_kill(proc: subprocess.Popen[str], look: Callable[[], bool]) -> float:
    """Kill the holder; how long until ``look()`` says off (its lease must run out)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed = time.monotonic()
    while look():
        assert time.monotonic() - killed < 5 + LEASE, "a dead holder kept maintenance on"
        time.sleep(0.02)
    return time.monotonic() - killed


@pytest.mark.slow
@pytest.mark.processes
def test_a_watched_reader_never_sees_a_live_short_lease_hold_off(
    store: str, holder: subprocess.Popen[str]
) -> None:
    # Found: with refresh_interval=5, a watcher's copy dropped the hold when its lease ran
    # out and nothing read again before the next refresh: off 70 % of the time.
    backend = open_store(store, **READER)
    stop = watch(backend)
    try:
        ctrl = controller(backend, None)
        deadline = time.monotonic() + 10
        while not ctrl.snapshot.active:  # the watcher's first read
            assert time.monotonic() < deadline, "the watcher never read the hold"
            time.sleep(0.01)
        seen = sample(lambda: ctrl.snapshot.active)
        assert seen and all(seen), f"off in {seen.count(False)} of {len(seen)} looks"
        assert ends_after_kill(holder, lambda: ctrl.snapshot.active) < LEASE + 2
    finally:
        stop()


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_plain_reader_never_sees_a_live_short_lease_hold_off(
    store: str, holder: subprocess.Popen[str], face: str
) -> None:
    # Found: get_state() re-read only once refresh_interval had passed; with lease_ttl=1.5
    # and the default refresh_interval of Redis, 100 of 160 polls said off.
    backend = open_store(store, **READER)

    def look() -> bool:
        if face == "sync":
            return sync.get_maintenance_mode(backend)
        return anyio.run(sync_free_get, backend)

    seen = sample(look)
    assert seen and all(seen), f"off in {seen.count(False)} of {len(seen)} looks"
    assert ends_after_kill(holder, look) < LEASE + 2


async def sync_free_get(backend: Backend) -> bool:
    from maintguard import get_maintenance_mode

    return await get_maintenance_mode(backend)


@pytest.mark.slow
@pytest.mark.processes
def test_requests_and_guards_never_pass_while_a_short_lease_holder_lives(
    store: str, holder: subprocess.Popen[str]
) -> None:
    # Found: on a file store without OS notifications (lease_ttl=1, refresh_interval=4) the
    # watcher lost its re-read at a lease's expiry: hundreds of 200s, and a `raise` guard
    # ran its job while the holder was alive.
    backend = open_store(store, **READER)

    async def home(request: Request) -> Response:
        return PlainTextResponse("served")

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    ran: list[int] = []

    @not_during_maintenance(policy="raise", backend=backend)
    def job() -> None:
        ran.append(1)

    def refused() -> bool:
        try:
            job()
        except UnderMaintenance:
            return True
        return False

    with TestClient(app) as client:
        statuses = [client.get("/").status_code for _ in range(5)]
        seen = sample(lambda: client.get("/").status_code == 503 and refused())
        assert statuses == [503] * 5
        assert seen and all(seen), f"passed in {seen.count(False)} of {len(seen)} looks"
        assert ran == []
        ends_after_kill(holder, lambda: client.get("/").status_code == 503)
        assert not refused() and ran == [1]


# -- the decision itself, on a fake clock --------------------------------------------------


def other_hold(expires: float) -> HoldRecord:
    at = datetime.fromtimestamp(expires - 10, timezone.utc)
    return HoldRecord(
        id="elsewhere:1:abc",
        owner="job",
        host="elsewhere",
        pid=1,
        acquired=at,
        started=at,
        expires=datetime.fromtimestamp(expires, timezone.utc),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def fake_store(tmp_path: Path) -> tuple[Backend, Clock]:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=3600)
    clock = Clock()
    store_of(backend).clock = clock
    return backend, clock


def test_time_alone_never_drops_a_hold_a_read_found_live(tmp_path: Path) -> None:
    backend, clock = fake_store(tmp_path)
    ctrl = controller(backend, None)
    ctrl.apply_read(StoredState(holds=(other_hold(clock.now + 1),)), ctrl.writes)
    assert ctrl.snapshot.active and not ctrl.stale()
    clock.now += 5  # its lease ran out in this copy: read again, but do not drop it yet
    assert ctrl.snapshot.active and ctrl.snapshot.holds == 1
    assert ctrl.stale() and ctrl.lease_due <= clock.now
    ctrl.apply_read(StoredState(holds=(other_hold(clock.now + 1),)), ctrl.writes)  # renewed
    assert ctrl.snapshot.active and not ctrl.stale()
    clock.now += 5
    ctrl.apply_read(StoredState(holds=(other_hold(clock.now - 4),)), ctrl.writes)  # not renewed
    assert not ctrl.snapshot.active and not ctrl.stale()


def test_foreign_record_lease_expiry_ends_maintenance_here(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0)
    store = store_of(backend)
    now = 1_900_000_000.0
    store.clock = lambda: now
    from datetime import datetime, timezone

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()

    record = {
        "id": "elsewhere:1:abc",
        "owner": "dead job",
        "host": "elsewhere",
        "pid": 1,
        "acquired": iso(now - 60),
        "started": iso(now - 60),
        "expires": iso(now + 5),
        "reason": "killed",
        "retry_after": None,
        "mode": "full",
    }
    path.write_text(json.dumps({"version": 1, "active": False, "holds": [record]}))
    state = anyio.run(get_state, backend)
    assert state.active and state.reason == "killed"
    now += 6
    # Its lease ran out in this copy: the next read decides (it may have been renewed) ...
    assert store.root.snapshot.active and store.root.stale()
    # ... and that read finds it past: it counts no more.
    assert not anyio.run(get_state, backend).active
    with under_maintenance(backend=backend):  # the next write drops the expired record
        ids = [h["id"] for h in file_holds(path)]
    assert len(ids) == 1 and ids[0] != "elsewhere:1:abc"
    assert file_holds(path) == []


def test_an_until_still_ends_by_the_clock_alone(tmp_path: Path) -> None:
    backend, clock = fake_store(tmp_path)
    ctrl = controller(backend, None)
    until = datetime.fromtimestamp(clock.now + 1, timezone.utc)
    ctrl.apply_read(StoredState(ExplicitState(active=True, until=until)), ctrl.writes)
    assert ctrl.snapshot.active
    clock.now += 2
    assert not ctrl.snapshot.active  # no one renews an `until`: no read is needed


def test_a_store_that_cannot_be_read_keeps_the_hold_last_known(tmp_path: Path) -> None:
    backend, clock = fake_store(tmp_path)
    ctrl = controller(backend, None)
    ctrl.apply_read(StoredState(holds=(other_hold(clock.now + 1),)), ctrl.writes)
    clock.now += 5
    ctrl.read_failed(OSError("gone"), may_raise=False)  # on_error="last_known"
    assert ctrl.snapshot.active
    assert ctrl.lease_due == float("inf")  # nothing to read again for before the interval


@pytest.mark.parametrize("renewed", [True, False])
def test_the_watcher_reads_again_at_a_lease_expiry(tmp_path: Path, renewed: bool) -> None:
    # The copy's lease runs out long before refresh_interval (an hour) and no notification
    # comes: the watcher reads again at the expiry, and what that read finds decides.
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=3600, lease_ttl=1)
    backend._changes = lambda: None  # type: ignore[method-assign]
    ctrl = controller(backend, None)

    def store(*holds: HoldRecord) -> None:
        anyio.run(backend.update_state, None, lambda s: StoredState(s.explicit, holds, s.workers))

    store(other_hold(time.time() + 0.6))
    stop = watch(backend)
    try:
        deadline = time.monotonic() + 10
        while not ctrl.snapshot.active:
            assert time.monotonic() < deadline, "the watcher never read the hold"
            time.sleep(0.01)
        if renewed:
            store(other_hold(time.time() + 60))  # the holder renewed, unheard
        else:
            store()  # the holder left, unheard
        time.sleep(1.2)  # past the first expiry
        assert ctrl.snapshot.active is renewed
    finally:
        stop()
