"""The ``maintguard`` command (also ``python -m maintguard``): on, off, status, run,
schedule (planned maintenance windows: schedule, schedule list, schedule cancel ID), and
history (the audit trail of operators' changes).

Exit codes: 0 done (``status``: off, or a window only announced); 1 maintenance is (still)
on (``schedule cancel``: no such window); 2 bad usage; 3 the state could not be read or
written. ``run`` returns the command's own code, 128+N when a signal N ended it, 125 when
maintguard itself failed (no hold taken), 126 and 127 when the command cannot be run or is
not found. Every failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, NoReturn, TextIO

from .. import __version__
from .. import _audit as audit
from .. import _cordons as cordons
from .. import _holds as guards
from .. import _ioloop as ioloop
from .._core import controller, io, store_of
from .._core.drive import ASYNC
from .._core.identity import HOST
from .._core.operators import AUDIT_LOGGER
from .._schedule import cancel_window, list_windows, schedule_maintenance, turn_off
from .._state import (
    STORED_LOGGER,
    ExplicitState,
    MaintenanceState,
    Mode,
    Occurrence,
    StoredState,
    Window,
    WindowRecord,
)
from .._windows import check_zone, occurrences
from ..backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend, backend_from_url
from ..backends._env import getenv
from ..exceptions import ConfigurationError, DrainTimeout, MaintGuardError, ReadOnlyBackendError
from . import run as running
from . import show, values

__all__ = ["main"]

USAGE, BACKEND, RUN_FAILED = 2, 3, 125
NEXT = 5
"""How many occurrences of a recurring window ``schedule`` and ``schedule list`` show."""
_ENV = "MAINTGUARD_BACKEND"
_CLEAN_UP = 5.0  # seconds Ctrl-C waits for a drain to take its token off
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
        epilog="Exit codes: 0 done (status: off or announced), 1 on, 2 bad usage, 3 store "
        "unreadable.",
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

    status = commands.add_parser(
        "status",
        help="show the state and the next planned window (exit 0 off or announced, 1 on, 3 "
        "unreadable)",
    )
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
    _schedule_parser(commands)

    history = commands.add_parser(
        "history",
        help="show who changed maintenance, when and why (newest first)",
        description="Show the audit trail: the last 100 changes made through on, off, "
        "schedule, schedule cancel, off --force (and their functions), newest first, "
        "times in UTC.",
    )
    _store(history, writes=False)
    _scope(history)
    history.add_argument(
        "--limit", metavar="N", type=values.count, help="show the newest N entries only"
    )
    history.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list: the AuditEntry fields, times in ISO 8601 UTC",
    )
    _cordon_parsers(commands)
    return parser


def _cordon_parsers(commands: Any) -> None:
    host = {
        "metavar": "NAME",
        "type": values.host,
        "help": "the host as its processes' records name it: MAINTGUARD_HOST there, else its "
        "host name (default: this host)",
    }
    cordon = commands.add_parser(
        "cordon",
        help="take a host out of rotation: its readiness path answers 503 (--drain: then wait "
        "for its in-flight work)",
        description="Cordon a host: every process on it answers the middleware's "
        "readiness_path with 503 from when it sees the cordon, and still serves other "
        "requests (the load balancer stops sending them). Maintenance is not turned on. "
        "Exit 0 done, 1 when --drain ran out with work still in flight (the host stays "
        "cordoned).",
    )
    _store(cordon, writes=True)
    cordon.add_argument("--host", **host)
    cordon.add_argument(
        "--drain",
        metavar="SECONDS",
        type=values.seconds,
        help="then wait up to this long until the host's in-flight requests and jobs have "
        "ended (its processes report them): 30, 90s, 5m",
    )
    cordon.add_argument("--reason", type=values.reason, help="why, for status and history")
    uncordon = commands.add_parser(
        "uncordon",
        help="put a cordoned host back in rotation",
        description="Remove a host's cordon: its processes answer the readiness path with "
        "200 again. Exit 1 when the host was not cordoned.",
    )
    _store(uncordon, writes=True)
    uncordon.add_argument("--host", **host)


def _schedule_parser(commands: Any) -> None:
    schedule = commands.add_parser(
        "schedule",
        help="plan maintenance: a window at a time or a recurring one (schedule list, "
        "schedule cancel ID)",
        usage="maintguard schedule (--at TIME | --in DURATION) (--for DURATION | --until TIME)"
        " [options]\n       maintguard schedule --every CRON [--tz ZONE] --for DURATION "
        "[--at TIME | --in DURATION] [options]\n       maintguard schedule list [--json] "
        "[--scope NAME]\n       maintguard schedule cancel ID [--scope NAME]",
        description="Plan maintenance: every app that reads the store is in maintenance "
        "during the window, by the clock alone (nothing needs to run at its start or end). "
        "Prints the window's id and its next occurrences. `maintguard off` during a window "
        "ends that occurrence (a recurring window goes on at its next one).",
    )
    _store(schedule, writes=True, windows=True)
    start = schedule.add_mutually_exclusive_group()
    start.add_argument(
        "--at",
        metavar="TIME",
        type=values.moment,
        help="start at this ISO 8601 time, with its zone: 2027-01-10T03:00Z or "
        "2027-01-10T04:00+01:00 (a time without one is refused: every machine reading the "
        "store must read the same moment); with --every, the earliest first run",
    )
    start.add_argument(
        "--in",
        dest="in_",
        metavar="DURATION",
        type=values.seconds,
        help="start this long from now: 90s, 30m, 2h, 1d (0: now); with --every, the "
        "earliest first run (default: now)",
    )
    end = schedule.add_mutually_exclusive_group()
    end.add_argument(
        "--for",
        dest="for_",
        metavar="DURATION",
        type=values.duration,
        help="how long it lasts: 90s, 30m, 2h, 1d (with --every: each occurrence)",
    )
    end.add_argument(
        "--until",
        metavar="TIME",
        type=values.moment,
        help="end at this ISO 8601 time, with its zone (a one-off window only)",
    )
    schedule.add_argument(
        "--every",
        metavar="CRON",
        help="recur: a 5-field cron expression (minute hour day-of-month month day-of-week), "
        "e.g. '0 3 * * SUN'",
    )
    schedule.add_argument(
        "--tz",
        metavar="ZONE",
        help="the IANA zone --every is read in, e.g. Europe/Berlin (default: UTC); the "
        "occurrences are shown in it too",
    )
    schedule.add_argument(
        "--announce",
        metavar="DURATION",
        type=values.seconds,
        help="how long before each start readers see the phase 'announced': 1h, 30m",
    )
    _details(schedule, again=False)
    actions = schedule.add_subparsers(
        dest="schedule_command",
        metavar="list|cancel",
        prog="maintguard schedule",
        parser_class=_Parser,
    )
    listing = actions.add_parser(
        "list",
        help="list the windows planned, with the next occurrences of recurring ones",
        description="List the windows planned in a scope (not those of the global scope "
        "that a named scope also follows), earliest first; times in UTC.",
    )
    _store(listing, writes=False, windows=True)
    _scope(listing, kept=True)
    listing.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list: the Window fields, times in ISO 8601 UTC, announce in seconds",
    )
    cancel = actions.add_parser(
        "cancel",
        help="remove a window (every occurrence; exit 1: no such window)",
        description="Remove a planned window, every occurrence of it. Exit 1 when the "
        "scope has no window with that id.",
    )
    _store(cancel, writes=True, windows=True)
    _scope(cancel, kept=True)
    cancel.add_argument(
        "id", metavar="ID", type=values.window_id, help="the window's id (see schedule list)"
    )


def _scope(parser: argparse.ArgumentParser, *, kept: bool = False) -> None:
    # kept: a subcommand's own --scope leaves one given before it (`schedule --scope x list`)
    parser.add_argument(
        "--scope",
        type=values.scope,
        default=argparse.SUPPRESS if kept else None,
        help="a named scope such as billing (default: global)",
    )


def _store(parser: argparse.ArgumentParser, *, writes: bool, windows: bool = False) -> None:
    # Each command says what it accepts: the environment variable can be read here but
    # written only where the app runs, and memory: is no other process's store.
    if windows:
        accepted = (
            f"the store of the windows: file:PATH or redis://HOST[:PORT]/DB[?key_prefix=NAME] "
            f"(default: ${_ENV}); env:VAR cannot store windows, and memory: is no other "
            "process's store"
        )
    elif writes:
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


def _backend(args: argparse.Namespace, *, writes: bool, windows: bool = False) -> Backend:
    url = args.backend if args.backend is not None else getenv(_ENV) or None
    named = "--backend" if args.backend is not None else _ENV
    if url is None:
        if windows:
            raise Failure(
                f"no store chosen: {_CHOOSE} (the default, the environment variable "
                "MAINTGUARD_MODE, cannot store windows)",
                USAGE,
            )
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
    if windows and backend.read_only:
        raise Failure(
            f"{named}: {backend.describe()} cannot store planned windows (an environment "
            f"variable says on or off, nothing more): use a file or Redis store: {_CHOOSE}",
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
    stored = store_of(backend).root.stored
    hosts = () if stored is None else stored.cordons
    if args.json:
        shown = show.as_json(state, show.url(backend), cordons=hosts)
        _write(sys.stdout, json.dumps(shown, indent=2))
    else:
        _print(show.summary(state, backend.describe(), _now()) + show.cordon_lines(hosts, _now()))
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
    ended = ioloop.run_sync(_switch_off(backend, scope))
    if ended:
        _print([_ended(record, replacement, span) for record, replacement, span in ended])
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
    window = state.next_window
    if window is not None and show.in_force(window, _now()):
        why.append(_still_in_force(backend, args, window))
    _say("maintenance stays on: " + "; ".join(why))
    return 1


async def _switch_off(
    backend: Backend, scope: str | None
) -> list[tuple[WindowRecord, WindowRecord | None, Occurrence]]:
    # What set_maintenance_mode(False) does, keeping what it ended to print it.
    return await turn_off(controller(backend, scope))


def _ended(record: WindowRecord, replacement: WindowRecord | None, span: Occurrence) -> str:
    shown = f"{show.stamp(span[0])} to {show.stamp(span[1])}"
    if replacement is None:
        return f"window {show.text(record.id)} removed (it was in force from {shown})"
    after = _occurrences(replacement, _now(), 1)
    then = (
        f"it recurs at {show.moment_in(after[0][0], record.tz)}"
        if after
        else "it does not occur again"
    )
    return f"window {show.text(record.id)}: this occurrence ({shown}) ended; {then}"


def _still_in_force(backend: Backend, args: argparse.Namespace, window: Window) -> str:
    until = f"window {show.text(window.id)} is in force until {show.stamp(window.end)}"
    if args.scope is not None:
        outer = _state(backend, None).next_window
        if outer is not None and outer.id == window.id:
            return f"{until}, a window of the global scope: `maintguard off` ends it"
    cancel = _again(args, "schedule", "cancel", window.id)
    return f"{until} (another of its occurrences): `{cancel}` removes the window"


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


# -- planned windows ----------------------------------------------------------------------

# What schedule's options are called in the messages of the core (which names them as
# schedule_maintenance's parameters); `start` is --at or --in, whichever was given.
_OPTIONS = {
    "duration": "--for",
    "end": "--until",
    "every": "--every",
    "tz": "--tz",
    "announce": "--announce",
    "retry_after": "--retry-after",
    "reason": "--reason",
}
_SCHEDULING = (
    ("at", "--at"),
    ("in_", "--in"),
    ("for_", "--for"),
    ("until", "--until"),
    ("every", "--every"),
    ("tz", "--tz"),
    ("announce", "--announce"),
    ("reason", "--reason"),
    ("retry_after", "--retry-after"),
)


def cmd_schedule(args: argparse.Namespace) -> int:
    action = args.schedule_command
    if action is not None:
        given = [option for dest, option in _SCHEDULING if getattr(args, dest) is not None]
        if given:
            raise Failure(
                f"{given[0]} plans a window: it does not go with schedule {action} "
                f"(see maintguard schedule --help)",
                USAGE,
            )
        return _schedule_list(args) if action == "list" else _schedule_cancel(args)
    return _schedule(args)


def _schedule(args: argparse.Namespace) -> int:
    start_option = "--at" if args.at is not None else "--in" if args.in_ is not None else None
    if args.every is None:
        if args.tz is not None:
            raise Failure(
                "--tz goes with --every (the zone a recurring window's cron expression is "
                "read in); a one-off window's --at and --until carry their own zone",
                USAGE,
            )
        if start_option is None:
            raise Failure(
                "a one-off window needs its start: --at TIME (ISO 8601 with a zone, e.g. "
                "2027-01-10T03:00Z) or --in DURATION (e.g. 2h; 0 for now); or --every CRON "
                "for a recurring one",
                USAGE,
            )
        if args.for_ is None and args.until is None:
            raise Failure(
                "say how long the window lasts: --for DURATION (e.g. 1h) or --until TIME", USAGE
            )
    else:
        if args.until is not None:
            raise Failure(
                "--until goes with a one-off window: a recurring one (--every) lasts --for "
                "DURATION each time, and ends only when cancelled (maintguard schedule cancel "
                "ID)",
                USAGE,
            )
        if args.for_ is None:
            raise Failure(
                "--every needs --for DURATION: how long each occurrence lasts (e.g. 1h)", USAGE
            )
    zone: tzinfo | None = None
    try:
        if args.tz is not None:
            zone = check_zone(args.tz)
        start: datetime | timedelta | None = None
        if args.at is not None:
            start = values.zoned(args.at, "--at", zone, args.tz)
        elif args.in_ is not None:
            start = timedelta(seconds=args.in_)
        end = None if args.until is None else values.zoned(args.until, "--until", None, None)
    except (ConfigurationError, ValueError) as exc:
        raise Failure(_option_named(str(exc), args), USAGE) from None
    backend = _backend(args, writes=True, windows=True)
    try:
        window = ioloop.run_sync(
            schedule_maintenance(
                start,
                end=end,
                duration=args.for_,
                every=args.every,
                tz=args.tz,
                announce=args.announce,
                reason=args.reason or None,  # '': none
                retry_after=args.retry_after,
                mode=args.mode,
                backend=backend,
                scope=args.scope,
            )
        )
    except ConfigurationError as exc:
        raise Failure(_option_named(str(exc), args), USAGE) from None
    except OverflowError:  # a start or an end past the year 9999
        option = "--at" if args.at is not None else "--until"
        raise Failure(f"{option}: out of range: give a time before the year 9999", USAGE) from None
    now = _now()
    scope = "" if args.scope is None else f" (scope {show.text(args.scope)})"
    lines = [f"window {show.text(window.id)} scheduled{scope} — {show.text(backend.describe())}"]
    if window.every is None:
        when = show.occurrence((window.start, window.end), None)
        lines.append(f"  once:        {when}{_starts(window.start, now)}")
    else:
        each = show.length((window.end - window.start).total_seconds())
        lines.append(f"  recurs:      {show.recurrence(window)}, {each} each")
        lines.append("  next:")
        for span in _occurrences(window, now):
            lines.append(f"    {show.occurrence(span, window.tz)}{_starts(span[0], now)}")
    if window.announce is not None:
        lines.append(f"  announce:    {show.length(window.announce.total_seconds())} before")
    if window.reason is not None:
        lines.append(f"  reason:      {show.text(window.reason)}")
    lines.append(f"cancel it with: {_again(args, 'schedule', 'cancel', window.id)}")
    _print(lines)
    _warn_if_unwatched(backend)
    return 0


def _starts(start: datetime, now: datetime) -> str:
    return " (in force now)" if start <= now else f" (starts {show.ahead(start, now)})"


def _option_named(message: str, args: argparse.Namespace) -> str:
    """A message of the core, with schedule_maintenance's parameter names made the
    options the operator typed (start: --at or --in; duration: --for...)."""
    start = "--at" if args.at is not None else "--in" if args.in_ is not None else "the start"
    length = "--until" if args.until is not None else "--for"
    if message.startswith("the window is in the past"):
        return f"{start} and {length}: {message}"
    if message.startswith("a window must last at most a year"):
        return f"{length}: {message}"
    if message.startswith("end ("):
        return "--until " + message[len("end ") :].replace("after start", f"after {start}")
    first, _, rest = message.partition(" ")
    option = start if first == "start" else _OPTIONS.get(first)
    return message if option is None else f"{option} {rest}"


def _occurrences(
    window: Window | WindowRecord, now: datetime, count: int = NEXT
) -> list[Occurrence]:
    """The occurrences of ``window`` that end after ``now`` (at most ``count``)."""
    if isinstance(window, Window):
        if window.every is None:
            return [(window.start, window.end)]
        window = WindowRecord(
            id=window.id,
            start=window.start,  # its current or next occurrence: none before it counts
            duration=(window.end - window.start).total_seconds(),
            every=window.every,
            tz=window.tz,
        )
    try:
        return list(itertools.islice(occurrences(window, now), count))
    except (ValueError, OverflowError):  # a hand-edited window that cannot be evaluated
        return []


def _again(args: argparse.Namespace, *words: str) -> str:
    """The maintguard command line of ``words`` on the same store and scope."""
    line = ["maintguard", *words]
    if args.scope is not None:
        line += ["--scope", args.scope]
    if args.backend is not None:
        line += ["--backend", args.backend]
    return show.text(shlex.join(line))


def _schedule_list(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=False, windows=True)
    found = ioloop.run_sync(list_windows(backend=backend, scope=args.scope))
    if args.json:
        _write(sys.stdout, json.dumps([show.window_json(w) for w in found], indent=2))
    else:
        now = _now()
        scope = "" if args.scope is None else f" (scope {show.text(args.scope)})"
        count = f"{len(found)} window{'s' if len(found) != 1 else ''}" if found else "no windows"
        lines = [f"{count} planned{scope} — {show.text(backend.describe())}"]
        for window in found:
            lines.append(show.window_line(window, now))
            if window.every is not None:
                lines += [
                    f"    - {show.occurrence(o, window.tz)}" for o in _occurrences(window, now)
                ]
        _print(lines)
    _warn_if_unwatched(backend)
    return 0


def _schedule_cancel(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=True, windows=True)
    scope = "" if args.scope is None else f" (scope {show.text(args.scope)})"
    if ioloop.run_sync(cancel_window(args.id, backend=backend, scope=args.scope)):
        _print([f"window {show.text(args.id)} cancelled{scope} — {show.text(backend.describe())}"])
        _warn_if_unwatched(backend)
        return 0
    elsewhere = ""
    if args.scope is not None:
        outer = ioloop.run_sync(list_windows(backend=backend, scope=None))
        if any(w.id == args.id for w in outer):
            elsewhere = " (the global scope has it: leave out --scope)"
    _say(
        f"no window {show.text(args.id)}{scope} in {show.text(backend.describe())}{elsewhere}: "
        f"`{_again(args, 'schedule', 'list')}` lists the windows planned"
    )
    return 1


def cmd_history(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=False)
    if backend.read_only:
        raise Failure(
            f"{backend.describe()} keeps no audit trail (an environment variable says on or "
            f"off, nothing more): {_CHOOSE}",
            USAGE,
        )
    entries = ioloop.run_sync(audit.get_history(backend, scope=args.scope, limit=args.limit))
    error = store_of(backend).read_error  # read in spite of errors (on_error): not here
    if error is not None:
        raise Failure(str(error), BACKEND)
    if args.json:
        _write(sys.stdout, json.dumps([show.entry_json(e) for e in entries], indent=2))
    elif entries:
        _print([show.entry_line(e) for e in entries])
    else:
        scope = "" if args.scope is None else f" in scope {show.text(args.scope)}"
        _print([f"no changes recorded{scope} — {show.text(backend.describe())}"])
    return 0


def cmd_cordon(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=True)
    host = HOST if args.host is None else args.host
    reason = args.reason or None
    code = 0
    try:
        ioloop.run_sync(
            cordons.cordon(
                host, reason=reason, drain=args.drain, on_drain_timeout="raise", backend=backend
            ),
            interruptible=_CLEAN_UP,
        )
    except DrainTimeout as exc:
        _say(str(exc))
        code = 1
    except KeyboardInterrupt:
        _say(
            f"interrupted: the drain stopped; {show.text(host)} stays cordoned if it was "
            f"(`maintguard uncordon --host {show.text(host)}` puts it back)"
        )
        return 130
    record = cordons.cordoned(store_of(backend).root.stored, host)  # (as it stands)
    if record is None:  # uncordoned by someone else while the drain waited
        raise Failure(
            f"{host} was uncordoned while the drain waited (see `maintguard history`): it is "
            "in rotation again; the drain stopped there",
            1,
        )
    lines = [
        f"cordoned {show.text(host)}: its processes answer their readiness path with 503; other "
        f"requests still pass — {show.text(backend.describe())}"
    ]
    lines += show.cordon_lines([record], _now())
    if args.drain is not None and code == 0:
        lines.append(f"in-flight work on {show.text(host)} has ended")
    _print(lines)
    _warn_if_host_unwatched(backend, host)
    return code


def cmd_uncordon(args: argparse.Namespace) -> int:
    backend = _backend(args, writes=True)
    host = HOST if args.host is None else args.host
    if not ioloop.run_sync(cordons.uncordon(host, backend=backend)):
        left = [show.text(c.host) for c in ioloop.run_sync(cordons.list_cordons(backend=backend))]
        cordoned = f"cordoned: {', '.join(left)}" if left else "no host is cordoned"
        raise Failure(
            f"{show.text(host)} is not cordoned in {show.text(backend.describe())} ({cordoned}); "
            "nothing changed",
            1,
        )
    _print([f"uncordoned {show.text(host)} — {show.text(backend.describe())}"])
    return 0


def _warn_if_host_unwatched(backend: Backend, host: str) -> None:
    # A cordon of a host no live process of the store is on is most often a wrong name
    # (MAINTGUARD_HOST set there, a pod's name) or a wrong store.
    stored = store_of(backend).root.stored
    now = _now()
    if stored is None or any(w.host == host and w.live(now) for w in stored.workers):
        return
    _say(
        f"no live process on host {show.text(host)} watches {show.url(backend)}: if the app "
        "runs there, check the host name (its MAINTGUARD_HOST, else its host name; `maintguard "
        "status` lists the hosts of holds) and that the app uses this store"
    )


_COMMANDS = {
    "cordon": cmd_cordon,
    "uncordon": cmd_uncordon,
    "history": cmd_history,
    "on": cmd_on,
    "off": cmd_off,
    "status": cmd_status,
    "run": cmd_run,
    "schedule": cmd_schedule,
}


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
        # So is a change made that the audit trail could not record.
        logging.getLogger(AUDIT_LOGGER).setLevel(logging.WARNING)


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
            raise Failure(
                "say what to do: on, off, status, run, schedule, history, cordon or uncordon (see "
                "maintguard --help)",
                USAGE,
            )
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
