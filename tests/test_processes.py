"""Several real OS processes sharing one file backend."""

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

from maintguard import get_state
from maintguard.backends import LocalFileBackend
from maintguard.state import MaintenanceState

SCRIPT = Path(__file__).with_name("holder_process.py")
ROOT = Path(__file__).parents[1]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(command: str, name: str, lease: float = 30.0) -> subprocess.Popen[str]:
        args = [sys.executable, str(SCRIPT), command, str(tmp_path / "m.json"), name, str(lease)]
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


def state(tmp_path: Path) -> MaintenanceState:
    # Another process's view: a fresh read of what is stored.
    return anyio.run(get_state, LocalFileBackend(tmp_path / "m.json", refresh_interval=0))


def wait_until(condition: Callable[[], bool], limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_overlapping_holders_in_separate_processes(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    a = spawn("hold", "A")
    wait_until((tmp_path / "entered-A").exists)
    assert (state(tmp_path).active, state(tmp_path).reason) == (True, "A")
    b = spawn("hold", "B")
    wait_until((tmp_path / "entered-B").exists)
    s = state(tmp_path)
    assert (s.holds, s.reason) == (2, "B")
    (tmp_path / "leave-A").touch()  # A leaves first: not LIFO
    assert a.wait(30) == 0
    s = state(tmp_path)
    assert (s.active, s.holds, s.reason) == (True, 1, "B")
    (tmp_path / "leave-B").touch()
    assert b.wait(30) == 0
    s = state(tmp_path)
    assert (s.active, s.holds) == (False, 0)
    assert json.loads((tmp_path / "m.json").read_text())["holds"] == []


def test_sigkilled_holder_stops_counting_when_its_lease_expires(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn("hold", "doomed", lease=1.0)
    wait_until((tmp_path / "entered-doomed").exists)
    assert state(tmp_path).active
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    # The dead process's record is still in the file: nothing cleaned it up ...
    assert len(json.loads((tmp_path / "m.json").read_text())["holds"]) == 1
    # ... but once its lease runs out, no reader counts it.
    wait_until(lambda: not state(tmp_path).active, limit=10)
    assert state(tmp_path).holds == 0


def test_sigint_in_a_sync_holder_releases(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = spawn("hold", "interrupted")
    wait_until((tmp_path / "entered-interrupted").exists)
    proc.send_signal(signal.SIGINT)  # KeyboardInterrupt inside the `with` block
    assert proc.wait(30) != 0
    s = state(tmp_path)
    assert (s.active, s.holds) == (False, 0)


def test_many_processes_writing_at_once_lose_nothing_and_tear_nothing(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[str]]
) -> None:
    names = [f"p{i}" for i in range(6)]
    reader = spawn("read", "reader")
    writers = [spawn("churn", name) for name in names]
    wait_until(lambda: all((tmp_path / f"entered-{n}").exists() for n in names), limit=120)
    s = state(tmp_path)
    assert s.holds == len(names)  # every process's record survived the others' writes
    assert sorted(h.reason or "" for h in s.holders) == names
    assert len({h.pid for h in s.holders}) == len(names)
    (tmp_path / "leave-all").touch()
    assert [w.wait(60) for w in writers] == [0] * len(names)
    out, _ = reader.communicate(timeout=60)
    report = json.loads(out)
    assert report["reads"] > 0 and report["torn"] == 0
    s = state(tmp_path)
    assert (s.active, s.holds) == (False, 0)
