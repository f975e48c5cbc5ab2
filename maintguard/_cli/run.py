"""``maintguard run``: hold maintenance exactly while a command runs, however it ends.

The command is looked up before the hold is taken (a typo never switches maintenance on).
Signals sent to maintguard reach the command once:

- Every signal whose default action would end maintguard (SIGTERM, SIGHUP, SIGUSR1,
  SIGUSR2, SIGALRM, SIGXCPU, real-time signals...) is caught, so maintguard always lives to
  release the hold, and forwarded to the command; one its caller ignores (``nohup``'s
  SIGHUP, a background job's SIGINT) stays ignored, for the command too.
- With a controlling terminal the command shares maintguard's process group, as a shell's
  job does: job control and /dev/tty work for it. While that group is the terminal's
  foreground group, SIGINT, SIGQUIT and SIGHUP are what the terminal itself sends the whole
  group (Ctrl-C, Ctrl-\\, a hang-up): they reached the command already and are not sent
  again.
- Without one (a CI job, a container, a service) the command gets a process group of its
  own, and every signal is forwarded to that group: a signal sent to maintguard, or to
  maintguard's group, reaches the command and its children once.

A signal that arrives before the command has started (while the hold drains) ends the
hold, and maintguard exits with 128+N. The hold is released on every way out.
"""

from __future__ import annotations

import contextlib
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
# The signals maintguard leaves alone: faults of its own, job control, and those that
# end nothing by default (or cannot be caught).
_LEFT = {
    getattr(signal, name)
    for name in (
        "SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP", "SIGSYS",
        "SIGCHLD", "SIGCONT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGWINCH", "SIGURG", "SIGPIPE",
    )
    if hasattr(signal, name)
}  # fmt: skip
RELAYED = tuple(sorted(s for s in signal.valid_signals() if s not in _LEFT))
TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)  # what a terminal sends its group


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

    def __init__(self, terminal: int | None) -> None:
        self.terminal = terminal  # the controlling terminal: the command shares our group
        self.child: subprocess.Popen[bytes] | None = None
        self.spawning = False
        self.pending: list[int] = []
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in RELAYED:
            try:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # ignored by our caller (nohup, `cmd &`): so for the command
                self.previous[signum] = signal.signal(signum, self.handle)
            except (OSError, ValueError):  # reserved by the C library on this system
                continue

    def handle(self, signum: int, frame: FrameType | None) -> None:
        child = self.child
        if child is None:
            if not self.spawning:
                raise Signalled(signum)
            self.pending.append(signum)
        elif child.returncode is None:  # (once waited for, its pid may be someone else's)
            if self.terminal is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signum)  # the command and its children
            elif not (signum in TERMINAL and self._foreground()):
                child.send_signal(signum)

    def _foreground(self) -> bool:
        # The terminal sent this to the whole foreground group: the command has it.
        try:
            return os.tcgetpgrp(self.terminal) == os.getpgrp()  # type: ignore[arg-type]
        except OSError:
            return False

    def started(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self.spawning = False
        for signum in self.pending:
            self.handle(signum, None)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def controlling_terminal() -> int | None:
    """A descriptor of this process's controlling terminal, or None: it has none."""
    try:
        return os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None


def run_held(
    argv: Sequence[str],
    hold: AbstractContextManager[Any],
    say: Callable[[str], None],
    released: Callable[[], str],
) -> int:
    """Run ``argv`` inside ``hold``; return the exit code to exit with. ``released()``
    says, once the hold is left, whether its release was stored.

    Raises what entering the hold raises (nothing of the hold remains then), and
    :class:`Signalled` when a signal ended maintguard before the command started.
    """
    terminal = controlling_terminal()
    relay = _Relay(terminal)
    relay.install()
    failed: OSError | None = None
    returncode = 0
    try:
        with hold:
            say(f"maintenance held while running: {describe(argv)}")
            relay.spawning = True
            try:
                child = subprocess.Popen(list(argv), **_group_options(terminal is None))
            except OSError as exc:
                relay.spawning = False
                failed = exc
            else:
                relay.started(child)
                returncode = _wait(child)
        if failed is not None:
            code = NOT_FOUND if isinstance(failed, FileNotFoundError) else NOT_EXECUTABLE
            say(f"cannot run {argv[0]}: {failed.strerror or failed}; {released()}")
            if relay.pending:  # a signal came while it was being started
                raise Signalled(relay.pending[0])
            return code
        code = 128 - returncode if returncode < 0 else returncode
        how = (
            f"was killed by {signal_name(-returncode)}"
            if returncode < 0
            else f"exited with {returncode}"
        )
        say(f"{describe(argv, 60)} {how}; {released()}")
        return code
    finally:
        relay.restore()
        if terminal is not None:
            os.close(terminal)


def _wait(child: subprocess.Popen[bytes]) -> int:
    # Not one blocking waitpid: a signal the kernel hands to another thread of this process
    # (the I/O loop's, a worker's) would leave the main thread blocked, its Python handler
    # unrun, the signal never forwarded and the command never ending. Waiting in short
    # steps returns to the interpreter, which runs the handler at once.
    while True:
        try:
            return child.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue


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
