"""Fork, interpreter exit and server shutdown: a child holds nothing of its parent and
follows changes by itself; at exit, holds still entered end with the process; a lifespan
shutdown removes the process's presence record unless guarded work is still in flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from maintguard import MaintenanceModeMiddleware, not_during_maintenance
from maintguard._core import presence, store_of
from maintguard.backends import LocalFileBackend


def run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def holds(path: Path) -> list[object]:
    return list(json.loads(path.read_text())["holds"]) if path.exists() else []


@pytest.mark.processes
def test_forked_worker_leaves_the_parents_block_and_follows_changes(tmp_path: Path) -> None:
    done = run(
        """
        import os, sys, time
        from maintguard import under_maintenance
        from maintguard.backends import LocalFileBackend
        from maintguard._core import store_of, watch

        backend = LocalFileBackend(sys.argv[1], refresh_interval=0.05)
        stop = watch(backend)  # as a middleware does before gunicorn forks its workers
        root = store_of(backend).root
        with under_maintenance(backend=backend, reason="parent"):
            pid = os.fork()
            if pid == 0:  # the child leaves the parent's block: no error, nothing removed
                pass
            else:
                time.sleep(0.5)
        if pid == 0:
            try:
                assert not root.stack and root.snapshot.active, "the parent still holds"
                assert root.snapshot.holders[0].pid == os.getppid()
                deadline = time.monotonic() + 10
                while root.snapshot.active:  # only the child's own watcher can show this
                    assert time.monotonic() < deadline, "the child's watcher never ran"
                    time.sleep(0.02)
            except BaseException as exc:
                print("child:", exc, flush=True)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        """,
        str(tmp_path / "m.json"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("child exit 0"), done.stdout + done.stderr
    assert holds(tmp_path / "m.json") == []


@pytest.mark.processes
def test_holds_left_entered_at_exit_are_released(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    done = run(
        """
        import sys, threading
        from maintguard import under_maintenance
        from maintguard.backends import LocalFileBackend

        backend = LocalFileBackend(sys.argv[1])
        entered = threading.Event()

        def job():  # a daemon thread still inside its hold when the interpreter exits
            with under_maintenance(backend=backend, reason="daemon"):
                entered.set()
                threading.Event().wait()

        threading.Thread(target=job, daemon=True).start()
        entered.wait()
        print(open(sys.argv[1]).read().count('"daemon"'))
        """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # it was held...
    assert holds(path) == []  # ...and the record is gone, not left to its 30 s lease


@pytest.mark.processes
def test_a_release_that_cannot_land_at_exit_says_so(tmp_path: Path) -> None:
    done = run(
        """
        import sys, threading
        from maintguard import under_maintenance
        from maintguard.backends import Backend, StoredState

        class Flaky(Backend):
            broken = False
            state = StoredState()

            async def read_state(self, scope):
                return self.state

            async def write_state(self, scope, state):
                if self.broken:
                    raise OSError("store unreachable")
                self.state = state

        backend = Flaky()
        entered = threading.Event()

        def job():
            with under_maintenance(backend=backend):
                entered.set()
                threading.Event().wait()

        threading.Thread(target=job, daemon=True).start()
        entered.wait()
        Flaky.broken = True
        """
    )
    assert done.returncode == 0
    assert "could not remove this process's hold record" in done.stderr
    assert "store unreachable" in done.stderr
    assert "lease runs out" in done.stderr


@pytest.mark.processes
def test_a_release_write_still_running_at_exit_lands(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    done = run(
        """
        import asyncio, sys
        from maintguard import under_maintenance
        from maintguard.backends import LocalFileBackend

        backend = LocalFileBackend(sys.argv[1])

        async def main():
            hold = under_maintenance(backend=backend)
            await hold.__aenter__()
            # The release starts, and the program ends before it is awaited to the end.
            task = asyncio.ensure_future(hold.__aexit__(None, None, None))
            await asyncio.sleep(0)
            task.cancel()

        asyncio.run(main())
        """,
        str(path),
    )
    assert done.returncode == 0, done.stderr
    assert holds(path) == []


def workers_of(path: Path) -> list[dict[str, object]]:
    """The presence records in the file that are this process's."""
    found = json.loads(path.read_text()).get("workers", []) if path.exists() else []
    return [w for w in found if w["pid"] == os.getpid()]


def test_a_lifespan_shutdown_removes_the_presence_record_before_it_completes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.json"
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    app.add_middleware(MaintenanceModeMiddleware, backend=LocalFileBackend(path))
    with TestClient(app) as client:
        assert client.get("/").status_code == 200
        assert workers_of(path)
    assert workers_of(path) == []  # at once: not left to the watcher's next turn


def test_a_shutdown_removes_the_record_though_an_idle_guard_watches_and_the_guard_rejoins(
    tmp_path: Path,
) -> None:
    # A module-level guard lives as long as the process: leaving the record to it meant a
    # server stopped by SIGTERM (no atexit) kept it, and the next drain waited for its lease.
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)
    guarded = not_during_maintenance(backend=backend)(lambda: None)
    guarded()  # the guard records this process and watches the store while it lives
    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    with TestClient(app):
        pass
    assert workers_of(path) == []  # nothing in flight: removed at once
    guarded()  # used again: drains elsewhere must count its work again
    assert workers_of(path)


def test_a_shutdown_keeps_the_record_while_guarded_work_is_in_flight(tmp_path: Path) -> None:
    # Drains elsewhere must go on waiting for the guard's work in this process.
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)
    started, release = threading.Event(), threading.Event()

    @not_during_maintenance(backend=backend)
    def job() -> None:
        started.set()
        release.wait(10)

    worker = threading.Thread(target=job)
    worker.start()
    try:
        assert started.wait(10)
        app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
        app.add_middleware(MaintenanceModeMiddleware, backend=backend)
        with TestClient(app):
            pass
        assert workers_of(path)  # kept: the job is still running
    finally:
        release.set()
        worker.join(10)


@pytest.mark.anyio
async def test_a_renewal_that_loses_the_race_with_a_shutdown_removes_the_record(
    tmp_path: Path,
) -> None:
    # The watcher's turn was under way when the shutdown stopped the last watch and
    # removed the record: its renewal, landing after, must not write the record back.
    path = tmp_path / "m.json"
    store = store_of(LocalFileBackend(path))
    await presence.join(store)
    assert workers_of(path)
    await presence.leave_at_shutdown(store, 5.0)  # nothing in flight
    assert workers_of(path) == []
    await presence.tick(store)  # the renewal that was already on its way
    assert workers_of(path) == []


@pytest.mark.processes
@pytest.mark.parametrize(("given", "expected"), [("pod-7", "pod-7"), ("  ", None)])
def test_records_name_the_host_maintguard_host_gives(
    tmp_path: Path, given: str, expected: str | None
) -> None:
    # MAINTGUARD_HOST names this machine in hold and presence records (a pod's name, where
    # host names are random); unset or blank, the host name.
    code = """
        import json, sys
        from maintguard import under_maintenance
        from maintguard.backends import LocalFileBackend
        with under_maintenance(backend=LocalFileBackend(sys.argv[1])):
            print(json.load(open(sys.argv[1]))["holds"][0]["host"])
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path / "m.json")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAINTGUARD_HOST": given},
    )
    assert done.returncode == 0, done.stderr
    import socket

    assert done.stdout.strip() == (expected or socket.gethostname())
