"""A drain across real processes: two uvicorn workers serve slow requests on one file store;
a third process enters a drained hold. Its body starts only after both workers' in-flight
requests have finished (or a dead worker's lease ran out); new requests get 503 meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.stores import new_spec
from tests.test_server import start_uvicorn, stop_all

pytestmark = [pytest.mark.processes, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
Workers = Callable[..., list[tuple[str, subprocess.Popen[bytes]]]]


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_spec(str(request.param), tmp_path)


@pytest.fixture
def start_workers(tmp_path: Path, store: str) -> Iterator[Workers]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(count: int = 2, lease: float = 30.0) -> list[tuple[str, subprocess.Popen[bytes]]]:
        env = {
            "MAINTGUARD_TEST_FILE": str(tmp_path / "maintenance.json"),
            "MAINTGUARD_TEST_STORE": store,
            "MAINTGUARD_TEST_REFRESH": "0.2",
            "MAINTGUARD_TEST_LEASE": str(lease),
        }
        started = start_uvicorn(env, count)
        procs.extend(proc for _, proc in started)
        return started

    yield start
    stop_all(procs)


def wait_file(path: Path, limit: float = 20) -> str:
    # Another process writes it: it may exist a moment before its text is in it.
    deadline = time.monotonic() + limit
    while not (path.exists() and (text := path.read_text())):
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.01)
    return text


def slow_request(url: str, name: str, results: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            results[name] = httpx.get(f"{url}/slow", params={"name": name}, timeout=60).status_code
        except httpx.TransportError as exc:  # the worker was killed
            results[name] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drain_holder(store: str, tmp_path: Path, name: str, drain: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "tests/holder_process.py", "drain", store, str(tmp_path),
         name, "30", str(drain)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def until_status(url: str, status: int, limit: float = 5) -> None:
    deadline = time.monotonic() + limit
    while httpx.get(url + "/").status_code != status:
        assert time.monotonic() < deadline, f"{url} did not answer {status}"
        time.sleep(0.02)


def test_a_drained_hold_waits_for_both_workers_in_flight_requests(
    start_workers: Workers, tmp_path: Path, store: str
) -> None:
    (a, _), (b, _) = start_workers()
    results: dict[str, object] = {}
    threads = [slow_request(a, "a", results), slow_request(b, "b", results)]
    pids = {wait_file(tmp_path / "started-a"), wait_file(tmp_path / "started-b")}
    assert len(pids) == 2  # one request in flight in each worker process
    holder = drain_holder(store, tmp_path, "nightly", drain=60)
    try:
        until_status(a, 503)  # maintenance is on at once: new requests are refused
        until_status(b, 503)
        time.sleep(1.5)  # several refresh intervals: the holder has read both reports
        assert not (tmp_path / "body-nightly").exists()
        (tmp_path / "release-a").touch()
        threads[0].join(10)
        assert results["a"] == 200
        time.sleep(1.5)
        assert not (tmp_path / "body-nightly").exists()  # b is still in flight
        assert httpx.get(a + "/").status_code == 503
        (tmp_path / "release-b").touch()
        threads[1].join(10)
        assert results["b"] == 200
        body = float(wait_file(tmp_path / "body-nightly"))
        ended = [float((tmp_path / f"ending-{n}").read_text()) for n in "ab"]
        assert body > max(ended)
        (tmp_path / "leave-nightly").touch()
        assert holder.wait(20) == 0
        until_status(a, 200)
        until_status(b, 200)
    finally:
        for name in ("a", "b", "nightly"):
            (tmp_path / f"release-{name}").touch()
            (tmp_path / f"leave-{name}").touch()
        holder.wait(20)


def test_a_dead_workers_requests_stop_counting_when_its_lease_runs_out(
    start_workers: Workers, tmp_path: Path, store: str
) -> None:
    (a, proc), = start_workers(count=1, lease=2.0)  # fmt: skip
    results: dict[str, object] = {}
    thread = slow_request(a, "a", results)
    wait_file(tmp_path / "started-a")
    holder = drain_holder(store, tmp_path, "nightly", drain=60)
    try:
        until_status(a, 503)
        proc.send_signal(signal.SIGKILL)  # dies with its request in flight: no cleanup
        killed = time.time()
        body = float(wait_file(tmp_path / "body-nightly", limit=30))
        assert body - killed < 15  # the lease (2 s) ran out; the drain did not time out
        thread.join(10)
        (tmp_path / "leave-nightly").touch()
        assert holder.wait(20) == 0
    finally:
        (tmp_path / "release-a").touch()
        (tmp_path / "leave-nightly").touch()
        holder.wait(20)
