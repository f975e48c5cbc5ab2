"""``maintguard run``: hold maintenance exactly while a command runs, however it ends.

The command is looked up before the hold is taken (a typo never switches maintenance on).
Signals an operator or a supervisor sends to maintguard reach the command once:

- SIGTERM, SIGHUP, SIGUSR1, SIGUSR2 are forwarded;
- in a terminal's foreground the command shares maintguard's process group, so the
  terminal's Ctrl-C (SIGINT) and Ctrl-\\ (SIGQUIT) reach it directly and maintguard lets
  them pass it by (never sent twice);
- elsewhere (a CI job, a container, a background job) the command gets a process group of
  its own, and SIGINT and SIGQUIT are forwarded like the rest (a signal sent to
  maintguard's whole group then still reaches the command once).

A signal that arrives before the command has started (while the hold drains) ends the
hold, and maintguard exits with 128+N. The hold is released on every way out.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import Any

__all__ = [
    "NOT_EXECUTABLE",
    "NOT_FOUND",
    "Signalled",
    "describe",
    "find",
    "run_held",
    "signal_name",
]

NOT_EXECUTABLE = 126
NOT_FOUND = 127
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
TERMINAL = (signal.SIGINT, signal.SIGQUIT)  # what a terminal sends its foreground group


class Signalled(BaseException):
    """A signal ended maintguard before the command started (the hold is left)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def find(command: str) -> tuple[int, str] | None:
    """None when ``command`` can be run; else the exit code (126, 127) and what is wrong."""
    if os.sep in command:
        if not os.path.exists(command):
            return NOT_FOUND, f"{command}: no such file"
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            return (
                NOT_EXECUTABLE,
                f"{command}: not executable (chmod +x it, or run its interpreter)",
            )
        return None
    if shutil.which(command) is None:
        return NOT_FOUND, f"{command}: command not found (is it on PATH?)"
    return None


def describe(argv: Sequence[str], limit: int = 200) -> str:
    text = shlex.join(argv)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Relay:
    """Signal handlers: to the command once it runs, else they end maintguard."""

    def __init__(self, own_group: bool) -> None:
        # Sharing the terminal's foreground group, the command got SIGINT and SIGQUIT
        # from the terminal itself: those are not sent again.
        self.passed_by = () if own_group else TERMINAL
        self.child: subprocess.Popen[bytes] | None = None
        self.spawning = False
        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in FORWARDED + TERMINAL:
            self.previous[signum] = signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        child = self.child
        if child is not None:
            if signum not in self.passed_by:
                child.send_signal(signum)  # nothing when it has ended and been waited for
        elif self.spawning:
            self.pending.append(signum)
        else:
            raise Signalled(signum)

    def started(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self.spawning = False
        for signum in self.pending:
            self.handle(signum, None)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def in_terminal_foreground() -> bool:
    """True when a terminal's Ctrl-C would reach this process's group."""
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def run_held(
    argv: Sequence[str], hold: AbstractContextManager[Any], say: Callable[[str], None]
) -> int:
    """Run ``argv`` inside ``hold``; return the exit code to exit with.

    Raises what entering the hold raises (nothing of the hold remains then), and
    :class:`Signalled` when a signal ended maintguard before the command started.
    """
    own_group = not in_terminal_foreground()
    relay = _Relay(own_group)
    relay.install()
    try:
        with hold:
            say(f"maintenance held while running: {describe(argv)}")
            relay.spawning = True
            try:
                child = subprocess.Popen(list(argv), **_group_options(own_group))
            except OSError as exc:
                relay.spawning = False
                code = NOT_FOUND if isinstance(exc, FileNotFoundError) else NOT_EXECUTABLE
                say(f"cannot run {argv[0]}: {exc.strerror or exc}; hold released")
                _exit_if_signalled(relay)
                return code
            relay.started(child)
            returncode = child.wait()
        code = 128 - returncode if returncode < 0 else returncode
        how = (
            f"was killed by {signal_name(-returncode)}"
            if returncode < 0
            else f"exited with {returncode}"
        )
        say(f"{describe(argv, 60)} {how}; hold released")
        return code
    finally:
        relay.restore()


def _exit_if_signalled(relay: _Relay) -> None:
    if relay.pending:
        raise Signalled(relay.pending[0])


def _group_options(own_group: bool) -> dict[str, Any]:
    if not own_group:
        return {}
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"start_new_session": True}  # pragma: no cover - Python 3.10


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
