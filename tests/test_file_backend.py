"""LocalFileBackend on real files: the blocking protocol, symlinks, plain files, format
versions, unknown fields, and many writers at once (docs/explanation/invariants.md: I6)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import maintguard
from maintguard import under_maintenance
from maintguard._core import io, store_of
from maintguard._state import ExplicitState, HoldRecord, Mode, StoredState
from maintguard.backends import LocalFileBackend
from maintguard.exceptions import BackendError

NOW = datetime.now(timezone.utc)
# Subprocesses import the same maintguard as this test run.
ROOT = str(Path(maintguard.__file__).resolve().parents[1])
Mutate = Callable[[StoredState], StoredState]


def _hold(hold_id: str, **kw: Any) -> HoldRecord:
    return HoldRecord(
        id=hold_id,
        owner="job",
        host="h",
        pid=os.getpid(),
        acquired=NOW,
        started=NOW,
        expires=NOW + timedelta(hours=1),
        **kw,
    )


def _add(record: HoldRecord) -> Mutate:
    return lambda s: StoredState(s.explicit, (*s.holds, record))


def _remove(hold_id: str) -> Mutate:
    return lambda s: StoredState(s.explicit, tuple(h for h in s.holds if h.id != hold_id))


def _explicit(**kw: Any) -> Mutate:
    return lambda s: StoredState(ExplicitState(**kw), s.holds)


def _run(code: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _listing(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


# -- the blocking protocol -----------------------------------------------------------------


def test_the_core_takes_the_blocking_protocol(tmp_path: Path) -> None:
    assert io.way(LocalFileBackend(tmp_path / "m.json")) is io.Way.BLOCKING


def test_missing_file_is_off_and_reading_creates_nothing(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "m.json")
    assert backend._read_scopes_blocking([None, "billing"]) == {
        None: StoredState(),
        "billing": StoredState(),
    }
    assert _listing(tmp_path) == set()


def test_update_returns_the_new_state_and_writes_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)
    new = backend._update_blocking("billing", _add(_hold("a")))
    assert [h.id for h in new.holds] == ["a"]
    assert backend._read_scopes_blocking(["billing"])["billing"] == new
    before = path.stat()
    assert backend._update_blocking("billing", lambda s: s) == new
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_read_scopes_is_one_read_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _explicit(active=True, reason="global"))
    backend._update_blocking("a", _add(_hold("ha")))
    backend._update_blocking("b", _explicit(active=True, reason="b"))
    backend._update_blocking("c", _explicit(active=True, reason="c"))

    opened: list[str] = []
    real_open = os.open

    def counting_open(file: Any, *args: Any, **kw: Any) -> int:
        opened.append(os.fspath(file))
        return real_open(file, *args, **kw)

    monkeypatch.setattr(os, "open", counting_open)
    result = backend._read_scopes_blocking([None, "a", "b", "missing"])
    monkeypatch.undo()

    assert opened == [str(path)]
    assert result[None].explicit.reason == "global"
    assert [h.id for h in result["a"].holds] == ["ha"]
    assert result["b"].explicit.reason == "b"
    assert result["missing"] == StoredState()
    assert set(result) >= {None, "a", "b", "missing"}


@pytest.mark.anyio
async def test_async_faces_make_one_thread_hop_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LocalFileBackend(tmp_path / "m.json")
    hops: list[str] = []
    real = anyio.to_thread.run_sync
    here = threading.get_ident()  # not the I/O thread, where earlier tests' watchers run

    async def counting(func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        if threading.get_ident() == here:
            hops.append(func.__name__)
        return await real(func, *args, **kw)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)

    await backend.write_state(None, StoredState(ExplicitState(active=True, reason="w")))
    assert hops == ["_update_blocking"]
    new = await backend.update_state("s", _add(_hold("x")))
    assert [h.id for h in new.holds] == ["x"]
    assert hops[1:] == ["_update_blocking"]
    assert (await backend.read_state(None)).explicit.reason == "w"
    assert hops[2:] == ["_read_scopes_blocking"]
    scopes = await backend.read_scopes([None, "s", "nothing"])
    assert hops[3:] == ["_read_scopes_blocking"]
    assert scopes["s"] == new and scopes["nothing"] == StoredState()
    assert scopes[None].explicit.reason == "w"


# -- symlinks ---------------------------------------------------------------------------------


def test_symlink_chain_with_relative_links_stays_and_its_target_is_replaced(
    tmp_path: Path,
) -> None:
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    real = real_dir / "state.json"
    real.write_text("0")
    first = link_dir / "first"
    first.symlink_to(Path("..") / "real" / "state.json")  # relative
    second = tmp_path / "second"
    second.symlink_to(Path("links") / "first")  # relative, to another link

    through_link = LocalFileBackend(second)
    through_link._update_blocking(None, _add(_hold("h1", reason="via link")))

    assert second.is_symlink() and os.readlink(second) == os.path.join("links", "first")
    assert first.is_symlink() and os.readlink(first) == os.path.join("..", "real", "state.json")
    assert not real.is_symlink()
    assert json.loads(real.read_text())["holds"][0]["reason"] == "via link"
    # The temporary file went to the target's directory and is gone; the lock sits next
    # to the real file, and nothing was left next to the links.
    assert _listing(real_dir) == {"state.json", "state.json.lock"}
    assert _listing(link_dir) == {"first"}
    assert _listing(tmp_path) == {"real", "links", "second"}

    # A backend on the real path sees the write, and its writes are seen through the link.
    direct = LocalFileBackend(real)
    assert [h.id for h in direct._read_scopes_blocking([None])[None].holds] == ["h1"]
    direct._update_blocking(None, _add(_hold("h2")))
    assert [h.id for h in through_link._read_scopes_blocking([None])[None].holds] == [
        "h1",
        "h2",
    ]
    through_link._update_blocking(None, _remove("h1"))
    direct._update_blocking(None, _remove("h2"))
    assert second.is_symlink() and real.read_text() == "0\n"


def test_an_open_handle_on_the_real_file_keeps_seeing_the_link(tmp_path: Path) -> None:
    # A process that watches the real path (not the link) sees writes made through the link.
    real = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(real.name)
    LocalFileBackend(link)._update_blocking(None, _explicit(active=True, reason="one"))
    assert link.is_symlink()
    assert json.loads(real.read_text())["reason"] == "one"


def test_dangling_symlink_gets_its_target_created(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to("target.json")
    LocalFileBackend(link)._update_blocking(None, _explicit(active=True))
    assert link.is_symlink()
    assert json.loads((tmp_path / "target.json").read_text())["active"] is True


def test_link_and_real_path_backends_exclude_each_other(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    backends = [LocalFileBackend(link), LocalFileBackend(real)]
    per_thread = 25

    def work(n: int) -> None:
        backend = backends[n % 2]
        for i in range(per_thread):

            def slow_add(s: StoredState, i: int = i) -> StoredState:
                time.sleep(0.001)  # widen the read-modify-write window
                return _add(_hold(f"t{n}-{i}"))(s)

            backend._update_blocking(None, slow_add)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holds = backends[0]._read_scopes_blocking([None])[None].holds
    assert len(holds) == 4 * per_thread
    assert len({h.id for h in holds}) == 4 * per_thread
    assert link.is_symlink()


# -- plain files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "plain"),
    [("0", "0\n"), ("off\n", "0\n"), ("on", "1\n"), ("1\n", "1\n"), ("READ_ONLY", "read_only\n")],
)
def test_plain_file_returns_to_plain_form_after_a_hold(
    tmp_path: Path, text: str, plain: str
) -> None:
    path = tmp_path / "flag"
    path.write_text(text)
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("h", reason="deploy")))
    document = json.loads(path.read_text())
    assert document["plain"] is True and document["holds"][0]["reason"] == "deploy"
    backend._update_blocking(None, _remove("h"))
    assert path.read_text() == plain


def test_plain_file_returns_to_plain_form_after_a_reason_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _explicit(active=True, reason="upgrade"))
    assert json.loads(path.read_text())["reason"] == "upgrade"
    backend._update_blocking(None, _explicit(active=True, mode=Mode.READ_ONLY))
    assert path.read_text() == "read_only\n"


def test_plain_file_waits_for_every_scope_before_returning(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("g")))
    backend._update_blocking("billing", _add(_hold("b")))
    backend._update_blocking(None, _remove("g"))
    assert json.loads(path.read_text())["plain"] is True  # billing still holds
    backend._update_blocking("billing", _remove("b"))
    assert path.read_text() == "0\n"


def test_plain_file_released_by_another_backend_object(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    LocalFileBackend(path)._update_blocking(None, _add(_hold("h")))
    LocalFileBackend(path)._update_blocking(None, _remove("h"))
    assert path.read_text() == "0\n"


@pytest.mark.processes
def test_plain_file_released_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    LocalFileBackend(path)._update_blocking(None, _add(_hold("h", reason="deploy")))
    assert json.loads(path.read_text())["holds"][0]["id"] == "h"
    _run(
        "import sys\n"
        "from maintguard.backends import LocalFileBackend\n"
        "from maintguard._state import StoredState\n"
        "LocalFileBackend(sys.argv[1])._update_blocking(\n"
        "    None, lambda s: StoredState(s.explicit, tuple(h for h in s.holds if h.id != 'h'))\n"
        ")\n",
        str(path),
    )
    assert path.read_text() == "0\n"


@pytest.mark.parametrize("start", [None, '{"version": 1, "active": false}\n'])
def test_json_file_stays_json(tmp_path: Path, start: str | None) -> None:
    path = tmp_path / "m.json"
    if start is not None:
        path.write_text(start)
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("h")))
    backend._update_blocking(None, _remove("h"))
    document = json.loads(path.read_text())
    assert isinstance(document, dict) and "plain" not in document
    assert document["active"] is False and document["holds"] == []
    backend._update_blocking(None, _explicit(active=True))
    assert json.loads(path.read_text())["active"] is True


def test_plain_file_with_a_field_we_do_not_know_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "flag"
    path.write_text("0")
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("h")))
    document = json.loads(path.read_text())
    document["written_by"] = "another tool"
    path.write_text(json.dumps(document))
    backend._update_blocking(None, _remove("h"))
    assert json.loads(path.read_text())["written_by"] == "another tool"


# -- format versions ----------------------------------------------------------------------


def test_newer_version_is_read_but_never_written(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    content = json.dumps(
        {
            "version": 99,
            "active": True,
            "reason": "from the future",
            "holds": [
                {"id": "f", "acquired": NOW.isoformat(), "started": NOW.isoformat(), "new": 1}
            ],
            "scopes": {"billing": {"active": True, "shiny": True}},
            "future": {"x": 1},
        }
    ).encode()
    path.write_bytes(content)
    before = path.stat()
    backend = LocalFileBackend(path)
    scopes = backend._read_scopes_blocking([None, "billing"])
    assert scopes[None].explicit.active is True
    assert scopes[None].explicit.reason == "from the future"
    assert [h.id for h in scopes[None].holds] == ["f"]
    assert scopes["billing"].explicit.active is True

    writes: list[tuple[str | None, Mutate]] = [
        (None, lambda s: s),
        (None, _add(_hold("mine"))),
        (None, _remove("f")),
        ("billing", _explicit()),
        ("other", _add(_hold("x"))),
    ]
    for scope, mutate in writes:
        with pytest.raises(BackendError) as info:
            backend._update_blocking(scope, mutate)
        message = str(info.value)
        assert "99" in message and "version 2" in message and "Upgrade maintguard" in message

    async def async_writes() -> None:
        with pytest.raises(BackendError, match="99"):
            await backend.write_state(None, StoredState())
        with pytest.raises(BackendError, match="99"):
            await backend.update_state(None, _add(_hold("y")))
        assert (await backend.read_state(None)).explicit.active is True

    anyio.run(async_writes)
    assert path.read_bytes() == content
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _listing(tmp_path) <= {"m.json", "m.json.lock"}


def test_newer_version_we_cannot_understand_says_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"version": 3, "active": "emergency"}')
    with pytest.raises(BackendError, match=r"format version 3.*Upgrade maintguard"):
        LocalFileBackend(path)._read_scopes_blocking([None])


def test_hold_on_newer_format_file_is_a_clear_error_and_leaves_it_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    text = json.dumps({"version": 99, "active": False, "future": {"x": 1}})
    path.write_text(text)
    backend = LocalFileBackend(path, refresh_interval=0)
    with pytest.raises(BackendError, match="version 99"), under_maintenance(backend=backend):
        pytest.fail("the body must not run")
    assert path.read_text() == text
    assert not store_of(backend).root.holding()


def test_newer_version_with_a_detail_we_do_not_know_is_on_and_says_to_upgrade(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # On is on: the unknown mode is read as the strictest one, with a warning to upgrade.
    path = tmp_path / "m.json"
    path.write_text('{"version": 3, "active": true, "mode": "emergency"}')
    with caplog.at_level("WARNING", logger="maintguard"):
        state = LocalFileBackend(path)._read_scopes_blocking([None])[None]
    assert (state.explicit.active, state.explicit.mode) == (True, Mode.FULL)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "'mode'" in warning and "'emergency'" in warning
    assert "format version 3: upgrade maintguard" in warning


@pytest.mark.parametrize("version", ['"2"', "0", "-1", "true", "1.5", "null"])
def test_version_that_is_not_a_positive_integer_is_corrupt(tmp_path: Path, version: str) -> None:
    path = tmp_path / "m.json"
    content = f'{{"version": {version}, "active": true}}'.encode()
    path.write_bytes(content)
    backend = LocalFileBackend(path)
    with pytest.raises(BackendError, match=r"does not hold a maintenance state.*'version'"):
        backend._read_scopes_blocking([None])
    with pytest.raises(BackendError, match="does not hold a maintenance state"):
        backend._update_blocking(None, _add(_hold("h")))
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1]", b'{"holds": "x"}', b'{"plain": "yes"}', b"maybe", b"\xff\xfe"],
)
def test_corrupt_file_is_refused_and_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(content)
    backend = LocalFileBackend(path)
    with pytest.raises(BackendError, match="Fix the file or delete it"):
        backend._read_scopes_blocking([None])
    with pytest.raises(BackendError, match="Fix the file or delete it"):
        backend._update_blocking(None, lambda s: StoredState())
    assert path.read_bytes() == content


@pytest.mark.parametrize("enter", ["sync", "async"])
def test_a_hold_refused_by_a_corrupt_file_warns_of_no_record_left_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, enter: str
) -> None:
    # The entry's own BackendError says it all: no "could not remove ... record" warning
    # about a record that was never written (it once logged that, in the CLI too).
    path = tmp_path / "m.json"
    path.write_text("{not json")
    hold = maintguard.under_maintenance(backend=LocalFileBackend(path))
    with caplog.at_level("INFO", logger="maintguard"), pytest.raises(BackendError):
        if enter == "sync":
            hold.__enter__()
        else:
            anyio.run(hold.__aenter__)
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    assert any("after a failed entry" in r.getMessage() for r in caplog.records)
    assert not maintguard.sync.get_maintenance_mode(LocalFileBackend(tmp_path / "other.json"))


def test_missing_directory_is_a_clear_write_error(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "missing" / "m.json")
    assert backend._read_scopes_blocking([None])[None] == StoredState()
    with pytest.raises(BackendError, match=r"does not exist. Create it \(mkdir -p .*missing\)"):
        backend._update_blocking(None, _explicit(active=True))


# -- unknown fields ------------------------------------------------------------------------


def test_a_cordons_unknown_fields_survive_writes(tmp_path: Path) -> None:
    from maintguard._state import Cordon, cordon_to_dict
    from maintguard.backends import SetExplicit
    from maintguard.backends._file import _CORDON_KEYS

    path = tmp_path / "m.json"
    cordon = {"host": "web-1", "since": NOW.isoformat(), "ticket": "OPS-7", "until": {"x": 1}}
    path.write_text(json.dumps({"version": 1, "active": False, "holds": [], "cordons": [cordon]}))
    LocalFileBackend(path)._update_blocking(None, SetExplicit(ExplicitState(active=True), NOW))
    [kept] = json.loads(path.read_text())["cordons"]
    assert (kept["host"], kept["ticket"], kept["until"]) == ("web-1", "OPS-7", {"x": 1})
    draining = Cordon("h", NOW, "me", "r", "token", NOW)
    assert set(cordon_to_dict(draining)) <= _CORDON_KEYS  # every field written is known


def test_a_windows_unknown_fields_survive_writes(tmp_path: Path) -> None:
    # Found: windows were rewritten from their known fields only (holds keep theirs).
    from maintguard._state import window_to_dict
    from maintguard._windows import window as new_window
    from maintguard.backends import SetExplicit
    from maintguard.backends._file import _WINDOW_KEYS

    path = tmp_path / "m.json"
    window = {
        "id": "w1",
        "start": (NOW + timedelta(days=1)).isoformat(),
        "end": (NOW + timedelta(days=1, hours=1)).isoformat(),
        "ticket": "OPS-1234",
        "notify": ["#ops"],
    }
    path.write_text(json.dumps({"version": 2, "active": False, "holds": [], "windows": [window]}))
    write = SetExplicit(ExplicitState(active=True, reason="x"), NOW)
    LocalFileBackend(path)._update_blocking(None, write)
    [kept] = json.loads(path.read_text())["windows"]
    assert (kept["ticket"], kept["notify"], kept["id"]) == ("OPS-1234", ["#ops"], "w1")
    # Every field this version writes is one it knows (so none is kept twice).
    recurring = new_window(
        start=None, end=None, duration=60, every="0 3 * * *", tz="UTC", announce=5,
        reason="r", retry_after=1, mode="full", by="me", now=NOW,
    )  # fmt: skip
    assert set(window_to_dict(recurring)) <= _WINDOW_KEYS


def test_unknown_fields_survive_writes(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    hold = {
        "id": "theirs",
        "owner": "other",
        "host": "h",
        "pid": 1,
        "acquired": NOW.isoformat(),
        "started": NOW.isoformat(),
        "expires": (NOW + timedelta(hours=1)).isoformat(),
        "priority": [1, 2],
    }
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "active": False,
                "note": {"by": "ops"},
                "holds": [hold],
                "scopes": {
                    "billing": {"active": True, "ticket": "OPS-1"},
                    "empty": {"colour": "red"},
                },
            }
        )
    )
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("mine")))
    backend._update_blocking("billing", _explicit(active=True, reason="migrating"))
    backend._update_blocking("new", _add(_hold("n")))

    document = json.loads(path.read_text())
    assert document["note"] == {"by": "ops"}
    assert [h["id"] for h in document["holds"]] == ["theirs", "mine"]
    assert document["holds"][0]["priority"] == [1, 2]
    assert "priority" not in document["holds"][1]
    assert document["scopes"]["billing"]["ticket"] == "OPS-1"
    assert document["scopes"]["billing"]["reason"] == "migrating"
    assert document["scopes"]["empty"]["colour"] == "red"  # kept although nothing else is
    assert [h["id"] for h in document["scopes"]["new"]["holds"]] == ["n"]

    # A rewrite of a hold record (a renewed lease) keeps its unknown fields too.
    def renew(s: StoredState) -> StoredState:
        renewed = tuple(
            dataclasses.replace(h, expires=NOW) if h.id == "theirs" else h for h in s.holds
        )
        return StoredState(s.explicit, renewed)

    backend._update_blocking(None, renew)
    document = json.loads(path.read_text())
    assert document["holds"][0]["priority"] == [1, 2]
    assert document["holds"][0]["expires"] == NOW.isoformat()


# -- permissions --------------------------------------------------------------------------


def test_permissions_of_the_file_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("0")
    path.chmod(0o640)
    LocalFileBackend(path)._update_blocking(None, _add(_hold("h")))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.processes
def test_new_file_is_readable_by_everyone_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    _run(
        "import os, sys\n"
        "os.umask(0o077)\n"
        "from maintguard.backends import LocalFileBackend\n"
        "from maintguard._state import ExplicitState, StoredState\n"
        "LocalFileBackend(sys.argv[1])._update_blocking(\n"
        "    None, lambda s: StoredState(ExplicitState(active=True))\n"
        ")\n",
        str(path),
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- many writers -------------------------------------------------------------------------

_WORKER = """
import os, sys, time
from datetime import datetime, timedelta, timezone
from maintguard.backends import LocalFileBackend
from maintguard._state import HoldRecord, StoredState

path, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
backend = LocalFileBackend(path)
while not os.path.exists(go):
    time.sleep(0.001)
now = datetime.now(timezone.utc)
for i in range(count):
    record = HoldRecord(
        id=f"{worker}-{i}", owner="w", host="h", pid=os.getpid(), acquired=now,
        started=now, expires=now + timedelta(hours=1),
    )
    backend._update_blocking(None, lambda s: StoredState(s.explicit, (*s.holds, record)))
"""


@pytest.mark.slow
@pytest.mark.processes
def test_concurrent_processes_lose_no_update_and_no_reader_sees_a_torn_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.json"
    go = tmp_path / "go"
    workers, per_worker = 4, 50
    env = {**os.environ, "PYTHONPATH": ROOT}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(w), str(per_worker), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    reader = LocalFileBackend(path)
    reads, seen = 0, 0
    try:
        go.touch()
        while any(p.poll() is None for p in procs):
            # A torn document would raise BackendError here (not JSON, not a state).
            holds = reader._read_scopes_blocking([None])[None].holds
            assert len(holds) >= seen  # records are only added: never a step back
            seen = len(holds)
            reads += 1
    finally:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    holds = reader._read_scopes_blocking([None])[None].holds
    assert len(holds) == workers * per_worker
    assert {h.id for h in holds} == {f"{w}-{i}" for w in range(workers) for i in range(per_worker)}
    assert reads > 0
    assert _listing(tmp_path) == {"m.json", "m.json.lock", "go"}  # no temporary file left


def test_threads_sharing_one_backend_lose_no_update(tmp_path: Path) -> None:
    backend = LocalFileBackend(tmp_path / "m.json")

    def work(n: int) -> None:
        for i in range(20):

            def slow_add(s: StoredState, i: int = i) -> StoredState:
                time.sleep(0.0005)
                return _add(_hold(f"{n}-{i}"))(s)

            backend._update_blocking(None, slow_add)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(backend._read_scopes_blocking([None])[None].holds) == 100


@pytest.mark.processes
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_lock_of_its_own(tmp_path: Path) -> None:
    # The parent has its lock file open (and a thread inside a write) when it forks: the
    # child must neither share the parent's lock nor wait for the parent's thread.
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("before")))
    inside, leave = threading.Event(), threading.Event()

    def held(s: StoredState) -> StoredState:
        inside.set()
        leave.wait(10)
        return _add(_hold("parent-thread"))(s)

    thread = threading.Thread(target=backend._update_blocking, args=(None, held))
    thread.start()
    assert inside.wait(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, on purpose
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for i in range(20):

                def slow_add(s: StoredState, i: int = i) -> StoredState:
                    time.sleep(0.001)
                    return _add(_hold(f"child-{i}"))(s)

                backend._update_blocking(None, slow_add)
            code = 0
        finally:
            os._exit(code)
    time.sleep(0.05)
    leave.set()
    thread.join(10)
    for i in range(20):

        def slow_add(s: StoredState, i: int = i) -> StoredState:
            time.sleep(0.001)
            return _add(_hold(f"parent-{i}"))(s)

        backend._update_blocking(None, slow_add)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the lock")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    holds = {h.id for h in backend._read_scopes_blocking([None])[None].holds}
    expected = {"before", "parent-thread"}
    expected |= {f"child-{i}" for i in range(20)} | {f"parent-{i}" for i in range(20)}
    assert holds == expected


def test_a_deleted_lock_file_is_opened_again(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    lock = tmp_path / "m.json.lock"
    backend = LocalFileBackend(path)
    backend._update_blocking(None, _add(_hold("a")))
    lock.unlink()
    other = LocalFileBackend(path)
    other._update_blocking(None, _add(_hold("b")))  # creates a new lock file
    # The first backend must lock the new file, not the deleted one it still has open.
    inside, leave = threading.Event(), threading.Event()

    def held(s: StoredState) -> StoredState:
        inside.set()
        leave.wait(10)
        return _add(_hold("c"))(s)

    thread = threading.Thread(target=backend._update_blocking, args=(None, held))
    thread.start()
    assert inside.wait(10)
    entered = threading.Event()

    def other_write() -> None:
        other._update_blocking(None, _add(_hold("d")))
        entered.set()

    second = threading.Thread(target=other_write)
    second.start()
    assert not entered.wait(0.2)  # excluded: it waits for the first backend's lock
    leave.set()
    thread.join(10)
    second.join(10)
    assert {h.id for h in other._read_scopes_blocking([None])[None].holds} == {"a", "b", "c", "d"}
