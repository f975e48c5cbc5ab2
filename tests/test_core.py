"""Listeners, events, logging and the import contract."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import maintguard
from maintguard import (
    ConfigurationError,
    EventKind,
    MaintenanceEvent,
    Mode,
    Phase,
    add_listener,
    flush_listeners,
    get_maintenance_mode,
    remove_listener,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard._core import store_of
from maintguard.backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend

pytestmark = pytest.mark.anyio

DEADLINE = 10.0


async def test_listeners_hear_holds_and_transitions(backend: Backend) -> None:
    heard: list[tuple[EventKind, Phase | None, str | None]] = []
    async_heard: list[EventKind] = []

    def sync_listener(event: MaintenanceEvent) -> None:
        heard.append((event.kind, event.phase, event.owner))

    async def async_listener(event: MaintenanceEvent) -> None:
        await anyio.lowlevel.checkpoint()
        async_heard.append(event.kind)

    inner = under_maintenance(backend=backend)
    inner_line = sys._getframe().f_lineno - 1
    add_listener(sync_listener)
    add_listener(async_listener)
    try:

        @under_maintenance(backend=backend)
        async def job() -> None:
            async with inner:
                pass

        await job()
        assert flush_listeners()
    finally:
        remove_listener(sync_listener)
        remove_listener(async_listener)
    owner = f"{__name__}.test_listeners_hear_holds_and_transitions.<locals>.job"
    assert heard[0] == (EventKind.TRANSITION, Phase.ON, None)
    assert heard[1] == (EventKind.HOLD_ACQUIRED, None, owner)
    assert heard[2][0] is EventKind.HOLD_ACQUIRED and heard[2][2] == f"{__file__}:{inner_line}"  # type: ignore[union-attr]
    assert heard[3][0] is EventKind.HOLD_RELEASED
    assert heard[4] == (EventKind.TRANSITION, Phase.OFF, None)
    assert heard[5] == (EventKind.HOLD_RELEASED, None, owner)
    assert async_heard == [k for k, _, _ in heard]


def test_sync_face_runs_async_listeners_and_survives_failing_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[EventKind] = []

    async def async_listener(event: MaintenanceEvent) -> None:
        heard.append(event.kind)

    def broken(event: MaintenanceEvent) -> None:
        raise RuntimeError("listener bug")

    add_listener(async_listener)
    add_listener(broken)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="maintguard"),
            under_maintenance(backend=MemoryBackend()),
        ):
            pass
        assert flush_listeners()
    finally:
        remove_listener(async_listener)
        remove_listener(broken)
    assert heard == [
        EventKind.TRANSITION,
        EventKind.HOLD_ACQUIRED,
        EventKind.TRANSITION,
        EventKind.HOLD_RELEASED,
    ]
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)


def test_hold_on_an_already_on_env_store_reports_no_transitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A store never read before (the env backend: holds do not read it) was once taken as
    # off. A hold while MAINTGUARD_MODE=1 then reported OFF -> ON on entry and ON -> OFF on
    # exit, and the controller's snapshot (what the middleware reads) said off after the
    # exit, while the variable kept maintenance on the whole time.
    var = f"MG_ALREADY_ON_{os.getpid()}"
    monkeypatch.setenv(var, "1")
    backend = EnvVarBackend(var)
    heard: list[MaintenanceEvent] = []
    add_listener(heard.append)
    try:
        with under_maintenance(backend=backend, reason="job"):
            pass
        assert flush_listeners()
    finally:
        remove_listener(heard.append)
    after = store_of(backend).root.snapshot
    transitions = [(e.previous, e.phase) for e in heard if e.kind is EventKind.TRANSITION]
    assert (transitions, after.active) == ([], True)


def test_flush_listeners_called_by_a_listener_does_not_wait_on_itself() -> None:
    # flush_listeners() from inside a listener once waited for the dispatcher thread, which
    # is the caller itself: it always timed out (with timeout=None it hung the dispatcher for
    # good, and every later event and every flush in the process with it).
    backend = MemoryBackend()
    outcome: list[object] = []

    def listener(event: MaintenanceEvent) -> None:
        if event.kind is EventKind.HOLD_ACQUIRED:
            try:
                outcome.append(flush_listeners(timeout=3.0))
            except maintguard.MaintGuardError as exc:  # a clear error is fine too
                outcome.append(exc)

    add_listener(listener)
    try:
        with under_maintenance(backend=backend):
            pass
        assert flush_listeners(DEADLINE)
    finally:
        remove_listener(listener)
    assert outcome and outcome[0] is not False, "flush_listeners waited on its own thread"


def test_listener_entering_a_hold_itself_does_not_deadlock(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    other = MemoryBackend()
    seen: list[bool] = []

    def listener(event: MaintenanceEvent) -> None:
        if event.kind is EventKind.HOLD_ACQUIRED and event.backend == backend.describe():
            with under_maintenance(backend=other):
                seen.append(anyio.run(get_maintenance_mode, other))
            seen.append(anyio.run(get_maintenance_mode, backend))

    add_listener(listener)
    try:
        with under_maintenance(backend=backend):
            assert flush_listeners(DEADLINE)
    finally:
        remove_listener(listener)
        assert flush_listeners(DEADLINE)
    assert seen == [True, True]
    assert not anyio.run(get_maintenance_mode, other)


async def test_transitions_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    with caplog.at_level(logging.INFO, logger="maintguard"):
        await set_maintenance_mode(True, backend, reason="DB upgrade")
        await set_maintenance_mode(False, backend)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("maintenance on (LocalFileBackend(") and m.endswith(": DB upgrade")
        for m in messages
    )
    assert any(m.startswith("maintenance off (") for m in messages)


def test_listener_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match="must be callable"):
        add_listener("print")  # type: ignore[arg-type]


@pytest.mark.processes
def test_import_maintguard_loads_neither_starlette_nor_redis() -> None:
    code = (
        "import sys, maintguard, maintguard.backends\n"
        "print(sorted(m for m in ('starlette', 'redis', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names() -> None:
    import maintguard
    import maintguard.exceptions as exc

    for name in ("BackendError", "ReadOnlyBackendError", "ConfigurationError", "UnderMaintenance"):
        assert getattr(maintguard, name) is getattr(exc, name)
        assert issubclass(getattr(maintguard, name), maintguard.MaintGuardError)
    web = ["MaintenanceModeMiddleware", "exempt", "force_maintenance_mode_off"]
    web += ["force_maintenance_mode_on", "maintenance_scope"]
    core = maintguard.__all__[: -len(web)]
    assert core == sorted(core) and maintguard.__all__[-len(web) :] == web
    assert all(hasattr(maintguard, name) for name in maintguard.__all__)
    import maintguard.backends as backends

    for name in ("StoredState", "ExplicitState", "HoldRecord"):
        assert getattr(backends, name) is getattr(maintguard._state, name)
        assert name in backends.__all__
    assert maintguard.__version__ == "0.1.0"


@pytest.mark.processes
def test_star_import_works_without_starlette() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if it were not installed\n"
        "from maintguard import *\n"
        "print(under_maintenance.__name__, 'MaintenanceModeMiddleware' in dir())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["under_maintenance", "False"]


@pytest.mark.parametrize("text", ["read_only", "read-only", "readonly", "READ-ONLY", " ReadOnly "])
def test_mode_accepts_the_spellings_backends_accept(text: str) -> None:
    assert Mode.parse(text) is Mode.READ_ONLY
    assert Mode(text) is Mode.READ_ONLY
    with pytest.raises(ConfigurationError, match="'read-only' and 'readonly' also work"):
        Mode.parse("readwrite")
