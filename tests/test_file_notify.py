"""The file backend's watcher is woken by OS file notifications (watchfiles), with polling
as the fallback: a change another process makes is seen long before the refresh interval."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from maintguard._core import controller, watch
from maintguard.backends import LocalFileBackend

pytestmark = pytest.mark.processes

ROOT = Path(__file__).parents[1]


def switch_elsewhere(path: Path) -> None:
    code = (
        "import anyio, sys, maintguard\n"
        "anyio.run(lambda: maintguard.set_maintenance_mode(True, 'file:' + sys.argv[1]))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=ROOT)


def seen_within(backend: LocalFileBackend, seconds: float) -> bool:
    ctrl = controller(backend, None)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctrl.snapshot.active:
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def watched() -> Iterator[list[object]]:
    stops: list[object] = []
    yield stops
    for stop in stops:
        stop()  # type: ignore[operator]


def test_a_change_elsewhere_is_seen_without_waiting_for_the_refresh(
    tmp_path: Path, watched: list[object]
) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=60)
    watched.append(watch(backend))
    time.sleep(0.3)  # the watcher has read the file and armed the notification
    switch_elsewhere(tmp_path / "m.json")
    assert seen_within(backend, 2.0)  # polling alone would take up to 60 s


def test_a_symlinked_files_target_is_watched(tmp_path: Path, watched: list[object]) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "maintenance.json"
    link.symlink_to(tmp_path / "real" / "state.json")
    backend = LocalFileBackend(link, refresh_interval=60)
    watched.append(watch(backend))
    time.sleep(0.3)
    switch_elsewhere(link)
    assert link.is_symlink()
    assert seen_within(backend, 2.0)


def test_without_watchfiles_polling_still_sees_changes(
    tmp_path: Path, watched: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "watchfiles", None)  # import watchfiles fails
    slow = LocalFileBackend(tmp_path / "slow.json", refresh_interval=60)
    quick = LocalFileBackend(tmp_path / "quick.json", refresh_interval=0.2)
    watched.extend([watch(slow), watch(quick)])
    time.sleep(0.3)
    switch_elsewhere(tmp_path / "slow.json")
    switch_elsewhere(tmp_path / "quick.json")
    assert seen_within(quick, 2.0)  # the refresh interval's poll
    assert not seen_within(slow, 1.0)  # no notification: it waits for its poll


def test_a_switch_logs_maintguards_line_and_no_watchfiles_chatter(
    tmp_path: Path, watched: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    # At INFO an operator sees "maintenance on", not watchfiles' "1 change detected".
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=60)
    with caplog.at_level(logging.INFO):
        watched.append(watch(backend))
        time.sleep(0.3)
        switch_elsewhere(tmp_path / "m.json")
        assert seen_within(backend, 2.0)  # through a notification: watchfiles saw it
        time.sleep(0.2)  # (its line, if any, is logged as the notification comes)
    lines = [(r.name, r.getMessage()) for r in caplog.records]
    assert not [line for line in lines if line[0].startswith("watchfiles")], lines
    assert any(name == "maintguard" and "maintenance on" in text for name, text in lines)


def test_watchfiles_lines_stay_for_whoever_asks_for_them(
    tmp_path: Path, watched: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=60)
    with caplog.at_level(logging.INFO, logger="watchfiles"):
        watched.append(watch(backend))
        time.sleep(0.3)
        switch_elsewhere(tmp_path / "m.json")
        assert seen_within(backend, 2.0)
        deadline = time.monotonic() + 2
        while not any(r.name.startswith("watchfiles") for r in caplog.records):
            assert time.monotonic() < deadline, "the watchfiles line was silenced"
            time.sleep(0.01)
