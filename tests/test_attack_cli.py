"""An outside attacker's and a demanding user's attacks on the ``maintguard`` command and
the pytest plugin: real processes on a file store in a temp folder (a pty where a terminal
matters), and ``pytester`` runs for the plugin.

Tests marked ``xfail(strict=True)`` demonstrate a bug: each asserts the behaviour README.md
("Operators: the `maintguard` command", "Testing your app") promises, and
fails on the code as it stands. Tests under a ``# Review:`` comment failed on the code as
first reviewed (e262f6c) and pass since the fixes in 40dfdf4. The others are attacks the
code withstood.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import starlette.testclient  # noqa: F401 - before pytester's runs snapshot sys.modules

import maintguard
import maintguard.starlette  # (see tests/test_pytest_plugin.py)
from maintguard import sync
from maintguard.backends import LocalFileBackend
from tests.cli import JOB_SCRIPT, ROOT, Run, environment, one_line, store_state

HOST = socket.gethostname()


def wait_for(ready: Callable[[], bool], proc: Any = None, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        if proc is not None:
            assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def hold_record(**fields: Any) -> dict[str, Any]:
    record = {
        "id": "attacker:1:abc",
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


# A process that holds maintenance on a scope of the store until its flag file is deleted.
HOLD_SCRIPT = """
import sys, time
from pathlib import Path
from maintguard import under_maintenance
from maintguard.backends import LocalFileBackend
backend = LocalFileBackend(sys.argv[1])
scope = sys.argv[3] or None
with under_maintenance(backend=backend, scope=scope, reason="held by " + sys.argv[3]):
    Path(sys.argv[2]).write_text("entered")
    while Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""


@pytest.fixture
def holder(state: Path, tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    procs: list[tuple[subprocess.Popen[str], Path]] = []

    def start(scope: str = "") -> subprocess.Popen[str]:
        flag = tmp_path / f"holding-{len(procs)}"
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(state), str(flag), scope],
            env=environment(),
            text=True,
        )
        procs.append((proc, flag))
        wait_for(flag.exists, proc)
        return proc

    yield start
    for proc, flag in procs:
        flag.unlink(missing_ok=True)
        proc.wait(20)


# The command for signal attacks: runs until its flag file goes (at most 20 s), noting its pid.
LOOPER = """
import os, sys, time
from pathlib import Path
flag = Path(sys.argv[1])
Path(sys.argv[2]).write_text(str(os.getpid()))
deadline = time.monotonic() + 20
while flag.exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""


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


# ============================================================================================
# Bad input: durations, times, scopes, backends — one line on stderr, exit 2 (run: 125)
# ============================================================================================


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


# Review: failed on e262f6c (fixed in 40dfdf4): an --until near the end of datetime's range
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


# Review: failed on e262f6c (fixed in 40dfdf4): show.local() converts stored times to local
# time without guarding the range: in a zone east of UTC an until near 9999-12-31 (which `on
# --until` accepts) makes `on` exit 3 after it wrote the state, and `status` exit 3 though
# the state was read: 'unexpected OverflowError: date value out of range (please report it)'
def test_times_near_the_end_of_the_calendar_show_in_an_eastern_zone(mg: Run, state: Path) -> None:
    result = mg("on", "--until", "9999-12-31T23:00Z", tz="Asia/Tokyo")
    assert result.code == 0, result
    result = mg("status", tz="Asia/Tokyo")
    assert result.code == 1, result
    assert result.out.startswith("maintenance is ON")


# Review: failed on e262f6c (fixed in 40dfdf4): a hold record from year 1 (hostile, or a
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


# Review: failed on e54d52f, which made it (fixed in 40dfdf4): backend_from_url now runs
# urlsplit() on every Redis URL before RedisBackend's own checks, so a malformed host such as
# 'redis://[::1' raises ValueError('Invalid IPv6 URL'): 'unexpected ValueError ... (please
# report it)', exit 3, where it was a one-line usage error (exit 2)
def test_a_redis_url_with_a_broken_ipv6_host_is_a_usage_error(mg: Run) -> None:
    result = mg("status", "--backend", "redis://[::1", env=environment())
    assert result.code == 2, result
    one_line(result)
    result = mg("run", "--backend", "redis://[::1", "--", "true", env=environment())
    assert result.code == 125, result


# Review: failed on e262f6c (fixed in 40dfdf4): file:~nosuchuser/... makes Path.expanduser()
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


# ============================================================================================
# Hostile or broken state files
# ============================================================================================


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


# Review: failed on e262f6c (fixed in 40dfdf4): a state path that is a FIFO (or any file
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


# Review: failed on e262f6c (fixed in 40dfdf4): a hold record of this host with a pid beyond
# a C long makes show._gone() call os.kill(pid, 0), which raises OverflowError (not
# OSError): `status` prints 'unexpected OverflowError ... (please report it)' and exits 3
# although the store was read (--json shows it fine)
def test_status_with_a_huge_pid_on_this_host(mg: Run, state: Path) -> None:
    write_store(state, hold_record(host=HOST, pid=10**30))
    assert mg("status", "--json").code == 1
    result = mg("status")
    assert result.code == 1, result
    assert f"pid {10**30}" in result.out


# Review: failed on e262f6c (fixed in 40dfdf4): status prints owners and reasons from the
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


# Review: failed on e262f6c (fixed in 40dfdf4): status writes '—' (and stored text) through
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


# ============================================================================================
# Output: closed and broken streams
# ============================================================================================


def shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", command],
        capture_output=True,
        text=True,
        env=environment(**env),
        cwd=ROOT,
        timeout=30,
    )


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


def mg_off(state: Path) -> int:
    return subprocess.run(
        [sys.executable, "-m", "maintguard", "off", "--backend", f"file:{state}"],
        capture_output=True, env=environment(), cwd=ROOT, timeout=30,
    ).returncode  # fmt: skip


# ============================================================================================
# run: command lines
# ============================================================================================


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


# ============================================================================================
# run: signals at awkward moments
# ============================================================================================


@pytest.fixture
def start_run(state: Path, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
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
            wait_for(pidfile.exists, proc)
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


# Review: failed on e262f6c (fixed in 40dfdf4): run handles only
# TERM/HUP/USR1/USR2/INT/QUIT; any other signal whose default action is to terminate
# (SIGALRM from `sv alarm`/`svc -a`, SIGXCPU from a CPU ulimit, SIGPROF, SIGVTALRM, SIGIO,
# SIGPWR...) kills maintguard outright: no release, the hold stays ON for its whole lease
# while the command runs on unheld
@pytest.mark.parametrize("signame", ["SIGALRM", "SIGXCPU"])
def test_no_signal_ends_run_with_the_hold_left_in_the_store(
    start_run: Callable[..., subprocess.Popen[str]], state: Path, signame: str
) -> None:
    proc = start_run()
    assert store_state(state).active
    os.kill(proc.pid, signal.Signals[signame])
    proc.wait(20)
    assert not store_state(state).active, "maintguard exited and its hold is still in the store"


def test_sigterm_to_a_command_that_ignores_it_keeps_the_hold_until_it_ends(
    start_run: Callable[..., subprocess.Popen[str]], state: Path, tmp_path: Path
) -> None:
    flag, pidfile = tmp_path / "stubborn", tmp_path / "stubborn.pid"
    flag.write_text("")
    script = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LOOPER
    proc = start_run(argv=[sys.executable, "-c", script, str(flag), str(pidfile)])
    wait_for(pidfile.exists, proc)
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


# Review: was a strict xfail; fixed
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


# Review: failed on e262f6c (fixed in 40dfdf4): without a terminal, run puts the command in
# a process group of its own but forwards signals to the command's pid only: a SIGTERM sent
# to the CI job's process group (what runners and `kill -TERM -PGID` do) no longer reaches
# the command's children (a `sh -c 'a && b'`, a wrapper script); the wrapper dies, the hold
# is released, and the real work goes on without maintenance. Forward to the group
def test_a_signal_to_the_jobs_group_still_reaches_the_commands_children(
    start_run: Callable[..., subprocess.Popen[str]], tmp_path: Path, state: Path
) -> None:
    flag, pidfile = tmp_path / "flag", tmp_path / "grandchild.pid"
    flag.write_text("")
    proc = start_run(argv=[sys.executable, "-c", GRANDPARENT, LOOPER, str(flag), str(pidfile)])
    wait_for(pidfile.exists, proc)
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


# Review: failed on e262f6c (fixed in 40dfdf4): in a terminal the command shares
# maintguard's process group, and a hangup (the terminal or SSH session closing; also the
# shell's SIGHUP to its jobs, `kill -HUP -PGID`) is delivered by the kernel to every process
# of that group — straight to the command, like Ctrl-C — yet maintguard forwards its own
# copy too: the command gets SIGHUP twice. (Sent at once, the two copies sometimes merge in
# the kernel, so the test delivers them one after the other, as the terminal's group
# delivery does)
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


# Review: failed on e262f6c (fixed in 40dfdf4): run decides 'terminal' from fds 0-2 only;
# run as a terminal's foreground job with its streams redirected (`maintguard run -- migrate
# </dev/null >log 2>&1`) it puts the command in a background process group, so a command
# that prompts on /dev/tty (ssh, sudo, psql, getpass) is stopped by SIGTTIN: maintguard
# waits forever with maintenance ON, and a forwarded SIGTERM stays pending on the stopped
# command
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


# ============================================================================================
# run: a store that fails mid-run
# ============================================================================================


def test_the_state_file_deleted_mid_run_ends_off(mg: Run, state: Path) -> None:
    result = mg("run", "--", "sh", "-c", f"rm {state}; exit 3")
    assert result.code == 3, result
    assert not store_state(state).active


# Review: failed on e262f6c (fixed in 40dfdf4): when the release write fails (here the lock
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


# ============================================================================================
# off --force: what it removes, what off says
# ============================================================================================


def test_off_force_on_a_scope_leaves_global_holds_and_global_off_leaves_scoped_ones(
    mg: Run, state: Path, holder: Callable[[str], subprocess.Popen[str]]
) -> None:
    everywhere = holder("")  # a global hold, which a named scope also shows
    in_billing = holder("billing")
    in_shop = holder("shop")
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
    mg: Run, holder: Callable[[str], subprocess.Popen[str]]
) -> None:
    holder("")
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


# ============================================================================================
# The library under the CLI: set_maintenance_mode's details
# ============================================================================================


# Review: failed on e262f6c (fixed in 40dfdf4): set_maintenance_mode checks retry_after,
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


# ============================================================================================
# Redis (the store of many servers)
# ============================================================================================


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


# ============================================================================================
# The pytest plugin
# ============================================================================================

_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore:Using `httpx` with:starlette.exceptions.StarletteDeprecationWarning
"""

plugin = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(_INI)
    return pytester


@plugin
def test_leaks_in_threads_generators_and_drains_are_reported_and_released(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import threading, time
        import pytest
        from maintguard import not_during_maintenance, sync, under_maintenance

        stop = threading.Event()
        keep = []

        def test_thread(maintenance):
            entered = threading.Event()
            def worker():
                with maintenance.hold(reason="thread"):
                    entered.set()
                    stop.wait(10)
            threading.Thread(target=worker, daemon=True).start()
            entered.wait(5)

        def test_suspended_generator(maintenance):
            @under_maintenance(reason="gen")
            def gen():
                yield 1
                yield 2
            g = gen()
            next(g)
            keep.append(g)

        def test_suspended_async_generator(maintenance):
            import asyncio
            @maintenance.hold(reason="agen")
            async def agen():
                yield 1
                yield 2
            g = agen()
            loop = asyncio.new_event_loop()
            loop.run_until_complete(g.__anext__())
            keep.append((g, loop))

        def test_drained(maintenance):
            maintenance.hold(reason="drained", drain=0.05).__enter__()

        def test_stuck_in_its_drain(maintenance):
            started, go = threading.Event(), threading.Event()
            keep.append(go)
            def job():
                with not_during_maintenance():
                    started.set()
                    go.wait(10)
            def drainer():
                with maintenance.hold(reason="draining", drain=3):
                    pass
            threading.Thread(target=job, daemon=True).start()
            started.wait(5)
            threading.Thread(target=drainer, daemon=True).start()
            deadline = time.monotonic() + 5
            while maintenance.state.phase.value != "draining":
                assert time.monotonic() < deadline
                time.sleep(0.01)

        def test_nested_entries_of_one_object(maintenance):
            hold = maintenance.hold(reason="twice")
            hold.__enter__()
            hold.__enter__()

        def test_the_leakers_exit_late_without_errors(maintenance):
            stop.set()
            keep[0].close()  # the suspended generator closes now: its hold was released
            g, loop = keep[1]
            loop.run_until_complete(g.aclose())
            loop.close()
            keep[2].set()
            time.sleep(0.2)
            assert not maintenance.active
            assert not sync.get_maintenance_mode()
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=7, errors=6)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_thread*",
            "*the test left 1 maintenance hold entered: the hold made at *(reason 'thread')*",
            "*(reason 'gen')*",
            "*(reason 'agen')*",
            "*(reason 'drained')*",
            "*(reason 'draining')*",
            "*(reason 'twice')*",
        ]
    )


@plugin
def test_a_task_the_loop_cancels_at_the_end_is_no_false_leak(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import asyncio
        import pytest

        seen = []

        @pytest.fixture(params=["asyncio"])
        def anyio_backend(request):
            return request.param

        async def job(maintenance):
            try:
                async with maintenance.hold(reason="task"):
                    await asyncio.sleep(30)
            finally:
                seen.append(maintenance)

        @pytest.mark.asyncio
        async def test_pytest_asyncio(maintenance):
            seen.append(asyncio.ensure_future(job(maintenance)))
            await asyncio.sleep(0.01)

        @pytest.mark.anyio
        async def test_anyio(maintenance, anyio_backend):
            seen.append(asyncio.ensure_future(job(maintenance)))
            await asyncio.sleep(0.01)

        def test_the_tasks_ended_and_released():
            helpers = [s for s in seen if not isinstance(s, asyncio.Future)]
            assert len(helpers) == 2
            assert not any(h.active for h in helpers)
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@plugin
# Review: failed on e262f6c (fixed in 40dfdf4): leak detection looks only at the fixture's
# own MemoryBackend: a test that calls maintguard.configure() (here a file store) and leaves
# a hold entered on that default passes, and the hold stays in the store for the next tests
def test_a_leak_on_a_default_configured_in_the_test_is_reported(inner: pytest.Pytester) -> None:
    path = inner.path / "state.json"
    inner.makepyfile(
        f"""
        import maintguard
        from maintguard import sync, under_maintenance
        from maintguard.backends import LocalFileBackend

        PATH = {str(path)!r}

        def test_configures_a_file_store_and_leaks(maintenance):
            maintguard.configure("file:" + PATH)
            under_maintenance(reason="configured").__enter__()

        def test_the_store_is_clean_again():
            assert not sync.get_maintenance_mode(LocalFileBackend(PATH))
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)


@plugin
# Review: was a strict xfail; fixed
def test_a_background_jobs_hold_is_no_leak_of_the_test_and_is_left_alone(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        import threading, time
        import pytest
        from maintguard import sync, under_maintenance
        from maintguard.backends import MemoryBackend

        JOBS = MemoryBackend()  # the scheduler's own store (a file or Redis in real life)
        seen = {"entries": 0, "inside": False, "lost": []}

        @pytest.fixture(scope="session")
        def scheduler():
            stop = threading.Event()
            def loop():
                hold = under_maintenance(backend=JOBS, reason="nightly job")
                while not stop.is_set():
                    with hold:  # a job of 1 s, held all along
                        seen["entries"] += 1
                        seen["inside"] = True
                        for _ in range(100):
                            time.sleep(0.01)
                            if not sync.get_maintenance_mode(JOBS):
                                seen["lost"].append(seen["entries"])
                                break
                        seen["inside"] = False
                    time.sleep(0.01)
            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            yield
            stop.set()
            thread.join(5)

        def test_holds_nothing_itself(scheduler, maintenance):
            start = seen["entries"]
            while not (seen["entries"] > start and seen["inside"]):  # a job began meanwhile
                time.sleep(0.005)

        def test_the_job_kept_its_maintenance(scheduler):
            time.sleep(0.2)
            assert seen["lost"] == []
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)


@plugin
@pytest.mark.xfail(
    strict=True,
    reason="KNOWN LIMIT: leak detection judges the fixture's store and the defaults a test "
    "set; a hold on a store of the test's own naming is not judged, since a background "
    "job's holds may be there (the same re-entry on the fixture's store is reported: "
    "tests/test_pytest_plugin.py)",
)
def test_a_leaked_entry_on_an_older_frame_is_reported(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_a_window="""
        import pytest
        from maintguard import under_maintenance
        from maintguard.backends import MemoryBackend

        STORE = MemoryBackend()
        window = under_maintenance(backend=STORE, reason="window")

        @pytest.fixture(scope="module")
        def maintenance_window():
            with window:
                yield

        def test_enters_the_window_again_and_leaves_it(maintenance_window, maintenance):
            window.__enter__()
        """,
        test_b_after="""
        from maintguard import sync
        from test_a_window import STORE

        def test_the_window_is_closed_after_its_module():
            assert not sync.get_maintenance_mode(STORE)
        """,
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)


@plugin
def test_configure_in_a_test_does_not_leak_into_the_next(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import maintguard
        from maintguard import sync
        from maintguard.backends import MemoryBackend
        from maintguard._core import resolve_backend

        outer = MemoryBackend()
        inner_store = MemoryBackend()

        def test_0_a_default_before():
            maintguard.configure(outer)

        def test_1_configures_inside(maintenance):
            maintguard.configure(inner_store)
            assert resolve_backend() is inner_store
            maintenance.on()  # the fixture's store, whatever the default is now
            assert maintenance.active and not sync.get_maintenance_mode()

        def test_2_fresh(maintenance):
            assert resolve_backend() is maintenance.backend
            assert not sync.get_maintenance_mode()

        def test_3_the_default_from_before_is_back():
            assert resolve_backend() is outer
            maintguard.configure(None)
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4)


@plugin
# Review: failed on e262f6c (fixed in 40dfdf4): the marker (and maintenance.on()) accept a
# reason that is not a string: @pytest.mark.maintenance(reason=123) or (True) run the test
# with state.reason == 123 instead of the error README promises for a bad option
def test_a_marker_with_a_non_string_reason_is_an_error(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.maintenance(reason=123)
        def test_number():
            pass

        @pytest.mark.maintenance(True)
        def test_bool():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*@pytest.mark.maintenance: *reason*"])


@plugin
# Review: failed on e262f6c (fixed in 40dfdf4): an until too far ahead (until=1e300,
# timedelta.max) raises OverflowError in check_until, which the fixture does not catch: a
# raw traceback instead of '@pytest.mark.maintenance: ...' naming the option
def test_a_marker_with_an_until_beyond_the_calendar_says_which_option(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(
        """
        from datetime import timedelta
        import pytest

        @pytest.mark.maintenance(until=1e300)
        def test_seconds():
            pass

        @pytest.mark.maintenance(until=timedelta.max)
        def test_timedelta():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*@pytest.mark.maintenance: *until*"] * 2)
    assert "OverflowError" not in result.stdout.str()


@plugin
def test_markers_with_odd_arguments_are_errors_that_say_why(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import pytest

        @pytest.mark.maintenance("a", "b")
        def test_two_positional():
            pass

        @pytest.mark.maintenance(scope="")
        def test_empty_scope():
            pass

        @pytest.mark.maintenance(mode=None)
        def test_no_mode():
            pass

        @pytest.mark.maintenance(until=-1)
        def test_past():
            pass

        @pytest.mark.maintenance(retry_after=float("nan"))
        def test_nan():
            pass

        @pytest.mark.maintenance(backend="memory:")
        def test_backend():
            pass

        @pytest.mark.maintenance(scope=["billing"])
        def test_list_scope():
            pass
        """
    )
    result = inner.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=7)
    assert result.stdout.str().count("@pytest.mark.maintenance: ") >= 7
    assert "Traceback" not in result.stdout.str()


@plugin
def test_a_middlewares_default_does_not_outlive_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        from starlette.applications import Starlette
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient
        from maintguard import MaintenanceModeMiddleware, sync
        from maintguard.backends import MemoryBackend
        from maintguard._core import resolve_backend

        async def home(request):
            return PlainTextResponse("home")

        def make_app(backend=None):
            app = Starlette(routes=[Route("/", home)])
            app.add_middleware(MaintenanceModeMiddleware, backend=backend)
            return app

        def test_1_an_app_with_the_fixtures_store(maintenance):
            with TestClient(make_app(maintenance.backend)) as client:
                maintenance.on()
                assert client.get("/").status_code == 503

        def test_2_no_fixture_no_stale_default():
            assert isinstance(resolve_backend(), type(resolve_backend()))
            assert not isinstance(resolve_backend(), MemoryBackend)
            assert not sync.get_maintenance_mode()

        def test_3_an_app_without_backend_follows_this_tests_store(maintenance):
            with TestClient(make_app()) as client:
                assert client.get("/").status_code == 200
                with maintenance.hold():
                    assert client.get("/").status_code == 503
        """
    )
    inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


@plugin
def test_the_plugin_under_anyio_trio_asyncio_and_pytest_asyncio(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        """
        import anyio
        import pytest
        import maintguard
        from maintguard import not_during_maintenance

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param

        @pytest.mark.anyio
        async def test_a_drain_waits_for_a_guarded_job(maintenance, anyio_backend):
            order = []
            release, started = anyio.Event(), anyio.Event()

            @not_during_maintenance()
            async def job():
                started.set()
                await release.wait()
                order.append("job")

            async def drainer():
                async with maintenance.hold(reason="drain", drain=10):
                    order.append("body")

            async with anyio.create_task_group() as tg:
                tg.start_soon(job)
                await started.wait()
                tg.start_soon(drainer)
                with anyio.fail_after(5):
                    while maintenance.state.phase.value != "draining":
                        await anyio.sleep(0.01)
                release.set()
            assert order == ["job", "body"]
            assert not maintenance.active

        @pytest.mark.anyio
        @pytest.mark.maintenance(reason="marked", scope="billing")
        async def test_marker_and_async_generator_hold(anyio_backend, maintenance):
            @maintenance.hold(reason="agen")
            async def agen():
                yield maintenance.state.reason
            async for reason in agen():
                assert reason == "agen"
            assert not maintenance.active
            assert (await maintguard.get_state(scope="billing")).reason == "marked"

        @pytest.mark.anyio
        async def test_cancelled_inside_a_hold(maintenance, anyio_backend):
            with anyio.move_on_after(0.05):
                async with maintenance.hold(reason="cancelled"):
                    await anyio.sleep(10)
            assert not maintenance.active

        @pytest.mark.asyncio
        async def test_pytest_asyncio_sync_hold_in_a_thread(maintenance):
            import asyncio
            def work():
                with maintenance.hold(reason="thread"):
                    return maintenance.state.reason
            assert await asyncio.to_thread(work) == "thread"
            assert not await maintguard.get_maintenance_mode()
        """
    )
    inner.runpytest("-p", "no:cacheprovider", "--strict-markers").assert_outcomes(passed=7)


@plugin
def test_the_same_session_twice_in_one_process(inner: pytest.Pytester) -> None:
    # As a runner that reuses its worker process (xdist-like) would: no state carries over.
    inner.makepyfile(
        """
        import pytest
        from maintguard import sync, under_maintenance

        hold = under_maintenance(reason="module-level object")

        @pytest.mark.maintenance(reason="marked")
        def test_marked():
            assert sync.get_state().reason == "marked"

        def test_module_level_hold_object(maintenance):
            with hold:
                assert maintenance.state.reason == "module-level object"
            assert not maintenance.active

        def test_leaks(maintenance):
            hold.__enter__()

        def test_off_again():
            assert not sync.get_maintenance_mode()
        """
    )
    for _ in range(2):
        inner.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=4, errors=1)
