"""A live holder whose record vanished from the store (a restarted or flushed Redis, an
operator's ``off --force``) writes it again as soon as a read shows it gone, not at its next
renewal (docs/how-to/many-servers.md): other processes see the hold again within about a second
of the store answering."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from maintguard import sync
from maintguard._core import controller, watch
from maintguard.backends import RedisBackend
from tests.stores import RedisServer, new_spec, open_store, redis_prefix

pytestmark = pytest.mark.processes

SCRIPT = Path(__file__).with_name("holder_process.py")
ROOT = Path(__file__).parents[1]


def start_holder(
    tmp_path: Path, store: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Another process holding with the default lease (renewed every 10 s)."""
    args = [sys.executable, str(SCRIPT), "hold", store, str(tmp_path), "job", "30"]
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.Popen(args, env=environ, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "entered-job").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.02)
    return proc


@pytest.fixture
def ended(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    (tmp_path / "leave-job").touch()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def longest_off(look: Iterator[bool], seconds: float) -> tuple[float, bool]:
    """Over ``seconds``: the longest stretch ``look`` said off, and what it said last."""
    longest = 0.0
    off_since: float | None = None
    end = time.monotonic() + seconds
    last = True
    while time.monotonic() < end:
        last = next(look)
        now = time.monotonic()
        if not last and off_since is None:
            off_since = now
        elif last and off_since is not None:
            longest = max(longest, now - off_since)
            off_since = None
        time.sleep(0.02)
    if off_since is not None:
        longest = max(longest, time.monotonic() - off_since)
    return longest, last


@pytest.mark.slow
def test_a_restarted_redis_shows_the_hold_again_within_a_second(
    tmp_path: Path, redis_server: RedisServer, ended: list[subprocess.Popen[str]]
) -> None:
    # Found: after a restart that lost every key, other processes served 200s until the
    # holder's next renewal (up to lease_ttl / 3: 10 s by default).
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    prefix = redis_prefix()
    ended.append(start_holder(tmp_path, f"redis:{prefix}", {"MAINTGUARD_TEST_REDIS_URL": url}))
    reader = RedisBackend(url, key_prefix=prefix)  # the default refresh_interval (5 s)
    stop = watch(reader)
    try:
        ctrl = controller(reader, None)
        assert sync.get_maintenance_mode(reader)
        redis_server.kill()
        time.sleep(1.5)
        redis_server.start()  # empty: the restart lost every key

        def looks() -> Iterator[bool]:
            while True:
                yield ctrl.snapshot.active

        off, last = longest_off(looks(), 6.0)
        assert last, "the hold was not seen again"
        assert off < 1.5, f"off for {off:.2f}s after the restart"
    finally:
        stop()


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_a_record_removed_by_force_comes_back_within_the_refresh_interval(
    tmp_path: Path, kind: str, ended: list[subprocess.Popen[str]]
) -> None:
    # The holder's own watcher reads every refresh_interval (1 s here) and writes its
    # record again when it sees it gone: not only at the next renewal, 10 s later.
    store = new_spec(kind, tmp_path)
    ended.append(start_holder(tmp_path, store))
    reader = open_store(store, refresh_interval=0)
    state = sync.get_state(reader)
    assert state.holds == 1
    anyio.run(controller(reader, None).remove_holds, [state.holders[0].id])
    removed = time.monotonic()  # (on Redis the removal's own notification may bring it back)
    while not sync.get_maintenance_mode(reader):
        assert time.monotonic() - removed < 5, "the holder did not write its record again"
        time.sleep(0.05)
