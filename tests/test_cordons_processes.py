"""Cordons across real processes: two uvicorn servers "on different hosts" (each started
with its own ``MAINTGUARD_HOST``) share one store (a file, Redis); the CLI, from a third
process, cordons one host. Only that host's readiness path answers 503, at once (the
servers poll every 30 s: the store's change notification brings it), and it still serves
other requests; ``cordon --drain`` waits for that host's slow request, not the other's."""

from __future__ import annotations

import contextlib
import json
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
from tests.test_drain_processes import wait_file
from tests.test_server import start_uvicorn, stop_all, store_url

pytestmark = [pytest.mark.processes, pytest.mark.slow]

ROOT = Path(__file__).parents[1]
READY = "/_maintenance/ready"
Hosts = Callable[[str], dict[str, str]]


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_spec(str(request.param), tmp_path)


@pytest.fixture
def start_hosts(tmp_path: Path, store: str) -> Iterator[Hosts]:
    """Start one server per host name (``refresh``: its polling interval): their urls."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(refresh: str) -> dict[str, str]:
        urls = {}
        for host in ("host-a", "host-b"):
            env = {
                "MAINTGUARD_TEST_FILE": str(tmp_path / "maintenance.json"),
                "MAINTGUARD_TEST_STORE": store,
                "MAINTGUARD_TEST_REFRESH": refresh,
                "MAINTGUARD_HOST": host,
            }
            [(url, proc)] = start_uvicorn(env, 1, "probed")
            procs.append(proc)
            urls[host] = url
        return urls

    yield start
    stop_all(procs)


@contextlib.contextmanager
def released_at_the_end(folder: Path, *names: str) -> Iterator[None]:
    """Slow requests ``names`` are released on the way out, however the test ends (a
    server waits for them before it stops)."""
    try:
        yield
    finally:
        for name in names:
            (folder / f"release-{name}").touch()


def cli(store: str, *args: str) -> subprocess.Popen[str]:
    """``maintguard --backend STORE ARGS`` started: read its output with communicate()."""
    command = [sys.executable, "-m", "maintguard", "--backend", store_url(store), *args]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run(store: str, *args: str) -> tuple[int, str, str]:
    """``maintguard --backend STORE ARGS`` run to its end: exit code, stdout, stderr."""
    started = cli(store, *args)
    out, err = started.communicate(timeout=30)
    return started.returncode, out, err


def ready(url: str) -> int:
    return httpx.get(url + READY).status_code


def wait_status(url: str, status: int, limit: float) -> float:
    start = time.monotonic()
    while (found := ready(url)) != status:
        elapsed = time.monotonic() - start
        assert elapsed < limit, f"{url}{READY} still {found} after {elapsed:.2f}s"
        time.sleep(0.01)
    return time.monotonic() - start


def test_only_the_cordoned_host_leaves_rotation_at_once(store: str, start_hosts: Hosts) -> None:
    urls = start_hosts("30")  # only the store's notification can switch them in time
    assert ready(urls["host-a"]) == ready(urls["host-b"]) == 200
    code, out, err = run(store, "cordon", "--host", "host-a", "--reason", "kernel update")
    assert code == 0, err
    assert "cordoned host-a" in out and "no live process on host" not in err
    took = wait_status(urls["host-a"], 503, limit=2.0)
    print(f"host-a left rotation {took * 1000:.0f} ms after the CLI returned")
    assert httpx.get(urls["host-a"] + READY).json() == {"ready": False, "cause": "cordoned"}
    assert httpx.get(urls["host-a"] + "/").status_code == 200  # still serves
    for _ in range(20):  # and the other host stays in rotation throughout
        assert ready(urls["host-b"]) == 200
        time.sleep(0.01)
    _, out, _ = run(store, "status", "--json")
    assert '"host": "host-a"' in out
    assert run(store, "uncordon", "--host", "host-a")[0] == 0
    wait_status(urls["host-a"], 200, limit=2.0)
    code, _, err = run(store, "cordon", "--host", "host-c")
    assert code == 0 and "no live process on host host-c" in err


@pytest.mark.parametrize("refresh", ["0.2", "30"])
def test_a_drain_waits_for_the_cordoned_hosts_work_only(
    store: str, start_hosts: Hosts, tmp_path: Path, refresh: str
) -> None:
    # Polling every 30 s: the end of the slow request wakes its server's watcher, which
    # reports at once; the CLI hears of the report through the store's notification.
    urls = start_hosts(refresh)
    folder = tmp_path
    answers: dict[str, int] = {}
    with httpx.Client(timeout=60) as client, released_at_the_end(folder, *urls):

        def slow(host: str) -> None:
            answers[host] = client.get(urls[host] + f"/slow?name={host}").status_code

        threads = [threading.Thread(target=slow, args=(host,)) for host in urls]
        for thread in threads:
            thread.start()
        wait_file(folder / "started-host-a")
        wait_file(folder / "started-host-b")
        draining = cli(store, "cordon", "--host", "host-a", "--drain", "30")
        wait_status(urls["host-a"], 503, limit=5.0)
        time.sleep(1.0)  # it has seen the slow request (the report of 1 came through)
        assert draining.poll() is None, "the drain ended while host-a's request was in flight"
        (folder / "release-host-a").touch()
        released = time.monotonic()
        out, err = draining.communicate(timeout=30)
        took = time.monotonic() - released
        assert draining.returncode == 0, err
        assert "in-flight work on host-a has ended" in out
        print(f"drain ended {took * 1000:.0f} ms after host-a's request was released")
        assert took < 2.0  # (without the wake-up on 30 s polling: 9 s)
        assert not (folder / "ending-host-b").exists()  # host-b's request is still running
        (folder / "release-host-b").touch()
        for thread in threads:
            thread.join(30)
    assert answers == {"host-a": 200, "host-b": 200}  # the cordon cut no request off


def test_a_drain_that_runs_out_exits_1_and_leaves_the_host_cordoned(
    store: str, start_hosts: Hosts, tmp_path: Path
) -> None:
    urls = start_hosts("0.2")
    thread = threading.Thread(
        target=lambda: httpx.get(urls["host-a"] + "/slow?name=stuck", timeout=60)
    )
    thread.start()
    try:
        wait_file(tmp_path / "started-stuck")
        code, out, err = run(store, "cordon", "--host", "host-a", "--drain", "1")
        assert code == 1
        assert "did not end within drain=1s" in err and "stays cordoned" in err
        assert "cordoned host-a" in out
        _, out, _ = run(store, "status", "--json")
        assert '"draining_until": null' in out  # the drain's token is off again
        assert ready(urls["host-a"]) == 503
    finally:
        (tmp_path / "release-stuck").touch()
        thread.join(30)


@contextlib.contextmanager
def draining_host_a(store: str, url: str, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """`maintguard cordon --host host-a --drain 30` under way, waiting for a slow request of
    host-a's server (released, and its thread joined, on the way out)."""
    thread = threading.Thread(target=lambda: httpx.get(url + "/slow?name=held", timeout=60))
    with released_at_the_end(folder, "held"):
        thread.start()
        wait_file(folder / "started-held")
        draining = cli(store, "cordon", "--host", "host-a", "--drain", "30")
        try:
            wait_status(url, 503, limit=5.0)
            yield draining
        finally:
            if draining.poll() is None:
                draining.kill()
            draining.communicate(timeout=30)
    thread.join(30)


def test_ctrl_c_ends_a_drain_at_once_and_takes_its_token_off(
    store: str, start_hosts: Hosts, tmp_path: Path
) -> None:
    url = start_hosts("0.2")["host-a"]
    with draining_host_a(store, url, tmp_path) as draining:
        time.sleep(0.5)
        sent = time.monotonic()
        draining.send_signal(signal.SIGINT)
        _, err = draining.communicate(timeout=30)
        took = time.monotonic() - sent
        assert draining.returncode == 130 and took < 2.0, (draining.returncode, took, err)
        assert "host-a stays cordoned" in err
        _, out, _ = run(store, "status", "--json")
        [shown] = json.loads(out)["cordons"]
        assert shown["host"] == "host-a" and shown["draining_until"] is None


def test_an_uncordon_during_a_drain_stops_it_and_says_so(
    store: str, start_hosts: Hosts, tmp_path: Path
) -> None:
    url = start_hosts("0.2")["host-a"]
    with draining_host_a(store, url, tmp_path) as draining:
        assert run(store, "cordon", "--host", "host-a", "--reason", "again")[0] == 0
        time.sleep(0.5)
        assert draining.poll() is None  # cordoned again: it still waits for the request
        assert run(store, "uncordon", "--host", "host-a")[0] == 0
        _, err = draining.communicate(timeout=5)
        assert draining.returncode == 1
        assert "host-a was uncordoned while the drain waited" in err
        wait_status(url, 200, limit=5.0)
