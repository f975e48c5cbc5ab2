"""Two real uvicorn processes on 127.0.0.1 share a store (a file, Redis); a third switches it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from maintguard import sync, under_maintenance
from maintguard._core import io
from maintguard._state import WorkerRecord
from tests.stores import REDIS_URL, free_port, new_spec, open_store

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parents[1]


def start_uvicorn(
    env: dict[str, str], count: int, app: str = "app", *options: str, stderr: Any = None
) -> list[tuple[str, subprocess.Popen[bytes]]]:
    """``count`` uvicorn processes serving ``app`` of tests/server_app.py on 127.0.0.1,
    each on its own port, once their health check answers: (url, process) each."""
    started = []
    for _ in range(count):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", f"tests.server_app:{app}", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning", *options],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            cwd=ROOT,
            stderr=stderr,
        )  # fmt: skip
        started.append((f"http://127.0.0.1:{port}", proc))
    deadline = time.monotonic() + 30
    for url, _ in started:
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
    return started


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(10)


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_spec(str(request.param), tmp_path)


def two_workers(tmp_path: Path, store: str, **env: str) -> Iterator[list[str]]:
    """Two uvicorn workers serving ``store``, stopped afterwards: their urls."""
    env = {
        "MAINTGUARD_TEST_FILE": str(tmp_path / "maintenance.json"),
        "MAINTGUARD_TEST_STORE": store,
        **env,
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = start_uvicorn(env, 2)
        procs = [proc for _, proc in started]
        yield [url for url, _ in started]
    finally:
        stop_all(procs)


@pytest.fixture
def workers(tmp_path: Path, store: str) -> Iterator[list[str]]:
    # A file is polled; Redis publishes every change, so its polling may be slow.
    refresh = "0.5" if store.startswith("file:") else "30"
    yield from two_workers(tmp_path, store, MAINTGUARD_TEST_REFRESH=refresh)


def switch(store: str, value: bool) -> None:
    code = (
        "import sys\n"
        "from maintguard import sync\n"
        "from tests.stores import open_store\n"
        "on = sys.argv[1] == 'on'\n"
        "details = {'reason': 'DB upgrade', 'retry_after': 30} if on else {}\n"
        "sync.set_maintenance_mode(on, open_store(sys.argv[2]), **details)\n"
    )
    state = "on" if value else "off"
    subprocess.run([sys.executable, "-c", code, state, store], check=True, cwd=ROOT)


def time_until(urls: list[str], status: int, limit: float) -> float:
    start = time.monotonic()
    pending = set(urls)
    with httpx.Client() as client:
        while pending:
            pending = {url for url in pending if client.get(url + "/").status_code != status}
            elapsed = time.monotonic() - start
            assert elapsed < limit, f"{sorted(pending)} still not {status} after {elapsed:.2f}s"
            time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.slow
def test_two_workers_follow_a_third_process(workers: list[str], store: str) -> None:
    pids = {httpx.get(url + "/").text for url in workers}
    assert len(pids) == 2  # two separate worker processes
    switch(store, True)
    time_until(workers, 503, limit=1.0)  # polled every 0.5 s, or published
    for url in workers:
        response = httpx.get(url + "/", headers={"accept": "application/json"})
        assert response.status_code == 503
        assert response.json()["detail"] == "DB upgrade"
        assert response.headers["retry-after"] == "30"
        assert httpx.get(url + "/health").status_code == 200
    switch(store, False)
    time_until(workers, 200, limit=1.0)


def presence_of(store: str, pid: int) -> list[WorkerRecord]:
    """The presence records process ``pid`` has in ``store``, read afresh."""
    found = io.read_scopes_blocking(open_store(store), (None,))[None]
    return [worker for worker in found.workers if worker.pid == pid]


@pytest.mark.parametrize("app", ["app", "app_with_lifespan", "plain"])
def test_a_stopped_server_leaves_no_presence_for_the_next_drain(
    tmp_path: Path, store: str, app: str
) -> None:
    # Found: after a routine restart (SIGTERM: uvicorn shuts down, then re-raises the
    # signal, so atexit never runs) the server's presence record stayed in the store, and
    # the next drained hold waited for its lease (~26 s) instead of ~1 s.
    env = {
        "MAINTGUARD_TEST_FILE": str(tmp_path / "maintenance.json"),
        "MAINTGUARD_TEST_STORE": store,
        "MAINTGUARD_TEST_REFRESH": "0.5",
    }
    ((_, proc),) = start_uvicorn(env, 1, app)  # fmt: skip
    try:
        assert presence_of(store, proc.pid)  # recorded while it serves
        proc.terminate()
        assert proc.wait(20) == -signal.SIGTERM  # a normal stop, as uvicorn ends it
    finally:
        stop_all([proc])
    if app == "app_with_lifespan":  # the app's own shutdown ran too
        assert (tmp_path / f"shutdown-{proc.pid}").exists()
    assert presence_of(store, proc.pid) == []
    backend = open_store(store, refresh_interval=0.2)
    start = time.monotonic()
    with under_maintenance(backend=backend, drain=40, on_drain_timeout="raise"):
        took = time.monotonic() - start
    assert took < 5  # a lease left behind would make it wait ~30 s (or raise DrainTimeout)


def test_a_stopped_server_that_ran_a_guarded_job_leaves_no_presence(
    tmp_path: Path, store: str
) -> None:
    # The guard keeps the store watched while it lives (the process's whole life), so the
    # middleware's shutdown leaves the record to it; uvicorn then re-raises SIGTERM and
    # neither the watcher's last turn nor atexit runs.
    env = {
        "MAINTGUARD_TEST_FILE": str(tmp_path / "maintenance.json"),
        "MAINTGUARD_TEST_STORE": store,
        "MAINTGUARD_TEST_REFRESH": "0.5",
    }
    ((url, proc),) = start_uvicorn(env, 1, "guarded")  # fmt: skip
    try:
        assert httpx.get(url + "/invoice").text == "invoice sent"
        proc.terminate()
        assert proc.wait(20) == -signal.SIGTERM
    finally:
        stop_all([proc])
    assert presence_of(store, proc.pid) == []


def test_a_state_file_in_a_missing_directory_is_said_once_at_startup(tmp_path: Path) -> None:
    # Found: the app started and served, logging only "could not record this process ...":
    # nothing said that the store cannot be written, nor what that means.
    missing = tmp_path / "no-such-dir" / "maintenance.json"
    env = {"MAINTGUARD_TEST_FILE": str(missing), "MAINTGUARD_TEST_REFRESH": "0.1"}
    log = tmp_path / "stderr.txt"
    with log.open("wb") as out:
        ((url, proc),) = start_uvicorn(env, 1, stderr=out)  # fmt: skip
        try:
            assert httpx.get(url + "/").status_code == 200  # served: missing means "off"
            time.sleep(1)  # the watcher's turns retry the record, quietly
        finally:
            stop_all([proc])
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "maintguard" in line]
    assert len(warnings) == 1, text
    (warning,) = warnings
    assert "cannot write its maintenance store" in warning
    assert f"the directory {missing.parent} does not exist" in warning  # the cause and fix
    assert "`maintguard on` on this store fail" in warning
    assert "never reaches this app" in warning and "wrong path" in warning
    assert "Traceback" not in text


@pytest.mark.parametrize("proxy_headers", [True, False])
def test_allow_ips_under_uvicorns_proxy_headers_is_warned_about_once(
    tmp_path: Path, proxy_headers: bool
) -> None:
    # Found: uvicorn (--proxy-headers, on by default, trusting 127.0.0.1) rewrites the
    # client address from X-Forwarded-For, so any local client passed allow_ips with one
    # header line, and nothing said so.
    state = tmp_path / "maintenance.json"
    env = {"MAINTGUARD_TEST_FILE": str(state), "MAINTGUARD_TEST_REFRESH": "0.1"}
    log = tmp_path / "stderr.txt"
    options = () if proxy_headers else ("--no-proxy-headers",)
    with log.open("wb") as out:
        ((url, proc),) = start_uvicorn(env, 1, "allowing", *options, stderr=out)  # fmt: skip
        try:
            switch(f"file:{state}", True)
            time_until([url], 503, limit=5)
            office = {"x-forwarded-for": "10.0.0.5"}
            for _ in range(2):  # said once, not per request
                spoofed = httpx.get(url + "/", headers=office).status_code
                assert spoofed == (200 if proxy_headers else 503)
        finally:
            stop_all([proc])
    warned = [line for line in log.read_text().splitlines() if "allow_ips" in line]
    if not proxy_headers:
        assert warned == []
        return
    assert len(warned) == 1, warned
    assert "the server took it from the request's forwarding header" in warned[0]
    assert "--no-proxy-headers" in warned[0] and "--forwarded-allow-ips" in warned[0]


# -- planned windows: every worker switches by the clock alone --------------------------------


def store_url(store: str) -> str:
    """The backend URL the CLI takes for a test store."""
    kind, _, where = store.partition(":")
    if kind == "redis":
        return f"{REDIS_URL}?key_prefix={where}"
    return f"file:{where}"


def writes_so_far(store: str) -> object:
    """What changes with every write to ``store``: the Redis store's version counter, the
    state file's inode and modification time (every write replaces the file)."""
    kind, _, where = store.partition(":")
    if kind == "redis":
        import redis

        return redis.Redis.from_url(REDIS_URL).get("{" + where + "}:version")
    stat = os.stat(where)
    return (stat.st_ino, stat.st_mtime_ns)


def watch_statuses(urls: list[str], until: float) -> dict[str, list[tuple[float, float, int]]]:
    """Ask every worker again and again until wall time ``until``: per worker, each
    request's (sent, answered, status), wall-clock seconds."""
    seen: dict[str, list[tuple[float, float, int]]] = {url: [] for url in urls}
    with httpx.Client() as client:
        while time.time() < until:
            for url in urls:
                sent = time.time()
                status = client.get(url + "/").status_code
                seen[url].append((sent, time.time(), status))
    return seen


def switched_by(seen: list[tuple[float, float, int]], status: int, boundary: float) -> None:
    """Check a worker switched to ``status`` at ``boundary`` (wall-clock seconds): no
    request answered before it got ``status`` (not early), and every request sent 50 ms or
    more after it got ``status`` (a request sent then was handled later still: an old
    answer would mean the worker had not switched 50 ms after the boundary). On a loaded
    machine the client's own requests may be late; that is not held against the worker."""
    early = [s for s in seen if s[1] < boundary and s[0] > boundary - 0.5 and s[2] == status]
    assert not early, f"{status} before the boundary: {early[:3]}"
    after = [s for s in seen if boundary + 0.05 <= s[0] < boundary + 0.4]
    assert after, "no request was sent in the 0.35 s after the boundary's first 50 ms"
    late = [s for s in after if s[2] != status]
    assert not late, f"not {status} yet {(late[-1][0] - boundary) * 1000:.0f} ms after the boundary"


@pytest.fixture
def window_workers(tmp_path: Path, store: str) -> Iterator[list[str]]:
    # Polling far slower than the switch must be (a boundary is not found by polling: the
    # watcher wakes for it), and presence leases long enough that no renewal falls in the
    # window.
    refresh = "10" if store.startswith("file:") else "30"
    yield from two_workers(
        tmp_path, store, MAINTGUARD_TEST_REFRESH=refresh, MAINTGUARD_TEST_LEASE="300"
    )


@pytest.mark.slow
def test_a_window_scheduled_from_the_cli_switches_every_worker_on_time(
    window_workers: list[str], store: str
) -> None:
    # docs/explanation/invariants.md, "Windows": nothing is written at a window's start or
    # end, and every process switches by the clock alone, within 50 ms (its watcher wakes at
    # the boundary; it polls no faster).
    urls = window_workers
    assert {httpx.get(url + "/").status_code for url in urls} == {200}
    subprocess.run(
        [sys.executable, "-m", "maintguard", "--backend", store_url(store),
         "schedule", "--in", "2s", "--for", "1s", "--reason", "planned"],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    [window] = sync.list_windows(backend=open_store(store))
    written = writes_so_far(store)
    start, end = window.start.timestamp(), window.end.timestamp()
    assert start - time.time() > 1.0  # the workers must be ready well before it
    seen = watch_statuses(urls, until=end + 0.5)
    assert writes_so_far(store) == written  # nothing was written at the start or the end
    for url in urls:
        switched_by(seen[url], 503, start)
        switched_by(seen[url], 200, end)
