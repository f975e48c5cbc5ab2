"""The ``maintguard`` command through real processes, on a file store in a temp folder:
every command and flag, exit codes, output, the ``--json`` schema, bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from datetime import time as daytime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import maintguard
from maintguard import sync
from maintguard.backends import LocalFileBackend
from tests.cli import JOB_SCRIPT, ROOT, Result, Run, environment, one_line, store_state

# A process that holds maintenance (on a scope: argv[4]) until its flag file is deleted.
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from maintguard import under_maintenance
from maintguard.backends import LocalFileBackend
backend = LocalFileBackend(sys.argv[1], lease_ttl=float(sys.argv[3]))
with under_maintenance(backend=backend, scope=sys.argv[4] or None, reason=sys.argv[5]):
    Path(sys.argv[2]).write_text("entered")
    while Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""


@pytest.fixture
def holder(state: Path, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Another process that holds maintenance on the store until its flag file is deleted."""
    procs: list[subprocess.Popen[str]] = []

    def start(
        lease: float = 30.0, *, scope: str = "", reason: str = "nightly reindex"
    ) -> subprocess.Popen[str]:
        flag = tmp_path / f"holding-{len(procs)}"
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(state), str(flag), str(lease), scope, reason],
            env=environment(),
            text=True,
        )
        procs.append(proc)
        wait_for(flag.exists, proc)
        proc.flag = flag  # type: ignore[attr-defined]
        return proc

    yield start
    for proc in procs:
        proc.flag.unlink(missing_ok=True)  # type: ignore[attr-defined]
        proc.wait(20)


HOST = socket.gethostname()


def hold_record(**fields: Any) -> dict[str, Any]:
    record = {
        "id": "elsewhere:1:abc",
        "owner": "a job",
        "host": "elsewhere",
        "pid": 4242,
        "acquired": "2026-01-01T00:00:00+00:00",
        "started": "2026-01-01T00:00:00+00:00",
        "expires": None,  # no lease: lives until removed
        "reason": "hostile",
        "mode": "full",
    }
    record.update(fields)
    return record


def write_store(state: Path, *holds: dict[str, Any], **top: Any) -> None:
    document = {"version": 1, "active": False, "holds": list(holds), **top}
    state.write_text(json.dumps(document))


# -- basics ---------------------------------------------------------------------------


def test_version_and_help(mg: Run) -> None:
    result = mg("--version")
    assert (result.code, result.out.strip()) == (0, f"maintguard {maintguard.__version__}")
    result = mg("--help")
    assert result.code == 0
    for command in ("on", "off", "status", "run", "schedule"):
        assert command in result.out
    assert "exit" in mg("status", "--help").out.lower()


@pytest.mark.processes
def test_the_console_script_is_installed_and_is_the_same_command(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("maintguard")
    assert script.exists(), "pip install -e . installs the maintguard command"
    result = subprocess.run(
        [str(script), "status", "--backend", f"file:{tmp_path / 's.json'}"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("maintenance is off")


def test_no_command_says_what_to_do(mg: Run) -> None:
    result = mg()
    assert result.code == 2
    said = one_line(result)
    assert "on, off, status, run, schedule, history, cordon or uncordon" in said
    # Every command the parser knows is named (a new one cannot be left out again).
    from maintguard._cli import _COMMANDS

    assert all(name in said for name in _COMMANDS)


# -- on / status / off ------------------------------------------------------------------


@pytest.mark.slow
def test_on_with_details_then_status_and_json(mg: Run, state: Path) -> None:
    before = datetime.now(timezone.utc)
    result = mg("on", "--reason", "DB upgrade", "--retry-after", "10m", "--for", "30m")
    assert result.code == 0, result
    assert result.out.startswith("maintenance is ON — LocalFileBackend(")
    assert "reason:      DB upgrade" in result.out
    assert "retry after: 600 s" in result.out
    assert "(in 30 min)" in result.out

    status = mg("status")
    assert status.code == 1
    assert "until:" in status.out and "UTC" in status.out
    assert "on through:  the operator's switch" in status.out

    data = mg("status", "--json").json()
    assert mg("status", "--json").code == 1
    assert data["active"] is True and data["phase"] == "on" and data["mode"] == "full"
    assert data["reason"] == "DB upgrade" and data["retry_after"] == 600
    assert data["holds"] == [] and data["explicit"] is True and data["scope"] is None
    since = datetime.fromisoformat(data["since"])
    until = datetime.fromisoformat(data["until"])
    assert since.utcoffset() == until.utcoffset() == timedelta(0)  # ISO 8601, UTC
    assert before - timedelta(seconds=1) <= since <= datetime.now(timezone.utc)
    assert abs((until - since) - timedelta(minutes=30)) < timedelta(seconds=5)
    assert store_state(state).reason == "DB upgrade"  # what an app reading the file sees


def test_on_again_updates_the_details_and_keeps_since(mg: Run) -> None:
    assert mg("on", "--reason", "first").code == 0
    first = mg("status", "--json").json()
    assert mg("on", "--reason", "second", "--mode", "read-only").code == 0
    second = mg("status", "--json").json()
    assert second["reason"] == "second" and second["mode"] == "read_only"
    assert second["since"] == first["since"]
    assert second["until"] is None


DETAILS = ("reason", "retry_after", "until", "mode", "since")


@pytest.mark.slow
@pytest.mark.parametrize("scope", [None, "billing"])
def test_on_again_changes_only_the_details_it_names(mg: Run, scope: str | None) -> None:
    where = [] if scope is None else ["--scope", scope]

    def on(*args: str) -> dict[str, Any]:
        result = mg("on", *args, *where)
        assert result.code == 0, result
        data = mg("status", "--json", *where).json()
        return {name: data[name] for name in DETAILS}

    now = on("--reason", "DB upgrade", "--for", "30m")
    assert now["reason"] == "DB upgrade" and now["until"] is not None
    steps: list[tuple[list[str], dict[str, Any]]] = [
        (["--retry-after", "5m"], {"retry_after": 300}),  # the reported loss of details
        (["--mode", "read-only"], {"mode": "read_only"}),
        (["--reason", "DB upgrade, part 2"], {"reason": "DB upgrade, part 2"}),
        (["--until", "2099-01-02T03:04:05Z"], {"until": "2099-01-02T03:04:05+00:00"}),
        (["--no-until"], {"until": None}),
        (["--for", "2h"], {}),  # an end again (checked below)
        (["--mode", "full"], {"mode": "full"}),
        (["--no-retry-after"], {"retry_after": None}),
        (["--reason", ""], {"reason": None}),
        ([], {}),  # plain `on` again: nothing changes
    ]
    for args, changed in steps:
        before = now
        now = on(*args)
        if args == ["--for", "2h"]:
            changed = {"until": now["until"]}
            end = datetime.fromisoformat(now["until"]) - datetime.now(timezone.utc)
            assert timedelta(hours=2) - timedelta(seconds=30) < end <= timedelta(hours=2)
        assert now == {**before, **changed}, args
    if scope is not None:  # the global scope's own state was never touched
        assert mg("status", "--json").json()["explicit"] is False


@pytest.mark.slow
def test_on_after_off_or_after_its_end_starts_afresh(mg: Run) -> None:
    assert (
        mg("on", "--reason", "DB upgrade", "--retry-after", "5m", "--mode", "read-only").code == 0
    )
    first = mg("status", "--json").json()
    assert mg("off").code == 0
    assert mg("on", "--for", "1s").code == 0
    again = mg("status", "--json").json()
    assert (again["reason"], again["retry_after"], again["mode"]) == (None, None, "full")
    assert again["since"] != first["since"]
    time.sleep(1.2)  # its end passes: what it said is over
    assert mg("on", "--reason", "next").code == 0
    last = mg("status", "--json").json()
    assert (last["reason"], last["until"]) == ("next", None)
    assert last["since"] != again["since"]


def test_run_with_a_blank_reason_holds_without_one(mg: Run) -> None:
    assert mg("on", "--reason", "DB upgrade").code == 0
    inner = f"{sys.executable} -m maintguard status --json"
    result = mg("run", "--reason", " ", "--", "sh", "-c", inner)
    assert result.code == 1, result
    data = json.loads(result.out)
    assert data["holds"][0]["reason"] is None and data["reason"] == "DB upgrade"


# Fixed in 40dfdf4: set_maintenance_mode checks retry_after,
# until, mode and scope but not reason: reason=123 is written to the file as a number, after
# which every reader (apps, `maintguard status`, `maintguard off`) refuses the file as 'not
# a maintenance state' and never overwrites it — one bad call bricks the store (holds raise
# ConfigurationError for the same mistake)
def test_a_non_string_reason_is_refused_and_never_bricks_the_file(mg: Run, state: Path) -> None:
    backend = LocalFileBackend(state, refresh_interval=0)
    with pytest.raises(maintguard.ConfigurationError, match="reason"):
        sync.set_maintenance_mode(True, backend, reason=123)  # type: ignore[arg-type]
    assert mg("status").code in (0, 1)
    assert mg("off").code == 0


@pytest.mark.parametrize(
    ("given", "tz", "expected"),
    [
        ("2099-01-02T03:04:05Z", "UTC", "2099-01-02T03:04:05+00:00"),
        ("2099-01-02T03:04:05+02:00", "UTC", "2099-01-02T01:04:05+00:00"),
        ("2099-01-02T03:04", "Asia/Tokyo", "2099-01-01T18:04:00+00:00"),  # local time
    ],
)
def test_on_until_takes_iso_times(mg: Run, state: Path, given: str, tz: str, expected: str) -> None:
    env = environment(MAINTGUARD_BACKEND=f"file:{state}", TZ=tz)
    result = mg("on", "--until", given, env=env)
    assert result.code == 0, result
    assert mg("status", "--json").json()["until"] == expected
    if tz == "Asia/Tokyo":  # shown in the operator's local time, zone named
        assert "2099-01-02 03:04:00 JST" in mg("status", env=env).out


def test_status_shows_times_in_local_time_and_relative(mg: Run, state: Path) -> None:
    env = environment(MAINTGUARD_BACKEND=f"file:{state}", TZ="America/New_York")
    assert mg("on", "--for", "2h", env=env).code == 0
    out = mg("status", env=env).out
    since = datetime.fromisoformat(mg("status", "--json").json()["since"])
    local = since.astimezone(timezone(timedelta(hours=-5)))  # EST in December
    assert f"since:       {local:%Y-%m-%d %H:%M}" in out
    assert " EST (" in out and "s ago)" in out
    assert "(in 2 h)" in out


def test_scopes_and_modes(mg: Run) -> None:
    assert mg("on", "--scope", "billing", "--mode", "read_only").code == 0
    assert mg("status").code == 0  # the global scope stays off
    billing = mg("status", "--scope", "billing")
    assert billing.code == 1 and "(scope billing)" in billing.out
    assert "mode:        read-only" in billing.out
    data = mg("status", "--scope", "billing", "--json").json()
    assert (data["scope"], data["mode"]) == ("billing", "read_only")
    assert mg("off", "--scope", "billing").code == 0
    assert mg("status", "--scope", "billing").code == 0


def test_a_scope_stays_on_while_the_global_scope_is_on_and_off_says_so(mg: Run) -> None:
    assert mg("on").code == 0
    assert mg("on", "--scope", "billing").code == 0
    result = mg("off", "--scope", "billing")
    assert result.code == 1
    assert "the global scope is switched on: `maintguard off` turns it off" in result.err
    assert mg("off").code == 0
    assert mg("status", "--scope", "billing").code == 0


def test_off_when_off_is_fine(mg: Run) -> None:
    result = mg("off")
    assert result.code == 0 and result.out.startswith("maintenance is off"), result


def test_status_exit_3_when_the_state_cannot_be_read(mg: Run, state: Path) -> None:
    state.write_text("{not json")
    result = mg("status")
    assert result.code == 3
    assert "does not hold a maintenance state" in one_line(result)
    assert "Fix the file or delete it" in result.err
    result = mg("status", "--json")
    assert (result.code, result.out) == (3, "")
    result = mg("status", "--backend", "redis://127.0.0.1:1/0")
    assert result.code == 3
    assert "redis://127.0.0.1:1/0" in one_line(result)
    result = mg("on", "--backend", "redis://:hunter2@127.0.0.1:1/0")
    assert result.code == 3 and "hunter2" not in result.err
    assert state.read_text() == "{not json"  # never overwritten


def test_a_store_that_cannot_be_written_is_exit_3(mg: Run, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the store's folder should be: no one can write
    result = mg("off", "--backend", f"file:{blocker / 'state.json'}")
    assert result.code == 3, result
    assert "cannot write the maintenance state" in one_line(result)
    result = mg("on", "--backend", f"file:{blocker / 'state.json'}")  # reads what to keep first
    assert result.code == 3, result
    assert f"maintenance state from {blocker / 'state.json'}" in one_line(result)


def test_a_store_in_a_missing_folder_is_exit_3_with_the_path(mg: Run, tmp_path: Path) -> None:
    result = mg("on", "--backend", f"file:{tmp_path / 'nowhere' / 'state.json'}")
    assert result.code == 3
    assert "nowhere" in one_line(result)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "RecursionError"),
        (b'{"version": 1, "active": 1}', "bool"),
        (b'\xef\xbb\xbf{"version": 1, "active": true}', "BOM"),
        (b"\xff\xfe\x00garbage", "UTF-8"),
        (b'{"version": 1, "holds": [{"id": "x", "acquired": "yesterday", "started": "x"}]}', "x"),
        (b'{"version": 1, "scopes": {"billing": {"active": "yes"}}}', "active"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_hostile_state_files_are_exit_3_one_line_and_never_overwritten(
    mg: Run, state: Path, tmp_path: Path, content: bytes, why: str
) -> None:
    state.write_bytes(content)
    for args in (["status"], ["status", "--json"], ["off", "--force"]):
        result = mg(*args)
        assert result.code == 3, (args, result)
        one_line(result)
        assert result.out == ""
    ran = tmp_path / "ran"
    result = mg("run", "--", "touch", str(ran))
    assert result.code == 125, result
    assert not ran.exists()
    assert state.read_bytes() == content


@pytest.mark.parametrize(
    "retry_after", [b"NaN", b"9" * 400, b"-30", b'"soon"'], ids=["nan", "huge", "negative", "text"]
)
def test_a_state_on_with_a_bad_detail_stays_on_and_is_not_rewritten_by_reading(
    mg: Run, state: Path, retry_after: bytes
) -> None:
    # A hand-edited detail no longer turns a state that says on into one read as off.
    content = b'{"version": 1, "active": true, "reason": "upgrade", "retry_after": %s}'
    state.write_bytes(content % retry_after)
    result = mg("status", "--json")
    assert result.code == 1, result
    assert result.json()["active"] is True and result.json()["retry_after"] is None
    assert result.json()["reason"] == "upgrade"
    assert "retry_after" in result.err
    assert state.read_bytes() == content % retry_after


def test_a_state_path_that_is_a_directory_is_exit_3(mg: Run, tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    env = environment(MAINTGUARD_BACKEND=f"file:{folder}")
    for args, code in ((["status"], 3), (["on"], 3), (["off"], 3), (["run", "--", "true"], 125)):
        result = mg(*args, env=env)
        assert result.code == code, (args, result)
        line = one_line(result)
        assert "directory" in line or "not a regular file" in line, line
    assert folder.is_dir() and not any(folder.iterdir())


def test_a_symlink_loop_is_exit_3(mg: Run, tmp_path: Path) -> None:
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    env = environment(MAINTGUARD_BACKEND=f"file:{loop}")
    for args, code in ((["status"], 3), (["on"], 3), (["run", "--", "true"], 125)):
        result = mg(*args, env=env)
        assert result.code == code, (args, result)
        one_line(result)


# Fixed in 40dfdf4: a state path that is a FIFO (or any file
# that never ends, such as /dev/zero, which also eats memory) makes LocalFileBackend._read
# block in open(2) forever: `maintguard status` hangs instead of exiting 3 (not a regular
# file)
def test_a_state_path_that_is_a_fifo_is_exit_3_not_a_hang(mg: Run, tmp_path: Path) -> None:
    fifo = tmp_path / "state.fifo"
    os.mkfifo(fifo)
    result = mg("status", env=environment(MAINTGUARD_BACKEND=f"file:{fifo}"), timeout=4)
    assert result.code == 3, result


def test_status_json_is_valid_json_for_odd_stored_values(mg: Run, state: Path) -> None:
    write_store(
        state,
        hold_record(id="a", pid=-5, retry_after=1e308, owner="\x1b[31m\n\"quoted\"\\"),
        hold_record(id="b", pid=0, retry_after=-0.0, reason="\u2028\u0000",
                    expires="9999-12-31T23:59:59+00:00"),
        active=True, reason="r\u00e9", retry_after="9999-12-31T23:59:59+00:00",
        until="9999-12-31T23:59:59+00:00", since="0001-01-01T00:00:00+00:00",
    )  # fmt: skip
    result = mg("status", "--json")
    assert result.code == 1, result
    for bad in ("NaN", "Infinity"):
        assert bad not in result.out
    data = json.loads(result.out)  # strict JSON: the parser would choke on bare control codes
    json.loads(result.out, parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert data["retry_after"] in (1e308, 0.0)  # a hold's, the newest first
    assert data["since"] == "0001-01-01T00:00:00+00:00"
    assert {h["id"] for h in data["holds"]} == {"a", "b"}
    assert {h["pid"] for h in data["holds"]} == {-5, 0}


def test_status_with_negative_and_zero_pids_on_this_host(mg: Run, state: Path) -> None:
    write_store(
        state, hold_record(id="a", host=HOST, pid=-1), hold_record(id="b", host=HOST, pid=0)
    )
    result = mg("status")
    assert result.code == 1, result
    assert "pid -1" in result.out and "pid 0" in result.out


# Fixed in 40dfdf4: a hold record of this host with a pid beyond
# a C long makes show._gone() call os.kill(pid, 0), which raises OverflowError (not
# OSError): `status` prints 'unexpected OverflowError ... (please report it)' and exits 3
# although the store was read (--json shows it fine)
def test_status_with_a_huge_pid_on_this_host(mg: Run, state: Path) -> None:
    write_store(state, hold_record(host=HOST, pid=10**30))
    assert mg("status", "--json").code == 1
    result = mg("status")
    assert result.code == 1, result
    assert f"pid {10**30}" in result.out


# Fixed in 40dfdf4: status prints owners and reasons from the
# store verbatim: a record's ESC/BEL sequences reach the operator's terminal (retitle it,
# clear the screen, fake colours) and a newline forges extra lines in the hold list. Anyone
# who can write the store (any app server on a Redis store, any `maintguard run` argv)
# controls the output
def test_status_does_not_send_stored_terminal_escapes_to_the_terminal(mg: Run, state: Path) -> None:
    owner = "job\x1b]0;pwned\x07\x1b[2J\n    - forged: host ok, pid 1, since then, no lease"
    write_store(state, hold_record(owner=owner, reason="\x1b[31mred\x1b[0m"))
    result = mg("status")
    assert result.code == 1, result
    assert "\x1b" not in result.out and "\x07" not in result.out
    holds = [line for line in result.out.splitlines() if line.startswith("    - ")]
    assert len(holds) == 1, result.out  # one record, one line
    result = mg("off", "--force")
    assert "\x1b" not in result.out + result.err


# Fixed in 40dfdf4: status writes '—' (and stored text) through
# a strict encoder: with a stdout that is not UTF-8 (a Latin-1 or ASCII locale; here
# PYTHONIOENCODING) the UnicodeEncodeError is swallowed by cli._write, which then points
# stdout at /dev/null: `maintguard status` prints NOTHING at all (exit code right, output
# gone)
@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_status_prints_in_a_locale_that_is_not_utf8(mg: Run, encoding: str) -> None:
    result = mg("status", env=environment(PYTHONIOENCODING=encoding))  # the env default
    assert result.code == 0, result
    assert "maintenance is off" in result.out, result


def test_a_reason_with_odd_unicode_round_trips_through_json(mg: Run) -> None:
    reason = "caf\u00e9 \u2603 \U0001f6a7 \u202eevil"
    assert mg("on", "--reason", reason).code == 0
    assert mg("status", "--json").json()["reason"] == reason


def test_a_huge_state_file_is_read(mg: Run, state: Path) -> None:
    holds = [hold_record(id=f"h{i}", owner="o" * 200) for i in range(3000)]
    write_store(state, *holds)
    result = mg("status", "--json")
    assert result.code == 1 and len(result.json()["holds"]) == 3000
    write_store(state, *holds[:150])  # (--force writes once per hold: keep it short)
    result = mg("off", "--force")
    assert result.code == 0, result
    assert "removed 150 holds" in result.err
    assert store_state(state).holds == 0


def test_off_refuses_while_another_process_holds_and_force_removes(
    mg: Run, state: Path, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    held_since = time.monotonic()
    proc = holder(lease=60)
    assert mg("on", "--reason", "operator").code == 0
    result = mg("off")
    assert result.code == 1, result
    assert "maintenance stays on: 1 hold is live" in result.err
    assert "`maintguard off --force` removes it" in result.err
    line = next(x for x in result.out.splitlines() if x.startswith("    - "))
    assert f"pid {proc.pid}" in line and "host " in line and "since " in line
    left = int(line.split("lease ")[1].split(" s left")[0])  # the lease counts down since
    assert 60 - (time.monotonic() - held_since) - 1 <= left <= 60, line  # the holder began
    assert "<string>:7: " in line  # the owner: where the hold was made (python -c, line 7)
    data = mg("status", "--json").json()
    assert data["explicit"] is False and data["reason"] == "nightly reindex"  # left alone
    (hold,) = data["holds"]
    assert hold["pid"] == proc.pid and hold["reason"] == "nightly reindex"
    assert set(hold) >= {"owner", "host", "pid", "started", "expires"}
    assert datetime.fromisoformat(hold["expires"]) > datetime.fromisoformat(hold["started"])

    result = mg("off", "--force")
    assert result.code == 0, result
    assert "removed 1 hold; a holder that still runs writes its hold again" in result.err
    assert f"pid {proc.pid}" in result.err + result.out
    # The holder still runs: it sees its record gone and writes it again.
    deadline = time.monotonic() + 10
    while store_state(state).holds == 0:
        assert time.monotonic() < deadline, "the live holder lost its hold"
        time.sleep(0.05)
    assert mg("status").code == 1


def test_off_force_removes_a_dead_holders_record_at_once(
    mg: Run, state: Path, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    proc = holder(lease=300)
    proc.kill()
    proc.wait(10)
    status = mg("status")
    assert status.code == 1  # the record lasts until its lease ends
    assert "no such process on this host now" in status.out
    assert mg("off").code == 1
    assert mg("off", "--force").code == 0
    assert mg("status").code == 0


def test_off_force_on_a_scope_leaves_global_holds_and_global_off_leaves_scoped_ones(
    mg: Run, state: Path, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    everywhere = holder(reason="held by ")  # a global hold, which a named scope also shows
    in_billing = holder(scope="billing", reason="held by billing")
    in_shop = holder(scope="shop", reason="held by shop")
    billing = mg("off", "--scope", "billing", "--force")
    assert billing.code == 1, billing  # the global hold keeps billing on, and stays
    assert "removed 1 hold" in billing.err
    removed = billing.out.split("maintenance is ON")[0]  # the removed holds' lines come first
    assert f"pid {in_billing.pid}" in removed and f"pid {everywhere.pid}" not in removed
    assert store_state(state).holds == 1  # the global hold is still there
    assert store_state(state, "shop").holds == 2  # shop's own and the global one
    result = mg("off", "--force")
    assert "removed 1 hold" in result.err, result
    removed = result.out.split("maintenance is")[0]
    assert f"pid {everywhere.pid}" in removed and f"pid {in_shop.pid}" not in removed
    # The global off left shop's own hold (the live global holder may be back already).
    assert in_shop.pid in {h.pid for h in store_state(state, "shop").holders}


def test_off_on_a_scope_held_through_the_global_scope_says_why(
    mg: Run, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    holder(reason="held by ")
    result = mg("off", "--scope", "billing")
    assert result.code == 1, result
    assert "maintenance stays on: 1 hold is live" in result.err
    assert "held by " in result.out
    result = mg("off")
    assert result.code == 1 and "`maintguard off --force` removes it" in result.err


def test_off_force_when_nothing_holds_is_quiet(mg: Run) -> None:
    assert mg("on").code == 0
    result = mg("off", "--force")
    assert result.code == 0, result
    assert "removed" not in result.err
    assert result.out.startswith("maintenance is off")


def test_off_force_removes_hostile_records_with_no_lease(mg: Run, state: Path) -> None:
    write_store(state, hold_record(id="a"), hold_record(id="b", host=HOST, pid=10**6 + 7))
    assert mg("off").code == 1
    result = mg("off", "--force")
    assert result.code == 0 and "removed 2 holds" in result.err, result
    assert store_state(state).holds == 0


# -- a store no one watches --------------------------------------------------------------

UNWATCHED = "no live process watches "


@pytest.mark.slow
def test_a_store_no_live_process_watches_is_said_on_stderr(
    mg: Run, state: Path, tmp_path: Path, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    result = mg("status")  # a wrong path: "off", and nothing else said before
    assert (result.code, result.out) == (0, f"maintenance is off — LocalFileBackend({state})\n")
    (line,) = result.err.splitlines()
    assert line.startswith(f"maintguard: {UNWATCHED}file:{state} ")
    assert "this is not its store; check the path" in line and "MAINTGUARD_BACKEND" in line
    result = mg("status", "--json")  # stdout stays one JSON object
    assert result.code == 0 and result.json()["active"] is False
    assert UNWATCHED in result.err
    for args in (["on"], ["off"]):  # switching a store no one watches switches nothing
        result = mg(*args)
        assert result.code == 0 and UNWATCHED in result.err, result

    flag = tmp_path / "job-running"  # a guarded job watches the store: its presence record
    job = subprocess.Popen(
        [sys.executable, "-c", JOB_SCRIPT, str(state), str(flag)], env=environment()
    )
    try:
        wait_for(flag.exists, job)
        for args in (["status"], ["status", "--json"], ["on"], ["off"]):
            result = mg(*args)
            assert UNWATCHED not in result.err, (args, result)
    finally:
        flag.unlink(missing_ok=True)
        assert job.wait(20) == 0
    assert UNWATCHED in mg("status").err  # it left: its record went with it

    holder()  # a live hold record: someone uses the store
    result = mg("status")
    assert result.code == 1 and UNWATCHED not in result.err, result


@pytest.mark.redis
def test_a_redis_store_no_live_process_watches_is_said_with_its_prefix(mg: Run) -> None:
    from tests.stores import REDIS_URL, redis_prefix

    url = f"{REDIS_URL}?key_prefix={redis_prefix()}"
    result = mg("status", "--backend", url, env=environment())
    assert result.code == 0, result
    assert f"{UNWATCHED}{url} " in result.err and "key_prefix" in result.err


def test_status_with_no_store_chosen_says_so(mg: Run) -> None:
    result = mg("status", env=environment())
    assert result.code == 0
    line = one_line(result)  # (a warning, one line too)
    assert "no store chosen" in line and "MAINTGUARD_MODE of this shell" in line
    assert "--backend file:" in line and "MAINTGUARD_BACKEND" in line
    result = mg("status", "--backend", "env:APP_MODE", env=environment(APP_MODE="on"))
    assert (result.code, result.err) == (1, "")  # a variable named on purpose: as asked


# -- the store as a URL -----------------------------------------------------------------


def test_status_json_names_the_store_by_a_url_backend_takes_back(
    mg: Run, state: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "a folder"
    folder.mkdir()
    real = folder / "state.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert mg("on", "--reason", "moved", "--backend", f"file:{link}").code == 0
    data = mg("status", "--json", "--backend", f"file:{link}").json()
    assert data["backend"] == f"file:{real}"  # the file read, by its real path
    again = mg("status", "--json", "--backend", data["backend"])
    assert again.code == 1 and again.json() == data
    relative = mg("status", "--json", "--backend", "file:state.json", cwd=folder).json()
    assert relative == data
    plain = environment(APP_MODE="on")
    data = mg("status", "--json", "--backend", "env:APP_MODE", env=plain).json()
    assert data["backend"] == "env:APP_MODE"
    assert mg("status", "--json", "--backend", data["backend"], env=plain).json() == data


@pytest.mark.slow
@pytest.mark.redis
def test_status_json_names_a_redis_store_by_its_url_and_prefix(mg: Run) -> None:
    from tests.stores import REDIS_URL, redis_prefix

    prefix = redis_prefix()
    url = f"{REDIS_URL}?key_prefix={prefix}"
    assert mg("on", "--reason", "cache move", "--backend", url, env=environment()).code == 0
    data = mg("status", "--json", "--backend", url, env=environment()).json()
    assert data["backend"] == url
    again = mg("status", "--json", "--backend", data["backend"], env=environment())
    assert again.code == 1 and again.json() == data
    bare = mg("status", "--json", "--backend", REDIS_URL, env=environment()).json()
    assert bare["backend"] == f"{REDIS_URL}?key_prefix=maintguard"  # the default, said
    assert mg("off", "--backend", url, env=environment()).code == 0


def test_a_redis_store_on_a_unix_socket_is_named_with_its_prefix(
    mg: Run, redis_server: Any
) -> None:
    # docs/how-to/many-servers.md: `unix:///path/redis.sock?db=N` is a Redis URL, and `?key_prefix=`
    # is how --backend names a store with a prefix of its own; together they were refused.
    url = f"unix://{redis_server.socket}?db=0&key_prefix=shop"
    on = mg("on", "--reason", "socket", "--backend", url, env=environment())
    assert on.code == 0, on
    data = mg("status", "--json", "--backend", url, env=environment()).json()
    again = mg("status", "--json", "--backend", data["backend"], env=environment())
    assert again.code == 1 and again.json()["reason"] == "socket"


def redis_url(db: int = 13) -> str | None:
    try:
        import redis
    except ImportError:
        return None
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError:
        return None
    finally:
        client.close()
    return url


@pytest.fixture
def redis_db() -> Iterator[str]:
    """A Redis database other tests leave alone, on the default prefix (what the CLI's plain
    URL names); its maintguard keys are removed before and after."""
    import redis

    url = redis_url()
    if url is None:
        pytest.skip("no Redis at 127.0.0.1:6379")

    def clean() -> None:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match="{maintguard}*"):
            client.delete(key)
        client.close()

    clean()
    yield url
    clean()


@pytest.mark.slow
@pytest.mark.redis
def test_redis_run_off_force_and_hostile_keys(mg: Run, redis_db: str) -> None:
    import redis

    env = environment(MAINTGUARD_BACKEND=redis_db)
    inner = f"{sys.executable} -m maintguard status --json"
    result = mg("run", "--reason", "r", "--", "sh", "-c", inner, env=env)
    assert result.code == 1, result
    assert json.loads(result.out)["holds"][0]["reason"] == "r"
    assert mg("status", env=env).code == 0
    client = redis.Redis.from_url(redis_db)
    try:
        client.set("{maintguard}:explicit", "not a hash")  # something else wrote the key
        runs = ((["status"], 3), (["on"], 3), (["off"], 3), (["run", "--", "true"], 125))
        for args, code in runs:
            result = mg(*args, env=env)
            assert result.code == code, (args, result)
            one_line(result)
    finally:
        client.close()


def test_a_redis_url_keeps_its_options_and_hides_its_password() -> None:
    from maintguard._cli import show
    from maintguard.backends import RedisBackend, backend_from_url

    given = RedisBackend("redis://ops:s3cret@cache:6380/2?socket_timeout=3", key_prefix="a&b")
    url = show.url(given)
    assert url == "redis://ops:***@cache:6380/2?socket_timeout=3&key_prefix=a%26b"
    back = backend_from_url(url)
    assert back.store_key() == given.store_key() and isinstance(back, RedisBackend)
    assert back.key_prefix == "a&b" and "s3cret" not in url
    tls = RedisBackend("rediss://:pw@cache/0")
    assert show.url(tls) == "rediss://:***@cache/0?key_prefix=maintguard"
    sock = RedisBackend("unix:///run/redis.sock?db=3", key_prefix="shop")
    assert show.url(sock) == "unix:///run/redis.sock?db=3&key_prefix=shop"


# -- which stores each command takes -----------------------------------------------------


def test_each_commands_help_says_which_stores_it_takes(mg: Run) -> None:
    for command in ("on", "off", "run"):
        text = " ".join(mg(command, "--help").out.split())
        assert "the store to write: file:PATH or redis://HOST[:PORT]/DB" in text, command
        assert "env:VAR and memory: cannot be written from here" in text, command
    text = " ".join(mg("status", "--help").out.split())
    assert (
        "the store to read: file:PATH, redis://HOST[:PORT]/DB[?key_prefix=NAME] or env:VAR" in text
    )
    # and each does as its help says
    assert mg("status", "--backend", "env:APP_MODE", env=environment()).code == 0
    for args in (["on"], ["off"], ["run", "--", "true"]):
        result = mg(*args, "--backend", "env:APP_MODE", env=environment())
        assert result.code in (2, 125) and "cannot be written" in one_line(result), result


# -- choosing the backend ---------------------------------------------------------------


def test_backend_before_or_after_the_command_and_from_the_environment(
    mg: Run, tmp_path: Path
) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    plain = environment()
    assert mg("--backend", f"file:{a}", "on", env=plain).code == 0
    assert mg("status", "--backend", f"file:{a}", env=plain).code == 1
    assert mg("status", "--backend", f"file:{b}", env=plain).code == 0
    from_env = environment(MAINTGUARD_BACKEND=f"file:{a}")
    assert mg("status", env=from_env).code == 1
    assert mg("status", "--backend", f"file:{b}", env=from_env).code == 0  # the flag wins
    assert mg("--backend", f"file:{b}", "status", "--backend", f"file:{a}", env=plain).code == 1


def test_without_a_backend_writes_say_how_to_choose_one(mg: Run) -> None:
    plain = environment()
    for args in (["on"], ["off"], ["run", "--", "true"]):
        result = mg(*args, env=plain)
        assert result.code == (125 if args[0] == "run" else 2), result
        line = one_line(result)
        assert "--backend file:" in line and "MAINTGUARD_BACKEND" in line
    # status reads the default, the environment variable, and says which it read
    result = mg("status", env=environment(MAINTGUARD_MODE="on"))
    assert result.code == 1 and "EnvVarBackend(MAINTGUARD_MODE)" in result.out
    result = mg("status", env=environment(MAINTGUARD_MODE="maybe"))
    assert result.code == 3 and "MAINTGUARD_MODE" in one_line(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "bogus", "status"], "--backend: backend URL 'bogus' has no scheme"),
        (["--backend", "ftp://x", "status"], "--backend: "),
        (["--backend", "memory:", "on"], "memory: lives inside one process"),
        (["--backend", "env:", "on"], "cannot be written"),
        (["on", "--for", "5x"], "'5x' is not a duration"),
        (["on", "--for", "0s"], "not a duration longer than zero"),
        (["on", "--for", "400d"], "longer than a year"),
        (["on", "--until", "tomorrow"], "'tomorrow' is not an ISO 8601 time"),
        (["on", "--until", "2001-01-01T00:00Z"], "is not in the future"),
        (["on", "--for", "1h", "--until", "2099-01-01T00:00Z"], "not allowed with argument"),
        (["on", "--for", "1h", "--no-until"], "not allowed with argument"),
        (["on", "--retry-after", "1m", "--no-retry-after"], "not allowed with argument"),
        (["on", "--mode", "sideways"], "'sideways' is not a mode: use full or read-only"),
        (["on", "--retry-after", "-5"], "is not a number of seconds"),
        (["on", "--scope", " "], "a scope is a non-empty name"),
        (["on", "--bogus"], "unrecognized arguments: --bogus"),
        (["status", "--json", "extra"], "unrecognized arguments: extra"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(mg: Run, args: list[str], message: str) -> None:
    result = mg(*args)
    assert result.code == 2, result
    line = one_line(result)
    assert message in line, line


def test_a_bad_backend_in_the_environment_is_named(mg: Run) -> None:
    result = mg("status", env=environment(MAINTGUARD_BACKEND="file:"))
    assert result.code == 2
    assert one_line(result).startswith("maintguard: MAINTGUARD_BACKEND: ")


@pytest.mark.parametrize(
    "text",
    ["1e309s", "1e309", "-0", "nan", "inf", "  ", "1h-30m", "0x10", "1h 30m", "5.s", "1y",
     "-5m", "1" * 400, "1hh"],
)  # fmt: skip
def test_odd_durations_are_one_line_usage_errors(mg: Run, text: str) -> None:
    result = mg("on", "--for", text)
    assert result.code == 2, result
    assert "--for" in one_line(result)
    if text in ("1e309s", "nan", "1" * 400):
        result = mg("run", "--drain", text, "--", "true")
        assert result.code == 125, result
        one_line(result)


def test_a_duration_too_short_to_be_a_time_is_a_usage_error(mg: Run, state: Path) -> None:
    result = mg("on", "--for", "0.0000001")  # rounds to no time at all: not in the future
    assert result.code == 2, result
    assert "not in the future" in one_line(result)
    assert not state.exists()


def test_retry_after_minus_zero_is_zero_and_json_stays_valid(mg: Run) -> None:
    assert mg("on", "--retry-after", "-0").code == 0
    data = mg("status", "--json").json()
    assert data["retry_after"] == 0
    assert "retry after: 0 s" in mg("status").out


@pytest.mark.parametrize(
    "text",
    ["", " ", "z", "2099-02-30", "+2099-01-01", "2099-01-01T00:00+25:00", "٢٠٩٩-01-01",
     "2099-01-01T00:00:00Zjunk"],
)  # fmt: skip
def test_odd_until_values_are_one_line_usage_errors(mg: Run, text: str) -> None:
    result = mg("on", "--until", text)
    assert result.code == 2, result
    assert "--until" in one_line(result)


# Fixed in 40dfdf4: an --until near the end of datetime's range
# (a zone west of UTC, or local time there) passes values.when() and then overflows in
# check_until's astimezone(utc): 'unexpected OverflowError ... (please report it)', exit 3
# instead of a usage error
@pytest.mark.parametrize(
    ("text", "tz"),
    [("9999-12-31T23:59:59-12:00", "UTC"), ("9999-12-31T23:59", "America/New_York")],
)
def test_an_until_beyond_the_last_representable_time_is_a_usage_error(
    mg: Run, state: Path, text: str, tz: str
) -> None:
    result = mg("on", "--until", text, tz=tz)
    assert result.code in (0, 2), result  # taken, or refused as a bad time
    if result.code == 2:
        one_line(result)
    else:
        assert mg("status", tz=tz).code == 1


# the state was read: 'unexpected OverflowError: date value out of range (please report it)'
def test_times_near_the_end_of_the_calendar_show_in_an_eastern_zone(mg: Run, state: Path) -> None:
    result = mg("on", "--until", "9999-12-31T23:00Z", tz="Asia/Tokyo")
    assert result.code == 0, result
    result = mg("status", tz="Asia/Tokyo")
    assert result.code == 1, result
    assert result.out.startswith("maintenance is ON")


# Fixed in 40dfdf4: a hold record from year 1 (hostile, or a
# clock gone wrong) overflows show.local() in a zone west of UTC: `status` exits 3
# ('unexpected OverflowError') though the store was read, and `off --force` REMOVES the hold
# and then exits 3, telling the operator the store could not be written
def test_a_hold_from_year_one_in_a_western_zone(mg: Run, state: Path) -> None:
    write_store(state, hold_record(acquired="0001-01-01T00:00:00+00:00",
                                   started="0001-01-01T00:00:00+00:00"))  # fmt: skip
    status = mg("status", tz="America/New_York")
    assert status.code == 1, status
    forced = mg("off", "--force", tz="America/New_York")
    assert store_state(state).holds == 0  # it did remove the hold...
    assert forced.code == 0, forced  # ...so it must say it succeeded


@pytest.mark.parametrize(
    "scope",
    ["a:holds", "ünïcødé/..", "x" * 2000, "-dash", "billing "],
)
def test_odd_scope_names_are_kept_apart(mg: Run, state: Path, scope: str) -> None:
    named = f"--scope={scope}"  # (`--scope -dash` would be read as an option)
    assert mg("on", named, "--reason", "odd").code == 0
    assert mg("status").code == 0  # the global scope is untouched
    assert store_state(state, "billing").active is False  # nor another name
    assert store_state(state, scope).reason == "odd"
    assert mg("off", named).code == 0
    assert not store_state(state, scope).active


@pytest.mark.parametrize("scope", ["", "\t\n"])
def test_blank_scope_names_are_usage_errors(mg: Run, scope: str) -> None:
    for args in (["on"], ["status"]):
        result = mg(*args, "--scope", scope)
        assert result.code == 2, result
        assert "scope" in one_line(result)
    result = mg("run", "--scope", scope, "--", "true")
    assert result.code == 125, result


@pytest.mark.parametrize(
    "url",
    [" ", "memory:x", "redis://127.0.0.1:99999/0", "unix://", "redis://127.0.0.1/notanumber",
     "file:", "redis://h/0?key_prefix="],
)  # fmt: skip
def test_odd_backend_urls_are_one_line_usage_errors(mg: Run, url: str) -> None:
    result = mg("status", "--backend", url, env=environment())
    assert result.code == 2, result
    one_line(result)
    result = mg("status", env=environment(MAINTGUARD_BACKEND=url))
    assert result.code == 2, result
    assert one_line(result).startswith("maintguard: MAINTGUARD_BACKEND: ")
    result = mg("run", "--backend", url, "--", "true", env=environment())
    assert result.code == 125, result


# Fixed in 40dfdf4 (a regression of e54d52f): backend_from_url now runs
# urlsplit() on every Redis URL before RedisBackend's own checks, so a malformed host such as
# 'redis://[::1' raises ValueError('Invalid IPv6 URL'): 'unexpected ValueError ... (please
# report it)', exit 3, where it was a one-line usage error (exit 2)
def test_a_redis_url_with_a_broken_ipv6_host_is_a_usage_error(mg: Run) -> None:
    result = mg("status", "--backend", "redis://[::1", env=environment())
    assert result.code == 2, result
    one_line(result)
    result = mg("run", "--backend", "redis://[::1", "--", "true", env=environment())
    assert result.code == 125, result


# Fixed in 40dfdf4: file:~nosuchuser/... makes Path.expanduser()
# raise RuntimeError, which neither backend_from_url nor the CLI turns into a
# ConfigurationError: 'unexpected RuntimeError: Could not determine home directory. (please
# report it)', exit 3 instead of a usage error (2)
def test_a_file_url_with_an_unknown_users_home_is_a_usage_error(mg: Run) -> None:
    result = mg("status", "--backend", "file:~no-such-user-here/state.json", env=environment())
    assert result.code == 2, result
    one_line(result)


def test_an_empty_maintguard_backend_is_no_backend(mg: Run) -> None:
    result = mg("status", env=environment(MAINTGUARD_BACKEND=""))
    assert result.code == 0 and "EnvVarBackend(MAINTGUARD_MODE)" in result.out
    result = mg("on", env=environment(MAINTGUARD_BACKEND=""))
    assert result.code == 2 and "no store chosen" in one_line(result)


def test_maintguard_backend_naming_itself_as_an_env_store(mg: Run) -> None:
    env = environment(MAINTGUARD_BACKEND="env:MAINTGUARD_BACKEND")
    result = mg("status", env=env)
    assert result.code == 3, result  # its own value is no maintenance value
    assert "MAINTGUARD_BACKEND" in one_line(result)
    result = mg("on", env=env)
    assert result.code == 2 and "cannot be written" in one_line(result)


# -- run ------------------------------------------------------------------------------


def test_run_holds_exactly_while_the_command_runs(mg: Run, state: Path) -> None:
    inner = f"{sys.executable} -m maintguard status --json"
    result = mg("run", "--reason", "migrate", "--retry-after", "300", "--", "sh", "-c", inner)
    assert result.code == 1, result  # the command's own exit code: status saw maintenance on
    seen = json.loads(result.out)
    assert seen["reason"] == "migrate" and seen["retry_after"] == 300
    (hold,) = seen["holds"]
    assert hold["owner"].startswith("maintguard run: sh -c ")
    assert "maintenance held while running: sh -c " in result.err
    assert "exited with 1; hold released" in result.err
    assert mg("status").code == 0  # released
    assert store_state(state).holds == 0


@pytest.mark.parametrize("code", [0, 7])
def test_run_returns_the_commands_exit_code(mg: Run, code: int) -> None:
    result = mg("run", "--", sys.executable, "-c", f"raise SystemExit({code})")
    assert result.code == code, result
    assert mg("status").code == 0


def test_run_forwards_the_commands_output_untouched(mg: Run) -> None:
    result = mg("run", "--", "sh", "-c", "echo out; echo err >&2")
    assert result.code == 0
    assert result.out == "out\n"
    assert "err\n" in result.err


def test_run_with_a_command_killed_by_a_signal_is_128_plus_n(mg: Run) -> None:
    result = mg("run", "--", "sh", "-c", "kill -KILL $$")
    assert result.code == 128 + 9, result
    assert "was killed by SIGKILL; hold released" in result.err
    assert mg("status").code == 0


def test_run_without_dashes_and_with_options_of_the_command(mg: Run) -> None:
    result = mg("run", "--reason", "x", sys.executable, "-c", "import sys; sys.exit(3)")
    assert result.code == 3, result
    result = mg("run", "--", sys.executable, "--version")
    assert result.code == 0 and "Python" in result.out


def test_run_with_a_command_not_found_or_not_executable_holds_nothing(
    mg: Run, state: Path, tmp_path: Path
) -> None:
    result = mg("run", "--", "no-such-command-here")
    assert result.code == 127
    assert "no-such-command-here: command not found" in one_line(result)
    assert "maintenance was not switched on" in result.err
    result = mg("run", "--", str(tmp_path / "missing.sh"))
    assert result.code == 127 and "no such file" in one_line(result)
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    result = mg("run", "--", str(script))
    assert result.code == 126 and "not executable" in one_line(result)
    result = mg("run", "--", str(tmp_path))
    assert result.code == 126
    assert not state.exists()  # nothing was ever written: no hold was taken
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/no/such/interpreter\n")
    broken.chmod(0o755)
    result = mg("run", "--", str(broken))  # found, but exec fails: held, then released
    assert result.code == 127, result
    assert "hold released" in result.err
    assert mg("status").code == 0


@pytest.mark.parametrize(
    ("argv", "code"),
    [([""], 127), (["--version"], 127), (["run"], 127), (["./no-such-file"], 127),
     (["/"], 126), (["/dev/null"], 126)],
)  # fmt: skip
def test_run_with_commands_that_cannot_run_holds_nothing(
    mg: Run, state: Path, argv: list[str], code: int
) -> None:
    result = mg("run", "--reason", "x", "--", *argv)
    assert result.code == code, result
    assert "maintenance was not switched on" in one_line(result)
    assert not state.exists()


def test_run_passes_stdin_and_exact_argv_bytes_to_the_command(mg: Run, state: Path) -> None:
    odd = os.fsdecode(b"\xff\xfe-not-utf8")
    long = "x" * 100_000
    script = (
        "import sys, os; sys.stdout.write(sys.stdin.read()); "
        "print(os.fsencode(sys.argv[1])); print(len(sys.argv[2]))"
    )
    result = mg(
        "run", "--reason", "\u2603", "--", sys.executable, "-c", script, odd, long,
        input="from stdin\n",
    )  # fmt: skip
    assert result.code == 0, result
    assert result.out.splitlines() == ["from stdin", repr(b"\xff\xfe-not-utf8"), "100000"]
    assert "hold released" in result.err
    assert not store_state(state).active


def test_run_with_a_long_and_unicode_command_line_shows_a_bounded_owner(
    mg: Run, state: Path
) -> None:
    inner = f"{sys.executable} -m maintguard status --json"
    result = mg("run", "--", "sh", "-c", inner, "\u00e9" * 5000)
    assert result.code == 1, result
    (hold,) = json.loads(result.out)["holds"]
    assert hold["owner"].startswith("maintguard run: sh -c ")
    assert len(hold["owner"]) <= 200
    assert len(result.err) < 2000  # the messages are bounded too


def test_run_options_and_the_commands_own_options_do_not_mix(mg: Run) -> None:
    script = "import sys; print(sys.argv[1:])"
    result = mg("run", sys.executable, "-c", script, "--backend", "bogus", "--reason", "y")
    assert result.code == 0, result
    assert result.out.strip() == "['--backend', 'bogus', '--reason', 'y']"
    result = mg("run", "--", sys.executable, "-c", script, "--", "--drain", "1")
    assert result.out.strip() == "['--', '--drain', '1']"
    result = mg("run", "--reason", "--", "true")  # "--" is no reason
    assert result.code == 125 and "--reason" in one_line(result)


@pytest.mark.parametrize("code", [2, 3, 125, 127, 255])
def test_run_returns_the_commands_code_even_when_it_looks_like_maintguards(
    mg: Run, code: int
) -> None:
    result = mg("run", "--", "sh", "-c", f"exit {code}")
    assert result.code == code, result
    assert f"exited with {code}; hold released" in result.err


def test_run_when_the_command_forks_and_exits_the_hold_ends_with_it(
    mg: Run, state: Path, tmp_path: Path
) -> None:
    # Documented: maintenance is held while the command runs; a daemonising command has
    # ended when its first process exits.
    flag, pidfile = tmp_path / "flag", tmp_path / "pid"
    flag.write_text("")
    script = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', sys.argv[1], "
        "sys.argv[2], sys.argv[3]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    )
    try:
        result = mg("run", "--", sys.executable, "-c", script, LOOPER, str(flag), str(pidfile))
        assert result.code == 0, result
        assert not store_state(state).active
    finally:
        flag.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "run needs a command"),
        (["run", "--"], "run needs a command"),
        (["run", "--drain", "soon", "--", "true"], "'soon' is not a number of seconds"),
        (["run", "--mode", "x", "--", "true"], "'x' is not a mode"),
        (["run", "--bogus", "--", "true"], "unrecognized arguments"),
        (["--backend", "bogus", "run", "--", "true"], "backend URL 'bogus' has no scheme"),
        (["run", "--backend", "env:", "--", "true"], "cannot be written"),
    ],
)
def test_run_bad_input_is_125(mg: Run, args: list[str], message: str) -> None:
    result = mg(*args)
    assert result.code == 125, result
    assert message in one_line(result)


def test_run_when_the_store_cannot_be_written_is_125_and_the_command_never_runs(
    mg: Run, state: Path, tmp_path: Path
) -> None:
    state.write_text("[1, 2]")
    marker = tmp_path / "ran"
    result = mg("run", "--", "touch", str(marker))
    assert result.code == 125, result
    assert "the command was not run" in one_line(result)
    assert not marker.exists()
    result = mg("run", "--backend", "redis://127.0.0.1:1/0", "--", "touch", str(marker))
    assert result.code == 125 and not marker.exists()


def test_the_state_file_deleted_mid_run_ends_off(mg: Run, state: Path) -> None:
    result = mg("run", "--", "sh", "-c", f"rm {state}; exit 3")
    assert result.code == 3, result
    assert not store_state(state).active


# Fixed in 40dfdf4: when the release write fails (here the lock
# file became a directory), run logs 'could not remove this process's hold record ... lease
# runs out in 30s' and then ends with '... exited with 4; hold released' and the command's
# code: the last word says released while maintenance stays ON for the lease
def test_a_failed_release_is_not_reported_as_released(mg: Run, state: Path) -> None:
    lock = f"{state}.lock"
    result = mg("run", "--", "sh", "-c", f"rm -f {lock}; mkdir {lock}; exit 4")
    assert result.code == 4, result
    assert store_state(state).active  # the record stays until its lease ends
    last = result.err.strip().splitlines()[-1]
    assert "hold released" not in last, result.err


# -- run: signals -----------------------------------------------------------------------

# The command: counts every signal it gets in a file, and ends on SIGTERM or SIGINT with
# 100 + the signal number (so a second delivery would show in the file, not be lost).
COUNTER = """
import signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
def note(signum, frame):
    with log.open("a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum in (signal.SIGTERM, signal.SIGINT):
        time.sleep(0.5)  # a second copy would arrive meanwhile
        sys.exit(100 + signum)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, note)
log.write_text("")
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def start_run(state: Path, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(log: Path, *extra: str, popen: dict[str, Any] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maintguard", "run", *extra, "--",
             sys.executable, "-c", COUNTER, str(log)],
            env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            **(popen or {}),
        )  # fmt: skip
        procs.append(proc)
        wait_for(lambda: log.exists(), proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def pid_written(pidfile: Path) -> bool:
    """The pid file exists and holds its pid (a file is created before it is written)."""
    try:
        return pidfile.read_text().strip().isdigit()
    except FileNotFoundError:
        return False


def wait_for(ready: Callable[[], bool], proc: Any = None, limit: float = 20) -> None:
    """Until ``ready()``; ``proc``, when given, must not end meanwhile."""
    deadline = time.monotonic() + limit
    while not ready():
        if proc is not None:
            assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def signals_seen(log: Path) -> list[str]:
    return log.read_text().split()


@pytest.mark.processes
@pytest.mark.parametrize("to_group", [False, True], ids=["to-pid", "to-process-group"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_to_maintguard_run_reaches_the_command_once_and_the_hold_ends(
    start_run: Callable[..., subprocess.Popen[str]],
    tmp_path: Path,
    state: Path,
    signame: str,
    to_group: bool,
) -> None:
    log = tmp_path / "signals"
    # A process group of its own, as a supervisor or a CI runner starts it (no terminal).
    proc = start_run(log, popen={"start_new_session": True})
    assert store_state(state).active
    signum = signal.Signals[signame]
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 100 + signum, err
    assert signals_seen(log) == [signame]
    assert "hold released" in err
    assert not store_state(state).active


@pytest.mark.processes
def test_a_signal_the_kernel_hands_to_another_thread_of_maintguard_still_reaches_the_command(
    start_run: Callable[..., subprocess.Popen[str]], tmp_path: Path, state: Path
) -> None:
    # Found: with a hold on a file store, maintguard has threads besides the main one (the
    # I/O loop, workers). A process-directed signal may be handed to any of them; the main
    # thread, blocked in one waitpid, then never ran the Python handler: nothing was
    # forwarded and `maintguard run` hung. Sent to one such thread here, on purpose.
    import ctypes

    tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]  # syscall numbers
    log = tmp_path / "signals"
    proc = start_run(log, popen={"start_new_session": True})
    assert store_state(state).active
    threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    assert threads, "maintguard run has no thread besides the main one"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(tgkill, proc.pid, threads[0], signal.SIGTERM) == 0
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 100 + signal.SIGTERM, err
    assert signals_seen(log) == ["SIGTERM"]
    assert not store_state(state).active


@pytest.mark.processes
def test_hup_and_usr_signals_are_forwarded_and_the_command_goes_on(
    start_run: Callable[..., subprocess.Popen[str]], tmp_path: Path, state: Path
) -> None:
    log = tmp_path / "signals"
    proc = start_run(log)
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.kill(proc.pid, signum)
        wait_for(lambda: signum.name in signals_seen(log), proc)  # noqa: B023 - used at once
    assert store_state(state).active  # the command goes on, and so does the hold
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=20)
    assert signals_seen(log) == ["SIGHUP", "SIGUSR1", "SIGUSR2", "SIGTERM"]
    assert proc.returncode == 100 + signal.SIGTERM
    assert not store_state(state).active


@pytest.mark.processes
def test_ctrl_c_in_a_terminal_reaches_the_command_once(tmp_path: Path, state: Path) -> None:
    # maintguard run in the foreground of a real terminal (a pty): the terminal sends
    # SIGINT to the whole foreground process group; maintguard must not send it again.
    import pty

    log = tmp_path / "signals"
    argv = [sys.executable, "-m", "maintguard", "run", "--", sys.executable, "-c", COUNTER,
            str(log)]  # fmt: skip
    env = environment(MAINTGUARD_BACKEND=f"file:{state}")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a new session whose controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)
    try:
        deadline = time.monotonic() + 20
        while not log.exists():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
        os.write(fd, b"\x03")  # Ctrl-C, as typed
        output = b""
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 100 + signal.SIGINT, output
    assert signals_seen(log) == ["SIGINT"]
    assert b"hold released" in output
    assert not store_state(state).active


# The command for the signal tests: runs until its flag file goes (at most 20 s), noting its pid.
LOOPER = """
import os, sys, time
from pathlib import Path
flag = Path(sys.argv[1])
Path(sys.argv[2]).write_text(str(os.getpid()))
deadline = time.monotonic() + 20
while flag.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""


@pytest.fixture
def start_looper(state: Path, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """``maintguard run`` of LOOPER in a session of its own (as a CI runner starts it)."""
    procs: list[subprocess.Popen[str]] = []
    flag = tmp_path / "flag"

    def start(*extra: str, argv: list[str] | None = None) -> subprocess.Popen[str]:
        flag.write_text("")
        pidfile = tmp_path / f"pid-{len(procs)}"
        command = argv or [sys.executable, "-c", LOOPER, str(flag), str(pidfile)]
        # stderr to a file: a pipe would stay open in a command that outlives maintguard
        err = tmp_path / f"stderr-{len(procs)}"
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "maintguard", "run", *extra, "--", *command],
                env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
                cwd=ROOT,
                stderr=stderr,
                stdout=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
        procs.append(proc)
        proc.pidfile = pidfile  # type: ignore[attr-defined]
        proc.errfile = err  # type: ignore[attr-defined]
        if argv is None:
            wait_for(lambda: pid_written(pidfile), proc)
        return proc

    yield start
    flag.unlink(missing_ok=True)
    for proc in procs:
        pidfile = proc.pidfile  # type: ignore[attr-defined]
        if pidfile.exists() and pidfile.read_text():
            kill_quietly(int(pidfile.read_text()))
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def store_locked(state: Path) -> Iterator[Callable[[], None]]:
    """Hold the store's write lock (``<file>.lock``), as a slow writer in another process
    would: maintguard's writes wait for it. Yields a function that lets it go early."""
    fd = os.open(f"{state}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    try:
        yield release
    finally:
        release()


def waiting_for_lock(pid: int) -> bool:
    """The process ``pid`` is blocked on a file lock (a ``->`` line in /proc/locks)."""
    with open("/proc/locks") as f:
        return any("->" in line and f" {pid} " in line for line in f)


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return True


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# Fixed in 40dfdf4: run handles only
# TERM/HUP/USR1/USR2/INT/QUIT; any other signal whose default action is to terminate
# (SIGALRM from `sv alarm`/`svc -a`, SIGXCPU from a CPU ulimit, SIGPROF, SIGVTALRM, SIGIO,
# SIGPWR...) kills maintguard outright: no release, the hold stays ON for its whole lease
# while the command runs on unheld
@pytest.mark.processes
@pytest.mark.parametrize("signame", ["SIGALRM", "SIGXCPU"])
def test_no_signal_ends_run_with_the_hold_left_in_the_store(
    start_looper: Callable[..., subprocess.Popen[str]], state: Path, signame: str
) -> None:
    proc = start_looper()
    assert store_state(state).active
    os.kill(proc.pid, signal.Signals[signame])
    proc.wait(20)
    assert not store_state(state).active, "maintguard exited and its hold is still in the store"


@pytest.mark.processes
def test_sigterm_to_a_command_that_ignores_it_keeps_the_hold_until_it_ends(
    start_looper: Callable[..., subprocess.Popen[str]], state: Path, tmp_path: Path
) -> None:
    flag, pidfile = tmp_path / "stubborn", tmp_path / "stubborn.pid"
    flag.write_text("")
    script = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LOOPER
    proc = start_looper(argv=[sys.executable, "-c", script, str(flag), str(pidfile)])
    wait_for(lambda: pid_written(pidfile), proc)
    time.sleep(0.2)  # let it install its SIG_IGN (it writes its pid file first)
    for _ in range(3):
        os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert proc.poll() is None  # the command goes on, and so must the hold
    assert store_state(state).active
    flag.unlink()
    assert proc.wait(20) == 0, proc.errfile.read_text()  # type: ignore[attr-defined]
    assert not store_state(state).active


IGNORER = """
import os, signal, sys, time
from pathlib import Path
flag, out, signum = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
out.write_text("ignored" if signal.getsignal(signum) == signal.SIG_IGN else "not ignored")
deadline = time.monotonic() + 20
while flag.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""


@pytest.mark.processes
@pytest.mark.parametrize("signame", ["SIGHUP", "SIGINT"])
def test_a_signal_the_caller_ignores_stays_ignored_for_the_command(
    state: Path, tmp_path: Path, signame: str
) -> None:
    signum = signal.Signals[signame]
    flag, out = tmp_path / "flag", tmp_path / "disposition"
    flag.write_text("")

    def ignore() -> None:  # what nohup (SIGHUP) or `sh -c 'cmd &'` (SIGINT) does
        signal.signal(signum, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "maintguard", "run", "--", sys.executable, "-c", IGNORER,
         str(flag), str(out), str(int(signum))],
        env=environment(MAINTGUARD_BACKEND=f"file:{state}"), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, preexec_fn=ignore,
    )  # fmt: skip
    try:
        wait_for(out.exists, proc)
        time.sleep(0.05)
        disposition = out.read_text()
        os.kill(proc.pid, signum)  # the logout's SIGHUP; the terminal's Ctrl-C
        time.sleep(0.3)
        assert proc.poll() is None, "the command was ended by a signal it was meant to ignore"
        assert store_state(state).active
        assert disposition == "ignored"
        flag.unlink()
        assert proc.wait(20) == 0
    finally:
        flag.unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)


@pytest.mark.processes
def test_sigterm_while_the_entry_waits_for_the_store_lock_holds_nothing(
    state: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    with store_locked(state) as release:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maintguard", "run", "--", "touch", str(ran)],
            env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
            cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for(lambda: waiting_for_lock(proc.pid), proc)
            os.kill(proc.pid, signal.SIGTERM)  # interrupts the entry's write
            time.sleep(0.2)
            os.kill(proc.pid, signal.SIGTERM)  # and the clean-up's, waiting for the lock too
            release()
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "before the command started; nothing is held" in err
    assert not ran.exists()
    assert not store_state(state).active


@pytest.mark.processes
def test_signals_while_the_release_waits_for_the_store_lock_change_nothing(
    state: Path, tmp_path: Path
) -> None:
    go, started = tmp_path / "go", tmp_path / "started"
    go.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "maintguard", "run", "--", "sh", "-c",
         f"touch {started}; while [ -e {go} ]; do sleep 0.02; done; exit 5"],
        env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
        cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(started.exists, proc)
        with store_locked(state):
            go.unlink()  # the command ends; the release waits for the lock
            wait_for(lambda: waiting_for_lock(proc.pid), proc)
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                os.kill(proc.pid, signum)  # right after the command exited, during release
                time.sleep(0.05)
            assert proc.poll() is None
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 5, err  # the command's own code, not 128+N
    assert "exited with 5; hold released" in err
    assert not store_state(state).active


@pytest.mark.slow
@pytest.mark.processes
def test_two_sigterms_while_the_drains_clean_up_waits_for_the_lock_leave_nothing(
    state: Path, tmp_path: Path
) -> None:
    job_flag, ran = tmp_path / "job", tmp_path / "ran"
    job = subprocess.Popen(
        [sys.executable, "-c", JOB_SCRIPT, str(state), str(job_flag)], env=environment()
    )
    proc: subprocess.Popen[str] | None = None
    try:
        wait_for(job_flag.exists, job)
        proc = subprocess.Popen(
            [sys.executable, "-m", "maintguard", "run", "--drain", "60", "--",
             "touch", str(ran)],
            env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
            cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: store_state(state).phase.value == "draining", proc)
        with store_locked(state):
            os.kill(proc.pid, signal.SIGTERM)  # ends the drain: its clean-up waits for us
            wait_for(lambda: waiting_for_lock(proc.pid), proc)
            os.kill(proc.pid, signal.SIGTERM)  # interrupts that clean-up
            time.sleep(0.2)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert not ran.exists()
        assert not store_state(state).active  # at exit, maintguard removed what was left
    finally:
        job_flag.unlink(missing_ok=True)
        job.wait(20)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


GRANDPARENT = """
import subprocess, sys
from pathlib import Path
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]])
child.wait()
"""


# Fixed in 40dfdf4: without a terminal, run puts the command in
# a process group of its own but forwards signals to the command's pid only: a SIGTERM sent
# to the CI job's process group (what runners and `kill -TERM -PGID` do) no longer reaches
# the command's children (a `sh -c 'a && b'`, a wrapper script); the wrapper dies, the hold
# is released, and the real work goes on without maintenance. Forward to the group
@pytest.mark.processes
def test_a_signal_to_the_jobs_group_still_reaches_the_commands_children(
    start_looper: Callable[..., subprocess.Popen[str]], tmp_path: Path, state: Path
) -> None:
    flag, pidfile = tmp_path / "flag", tmp_path / "grandchild.pid"
    flag.write_text("")
    proc = start_looper(argv=[sys.executable, "-c", GRANDPARENT, LOOPER, str(flag), str(pidfile)])
    wait_for(lambda: pid_written(pidfile), proc)
    grandchild = int(pidfile.read_text())
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the job's whole group, as a CI runner does
        assert proc.wait(20) == 128 + signal.SIGTERM
        assert not store_state(state).active
        deadline = time.monotonic() + 2
        while not gone(grandchild) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gone(grandchild), "the command's child runs on, unheld, after the group's SIGTERM"
    finally:
        kill_quietly(grandchild)


# A command for a pty: counts every delivery of a signal (through the wakeup fd, so two
# deliveries never merge into one handler call) and ends on SIGTERM (or after 30 s).
COUNTING = """
import os, signal, sys, time
from pathlib import Path
log = Path(sys.argv[1])
r, w = os.pipe()
os.set_blocking(r, False)
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, lambda *a: None)
Path(sys.argv[2]).write_text(str(os.getpid()))
log.write_text("")
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    time.sleep(0.02)
    try:
        data = os.read(r, 100)
    except BlockingIOError:
        continue
    for b in data:
        with log.open("a") as f:
            f.write(signal.Signals(b).name + "\\n")
        if b == signal.SIGTERM:
            sys.exit(0)
"""


def read_all(fd: int) -> bytes:
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    return output


# Fixed in 40dfdf4: in a terminal the command shares
# maintguard's process group, and a hangup (the terminal or SSH session closing; also the
# shell's SIGHUP to its jobs, `kill -HUP -PGID`) is delivered by the kernel to every process
# of that group — straight to the command, like Ctrl-C — yet maintguard forwards its own
# copy too: the command gets SIGHUP twice. (Sent at once, the two copies sometimes merge in
# the kernel, so the test delivers them one after the other, as the terminal's group
# delivery does)
@pytest.mark.processes
def test_a_hangup_of_the_terminal_reaches_the_command_once(tmp_path: Path, state: Path) -> None:
    import pty

    log, pidfile = tmp_path / "signals", tmp_path / "command.pid"
    argv = [sys.executable, "-m", "maintguard", "run", "--", sys.executable, "-c", COUNTING,
            str(log), str(pidfile)]  # fmt: skip
    env = environment(MAINTGUARD_BACKEND=f"file:{state}")
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(ROOT)
        os.execve(sys.executable, argv, env)
    try:
        wait_for(log.exists)
        command = int(pidfile.read_text())
        assert os.getpgid(command) == os.tcgetpgrp(fd) == pid  # the terminal's foreground group
        # The hangup, to each process of the foreground group:
        os.kill(command, signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in log.read_text())
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.3)  # maintguard forwards at once, if it does
        os.kill(pid, signal.SIGTERM)  # to maintguard alone: forwarded, ends the command
        output = read_all(fd)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
        kill_quietly(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert not store_state(state).active
    assert log.read_text().split() == ["SIGHUP", "SIGTERM"]


TTY_READER = """
import os, sys
from pathlib import Path
Path(sys.argv[2]).write_text(str(os.getpid()))
tty = os.open("/dev/tty", os.O_RDWR)
os.write(tty, b"password? ")
Path(sys.argv[1]).write_bytes(os.read(tty, 100))
"""


def _run_in_pty_with_streams_redirected(argv: list[str], env: dict[str, str], pidfile: Path,
                                        answer: Path, limit: float) -> int | None:  # fmt: skip
    """Run ``argv`` as a terminal's foreground job whose stdin/stdout/stderr are redirected
    (`cmd </dev/null >log 2>&1`); answer the password prompt it writes on /dev/tty. The exit
    code, or None when it did not end within ``limit`` seconds (then everything is killed)."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(ROOT)
        null = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(null, i)
        os.execve(argv[0], argv, env)
    try:
        os.set_blocking(fd, False)
        seen = b""
        deadline = time.monotonic() + 20
        while b"password?" not in seen:
            assert time.monotonic() < deadline, "no prompt"
            try:
                seen += os.read(fd, 100)
            except OSError:  # nothing yet (EAGAIN), or no slave open yet (EIO)
                time.sleep(0.02)
        os.write(fd, b"s3cret\n")
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.02)
        return None
    finally:
        if pidfile.exists() and pidfile.read_text():
            kill_quietly(int(pidfile.read_text()))
        kill_quietly(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)


# Fixed in 40dfdf4: run decides 'terminal' from fds 0-2 only;
# run as a terminal's foreground job with its streams redirected (`maintguard run -- migrate
# </dev/null >log 2>&1`) it puts the command in a background process group, so a command
# that prompts on /dev/tty (ssh, sudo, psql, getpass) is stopped by SIGTTIN: maintguard
# waits forever with maintenance ON, and a forwarded SIGTERM stays pending on the stopped
# command
@pytest.mark.processes
def test_a_command_that_prompts_on_dev_tty_is_not_stopped(tmp_path: Path, state: Path) -> None:
    env = environment(MAINTGUARD_BACKEND=f"file:{state}")
    answer, pidfile = tmp_path / "answer", tmp_path / "pid"
    command = [sys.executable, "-c", TTY_READER, str(answer), str(pidfile)]
    # Without maintguard the command reads its answer (the harness works):
    assert _run_in_pty_with_streams_redirected(command, env, pidfile, answer, 10) == 0
    assert answer.read_bytes() == b"s3cret\n"
    answer.unlink()
    pidfile.unlink()
    argv = [sys.executable, "-m", "maintguard", "run", "--", *command]
    code = _run_in_pty_with_streams_redirected(argv, env, pidfile, answer, 4)
    assert code == 0, "the command was stopped reading /dev/tty; maintguard waits, held"
    assert answer.read_bytes() == b"s3cret\n"


def test_sigterm_while_the_hold_drains_ends_it_and_the_command_never_runs(
    mg: Run, state: Path, tmp_path: Path
) -> None:
    # A guarded job in another process is in flight on the store: the drain waits for it.
    job_flag, ran = tmp_path / "job", tmp_path / "ran"
    job = subprocess.Popen(
        [sys.executable, "-c", JOB_SCRIPT, str(state), str(job_flag)], env=environment()
    )
    try:
        wait_for(job_flag.exists, job)
        proc = subprocess.Popen(
            [sys.executable, "-m", "maintguard", "run", "--drain", "60", "--",
             "touch", str(ran)],
            env=environment(MAINTGUARD_BACKEND=f"file:{state}"),
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        wait_for(lambda: store_state(state).phase.value == "draining", proc)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM before the command started; nothing is held" in err
        assert "waiting up to 60 s for in-flight work" in err
        assert not ran.exists()
        assert not store_state(state).active
    finally:
        job_flag.unlink(missing_ok=True)
        job.wait(20)


@pytest.mark.slow
def test_run_drains_in_flight_work_first(mg: Run, state: Path, tmp_path: Path) -> None:
    job_flag = tmp_path / "job"
    job = subprocess.Popen(
        [sys.executable, "-c", JOB_SCRIPT, str(state), str(job_flag)], env=environment()
    )
    try:
        wait_for(job_flag.exists, job)
        result = mg("run", "--drain", "0.5", "--", "true")  # the job goes on: time is up
        assert result.code == 0, result
        assert "did not end within drain=0.5s; going on" in result.err
        result = mg("run", "--drain", "0.5", "--on-drain-timeout", "raise", "--", "true")
        assert result.code == 125, result
        assert "the command was not run" in result.err
        assert mg("status").code == 0
    finally:
        job_flag.unlink(missing_ok=True)
        job.wait(20)
    result = mg("run", "--drain", "30", "--", "true")  # nothing in flight: at once
    assert result.code == 0, result


def test_run_in_a_scope_with_a_mode(mg: Run) -> None:
    inner = f"{sys.executable} -m maintguard status --scope billing --json"
    result = mg("run", "--scope", "billing", "--mode", "read-only", "--", "sh", "-c", inner)
    seen = json.loads(result.out)
    assert result.code == 1 and seen["mode"] == "read_only" and seen["scope"] == "billing"
    assert mg("status").code == 0


def shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        env=environment(**env),
        cwd=ROOT,
        timeout=30,
    )


def mg_off(state: Path) -> int:
    return subprocess.run(
        [sys.executable, "-m", "maintguard", "off", "--backend", f"file:{state}"],
        capture_output=True, env=environment(), cwd=ROOT, timeout=30,
    ).returncode  # fmt: skip


@pytest.mark.slow
@pytest.mark.processes
def test_closed_stdout_and_stderr_keep_the_exit_codes(state: Path) -> None:
    mg = f"{sys.executable} -m maintguard --backend file:{state}"
    assert shell(f"{mg} status >&-").returncode == 0
    assert shell(f"{mg} on >&- 2>&-").returncode == 0
    assert shell(f"{mg} status >&- 2>&-").returncode == 1
    assert shell(f"{mg} status --json >&-").returncode == 1
    assert shell(f"{mg} off >&- 2>&-").returncode == 0
    assert shell(f"{mg} status --bogus 2>&-").returncode == 2
    done = shell(f"{mg} run -- sh -c 'cat; echo out; exit 6' <&- >&- 2>&-")
    assert done.returncode == 6
    assert not store_state(state).active


@pytest.mark.processes
def test_a_broken_pipe_keeps_the_exit_codes_and_prints_no_traceback(state: Path) -> None:
    env = environment(MAINTGUARD_BACKEND=f"file:{state}")
    read, write = os.pipe()
    os.close(read)  # every write to `write` is EPIPE
    try:
        runs = ((["on", "--reason", "x"], 0), (["status"], 1), (["status", "--json"], 1))
        for args, code in runs:
            proc = subprocess.run(
                [sys.executable, "-m", "maintguard", *args],
                stdout=write, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=30,
            )  # fmt: skip
            assert proc.returncode == code, (args, proc.stderr)
            assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
        # run's own messages go to a broken stderr: the command still runs, its code returns
        marker = state.parent / "ran"
        proc = subprocess.run(
            [sys.executable, "-m", "maintguard", "run", "--", "sh", "-c",
             f"touch {marker}; exit 9"],
            stdout=subprocess.PIPE, stderr=write, text=True, env=env, cwd=ROOT, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 9 and marker.exists()
    finally:
        os.close(write)
    assert mg_off(state) == 0
    assert not store_state(state).active


@pytest.mark.processes
def test_closed_or_broken_output_never_changes_the_exit_code(state: Path) -> None:
    env = environment(MAINTGUARD_BACKEND=f"file:{state}")

    def shell(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, env=env, timeout=30, cwd=ROOT
        )

    mg = f"{sys.executable} -m maintguard"
    assert shell(f"{mg} on >&-").returncode == 0
    assert shell(f"{mg} status >&-").returncode == 1
    done = shell(f"{mg} status --json | head -c 1; exit ${{PIPESTATUS[0]}}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert shell(f"{mg} off 2>&- >&-").returncode == 0
    # Started without a stderr, the command gets /dev/null there: never a file of ours.
    done = shell(f"{mg} run -- sh -c 'readlink /proc/self/fd/2; exit 4' 2>&-")
    assert (done.returncode, done.stdout.strip()) == (4, "/dev/null")
    assert not store_state(state).active


@pytest.mark.slow
@pytest.mark.redis
def test_a_redis_store_with_its_own_key_prefix(mg: Run) -> None:
    from tests.stores import REDIS_URL, redis_prefix

    prefix = redis_prefix()
    url = f"{REDIS_URL}?key_prefix={prefix}"
    app_side = maintguard.backends.RedisBackend(REDIS_URL, key_prefix=prefix, refresh_interval=0)
    assert mg("on", "--reason", "cache move", "--backend", url, env=environment()).code == 0
    assert sync.get_state(app_side).reason == "cache move"  # the app's store, by its prefix
    assert not sync.get_maintenance_mode(REDIS_URL)  # not the default prefix's
    inner = f"{sys.executable} -m maintguard status --json"
    result = mg("run", "--", "sh", "-c", inner, env=environment(MAINTGUARD_BACKEND=url))
    assert result.code == 1 and len(json.loads(result.out)["holds"]) == 1
    assert mg("off", "--backend", url, env=environment()).code == 0
    assert not sync.get_maintenance_mode(app_side)


# -- planned windows: schedule, schedule list, schedule cancel -----------------------------

WINDOW_FIELDS = {f.name for f in dataclasses.fields(maintguard.Window)}
BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
STAMP = "%Y-%m-%d %H:%M:%S"


def scheduled(result: Result) -> str:
    """The id of the window ``schedule`` just stored (its first line names it)."""
    assert result.code == 0, result
    found = re.match(r"window (\S+) scheduled", result.out)
    assert found is not None, result
    return found.group(1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def shown(start: datetime, end: datetime, zone: ZoneInfo | None = None) -> str:
    """An occurrence as ``schedule`` and ``schedule list`` print it: in UTC, and in the
    window's zone when it has one."""
    utc = f"{start.astimezone(UTC):{STAMP}} UTC to {end.astimezone(UTC):{STAMP}} UTC"
    if zone is None:
        return utc
    there = f"{start.astimezone(zone):{STAMP} %Z} to {end.astimezone(zone):{STAMP} %Z}"
    return f"{utc} ({there} in {zone.key})"


def occurrence_lines(out: str, prefix: str) -> list[str]:
    """The occurrences listed under a window (``prefix``: their indent), without the
    "(starts in ...)" that ``schedule`` adds."""
    lines = [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]
    return [re.sub(r" \((starts in [^)]*|in force now)\)$", "", line) for line in lines]


def stored_windows(state: Path, scope: str | None = None) -> list[maintguard.Window]:
    """The windows an app reading the file sees."""
    return sync.list_windows(backend=LocalFileBackend(state, refresh_interval=0), scope=scope)


def test_schedule_a_one_off_window_then_list_it_as_text_and_json(mg: Run, state: Path) -> None:
    before = datetime.now(UTC)
    result = mg(
        "schedule", "--at", "2099-01-09T22:00Z", "--for", "2h", "--announce", "1d",
        "--reason", "DB migration", "--retry-after", "10m", "--mode", "read_only",
    )  # fmt: skip
    window_id = scheduled(result)
    start, end = datetime(2099, 1, 9, 22, tzinfo=UTC), datetime(2099, 1, 10, 0, tzinfo=UTC)
    assert f"once:        {shown(start, end)} (starts in " in result.out
    assert "announce:    1 d before" in result.out and "reason:      DB migration" in result.out
    assert f"cancel it with: maintguard schedule cancel {window_id}" in result.out
    (seen,) = stored_windows(state)  # what an app reading the store sees
    assert (seen.id, seen.start, seen.end, seen.every) == (window_id, start, end, None)
    assert (seen.announce, seen.retry_after, seen.mode) == (timedelta(days=1), 600, "read_only")

    listed = mg("schedule", "list")
    assert listed.code == 0, listed
    assert listed.out.startswith("1 window planned — LocalFileBackend(")
    line = next(x for x in listed.out.splitlines() if x.startswith(window_id))
    assert line.startswith(f"{window_id}  {shown(start, end)}  once  announce 1 d  by ")
    assert "@" in line.split("  by ")[1] and line.endswith("  reason: DB migration")
    assert not occurrence_lines(listed.out, "    - ")  # a one-off window has just the one

    data = mg("schedule", "list", "--json").json()
    assert isinstance(data, list) and len(data) == 1
    (window,) = data
    assert set(window) == WINDOW_FIELDS
    assert window["id"] == window_id
    assert (window["start"], window["end"]) == (
        "2099-01-09T22:00:00+00:00",
        "2099-01-10T00:00:00+00:00",
    )
    assert (window["every"], window["tz"], window["announce"]) == (None, None, 86400)
    assert (window["reason"], window["retry_after"], window["mode"]) == (
        "DB migration",
        600,
        "read_only",
    )
    created = datetime.fromisoformat(window["created"])
    assert created.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= created <= datetime.now(UTC)
    assert window["by"] == seen.by and "@" in window["by"]


def test_schedule_in_a_duration_until_a_time(mg: Run, state: Path) -> None:
    until = (datetime.now(UTC) + timedelta(hours=3)).replace(microsecond=0)
    before = datetime.now(UTC)
    window_id = scheduled(mg("schedule", "--in", "1h", "--until", iso(until)))
    after = datetime.now(UTC)
    (seen,) = stored_windows(state)
    assert seen.id == window_id and seen.end == until
    assert before + timedelta(hours=1) <= seen.start <= after + timedelta(hours=1)


def test_schedule_in_zero_is_in_force_at_once(mg: Run, state: Path) -> None:
    result = mg("schedule", "--in", "0", "--for", "1h", "--reason", "now")
    window_id = scheduled(result)
    assert "(in force now)" in result.out
    assert store_state(state).active  # every app reading the store is in maintenance
    assert store_state(state).next_window.id == window_id  # type: ignore[union-attr]


def spring_forward_night(year: int) -> date:
    """The March night of ``year`` when Berlin's clocks jump from 02:00 to 03:00."""
    for day in range(25, 32):
        wall = datetime(year, 3, day, 2, 30)
        if (
            wall.replace(tzinfo=BERLIN).astimezone(UTC).astimezone(BERLIN).replace(tzinfo=None)
            != wall
        ):
            return wall.date()  # 02:30 does not exist that night
    raise AssertionError(f"no spring-forward night in March {year}")


def fall_back_night(year: int) -> date:
    """The October night of ``year`` when Berlin's clocks go back from 03:00 to 02:00."""
    for day in range(25, 32):
        wall = datetime(year, 10, day, 2, 30, tzinfo=BERLIN)
        if wall.utcoffset() != wall.replace(fold=1).utcoffset():
            return wall.date()  # 02:30 happens twice that night
    raise AssertionError(f"no fall-back night in October {year}")


def test_a_recurring_window_over_the_spring_forward_night_in_berlin(mg: Run, state: Path) -> None:
    # Next year's night (2027-03-28 when this was written): always ahead, never slept to.
    night = spring_forward_night(datetime.now(UTC).year + 1)
    days = [night + timedelta(days=n) for n in range(-1, 4)]
    starts = [
        datetime.combine(day, daytime(3, 0) if day == night else daytime(2, 30), tzinfo=BERLIN)
        for day in days
    ]  # that night 02:30 does not exist: cron runs at the first minute after the jump
    utc_starts = [s.astimezone(UTC) for s in starts]
    assert [s.time() for s in utc_starts] == [daytime(1, 30), daytime(1, 0)] + [daytime(0, 30)] * 3
    expected = [shown(s, s + timedelta(hours=1), BERLIN) for s in utc_starts]
    assert "03:00:00 CEST" in expected[1] and "01:00:00 UTC" in expected[1]

    at = datetime.combine(days[0], daytime(0, 0), tzinfo=UTC)
    result = mg(
        "schedule", "--every", "30 2 * * *", "--tz", "Europe/Berlin", "--for", "1h",
        "--at", iso(at), "--announce", "15m",
    )  # fmt: skip
    window_id = scheduled(result)
    assert "recurs:      every '30 2 * * *' in Europe/Berlin, 1 h each" in result.out
    assert occurrence_lines(result.out, "    ") == expected

    listed = mg("schedule", "list")
    assert listed.code == 0, listed
    line = next(x for x in listed.out.splitlines() if x.startswith(window_id))
    first = shown(utc_starts[0], utc_starts[0] + timedelta(hours=1))
    assert line.startswith(
        f"{window_id}  {first}  every '30 2 * * *' in Europe/Berlin  announce 15 min  by "
    )
    assert line.endswith("  reason: -")
    assert occurrence_lines(listed.out, "    - ") == expected

    (window,) = mg("schedule", "list", "--json").json()
    assert (window["every"], window["tz"], window["announce"]) == (
        "30 2 * * *",
        "Europe/Berlin",
        900,
    )
    assert window["start"] == utc_starts[0].isoformat()
    data = mg("status", "--json").json()
    assert data["phase"] == "off" and data["next_window"]["id"] == window_id
    assert [w.start for w in stored_windows(state)] == [utc_starts[0]]


def test_a_recurring_window_over_the_fall_back_night_in_berlin(mg: Run) -> None:
    night = fall_back_night(datetime.now(UTC).year + 1)
    days = [night + timedelta(days=n) for n in (-1, 0, 1)]
    # 02:30 happens twice that night (CEST, then CET): cron runs at the first one only
    starts = [datetime.combine(d, daytime(2, 30), tzinfo=BERLIN).astimezone(UTC) for d in days]
    assert [s.time() for s in starts] == [daytime(0, 30), daytime(0, 30), daytime(1, 30)]
    second = datetime.combine(night, daytime(2, 30), tzinfo=BERLIN).replace(fold=1).astimezone(UTC)
    assert second.time() == daytime(1, 30)
    at = datetime.combine(days[0], daytime(0, 0), tzinfo=UTC)
    result = mg(
        "schedule", "--every", "30 2 * * *", "--tz", "Europe/Berlin", "--for", "30m",
        "--at", iso(at),
    )  # fmt: skip
    scheduled(result)
    listed = occurrence_lines(result.out, "    ")
    assert listed[:3] == [shown(s, s + timedelta(minutes=30), BERLIN) for s in starts]
    assert f"{second:%Y-%m-%d %H:%M:%S} UTC" not in result.out  # the repeated 02:30: no run


def test_status_shows_an_announced_window_and_exits_0(mg: Run) -> None:
    window_id = scheduled(
        mg("schedule", "--in", "1h", "--for", "30m", "--announce", "2h", "--reason", "DB upgrade")
    )
    status = mg("status")
    assert status.code == 0, status  # announced: not on yet
    assert status.out.startswith("maintenance is off, ANNOUNCED: a planned window starts in ")
    assert f"  next window: {window_id}, announced" in status.out
    assert "    reason:    DB upgrade" in status.out
    assert "    announce:  2 h before" in status.out
    assert re.search(r"    start: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in ", status.out)
    assert re.search(r"    end: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in ", status.out)

    result = mg("status", "--json")
    assert result.code == 0
    data = result.json()
    assert (data["active"], data["phase"]) == (False, "announced")
    window = data["next_window"]
    assert set(window) == WINDOW_FIELDS
    assert (window["id"], window["reason"], window["announce"]) == (window_id, "DB upgrade", 7200)
    start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
    assert start.utcoffset() == timedelta(0) and end - start == timedelta(minutes=30)
    assert timedelta(minutes=58) < start - datetime.now(UTC) <= timedelta(hours=1)


def test_status_shows_the_next_window_before_its_announcement(mg: Run) -> None:
    window_id = scheduled(mg("schedule", "--in", "3h", "--for", "30m", "--announce", "1h"))
    status = mg("status")
    assert status.code == 0, status
    assert status.out.startswith("maintenance is off — ")
    assert f"  next window: {window_id}\n" in status.out
    data = mg("status", "--json").json()
    assert data["phase"] == "off" and data["next_window"]["id"] == window_id


def test_status_json_has_no_next_window_when_none_is_planned(mg: Run) -> None:
    data = mg("status", "--json").json()
    assert data["next_window"] is None and data["phase"] == "off"
    assert "window" not in mg("status").out


def test_status_while_a_window_keeps_maintenance_on_exits_1(mg: Run) -> None:
    window_id = scheduled(mg("schedule", "--in", "0", "--for", "1h", "--reason", "planned"))
    status = mg("status")
    assert status.code == 1, status
    assert status.out.startswith("maintenance is ON — ")
    assert f"on through:  the planned window {window_id}" in status.out
    assert f"  window:      {window_id}, in force" in status.out
    result = mg("status", "--json")
    assert result.code == 1
    data = result.json()
    assert (data["active"], data["phase"], data["reason"]) == (True, "on", "planned")
    assert data["explicit"] is False and data["holds"] == []
    assert data["next_window"]["id"] == window_id
    assert data["until"] == data["next_window"]["end"]  # windows alone: until their end


def test_off_during_a_one_off_window_removes_it(mg: Run, state: Path) -> None:
    window_id = scheduled(mg("schedule", "--in", "0", "--for", "1h"))
    result = mg("off")
    assert result.code == 0, result
    line = result.out.splitlines()[0]
    assert line.startswith(f"window {window_id} removed (it was in force from "), result
    assert "maintenance is off — " in result.out
    assert mg("status").code == 0
    assert mg("schedule", "list", "--json").json() == []
    assert mg("status", "--json").json()["next_window"] is None
    assert not store_state(state).active and stored_windows(state) == []


def test_off_during_a_recurring_window_ends_this_occurrence_and_it_recurs(
    mg: Run, state: Path
) -> None:
    # Daily from midnight UTC, a day long: an occurrence is always in force.
    midnight = datetime.combine(datetime.now(UTC).date(), daytime(0, 0), tzinfo=UTC)
    result = mg("schedule", "--every", "0 0 * * *", "--for", "1d", "--at", iso(midnight))
    window_id = scheduled(result)
    assert "(in force now)" in result.out
    assert mg("status").code == 1

    result = mg("off")
    assert result.code == 0, result
    found = re.search(
        rf"^window {window_id}: this occurrence \((.+) UTC to (.+) UTC\) ended; "
        r"it recurs at (.+) UTC$",
        result.out,
        re.MULTILINE,
    )
    assert found is not None, result
    start, end, recurs = (
        datetime.strptime(t, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for t in found.groups()
    )
    assert start <= datetime.now(UTC) < end == recurs == start + timedelta(days=1)
    assert start.time() == daytime(0, 0)

    status = mg("status", "--json")
    assert status.code == 0, status
    assert status.json()["next_window"]["start"] == recurs.isoformat()
    assert [w["start"] for w in mg("schedule", "list", "--json").json()] == [recurs.isoformat()]
    assert not store_state(state).active  # the apps too


def test_off_still_says_when_holds_keep_maintenance_on_during_a_window(
    mg: Run, holder: Callable[..., subprocess.Popen[str]]
) -> None:
    holder(reason="nightly reindex")
    window_id = scheduled(mg("schedule", "--in", "0", "--for", "1h"))
    result = mg("off")
    assert result.code == 1, result
    assert f"window {window_id} removed" in result.out
    assert "maintenance stays on: 1 hold is live" in result.err
    assert mg("schedule", "list", "--json").json() == []


def test_off_on_a_scope_during_a_global_window_says_why_it_stays_on(mg: Run, state: Path) -> None:
    window_id = scheduled(mg("schedule", "--in", "0", "--for", "1h"))
    assert mg("status", "--scope", "billing").code == 1  # a named scope follows the global
    result = mg("off", "--scope", "billing")
    assert result.code == 1, result
    assert f"maintenance stays on: window {window_id} is in force until " in result.err
    assert "a window of the global scope: `maintguard off` ends it" in result.err
    assert [w.id for w in stored_windows(state)] == [window_id]  # left alone
    assert mg("off").code == 0
    assert mg("status", "--scope", "billing").code == 0


def test_schedule_cancel(mg: Run, state: Path) -> None:
    window_id = scheduled(mg("schedule", "--at", "2099-01-09T22:00Z", "--for", "2h"))
    other = scheduled(mg("schedule", "--at", "2099-02-09T22:00Z", "--for", "2h"))
    result = mg("schedule", "cancel", window_id)
    assert result.code == 0, result
    assert result.out.startswith(f"window {window_id} cancelled — LocalFileBackend(")
    assert [w["id"] for w in mg("schedule", "list", "--json").json()] == [other]
    assert [w.id for w in stored_windows(state)] == [other]

    again = mg("schedule", "cancel", window_id)
    assert again.code == 1, again
    line = one_line(again)
    assert f"no window {window_id} in LocalFileBackend(" in line
    assert "`maintguard schedule list` lists the windows planned" in line
    assert [w.id for w in stored_windows(state)] == [other]


def test_schedule_cancel_in_the_wrong_scope_says_where_the_window_is(mg: Run) -> None:
    window_id = scheduled(mg("schedule", "--at", "2099-01-09T22:00Z", "--for", "2h"))
    result = mg("schedule", "cancel", window_id, "--scope", "billing")
    assert result.code == 1, result
    line = one_line(result)
    assert f"no window {window_id} (scope billing)" in line
    assert "the global scope has it: leave out --scope" in line
    assert "`maintguard schedule list --scope billing`" in line
    assert len(mg("schedule", "list", "--json").json()) == 1


def test_windows_of_a_named_scope(mg: Run, state: Path) -> None:
    window_id = scheduled(
        mg("schedule", "--scope", "billing", "--in", "1h", "--for", "1h", "--announce", "2h")
    )
    assert mg("schedule", "list", "--json").json() == []  # the global scope has none
    assert [w["id"] for w in mg("schedule", "list", "--scope", "billing", "--json").json()] == [
        window_id
    ]
    # --scope before `list` counts too
    before = mg("schedule", "--scope", "billing", "list", "--json")
    assert [w["id"] for w in before.json()] == [window_id]
    assert "(scope billing)" in mg("schedule", "list", "--scope", "billing").out
    assert mg("status", "--scope", "billing", "--json").json()["phase"] == "announced"
    assert mg("status", "--json").json()["next_window"] is None
    assert [w.id for w in stored_windows(state, "billing")] == [window_id]
    assert mg("schedule", "cancel", window_id, "--scope", "billing").code == 0
    assert stored_windows(state, "billing") == []


def test_schedule_backend_before_or_after_the_command(mg: Run, tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    plain = environment()
    window_id = scheduled(
        mg("--backend", f"file:{a}", "schedule", "--in", "1h", "--for", "1h", env=plain)
    )
    assert len(mg("schedule", "list", "--json", "--backend", f"file:{a}", env=plain).json()) == 1
    assert len(mg("schedule", "--backend", f"file:{a}", "list", "--json", env=plain).json()) == 1
    assert mg("schedule", "list", "--json", "--backend", f"file:{b}", env=plain).json() == []
    result = mg("schedule", "cancel", window_id, "--backend", f"file:{b}", env=plain)
    assert result.code == 1 and f"--backend file:{b}" in one_line(result)  # how to list there
    result = mg("schedule", "cancel", window_id, "--backend", f"file:{a}", env=plain)
    assert result.code == 0, result
    assert stored_windows(a) == []


def windows_document(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"w{i:03}", "start": "2099-01-01T00:00:00+00:00", "end": "2099-01-01T01:00:00+00:00"}
        for i in range(count)
    ]


def test_a_scope_keeps_at_most_100_windows(mg: Run, state: Path) -> None:
    write_store(state, version=2, windows=windows_document(100))
    assert len(stored_windows(state)) == 100
    result = mg("schedule", "--in", "1h", "--for", "1h")
    assert result.code == 2, result
    line = one_line(result)
    assert "at most 100 windows" in line and "schedule cancel" in line
    assert len(stored_windows(state)) == 100
    scheduled(mg("schedule", "--scope", "billing", "--in", "1h", "--for", "1h"))  # its own 100
    assert mg("schedule", "cancel", "w000").code == 0
    scheduled(mg("schedule", "--in", "1h", "--for", "1h"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--for", "1h"], "a one-off window needs its start: --at TIME"),
        (["--reason", "x"], "--in DURATION"),
        (["--in", "1h"], "--for DURATION (e.g. 1h) or --until TIME"),
        (["--at", "2099-01-01T00:00", "--for", "1h"],
         "--at 2099-01-01T00:00:00 has no time zone"),
        (["--in", "1h", "--until", "2099-01-01T03:00"], "--until 2099-01-01T03:00:00 has no"),
        (["--at", "tomorrow", "--for", "1h"], "argument --at: 'tomorrow' is not an ISO 8601 time"),
        (["--at", "2099-01-01T00:00Z", "--in", "1h", "--for", "1h"], "not allowed with argument"),
        (["--in", "1h", "--for", "1h", "--until", "2099-01-01T00:00Z"], "not allowed with"),
        (["--in", "1h", "--for", "0s"], "argument --for: '0s' is not a duration longer than zero"),
        (["--in", "1h", "--for", "5x"], "argument --for: '5x' is not a duration"),
        (["--in", "-5m", "--for", "1h"], "argument --in: "),
        (["--every", "61 * * * *", "--for", "1h"],
         "--every '61 * * * *' is not a valid cron expression"),
        (["--every", "0 3 * *", "--for", "1h"], "--every must be a 5-field cron expression"),
        (["--every", "0 0 0 3 * *", "--for", "1h"], "--every must be a 5-field cron expression"),
        (["--every", "0 3 * * *", "--tz", "Mars/Olympus", "--for", "1h"],
         "--tz 'Mars/Olympus' is not a known IANA time zone"),
        (["--in", "1h", "--for", "1h", "--tz", "Europe/Berlin"], "--tz goes with --every"),
        (["--every", "0 3 * * *"], "--every needs --for DURATION"),
        (["--every", "0 3 * * *", "--until", "2099-01-01T00:00Z"],
         "--until goes with a one-off window"),
        (["--at", "2099-01-02T00:00Z", "--until", "2099-01-01T00:00Z"],
         "--until (2099-01-01T00:00:00+00:00) must be after --at (2099-01-02T00:00:00+00:00)"),
        (["--at", "2099-01-01T00:00Z", "--until", "2099-01-01T00:00Z"], "must be after --at"),
        (["--at", "2020-01-01T00:00Z", "--for", "1h"],
         "--at and --for: the window is in the past: it ended at 2020-01-01T01:00:00+00:00"),
        (["--at", "2020-01-01T00:00Z", "--until", "2020-01-02T00:00Z"],
         "--at and --until: the window is in the past"),
        (["--at", "2099-01-01T00:00Z", "--until", "2100-06-01T00:00Z"],
         "--until: a window must last at most a year"),
        (["--in", "1h", "--for", "400d"], "argument --for: '400d' is longer than a year"),
        (["--every", "0 3 * * *", "--for", "400d"], "argument --for: '400d' is longer than a year"),
        (["--in", "400d", "--for", "1h"], "argument --in: '400d' is longer than a year"),
        (["--in", "1h", "--for", "1h", "--announce", "400d"], "argument --announce: "),
        (["--at", "9999-12-31T23:59Z", "--for", "1h"], "--at: out of range"),
        (["--in", "1h", "--for", "1h", "--mode", "sideways"], "'sideways' is not a mode"),
        (["--in", "1h", "--for", "1h", "--retry-after", "-3"], "argument --retry-after: "),
        (["--in", "1h", "--for", "1h", "--scope", " "], "a scope is a non-empty name"),
        (["--at", "2099-01-01T00:00Z", "list"], "--at plans a window: it does not go with"),
        (["--every", "0 3 * * *", "cancel", "abc"], "--every plans a window: it does not go"),
        (["list", "--at", "2099-01-01T00:00Z"], "unrecognized arguments: --at"),
        (["list", "extra"], "unrecognized arguments: extra"),
        (["cancel"], "the following arguments are required: ID"),
        (["cancel", " "], "a window id is a name such as"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)  # fmt: skip
def test_bad_schedule_input_is_one_line_exit_2_and_writes_nothing(
    mg: Run, state: Path, args: list[str], message: str
) -> None:
    result = mg("schedule", *args)
    assert result.code == 2, result
    line = one_line(result)
    assert message in line, line
    assert not state.exists()  # nothing was written


@pytest.mark.parametrize(
    ("args", "tz", "suggested"),
    [
        ([], "UTC", "add one, e.g. 2099-07-01T00:00:00Z (UTC)"),
        ([], "Asia/Tokyo", "or 2099-07-01T00:00:00+09:00 (this machine's local time, JST)"),
        (["--every", "30 2 * * *", "--tz", "Europe/Berlin"], "UTC",
         "or 2099-07-01T00:00:00+02:00 (Europe/Berlin)"),
    ],
)  # fmt: skip
def test_an_at_without_a_zone_says_how_to_write_it(
    mg: Run, args: list[str], tz: str, suggested: str
) -> None:
    result = mg("schedule", "--at", "2099-07-01T00:00", "--for", "1h", *args, tz=tz)
    assert result.code == 2, result
    line = one_line(result)
    assert line.startswith("maintguard: --at 2099-07-01T00:00:00 has no time zone"), line
    assert suggested in line, line
    given = re.findall(r"(2099-\S+) \(", line)[-1]  # the time to paste: taken as it is
    window_id = scheduled(mg("schedule", "--at", given, "--for", "1h", *args, tz=tz))
    (window,) = mg("schedule", "list", "--json").json()
    assert window["id"] == window_id
    first = datetime(2099, 7, 1, 2, 30, tzinfo=BERLIN) if args else datetime.fromisoformat(given)
    assert datetime.fromisoformat(window["start"]) == first  # (recurring: its first run after)


def test_the_env_backend_cannot_store_windows_and_says_what_to(mg: Run) -> None:
    for args in (["schedule", "--in", "1h", "--for", "1h"], ["schedule", "list"],
                 ["schedule", "cancel", "abc"]):  # fmt: skip
        result = mg(*args, "--backend", "env:APP_MODE", env=environment())
        assert result.code == 2, result
        line = one_line(result)
        assert line.startswith("maintguard: --backend: EnvVarBackend(APP_MODE) cannot store")
        assert "use a file or Redis store" in line
        assert "--backend file:" in line and "MAINTGUARD_BACKEND" in line
        result = mg(*args, env=environment(MAINTGUARD_BACKEND="env:APP_MODE"))
        assert result.code == 2 and "MAINTGUARD_BACKEND: EnvVarBackend" in one_line(result)
        result = mg(*args, env=environment())  # no store chosen: the default is the env
        assert result.code == 2, result
        line = one_line(result)
        assert "no store chosen" in line and "cannot store windows" in line
    # status reads the environment variable as before: no window there
    data = mg("status", "--json", "--backend", "env:APP_MODE", env=environment()).json()
    assert data["next_window"] is None


def test_schedule_on_a_store_that_cannot_be_read_is_exit_3(mg: Run, state: Path) -> None:
    state.write_text("{not json")
    for args in (["schedule", "--in", "1h", "--for", "1h"], ["schedule", "list"],
                 ["schedule", "list", "--json"], ["schedule", "cancel", "abc"]):  # fmt: skip
        result = mg(*args)
        assert (result.code, result.out) == (3, ""), result
        assert "does not hold a maintenance state" in one_line(result)
    assert state.read_text() == "{not json"  # never overwritten


def test_schedule_list_with_no_windows(mg: Run) -> None:
    result = mg("schedule", "list")
    assert result.code == 0, result
    assert result.out.startswith("no windows planned — LocalFileBackend(")
    assert mg("schedule", "list", "--json").json() == []


def test_schedule_help(mg: Run) -> None:
    text = " ".join(mg("schedule", "--help").out.split())
    for option in ("--at TIME", "--in DURATION", "--for DURATION", "--until TIME",
                   "--every CRON", "--tz ZONE", "--announce DURATION", "--reason",
                   "--retry-after", "--mode", "--scope", "list", "cancel"):  # fmt: skip
        assert option in text, option
    assert "a time without one is refused" in text
    assert "env:VAR cannot store windows" in text
    assert "--json" in mg("schedule", "list", "--help").out
    assert "ID" in mg("schedule", "cancel", "--help").out


# -- history: the audit trail ------------------------------------------------------------


def test_history_lists_changes_newest_first_in_text_and_json(mg: Run) -> None:
    assert mg("on", "--reason", "DB upgrade").code == 0
    window = mg("schedule", "--in", "1h", "--for", "10m", "--scope", "billing").out.split()[1]
    assert mg("off").code == 0
    result = mg("history")
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert len(lines) == 3, result
    assert " off — " in lines[0] and lines[0].endswith("maintguard/__main__.py off")
    assert f"window scheduled {window}, scope billing — " in lines[1]
    assert "on, reason 'DB upgrade' — " in lines[2] and "on --reason DB upgrade" in lines[2]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC  ", line) for line in lines)
    data = mg("history", "--json").json()
    assert [(e["kind"], e["scope"], e["reason"], e["window"]) for e in data] == [
        ("off", None, None, None),
        ("window scheduled", "billing", None, window),
        ("on", None, "DB upgrade", None),
    ]
    for entry in data:
        assert datetime.fromisoformat(entry["at"]).utcoffset() == timedelta(0)
        assert entry["actor"] == f"{getpass.getuser()}@{HOST}"
        assert entry["pid"] > 0 and entry["pid"] != os.getpid() and entry["holds"] == []
    assert len({entry["pid"] for entry in data}) == 3  # three commands, three processes
    assert data[2]["command"].endswith("maintguard/__main__.py on --reason DB upgrade")
    assert [e["kind"] for e in mg("history", "--json", "--limit", "1").json()] == ["off"]
    only = mg("history", "--json", "--scope", "billing").json()
    assert [e["kind"] for e in only] == ["window scheduled"]


def test_history_with_nothing_recorded(mg: Run) -> None:
    result = mg("history")
    assert result.code == 0, result
    assert result.out.startswith("no changes recorded — LocalFileBackend(")
    assert mg("history", "--json").json() == []


@pytest.mark.parametrize("limit", ["0", "-3", "ten", "1.5", ""])
def test_history_refuses_a_bad_limit_in_one_line(mg: Run, limit: str) -> None:
    result = mg("history", "--limit", limit)
    assert (result.code, result.out) == (2, ""), result
    line = one_line(result)
    assert "--limit" in line and "see maintguard history --help" in line


def test_history_off_force_records_the_holds_removed(mg: Run, state: Path) -> None:
    write_store(state, hold_record(id="dead-1", pid=999999), hold_record(id="dead-2", pid=999998))
    assert mg("off", "--force").code == 0
    [removed, off] = mg("history", "--json").json()
    assert (removed["kind"], sorted(removed["holds"])) == ("holds removed", ["dead-1", "dead-2"])
    assert off["kind"] == "off"


def test_history_of_a_store_that_cannot_be_read_or_keeps_none(mg: Run, state: Path) -> None:
    state.write_text("{not json")
    result = mg("history")
    assert (result.code, result.out) == (3, ""), result
    assert "does not hold a maintenance state" in one_line(result)
    result = mg("history", env=environment(MAINTGUARD_BACKEND="env:APP_MODE"))
    assert result.code == 2 and "keeps no audit trail" in one_line(result)
