"""The ``maintguard`` command (also ``python -m maintguard``): on, off, status, run.

Exit codes: 0 done (``status``: off); 1 maintenance is (still) on; 2 bad usage; 3 the
state could not be read or written. ``run`` returns the command's own code, 128+N when a
signal N ended it, 125 when maintguard itself failed (no hold taken), 126 and 127 when the
command cannot be run or is not found. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn, TextIO

from .. import __version__
from .. import _holds as guards
from .. import _ioloop as ioloop
from .._core import controller, io, store_of
from .._core.drive import ASYNC
from .._state import STORED_LOGGER, ExplicitState, MaintenanceState, Mode, StoredState
from ..backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend, backend_from_url
from ..backends._env import getenv
from ..exceptions import ConfigurationError, MaintGuardError, ReadOnlyBackendError
from . import run as running
from . import show, values

__all__ = ["main"]

USAGE, BACKEND, RUN_FAILED = 2, 3, 125
_ENV = "MAINTGUARD_BACKEND"
_CHOOSE = (
    "choose the store your app uses: --backend file:/path/to/state.json (or redis://host/0), "
    f"or set {_ENV}"
)


class Failure(Exception):
    """A failure of maintguard itself: one line for stderr, and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``run``'s with 125: 2 may be the command's own code)."""

    def __init__(self, *args: Any, usage_code: int = USAGE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_code = usage_code

    def error(self, message: str) -> NoReturn:
        raise Failure(f"{message} (see {self.prog} --help)", self.usage_code)


def _parser() -> _Parser:
    parser = _Parser(
        prog="maintguard",
        description="Switch maintenance mode, show it, or hold it while a command runs.",
        epilog="Exit codes: 0 done (status: off), 1 on, 2 bad usage, 3 store unreadable.",
    )
    parser.add_argument("--version", action="version", version=f"maintguard {__version__}")
    parser.add_argument("--backend", metavar="URL", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    on = commands.add_parser(
        "on",
        help="turn maintenance on (again: update the details named, keep the others)",
        description="Turn maintenance on. Run again while it is on, it changes only the "
        "details it names and keeps the others (and since); --reason '', --no-retry-after "
        "and --no-until remove one. After off, or once its end has passed, it starts afresh.",
    )
    _store(on, writes=True)
    _details(on, again=True)
    ends = on.add_mutually_exclusive_group()
    ends.add_argument(
        "--for",
        dest="for_",
        metavar="DURATION",
        type=values.duration,
        help="switch off by itself after this long: 90s, 30m, 2h, 1d",
    )
    ends.add_argument(
        "--until",
        metavar="TIME",
        type=values.when,
        help="switch off by itself at this ISO 8601 time (local time unless it has a zone)",
    )
    ends.add_argument(
        "--no-until", action="store_true", help="remove the end: stay on until switched off"
    )

    off = commands.add_parser("off", help="turn the operator's switch off")
    _store(off, writes=True)
    _scope(off)
    off.add_argument(
        "--force",
        action="store_true",
        help="also remove the holds of running jobs and commands (their holders may write "
        "them again while they live)",
    )

    status = commands.add_parser("status", help="show the state (exit 0 off, 1 on, 3 unreadable)")
    _store(status, writes=False)
    _scope(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")

    run = commands.add_parser(
        "run",
        help="hold maintenance exactly while a command runs",
        usage="maintguard run [options] -- COMMAND [ARG ...]",
        usage_code=RUN_FAILED,
    )
    _store(run, writes=True)
    _details(run, again=False)
    run.add_argument(
        "--drain",
        metavar="SECONDS",
        type=values.seconds,
        help="first wait up to this long for in-flight requests and jobs to end",
    )
    run.add_argument(
        "--on-drain-timeout",
        choices=("proceed", "raise"),
        default="proceed",
        help="when the drain time is up: run the command anyway (default), or not run it",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="what to run")
    return parser


def _scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scope", type=values.scope, help="a named scope such as billing (default: global)"
    )


def _store(parser: argparse.ArgumentParser, *, writes: bool) -> None:
    # Each command says what it accepts: the environment variable can be read here but
    # written only where the app runs, and memory: is no other process's store.
    if writes:
        accepted = (
            f"the store to write: file:PATH or redis://HOST[:PORT]/DB[?key_prefix=NAME] "
            f"(default: ${_ENV}); env:VAR and memory: cannot be written from here"
        )
    else:
        accepted = (
            f"the store to read: file:PATH, redis://HOST[:PORT]/DB[?key_prefix=NAME] or "
            f"env:VAR (default: ${_ENV}, else this shell's MAINTGUARD_MODE)"
        )
    parser.add_argument("--backend", metavar="URL", default=argparse.SUPPRESS, help=accepted)


def _details(parser: argparse.ArgumentParser, *, again: bool) -> None:
    # `on` run again keeps what it is not told (None: not given), and can remove a detail.
    parser.add_argument(
        "--reason",
        type=values.reason,
        help="shown to users on the maintenance page" + (" ('' removes it)" if again else ""),
    )
    retry = parser.add_mutually_exclusive_group() if again else parser
    retry.add_argument(
        "--retry-after",
        metavar="SECONDS",
        type=values.seconds,
        help="what Retry-After tells clients: 600, 10m, 2h",
    )
    if again:
        retry.add_argument(
            "--no-retry-after", action="store_true", help="remove the Retry-After given before"
        )
    parser.add_argument(
        "--mode",
        type=values.mode,
        default=None if again else Mode.FULL,
        help="full or read-only (safe methods still pass); default: "
        + ("full, or as it is when on already" if again else "full"),
    )
    _scope(parser)


# -- the commands ----------------------------------------------------------------------


def _backend(args: argparse.Namespace, *, writes: bool) -> Backend:
    url = args.backend if args.backend is not None else getenv(_ENV) or None
    named = "--backend" if args.backend is not None else _ENV
    if url is None:
        if writes:
            raise Failure(
                f"no store chosen: {_CHOOSE} (the default, the environment variable "
                "MAINTGUARD_MODE, cannot be written)",
                USAGE,
            )
        return EnvVarBackend()
    try:
        backend = backend_from_url(url)
    except ConfigurationError as exc:
        raise Failure(f"{named}: {exc}", USAGE) from None
    if isinstance(backend, MemoryBackend):
        raise Failure(
            f"{named}: memory: lives inside one process, so no app sees what this command "
            f"does; {_CHOOSE}",
            USAGE,
        )
    if writes and backend.read_only:
        raise Failure(
            f"{named}: {backend.describe()} cannot be written (set the variable where the app "
            f"runs instead); {_CHOOSE}",
            USAGE,
        )
    return backend


def _state(backend: Backend, scope: str | None) -> MaintenanceState:
    state = ioloop.run_sync(guards.get_state(backend, scope))
    error = store_of(backend).read_error  # read in spite of errors (on_error): not here
    if error is not None:
        raise Failure(str(error), BACKEND)
    return state


def _print(lines: Sequence[str]) -> None:
    _write(sys.stdout, "\n".join(lines))


def _write(stream: TextIO | None, text: str) -> None:
    # Output is a courtesy; the exit code is the answer: a closed or broken stdout or
    # stderr (`| head -1`, `>&-`) never changes it or ends a `run` early.
    if stream is None:  # closed before Python started
        return
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def cmd_status(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=False)
    state = _state(backend, args.scope)
    if args.json:
        _write(sys.stdout, json.dumps(show.as_json(state, show.url(backend)), indent=2))
    else:
        _print(show.summary(state, backend.describe(), _now()))
    if args.backend is None and not getenv(_ENV):
        _say(
            "no store chosen, so this is the environment variable MAINTGUARD_MODE of this "
            f"shell, not your app's store: {_CHOOSE}"
        )
    else:
        _warn_if_unwatched(backend)
    return 1 if state.active else 0


def _warn_if_unwatched(backend: Backend) -> None:
    # A store no live process watches is most often not the app's (a typo in the path, the
    # prefix or the database): an `on` there switches nothing and a `status` there says
    # "off" whatever the app does. Every process that watches a shared store keeps a
    # presence record there, and a live hold record means someone uses it too.
    if not backend.stores_holds:
        return  # (the environment variable: no records; memory: refused)
    try:
        scopes = ioloop.run_sync(io.read_scopes(ASYNC, backend, [None]))
    except Exception:  # read a moment ago: a failure now has nothing to add
        return
    now = _now()
    if any(w.live(now) for w in scopes.get(None, StoredState()).workers) or any(
        h.live(now) for stored in scopes.values() for h in stored.holds
    ):
        return
    names = "path" if isinstance(backend, LocalFileBackend) else "host, database and key_prefix"
    _say(
        f"no live process watches {show.url(backend)} (no app, guarded job or hold has "
        "recorded itself there within its lease): if your app is running, this is not its "
        f"store; check the {names}, and that --backend or {_ENV} here names the store the "
        "app uses"
    )


def cmd_on(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=True)
    scope = args.scope
    _state(backend, scope)  # a fresh read: what is on now, to keep what is not named
    kept = store_of(backend).seen.get(scope, StoredState()).explicit
    if not kept.in_force(_now()):
        kept = ExplicitState()  # off, or past its end: a new start keeps nothing
    try:
        _switch_on(backend, args, kept)
    except ConfigurationError:
        if kept.until is None or kept.until > _now():
            raise
        _switch_on(backend, args, ExplicitState())  # it ended between the read and the write
    _print(show.summary(_state(backend, scope), backend.describe(), _now()))
    _warn_if_unwatched(backend)
    return 0


def _switch_on(backend: Backend, args: argparse.Namespace, kept: ExplicitState) -> None:
    """Switch on with the details ``args`` names, and ``kept``'s for the others."""
    reason = kept.reason if args.reason is None else args.reason or None  # '': none
    if args.no_retry_after:
        retry_after = None
    else:
        retry_after = kept.retry_after if args.retry_after is None else args.retry_after
    until = values.until_of(args.for_, args.until)
    if until is None and not args.no_until:
        until = kept.until
    ioloop.run_sync(
        guards.set_maintenance_mode(
            True,
            backend,
            scope=args.scope,
            reason=reason,
            retry_after=retry_after,
            until=until,
            mode=kept.mode if args.mode is None else args.mode,
        )
    )


def cmd_off(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=True)
    scope = args.scope
    ioloop.run_sync(guards.set_maintenance_mode(False, backend, scope=scope))
    state = _state(backend, scope)
    if args.force and state.holds:
        outer = {h.id for h in _state(backend, None).holders} if scope is not None else set()
        mine = [h for h in state.holders if h.id not in outer]
        if mine:
            ioloop.run_sync(controller(backend, scope).remove_holds([h.id for h in mine]))
            _say(
                f"removed {len(mine)} hold{'s' if len(mine) != 1 else ''}; a holder that "
                "still runs writes its hold again as soon as it sees it gone (stop it to end "
                "its hold for good):"
            )
            _print(show.holds_lines(mine, _now()))
            state = _state(backend, scope)
    _print(show.summary(state, backend.describe(), _now()))
    _warn_if_unwatched(backend)
    if not state.active:
        return 0
    why = []
    if state.holds:
        one = state.holds == 1
        why.append(
            f"{state.holds} hold{' is' if one else 's are'} live (listed above): "
            f"{'it ends' if one else 'they end'} when the job or command holding it ends"
            + (
                ""
                if args.force
                else f"; `maintguard off --force` removes {'it' if one else 'them'}"
            )
        )
    if state.explicit and scope is not None:
        why.append("the global scope is switched on: `maintguard off` turns it off")
    _say("maintenance stays on: " + "; ".join(why))
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise Failure(
            "run needs a command: maintguard run [options] -- COMMAND [ARG ...]", RUN_FAILED
        )
    problem = running.find(argv[0])
    if problem is not None:
        code, message = problem
        raise Failure(f"{message}; maintenance was not switched on", code)
    backend = _backend(args, writes=True)
    hold = guards.MaintenanceHold(
        backend=backend,
        scope=args.scope,
        reason=args.reason or None,
        retry_after=args.retry_after,
        mode=args.mode,
        drain=args.drain,
        on_drain_timeout=args.on_drain_timeout,
        owner=f"maintguard run: {running.describe(argv, 120)}",
    )
    if args.drain:
        _say(
            f"maintenance on; waiting up to {args.drain:g} s for in-flight work to end "
            f"before running: {running.describe(argv)}"
        )
    try:
        return running.run_held(argv, hold, _say, lambda: _released(backend, args.scope))
    except running.Signalled as exc:
        _say(
            f"stopped by {running.signal_name(exc.signum)} before the command started; "
            "nothing is held"
        )
        return 128 + exc.signum
    except MaintGuardError as exc:
        raise Failure(f"{exc}; the command was not run", RUN_FAILED) from None


def _released(backend: Backend, scope: str | None) -> str:
    if controller(backend, scope).release_pending():
        lease = f"{backend.lease_ttl:g} s"
        return (
            "the hold's release could not be stored (see above): other processes count it "
            f"until its lease runs out, within {lease}"
        )
    return "hold released"


_COMMANDS = {"on": cmd_on, "off": cmd_off, "status": cmd_status, "run": cmd_run}


# -- the entry point ---------------------------------------------------------------------


def _say(message: str) -> None:
    _write(sys.stderr, f"maintguard: {message}")


def _standard_streams_open() -> None:
    # Started with stdin, stdout or stderr closed (`2>&-`), the next file opened would take
    # that number: the state file's lock would become a command's stderr. /dev/null takes it.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)  # lowest free: fd
    # A terminal or a pipe that is not UTF-8 (an ASCII or Latin-1 locale) still gets every
    # line, with what it cannot show written as escapes.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):
                reconfigure(errors="backslashreplace")


def _log_to_stderr(level: int) -> None:
    # The core's warnings while `run` holds (a lost lease, a failed release) as one line
    # each; the other commands report their failures themselves.
    logger = logging.getLogger("maintguard")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("maintguard: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        # A stored detail that is ignored (a hand-edited retry_after...) is the operator's
        # to fix, whatever the command.
        logging.getLogger(STORED_LOGGER).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    _standard_streams_open()
    parser = _parser()
    is_run = False
    try:
        args, extra = parser.parse_known_args(argv)
        is_run = args.command == "run"
        _log_to_stderr(logging.WARNING if is_run else logging.ERROR)
        if args.command is None:
            raise Failure("say what to do: on, off, status or run (see maintguard --help)", USAGE)
        if extra:
            raise Failure(
                f"unrecognized arguments: {' '.join(extra)} (see maintguard {args.command} --help)",
                USAGE,
            )
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:
        if isinstance(exc, Failure):
            message, code = str(exc), exc.code
        elif isinstance(exc, ConfigurationError | ReadOnlyBackendError):
            message, code = str(exc), USAGE
        elif isinstance(exc, MaintGuardError):
            message, code = str(exc), BACKEND
        else:  # a bug: still one line, and what to report
            message, code = f"unexpected {type(exc).__name__}: {exc} (please report it)", BACKEND
        _say(message)
        # run: 2 and 3 may be the command's own codes, so maintguard's failures are 125
        return RUN_FAILED if is_run and code in (USAGE, BACKEND) else code
