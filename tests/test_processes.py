"""Several real OS processes sharing one store: a file, and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from maintguard import sync
from maintguard._state import MaintenanceState, StoredState
from tests.stores import new_spec, open_store

pytestmark = pytest.mark.processes

SCRIPT = Path(__file__).with_name("holder_process.py")
ROOT = Path(__file__).parents[1]


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_spec(str(request.param), tmp_path)


@pytest.fixture
def spawn(tmp_path: Path, store: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(command: str, name: str, lease: float = 30.0) -> subprocess.Popen[str]:
        args = [sys.executable, str(SCRIPT), command, store, str(tmp_path), name, str(lease)]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def state(store: str) -> MaintenanceState:
    # Another process's view: a fresh read of what is stored.
    return sync.get_state(open_store(store, refresh_interval=0))


def stored(store: str) -> StoredState:
    # What the store holds, live records or not.
    return anyio.run(open_store(store).read_state, None)


def wait_until(condition: Callable[[], bool], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_overlapping_holders_in_separate_processes(
    tmp_path: Path, store: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    a = spawn("hold", "A")
    wait_until((tmp_path / "entered-A").exists)
    assert (state(store).active, state(store).reason) == (True, "A")
    b = spawn("hold", "B")
    wait_until((tmp_path / "entered-B").exists)
    s = state(store)
    assert (s.holds, s.reason) == (2, "B")
    (tmp_path / "leave-A").touch()  # A leaves first: not LIFO
    assert a.wait(30) == 0
    s = state(store)
    assert (s.active, s.holds, s.reason) == (True, 1, "B")
    (tmp_path / "leave-B").touch()
    assert b.wait(30) == 0
    s = state(store)
    assert (s.active, s.holds) == (False, 0)
    assert stored(store).holds == ()


def test_sigkilled_holder_stops_counting_when_its_lease_expires(
    tmp_path: Path, store: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn("hold", "doomed", lease=1.0)
    wait_until((tmp_path / "entered-doomed").exists)
    assert state(store).active
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    # The dead process's record is still stored: nothing cleaned it up ...
    assert len(stored(store).holds) == 1
    # ... but once its lease runs out, no reader counts it.
    wait_until(lambda: not state(store).active, limit=10)
    assert state(store).holds == 0


def test_sigint_in_a_sync_holder_releases(
    tmp_path: Path, store: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn("hold", "interrupted")
    wait_until((tmp_path / "entered-interrupted").exists)
    proc.send_signal(signal.SIGINT)  # KeyboardInterrupt inside the `with` block
    assert proc.wait(30) != 0
    s = state(store)
    assert (s.active, s.holds) == (False, 0)


@pytest.mark.slow
def test_many_processes_writing_at_once_lose_nothing_and_tear_nothing(
    tmp_path: Path, store: str, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    names = [f"p{i}" for i in range(6)]
    reader = spawn("read", "reader") if store.startswith("file:") else None
    writers = [spawn("churn", name) for name in names]
    wait_until(lambda: all((tmp_path / f"entered-{n}").exists() for n in names), limit=120)
    s = state(store)
    assert s.holds == len(names)  # every process's record survived the others' writes
    assert sorted(h.reason or "" for h in s.holders) == names
    assert len({h.pid for h in s.holders}) == len(names)
    (tmp_path / "leave-all").touch()
    assert [w.wait(60) for w in writers] == [0] * len(names)
    if reader is not None:  # a file: nobody ever read half a document
        out, _ = reader.communicate(timeout=60)
        report = json.loads(out)
        assert report["reads"] > 0 and report["torn"] == 0
    s = state(store)
    assert (s.active, s.holds) == (False, 0)


@pytest.mark.slow
@pytest.mark.redis
def test_a_holder_whose_clock_is_an_hour_behind_still_counts_on_redis(tmp_path: Path) -> None:
    # Its own clock would put its lease an hour in the past; Redis's clock decides.
    store = new_spec("redis", tmp_path)
    args = [sys.executable, str(SCRIPT), "skewed", store, str(tmp_path), "skewed", "2"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_until((tmp_path / "entered-skewed").exists)
        first = state(store)
        assert (first.active, first.holds, first.reason) == (True, 1, "skewed")
        started = first.holders[0].started.timestamp()
        assert abs(started - time.time()) < 60  # its times were put on the server's clock
        time.sleep(3)  # longer than the lease: only renewals keep it
        assert state(store).holds == 1
        (tmp_path / "leave-skewed").touch()
        assert proc.wait(30) == 0
        assert state(store).active is False
    finally:
        (tmp_path / "leave-skewed").touch()
        proc.wait(30)
