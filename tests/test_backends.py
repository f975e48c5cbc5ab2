"""The backend contract, run against every backend, and each backend's own behaviour."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest

from maintguard import (
    BackendError,
    ConfigurationError,
    EventKind,
    MaintenanceEvent,
    add_listener,
    flush_listeners,
    get_maintenance_mode,
    get_state,
    remove_listener,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard._core.registry import store_of
from maintguard._state import ExplicitState, HoldRecord, Mode, StoredState
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    RedisBackend,
    backend_from_url,
)

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def _hold(hold_id: str, **kw: Any) -> HoldRecord:
    return HoldRecord(id=hold_id, owner="job", host="h", pid=1, acquired=NOW, started=NOW, **kw)


# -- the contract ------------------------------------------------------------------------------


async def test_contract_empty_store_is_off(backend: Backend) -> None:
    assert await backend.read_state(None) == StoredState()
    assert await backend.read_state("billing") == StoredState()
    assert await get_maintenance_mode(backend) is False


async def test_contract_write_read_round_trip(writable_backend: Backend) -> None:
    state = StoredState(
        ExplicitState(True, "upgrade", 30.0, NOW + timedelta(hours=1), Mode.READ_ONLY, NOW),
        (_hold("a", expires=NOW, reason="job", retry_after=NOW), _hold("b")),
    )
    await writable_backend.write_state(None, state)
    await writable_backend.write_state("billing", StoredState(ExplicitState(True)))
    assert await writable_backend.read_state(None) == state
    assert await writable_backend.read_state("billing") == StoredState(ExplicitState(True))
    assert await writable_backend.read_state("other") == StoredState()


async def test_contract_update_state_applies_mutation(writable_backend: Backend) -> None:
    new = await writable_backend.update_state(None, lambda s: StoredState(ExplicitState(True, "x")))
    assert new == await writable_backend.read_state(None) == StoredState(ExplicitState(True, "x"))


async def test_contract_hold_visible_and_released(new_backend: Any) -> None:
    async with under_maintenance(backend=new_backend(), reason="contract"):
        state = await get_state(new_backend())
        assert (state.active, state.holds, state.reason) == (True, 1, "contract")
        assert state.holders[0].pid == os.getpid()
    state = await get_state(new_backend())
    assert (state.active, state.holds) == (False, 0)


async def test_contract_explicit_on_off(writable_backend: Backend) -> None:
    await set_maintenance_mode(True, writable_backend, reason="ops", retry_after=120)
    state = await get_state(writable_backend)
    assert (state.active, state.reason, state.retry_after, state.explicit) == (
        True,
        "ops",
        120.0,
        True,
    )
    assert state.since is not None and state.since.tzinfo is not None
    await set_maintenance_mode(False, writable_backend)
    assert await get_state(writable_backend) == await get_state(MemoryBackend())


# -- a user-written backend (docs/how-to/custom-backends.md) -------------------------------


class DictBackend(Backend):
    """docs/how-to/custom-backends.md's example: state kept as JSON text, as a database
    column would."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}

    async def read_state(self, scope: str | None) -> StoredState:
        text = self.rows.get(scope or "")
        return StoredState.from_dict(json.loads(text)) if text else StoredState()

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        self.rows[scope or ""] = json.dumps(state.to_dict())


async def test_user_backend_gets_holds_leases_and_explicit_state() -> None:
    backend = DictBackend()
    async with under_maintenance(backend=backend, reason="custom"):
        stored = await backend.read_state(None)
        assert [h.reason for h in stored.holds] == ["custom"]
        assert stored.holds[0].expires is not None
        assert await get_maintenance_mode(backend) is True
    assert (await backend.read_state(None)).holds == ()
    await set_maintenance_mode(True, backend)
    assert await get_maintenance_mode(backend) is True


def test_backend_without_methods_fails_at_construction() -> None:
    class Half(Backend):
        async def read_state(self, scope: str | None) -> StoredState:
            return StoredState()

    with pytest.raises(TypeError, match="write_state"):
        Half()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_error": "ignore"}, "on_error must be one of"),
        ({"lease_ttl": 0}, "lease_ttl must be a positive"),
        ({"refresh_interval": -1}, "refresh_interval must be"),
    ],
)
def test_backend_options_are_checked(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        LocalFileBackend(tmp_path / "m.json", **options)


# -- env ---------------------------------------------------------------------------------------


async def test_env_is_read_where_os_environ_was_replaced_by_a_plain_mapping(
    monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    # The fast path reads os.environ's own bytes; a test suite that swaps os.environ for a
    # dict must still be obeyed, and a swap back seen at the next read.
    var = f"ENV_SWAPPED_{anyio_backend.upper()}"
    backend = EnvVarBackend(var)
    assert await get_maintenance_mode(backend) is False
    monkeypatch.setattr(os, "environ", {**os.environ, var: "on"})
    assert await get_maintenance_mode(backend) is True
    monkeypatch.undo()
    assert await get_maintenance_mode(backend) is False


async def test_env_unknown_value_warns_once_and_follows_on_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    events: list[MaintenanceEvent] = []
    add_listener(events.append)
    var = f"ENV_POLICY_{anyio_backend.upper()}"  # a store of its own for each run
    try:
        monkeypatch.setenv(var, "1")
        last_known, opened, closed = (
            EnvVarBackend(var),
            EnvVarBackend(f"{var}_OPEN", on_error="open"),
            EnvVarBackend(f"{var}_CLOSED", on_error="closed"),
        )
        assert await get_maintenance_mode(last_known) is True
        for name in (var, f"{var}_OPEN", f"{var}_CLOSED"):
            monkeypatch.setenv(name, "maybe")
        with caplog.at_level(logging.WARNING, logger="maintguard"):
            for _ in range(3):
                assert await get_maintenance_mode(last_known) is True
                assert await get_maintenance_mode(opened) is False
                assert await get_maintenance_mode(closed) is True
        warnings = [r.getMessage() for r in caplog.records if f"{var}=" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "'maybe' is not a maintenance value" in warnings[0]
        assert "1, 0, on, off, true, false, yes, no, read_only" in warnings[0]
        assert "on_error='last_known'" in warnings[0]
        assert flush_listeners()
        assert [e.kind for e in events].count(EventKind.BACKEND_ERROR) == 3
        assert os.environ[var] == "maybe"
    finally:
        remove_listener(events.append)


# -- file --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "active", "mode"),
    [
        ("1", True, Mode.FULL),
        ("on\n", True, Mode.FULL),
        ("0", False, Mode.FULL),
        ("OFF", False, Mode.FULL),
        ("", False, Mode.FULL),
        ("read_only", True, Mode.READ_ONLY),
    ],
)
async def test_file_reads_plain_values(tmp_path: Path, text: str, active: bool, mode: Mode) -> None:
    path = tmp_path / "flag"
    path.write_text(text)
    state = await get_state(LocalFileBackend(path))
    assert (state.active, state.mode) == (active, mode)


async def test_file_stays_plain_while_nothing_more_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    backend = LocalFileBackend(path, refresh_interval=0)
    await set_maintenance_mode(True, backend)
    assert path.read_text() == "1\n"
    async with under_maintenance(backend=backend):
        assert json.loads(path.read_text())["holds"][0]["pid"] == os.getpid()
    assert path.read_text() == "1\n"  # the hold is gone: back to the plain form
    await set_maintenance_mode(False, backend)
    assert path.read_text() == "0\n"


async def test_file_missing_is_off_and_no_file_is_created_by_reading(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "nothing.json")
    assert await get_maintenance_mode(backend) is False
    assert not (tmp_path / "nothing.json").exists()


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "Expecting property name"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"holds": "x"}', "'holds' must be a list"),
        (b'{"active": "yes"}', "'active' must be bool"),
        (b'{"holds": [{"id": "x"}]}', "lacks 'acquired'"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_file_corrupt_content_is_a_clear_error_and_never_overwritten(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, detail: str
) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(content)
    backend = LocalFileBackend(path, refresh_interval=0)
    with pytest.raises(BackendError, match="does not hold a maintenance state") as info:
        await get_maintenance_mode(backend)
    assert str(path) in str(info.value) and detail in str(info.value)
    assert "Fix the file or delete it" in str(info.value)
    # Afterwards: on_error (last known = off), a warning, no crash.
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        assert await get_maintenance_mode(backend) is False
    assert any("on_error='last_known'" in r.getMessage() for r in caplog.records)
    # A hold cannot be made visible on a corrupt file: refused, and the file is untouched.
    with pytest.raises(BackendError, match="does not hold a maintenance state"):
        async with under_maintenance(backend=backend):
            pytest.fail("the body must not run")
    with pytest.raises(BackendError):
        await set_maintenance_mode(True, backend)
    assert path.read_bytes() == content


async def test_file_corrupt_after_good_follows_on_error(tmp_path: Path) -> None:
    paths = {policy: tmp_path / f"{policy}.json" for policy in ("last_known", "open", "closed")}
    backends = {
        p: LocalFileBackend(path, on_error=p, refresh_interval=0) for p, path in paths.items()
    }  # type: ignore[arg-type]
    for backend in backends.values():
        await set_maintenance_mode(True, backend, reason="before")
    for path in paths.values():
        path.write_text("garbage")
    state = {p: await get_state(b) for p, b in backends.items()}
    assert (state["last_known"].active, state["last_known"].reason) == (True, "before")
    assert state["open"].active is False
    assert (state["closed"].active, state["closed"].reason) == (
        True,
        "maintenance state unavailable",
    )
    for path in paths.values():
        path.write_text("0")
    assert [await get_maintenance_mode(b) for b in backends.values()] == [False, False, False]


async def test_file_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "m.json"
    backend = LocalFileBackend(path)
    assert await get_maintenance_mode(backend) is False  # reading: simply off
    with pytest.raises(BackendError) as info:
        async with under_maintenance(backend=backend):
            pytest.fail("the body must not run")
    message = str(info.value)
    assert f"the directory {path.parent} does not exist" in message
    assert f"mkdir -p {path.parent}" in message
    assert await get_maintenance_mode(backend) is False


async def test_file_unwritable_path(tmp_path: Path) -> None:
    # /sys refuses new files even to root: a real permission fault, not a mock.
    backend = LocalFileBackend("/sys/maintguard-test.json")
    with pytest.raises(BackendError, match=r"/sys is not writable here \(Permission denied\)"):
        await set_maintenance_mode(True, backend)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(BackendError, match="is not a directory"):
        await set_maintenance_mode(True, LocalFileBackend(blocker / "m.json"))


def test_sync_hold_on_unwritable_path_raises_and_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "missing" / "m.json")
    with pytest.raises(BackendError, match="does not exist"), under_maintenance(backend=backend):
        pytest.fail("the body must not run")
    assert anyio.run(get_maintenance_mode, backend) is False


async def test_file_expired_leases_are_ignored_and_cleaned(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    future = datetime.now(timezone.utc) + timedelta(hours=1)
    backend = LocalFileBackend(path, refresh_interval=0)
    await backend.write_state(
        None, StoredState(holds=(_hold("dead", expires=past), _hold("alive", expires=future)))
    )
    state = await get_state(backend)
    assert state.holds == 1 and state.holders[0].id == "alive"
    async with under_maintenance(backend=backend):
        ids = sorted(h["id"] for h in json.loads(path.read_text())["holds"])
        assert ids[0] == "alive" and "dead" not in ids


async def test_file_lease_is_renewed_while_held(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, lease_ttl=0.3, refresh_interval=0)
    async with under_maintenance(backend=backend):
        first = json.loads(path.read_text())["holds"][0]["expires"]
        await anyio.sleep(0.5)  # past the first lease: only renewal keeps it alive
        record = json.loads(path.read_text())["holds"][0]
        assert record["expires"] > first
        other = LocalFileBackend(path, lease_ttl=0.3, refresh_interval=0)
        assert await get_maintenance_mode(other) is True


async def test_a_hold_entered_after_a_release_is_renewed_by_the_running_renewal(
    tmp_path: Path,
) -> None:
    # A job in a loop (hold, release, hold again) starts one renewal on the I/O loop, not
    # one per hold; the renewal still renews the later hold and ends once nothing is held.
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, lease_ttl=0.3, refresh_interval=0)
    ctrl = store_of(backend).controller(None)
    async with under_maintenance(backend=backend):
        renewal = ctrl._renewal
        assert renewal is not None
    for _ in range(5):
        async with under_maintenance(backend=backend):
            assert ctrl._renewal is renewal  # the running renewal, nothing started
    async with under_maintenance(backend=backend):
        assert ctrl._renewal is renewal
        first = json.loads(path.read_text())["holds"][0]["expires"]
        await anyio.sleep(0.5)  # past the first lease: only the renewal keeps it alive
        assert json.loads(path.read_text())["holds"][0]["expires"] > first
        other = LocalFileBackend(path, lease_ttl=0.3, refresh_interval=0)
        assert await get_maintenance_mode(other) is True
    for _ in range(100):  # the next tick finds nothing held and ends the renewal
        if ctrl._renewal is None:
            break
        await anyio.sleep(0.01)
    assert ctrl._renewal is None
    assert json.loads(path.read_text())["holds"] == []


# -- URLs --------------------------------------------------------------------------------------


def test_backend_from_url(tmp_path: Path) -> None:
    assert isinstance(backend_from_url("memory:"), MemoryBackend)
    assert backend_from_url("env:").var_name == "MAINTGUARD_MODE"  # type: ignore[attr-defined]
    assert backend_from_url("env:APP_MAINT").var_name == "APP_MAINT"  # type: ignore[attr-defined]
    file_backend = backend_from_url(f"file:{tmp_path}/m.json")
    assert isinstance(file_backend, LocalFileBackend) and file_backend.path == tmp_path / "m.json"
    assert backend_from_url(f"file://{tmp_path}/m.json").path == tmp_path / "m.json"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory", "has no scheme"),
        ("file:", "is not understood"),
        ("s3://bucket/key", "is not understood: use one of memory:, env:, env:VAR, file:PATH"),
        ("rediss://u:secret@h:notaport/0", "is not understood"),
        ("memory:extra", "is not understood"),
        ("redis://h/0?key_prefix=a&key_prefix=b", "give key_prefix once, non-empty"),
        ("redis://h/0?key_prefix=", "give key_prefix once, non-empty"),
    ],
)
def test_bad_backend_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        backend_from_url(url)


def test_a_redis_url_names_its_key_prefix_so_the_environment_and_the_cli_can() -> None:
    shop = backend_from_url("redis://:pw@cache:6379/2?key_prefix=shop&socket_timeout=2")
    same = backend_from_url("redis://:pw@cache:6379/2?socket_timeout=2", key_prefix="shop")
    assert isinstance(shop, RedisBackend) and shop.key_prefix == "shop"
    assert shop.store_key() == same.store_key()  # one store, however it is named
    assert "key_prefix" not in shop.url and "socket_timeout=2" in shop.url
    assert backend_from_url("redis://h/0?key_prefix=a", key_prefix="a").key_prefix == "a"
    with pytest.raises(ConfigurationError, match="says key_prefix='a' but key_prefix='b'"):
        backend_from_url("redis://h/0?key_prefix=a", key_prefix="b")


def _readme_backend() -> type[Backend]:
    page = (Path(__file__).parents[1] / "docs" / "how-to" / "custom-backends.md").read_text()
    block = next(b for b in page.split("```python")[1:] if "class SqliteBackend" in b)
    namespace: dict[str, Any] = {}
    exec(block.split("```")[0], namespace)
    cls: type[Backend] = namespace["SqliteBackend"]
    return cls


async def test_readme_backend_example_works(tmp_path: Path) -> None:
    sqlite_backend = _readme_backend()
    path = str(tmp_path / "state.db")
    backend, same_db = sqlite_backend(path), sqlite_backend(path)  # type: ignore[call-arg]
    async with under_maintenance(backend=backend, reason="from the README"):
        assert (await get_state(same_db)).reason == "from the README"
        stored = await backend.read_state(None)
        assert stored.holds[0].reason == "from the README"
    assert (await backend.read_state(None)).holds == ()
    await set_maintenance_mode(True, backend, scope="billing")
    assert await get_maintenance_mode(sqlite_backend(path), scope="billing") is True  # type: ignore[call-arg]
    assert await get_maintenance_mode(backend) is False
