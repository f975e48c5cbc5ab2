"""Cost of maintguard's holds and state reads, next to a minimal hold and fastapi-maintenance.

    python benchmarks/holds.py [--n 2000] [--rounds 5] [--processes 5] [--quick] [--json]
    pip install -r benchmarks/requirements.txt    # fastapi-maintenance, the peer library

Every row is measured in this one run, in each of several processes: rounds are interleaved
(each round measures every row once, with garbage collection off while timing, as timeit
does) and each row keeps its best round (time.perf_counter); a row's figure is the median of
its processes' bests (how objects lie in one process's memory moves a row by a few percent).
The table gives the time per operation and its ratio to an awaited no-op coroutine; GOALS
compares rows with each other. It is a report, not a test: it exits 0. ``--json`` prints,
after the report, one JSON line ``{"goals": [{"text", "status", "ratio", "target"}...]}``
(``status`` is ``ok``, ``MISSED`` or ``n/a``; the guard's goal gives its extra
microseconds as ``ratio``).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from maintguard import (
    __version__,
    configure,
    get_maintenance_mode,
    not_during_maintenance,
    schedule_maintenance,
    under_maintenance,
)
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend

if TYPE_CHECKING:
    from maintguard import MaintenanceHold

PEER = "fastapi-maintenance"
LIVE = 10_000  # live holds for the "many holds" rows
DEEP, SHALLOW = 3_000, 300  # nesting depths of one hold object
ENV_VARS = ("MAINTGUARD_BACKEND", "MAINTGUARD_MODE", "FASTAPI_MAINTENANCE_MODE")

BARE = "bare awaited no-op coroutine (reference)"
MINIMAL = "minimal correct hold (lock + frames, newest reason shown)"
MEMORY = "memory hold enter+exit (async with)"
NESTED = "nested memory hold enter+exit (on an entered hold)"
SYNC = "memory hold enter+exit (sync with)"
GET_MEMORY = "get_maintenance_mode(), memory"
GET_ENV = "get_maintenance_mode(), default env backend"
LEAVE_REVERSE = f"{LIVE:,} live holds: leave one, reverse order"
LEAVE_ENTRY = f"{LIVE:,} live holds: leave one, entry order"
CHANGE_MANY = f"hold change with {LIVE:,} live holds"
CHANGE_ONE = "hold change with 1 live hold"
NEST_DEEP = f"nesting one hold {DEEP:,} deep, per level"
NEST_SHALLOW = f"nesting one hold {SHALLOW:,} deep, per level"
FILE = "file hold enter+exit (LocalFileBackend)"
GUARDED = "guarded async call while off (not_during_maintenance)"
GUARD_BUDGET_US = 1.5  # the goal: a guarded call costs at most this much more than a bare one
PEER_HOLD = f"{PEER} maintenance_mode_on() enter+exit"
PEER_GET = f"{PEER} get_maintenance_mode()"
PEER_FILE = f"{PEER} maintenance_mode_on(file) enter+exit"

Op = Callable[[], Awaitable[None]]
Measure = Callable[[], Awaitable[float]]  # one round of a row: seconds per operation


# -- the reference points -------------------------------------------------------------------


async def noop() -> None:
    pass


class MinimalHold:
    """The least a correct hold does, written plainly: thread-safe, nests, its frames leave
    in any order (concurrent holders), and readers see the newest frame's reason, restored
    when it leaves (snapshot/restore). A bare counter would be cheaper but could not say
    which reason is in force once holders leave out of order, so it is not a correct hold.
    """

    _keys = itertools.count()

    def __init__(self, frames: dict[int, str | None], lock: threading.Lock, reason: str) -> None:
        self._frames = frames  # shared by every hold of one store: key -> reason, oldest first
        self._lock = lock
        self._reason = reason
        self._mine: list[int] = []  # this object's entries, newest last

    @property
    def active(self) -> bool:
        return bool(self._frames)

    @property
    def reason(self) -> str | None:
        return self._frames[next(reversed(self._frames))] if self._frames else None

    async def __aenter__(self) -> MinimalHold:
        key = next(self._keys)
        with self._lock:
            self._frames[key] = self._reason
            self._mine.append(key)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            del self._frames[self._mine.pop()]


def import_peer() -> ModuleType | None:
    try:
        peer = importlib.import_module("fastapi_maintenance")
        importlib.import_module("fastapi_maintenance.backends")
    except ImportError:
        return None
    # Its env backend logs a warning on every set_value (each enter and exit): keep it quiet.
    logging.getLogger("fastapi_maintenance").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module="fastapi_maintenance")
    return peer


# -- operations and ways to time them -------------------------------------------------------


def enter_exit(hold: AbstractAsyncContextManager[object]) -> Op:
    async def op() -> None:
        async with hold:
            pass

    return op


def enter_exit_new(make: Callable[[], AbstractAsyncContextManager[object]]) -> Op:
    async def op() -> None:
        async with make():
            pass

    return op


def read(get: Callable[[], Awaitable[bool]]) -> Op:
    async def op() -> None:
        await get()

    return op


def per_op(op: Op, n: int) -> Measure:
    async def measure() -> float:
        start = time.perf_counter()
        for _ in range(n):
            await op()
        return (time.perf_counter() - start) / n

    return measure


def per_sync_op(hold: AbstractContextManager[object], n: int) -> Measure:
    async def measure() -> float:
        start = time.perf_counter()
        for _ in range(n):
            with hold:
                pass
        return (time.perf_counter() - start) / n

    return measure


def on_entered(hold: MaintenanceHold, measure: Measure) -> Measure:
    """``measure`` run while ``hold`` is entered once already: each op is a frame on top."""

    async def nested() -> float:
        async with hold:
            return await measure()

    return nested


def live_holds(count: int) -> tuple[MemoryBackend, list[MaintenanceHold]]:
    """``count`` distinct holds on one fresh memory backend, each entered (sync) once."""
    backend = MemoryBackend()
    holds = [under_maintenance(backend=backend) for _ in range(count)]
    for hold in holds:
        hold.__enter__()
    return backend, holds


def leave_live(count: int, *, reverse: bool) -> Measure:
    """Seconds per hold to leave ``count`` live holds, last-entered first or first-entered first."""

    async def measure() -> float:
        _, holds = live_holds(count)
        order = holds[::-1] if reverse else holds
        start = time.perf_counter()
        for hold in order:
            hold.__exit__(None, None, None)
        return (time.perf_counter() - start) / count

    return measure


def change_with_live(count: int, n: int) -> Measure:
    """One more hold entered and left (async) while ``count`` other holds are live."""

    async def measure() -> float:
        backend, holds = live_holds(count)
        try:
            return await per_op(enter_exit(under_maintenance(backend=backend)), n)()
        finally:
            for hold in reversed(holds):
                hold.__exit__(None, None, None)

    return measure


def nest(depth: int, levels: int) -> Measure:
    """Seconds per level to enter one hold object ``depth`` deep and leave it again."""
    hold = under_maintenance(backend=MemoryBackend())
    repeats = max(1, levels // depth)

    async def measure() -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            for _ in range(depth):
                hold.__enter__()
            for _ in range(depth):
                hold.__exit__(None, None, None)
        return (time.perf_counter() - start) / (repeats * depth)

    return measure


# -- rows, rounds and goals -----------------------------------------------------------------


@dataclass
class Row:
    name: str
    measure: Measure
    times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def best(self) -> float | None:
        return min(self.times) if self.times and self.error is None else None

    async def run(self) -> None:
        gc.collect()
        gc.disable()
        try:
            self.times.append(await self.measure())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            print(f"row {self.name!r} failed:", file=sys.stderr)
            traceback.print_exc()
        finally:
            gc.enable()


@dataclass(frozen=True)
class Goal:
    text: str
    row: str
    reference: str
    target: float


async def with_window(backend: Backend) -> Backend:
    """``backend`` with a recurring window stored (not in force while the benchmark runs):
    the goals hold with windows planned, and nothing on a hot path evaluates cron."""
    await schedule_maintenance(
        timedelta(days=30), every="0 3 * * *", duration=3600, announce=86400, backend=backend
    )
    return backend


async def build_rows(n: int, file_n: int, tmp: Path, peer: ModuleType | None) -> list[Row]:
    memory = await with_window(MemoryBackend())
    hold = under_maintenance(backend=memory)
    file_hold = under_maintenance(
        backend=await with_window(LocalFileBackend(tmp / "maintguard.json"))
    )
    levels = max(DEEP, n)
    rows = [
        Row(BARE, per_op(noop, n)),
        Row(MINIMAL, per_op(enter_exit(MinimalHold({}, threading.Lock(), "job")), n)),
        Row(MEMORY, per_op(enter_exit(hold), n)),
        Row(NESTED, on_entered(hold, per_op(enter_exit(hold), n))),
        Row(SYNC, per_sync_op(hold, n)),
        Row(GET_MEMORY, per_op(read(lambda: get_maintenance_mode(memory)), n)),
        Row(GET_ENV, per_op(read(get_maintenance_mode), n)),
        Row(LEAVE_REVERSE, leave_live(LIVE, reverse=True)),
        Row(LEAVE_ENTRY, leave_live(LIVE, reverse=False)),
        Row(CHANGE_MANY, change_with_live(LIVE, n)),
        Row(CHANGE_ONE, change_with_live(1, n)),
        Row(NEST_DEEP, nest(DEEP, levels)),
        Row(NEST_SHALLOW, nest(SHALLOW, levels)),
        Row(FILE, per_op(enter_exit(file_hold), file_n)),
        Row(GUARDED, per_op(not_during_maintenance(backend=memory)(noop), n)),
    ]
    if peer is not None:
        peer_on = peer.maintenance_mode_on
        peer_file = peer.backends.LocalFileBackend(str(tmp / "fastapi_maintenance.txt"))
        rows += [
            # Built anew for each entry, as its docs use it (it keeps its state on the object).
            Row(PEER_HOLD, per_op(enter_exit_new(peer_on), n)),
            Row(PEER_GET, per_op(read(peer.get_maintenance_mode), n)),
            Row(PEER_FILE, per_op(enter_exit_new(lambda: peer_on(backend=peer_file)), file_n)),
        ]
    return rows


def build_goals(peer: bool) -> list[Goal]:
    """The issue's goals, in its order; those measured against the peer need the peer."""
    goals = [
        Goal(
            f"memory hold enter+exit <= 0.9x {PEER}'s maintenance_mode_on() enter+exit",
            MEMORY,
            PEER_HOLD,
            0.9,
        ),
        Goal("memory hold enter+exit <= 2.5x the minimal hold", MEMORY, MINIMAL, 2.5),
        Goal("nested memory hold enter+exit <= 2x the minimal hold", NESTED, MINIMAL, 2.0),
        Goal(
            "get_maintenance_mode() on memory <= 0.8x the peer's get_maintenance_mode()",
            GET_MEMORY,
            PEER_GET,
            0.8,
        ),
        Goal(
            "get_maintenance_mode() on the default env backend"
            " <= 0.8x the peer's get_maintenance_mode()",
            GET_ENV,
            PEER_GET,
            0.8,
        ),
        Goal(
            f"{LIVE:,} live holds leaving in reverse order <= 1.5x entry order",
            LEAVE_REVERSE,
            LEAVE_ENTRY,
            1.5,
        ),
        Goal(  # both ways: O(1) whatever the exit order
            f"{LIVE:,} live holds leaving in entry order <= 1.5x reverse order",
            LEAVE_ENTRY,
            LEAVE_REVERSE,
            1.5,
        ),
        Goal(
            f"a hold change with {LIVE:,} live holds <= 2x with 1 live hold",
            CHANGE_MANY,
            CHANGE_ONE,
            2.0,
        ),
        Goal(
            f"nesting one object deep: per-level cost {DEEP:,} deep <= 1.5x {SHALLOW:,} deep"
            " (linear, not quadratic)",
            NEST_DEEP,
            NEST_SHALLOW,
            1.5,
        ),
        Goal(
            "file hold enter+exit <= the peer's maintenance_mode_on(backend=LocalFileBackend"
            "(path)) (ours is atomic + fsynced)",
            FILE,
            PEER_FILE,
            1.0,
        ),
    ]
    return [goal for goal in goals if peer or not goal.reference.startswith(PEER)]


GoalResult = dict[str, Any]  # {"text", "status", "ratio", "target"}: one line of GOALS


def report(rows: list[Row], goals: list[Goal]) -> list[GoalResult]:
    by_name = {row.name: row for row in rows}
    bare = by_name[BARE].best
    width = max(len(row.name) for row in rows)
    print(f"{'operation':<{width}}  {'per op':>12}  {'x bare call':>11}")
    for row in rows:
        best = row.best
        if best is None:
            print(f"{row.name:<{width}}  {'error':>12}  {row.error}")
            continue
        times_bare = f"{best / bare:>11.1f}" if bare else f"{'-':>11}"
        print(f"{row.name:<{width}}  {best * 1e6:>10.2f}us  {times_bare}")
    print()
    print("per op: one enter+exit or call; for live holds one hold left; for nesting one level")
    print("entered and left. Holds and backends are built once.")
    print("File hold: ours writes a temp file, fsyncs it and renames it over the state, under a")
    print("lock (atomic + fsynced).")
    if PEER_HOLD in by_name:
        print(f"{PEER}: maintenance_mode_on() is built for each entry, as its docs use it;")
        print("its file backend overwrites the file in place, without fsync.")
    print()
    print("GOALS")
    results: list[GoalResult] = []
    for goal in goals:
        mine, theirs = by_name[goal.row].best, by_name[goal.reference].best
        value = None
        if mine is None or theirs is None or theirs <= 0:
            status, ratio = "n/a", "(a row failed)"
        else:
            value = mine / theirs
            status = "ok" if value <= goal.target else "MISSED"
            ratio = f"{value:.3g} (target <= {goal.target:g})"
        print(f"  {status:<6}  {ratio:<24}  {goal.text}")
        results.append({"text": goal.text, "status": status, "ratio": value, "target": goal.target})
    return results


async def measure_rows(n: int, rounds: int) -> list[Row]:
    """Every row measured in this process: interleaved rounds, each row's best kept."""
    for name in ENV_VARS:  # the default-backend rows read the default (unset) env backends
        os.environ.pop(name, None)
    configure(backend=None)
    peer = import_peer()
    file_n = max(n // 20, 5)
    with tempfile.TemporaryDirectory() as tmp:
        rows = await build_rows(n, file_n, Path(tmp), peer)
        for _ in range(rounds):
            for row in rows:
                if row.error is None:
                    await row.run()
    return rows


def main(n: int, rounds: int, processes: int, as_json: bool = False) -> None:
    # Each process lays out its objects differently in memory (hash seeds, addresses),
    # which moves a row by several percent either way: every row's figure is the median,
    # over the processes, of its best round in each (each process measures every row).
    runs = [_child(n, rounds, seed) for seed in range(processes)]
    rows = []
    for name, error in runs[0]["rows"]:
        bests = [r["best"][name] for r in runs if r["best"].get(name) is not None]
        row = Row(name, _unused, error=error if not bests else None)
        row.times = [statistics.median(bests)] if bests else []
        rows.append(row)
    peer = runs[0]["peer"]
    peer_line = (
        f"{PEER} {peer}"
        if peer is not None
        else f"{PEER} not installed, its rows and goals are skipped: "
        "pip install -r benchmarks/requirements.txt"
    )
    print(f"maintguard {__version__}; {peer_line}")
    print(
        f"Python {platform.python_version()}; best of {rounds} round(s) of {n} ops"
        f" ({max(n // 20, 5)} for file rows), median of {processes} process(es)"
    )
    print()
    results = report(rows, build_goals(peer is not None))
    results.append(report_guard(rows))
    if as_json:
        print(json.dumps({"goals": results}))


async def _unused() -> float:  # pragma: no cover - rows rebuilt from children's figures
    raise NotImplementedError


def _child(n: int, rounds: int, seed: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", "--n", str(n), "--rounds", str(rounds)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": str(seed)},
    )
    if done.stderr:
        sys.stderr.write(done.stderr)
    lines = done.stdout.splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"a measuring process failed (exit {done.returncode})")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def child(n: int, rounds: int) -> None:
    peer = import_peer()
    rows = anyio.run(measure_rows, n, rounds)
    print(
        json.dumps(
            {
                "peer": None if peer is None else getattr(peer, "__version__", "?"),
                "rows": [(row.name, row.error) for row in rows],
                "best": {row.name: row.best for row in rows},
            }
        )
    )


def report_guard(rows: list[Row]) -> GoalResult:
    """The guard's goal is a cost added to the bare call, not a ratio."""
    text = "a guarded async call while off, over the bare call"
    found = {row.name: row.best for row in rows}
    bare, guarded = found.get(BARE), found.get(GUARDED)
    if bare is None or guarded is None:
        print(f"  n/a     (a row failed)            {text}")
        return {"text": text, "status": "n/a", "ratio": None, "target": GUARD_BUDGET_US}
    extra = (guarded - bare) * 1e6
    status = "ok" if extra <= GUARD_BUDGET_US else "MISSED"
    print(f"  {status:<6}  +{extra:.2f}us (target <= +{GUARD_BUDGET_US:g}us)  {text}")
    return {"text": text, "status": status, "ratio": extra, "target": GUARD_BUDGET_US}


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive, default=2000, help="operations per round")
    parser.add_argument("--rounds", type=positive, default=5)
    parser.add_argument("--processes", type=positive, default=5, help="median of this many")
    parser.add_argument(
        "--quick", action="store_true", help="n=20, 1 round, 1 process: a smoke run for CI"
    )
    parser.add_argument(
        "--json", action="store_true", help="also print the goals as one JSON line, last"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, rounds = (20, 1) if args.quick else (args.n, args.rounds)
    try:
        if args.child:
            child(n, rounds)
        else:
            main(n, rounds, 1 if args.quick else args.processes, args.json)
    except Exception:  # a report, not a test: say what broke and still exit 0
        traceback.print_exc()
