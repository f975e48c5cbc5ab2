"""Property tests of drains: guarded calls and drained holds over random interleavings.

The core property test (test_properties.py) runs random schedules of holds; here the
schedules also start guarded jobs (``@not_during_maintenance``, every policy, sync in a
thread or async), finish them, enter plain and drained holds (whose bodies call guarded
helpers: the self-context rule), exit holds by return, exception or cancellation (while
draining too) and set the explicit state. First over asyncio and trio tasks in one loop,
then over real threads and the tasks of two loops at once.

Every actor stamps what it does on one timeline (a global sequence number and a monotonic
time), and the store's table of guarded calls is replaced by a dict that stamps when each
job is counted (just before the guard looks at the state) and uncounted. Afterwards:

(a) no guarded call outside a hold's own context starts its body while maintenance is on
    for it: it is a violation if some source of maintenance (a hold, an explicit "on")
    was surely visible before the call was last counted and surely not released before
    its body began; and if the snapshot read in the body says "refused", some source must
    have become visible after that count. A call is refused (skip, raise) only if some
    source may have been on when it looked. Guarded helpers called inside a hold's own
    context always run. A guarded body runs counted as in-flight work.
(b) a drained hold's body starts only after every guarded call whose body had started
    before the hold was entered, and that the hold refuses, has ended, unless the drain
    timed out: then with "proceed" the body runs and DRAIN_TIMED_OUT is heard, with
    "raise" DrainTimeout is raised, the body never runs and the hold is released at once.
    A drain only times out while something it counts is still in flight at its deadline.
(c) when the last hold has ended the state is exactly the explicit one (I2); when
    everything has ended, maintenance is off and no in-flight work remains counted.

The rules only flag what is impossible whatever the threads' timing (they are sound, so
the tests do not flake); where an actor's timing is unknown they give it the benefit. Some
jobs are slow to be counted (noise injected into the table): the next step comes while the
count is landing, which is harmless when a guard counts a call before it looks, and lets a
job run under a fresh hold, uncounted by its drain, when it looks first.
"""

from __future__ import annotations

import contextvars
import gc
import math
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from maintguard import (
    DrainTimeout,
    EventKind,
    MaintenanceEvent,
    MaintenanceHold,
    MaintenanceState,
    Mode,
    Phase,
    UnderMaintenance,
    add_listener,
    flush_listeners,
    get_state,
    not_during_maintenance,
    remove_listener,
    set_maintenance_mode,
)
from maintguard._core import controller, store_of
from maintguard._core.drive import ASYNC
from maintguard._state import derive, utcnow
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend

pytestmark = pytest.mark.slow

WAIT_TIMEOUT = 15.0  # a "wait" job that waits longer than this is a failure, not a hang
SETTLE = 30.0  # seconds the end of an example may take at most
HELPER_TIMEOUT = 0.5  # a helper inside its hold never waits at all
SLOW_COUNT = 0.005  # seconds a slow job takes to be counted
MARGIN = 0.003  # clock slack (seconds) when comparing a drain's deadline with stamps

CURRENT_JOB: contextvars.ContextVar[Job | None] = contextvars.ContextVar(
    "maintguard_test_job", default=None
)


class Boom(Exception):
    pass


class Stamp(NamedTuple):
    seq: int
    t: float


class Signal:
    """Set from any thread; waited for by a thread or by a task of any event loop."""

    def __init__(self) -> None:
        self._flag = threading.Event()
        self._lock = threading.Lock()
        self._wakers: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            self._flag.set()
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def is_set(self) -> bool:
        return self._flag.is_set()

    def wait_blocking(self, timeout: float = SETTLE) -> bool:
        return self._flag.wait(timeout)

    async def wait(self) -> None:
        event, waker = ASYNC.signal()
        assert isinstance(event, anyio.Event)
        with self._lock:
            if self._flag.is_set():
                return
            self._wakers.append(waker)
        try:
            await event.wait()
        finally:
            with self._lock:
                self._wakers.remove(waker)


@dataclass(eq=False)
class Job:
    n: int
    policy: str
    sync: bool
    allow_ro: bool
    inside: Hold | None = None  # a helper called inside this hold's own context
    slow: bool = False  # counting it takes a while (see CountedWork)
    call: Any = None
    finish: Signal = field(default_factory=Signal)
    decided: Signal = field(default_factory=Signal)  # body started, refused, or waits
    finished: Signal = field(default_factory=Signal)
    told: bool = False
    request: Stamp | None = None
    counts: list[Stamp] = field(default_factory=list)
    uncounts: list[Stamp] = field(default_factory=list)
    body: Stamp | None = None
    body_state: MaintenanceState | None = None
    body_counted: bool = False
    end: Stamp | None = None
    end_counted: bool = False
    outcome: str | None = None
    outcome_at: Stamp | None = None

    def __str__(self) -> str:
        kind = "helper" if self.inside is not None else "job"
        ro = ", allow_read_only" if self.allow_ro else ""
        return f"{kind} {self.n} ({self.policy}, {'sync' if self.sync else 'async'}{ro})"


@dataclass(eq=False)
class Hold:
    n: int
    drain: float | None
    on_timeout: str
    mode: Mode
    helpers: list[tuple[str, bool, bool]]
    obj: MaintenanceHold
    leave: Signal = field(default_factory=Signal)
    finished: Signal = field(default_factory=Signal)
    how: str = "return"
    told: bool = False
    scope: Any = None
    cancel_requested: bool = False
    begin: Stamp | None = None
    visible: Stamp | None = None
    body: Stamp | None = None
    body_state: MaintenanceState | None = None
    exit_at: Stamp | None = None
    cancel_at: Stamp | None = None
    timeout_at: Stamp | None = None
    released_at_timeout: bool | None = None
    done: Stamp | None = None
    keys_left: list[int] = field(default_factory=list)
    outcome: str | None = None

    @property
    def owner(self) -> str:
        return f"holder {self.n}"

    def __str__(self) -> str:
        drain = "" if self.drain is None else f", drain={self.drain}, {self.on_timeout}"
        return f"hold {self.n} ({self.mode.value}{drain})"


@dataclass
class Explicit:
    value: bool
    mode: Mode
    begin: Stamp
    end: Stamp | None = None


class CountedWork(dict):  # type: ignore[type-arg]
    """The store's table of guarded calls, stamping which job is counted and when."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.owners: dict[int, Job] = {}

    def __setitem__(self, key: int, entry: Any) -> None:
        job = CURRENT_JOB.get()
        if job is not None:
            if job.slow:
                # Noise: other threads act between the guard's decision to count the call
                # and its entry landing. Harmless when the count comes before the look;
                # a guard that looked first has then looked at a state long gone.
                time.sleep(SLOW_COUNT)
            self.owners[key] = job
            job.counts.append(self.run.stamp(f"{job} counted"))  # before the guard looks
        super().__setitem__(key, entry)

    def pop(self, key: int, default: Any = None) -> Any:
        found = super().pop(key, default)
        job = self.owners.get(key)
        if found is not None and job is not None:
            job.uncounts.append(self.run.stamp(f"{job} uncounted"))
            if job.body is None:
                job.decided.set()  # refused at its look: it waits, skips or raises now
        return found

    def counts(self, job: Job) -> bool:
        return any(self.owners.get(key) is job for key in list(self.keys()))


async def _guarded_async(run: Run, job: Job) -> str:
    run.body_starts(job)
    if job.inside is None:
        await job.finish.wait()
    run.body_ends(job)
    return "ran"


def _guarded_sync(run: Run, job: Job) -> str:
    run.body_starts(job)
    if job.inside is None and not job.finish.wait_blocking():
        raise RuntimeError("never told to finish")
    run.body_ends(job)
    return "ran"


class Run:
    """One example: the actors, their stamps, and what the library was seen doing."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.store = store_of(backend)
        self.ctrl = controller(backend, None)
        self._lock = threading.Lock()
        self.timeline: list[tuple[int, float, str]] = []
        self.jobs: list[Job] = []
        self.holds: list[Hold] = []
        self.explicit: list[Explicit] = []
        self.events: list[MaintenanceEvent] = []
        self.problems: list[str] = []
        work = self.store.work
        assert not work.live and len(work.tables) == 1
        self.table = CountedWork(self)
        work.live = self.table
        work.tables = [(None, self.table)]

    def stamp(self, what: str) -> Stamp:
        with self._lock:
            stamp = Stamp(len(self.timeline) + 1, time.monotonic())
            self.timeline.append((stamp.seq, stamp.t, what))
        return stamp

    def listen(self, event: MaintenanceEvent) -> None:
        if event.backend == self.ctrl.where:
            self.events.append(event)

    # -- guarded calls ------------------------------------------------------------------

    def new_job(
        self,
        sync: bool,
        policy: str,
        allow_ro: bool,
        inside: Hold | None = None,
        slow: bool = False,
    ) -> Job:
        job = Job(len(self.jobs), policy, sync, allow_ro, inside, slow)
        timeout = None
        if policy == "wait":
            timeout = WAIT_TIMEOUT if inside is None else HELPER_TIMEOUT
        guard = not_during_maintenance(
            policy=policy,  # type: ignore[arg-type]
            timeout=timeout,
            backend=self.backend,
            allow_read_only=allow_ro,
        )
        job.call = guard(_guarded_sync if sync else _guarded_async)
        self.jobs.append(job)
        return job

    def body_starts(self, job: Job) -> None:
        state = self.ctrl.snapshot  # read first: the stamp comes after the look
        job.body = self.stamp(f"{job} body starts ({_show(state)})")
        job.body_state = state
        job.body_counted = self.table.counts(job)
        job.decided.set()

    def body_ends(self, job: Job) -> None:
        job.end_counted = self.table.counts(job)
        job.end = self.stamp(f"{job} body ends")

    def _result(self, job: Job, result: Any) -> None:
        job.outcome = "ran" if result == "ran" else "skipped"

    def _failed(self, job: Job, exc: BaseException) -> None:
        if isinstance(exc, UnderMaintenance):
            job.outcome = "timed out" if job.policy == "wait" else "refused"
        else:
            job.outcome = f"failed: {exc!r}"

    def _resolved(self, job: Job) -> None:
        job.outcome_at = self.stamp(f"{job}: {job.outcome}")
        job.decided.set()
        job.finished.set()

    async def call(self, job: Job) -> None:
        job.request = self.stamp(f"{job} called")
        try:
            self._result(job, await job.call(self, job))
        except anyio.get_cancelled_exc_class():
            job.outcome = "cancelled"  # a helper whose hold is cancelled from outside
            raise
        except Exception as exc:
            self._failed(job, exc)
        finally:
            self._resolved(job)

    def call_blocking(self, job: Job) -> None:
        job.request = self.stamp(f"{job} called")
        try:
            self._result(job, job.call(self, job))
        except Exception as exc:
            self._failed(job, exc)
        finally:
            self._resolved(job)

    async def run_job(self, job: Job) -> None:
        CURRENT_JOB.set(job)  # this task's own context
        await self.call(job)

    def run_job_blocking(self, job: Job) -> None:
        CURRENT_JOB.set(job)  # this thread's own context
        self.call_blocking(job)

    # -- holds ----------------------------------------------------------------------------

    def new_hold(
        self,
        drain: float | None,
        on_timeout: str,
        mode: str,
        helpers: list[tuple[str, bool, bool]],
    ) -> Hold:
        n = len(self.holds)
        obj = MaintenanceHold(
            backend=self.backend,
            reason=f"holder {n}",
            mode=mode,
            drain=drain,
            on_drain_timeout=on_timeout,
            owner=f"holder {n}",  # tells its drain events apart
        )
        hold = Hold(n, drain, on_timeout, Mode.parse(mode), helpers, obj)
        self.holds.append(hold)
        return hold

    def _body_starts(self, hold: Hold) -> None:
        hold.body_state = self.ctrl.snapshot
        hold.body = self.stamp(f"{hold} body starts ({_show(hold.body_state)})")

    async def run_hold(self, hold: Hold) -> None:
        hold.begin = self.stamp(f"{hold} entering")
        try:
            with anyio.CancelScope() as scope:
                hold.scope = scope
                if hold.cancel_requested:
                    scope.cancel()
                async with hold.obj:
                    self._body_starts(hold)
                    for policy, sync, allow_ro in hold.helpers:
                        helper = self.new_job(sync, policy, allow_ro, inside=hold)
                        token = CURRENT_JOB.set(helper)
                        try:
                            if sync:
                                self.call_blocking(helper)  # blocks this loop: it must not wait
                            else:
                                await self.call(helper)
                        finally:
                            CURRENT_JOB.reset(token)
                    await hold.leave.wait()
                    hold.exit_at = self.stamp(f"{hold} leaves ({hold.how})")
                    if hold.how == "raise":
                        raise Boom
                    if hold.how == "cancel-inside":
                        scope.cancel()
                        await anyio.sleep_forever()
            hold.outcome = "cancelled" if scope.cancelled_caught else "returned"
        except Boom:
            hold.outcome = "raised"
        except DrainTimeout:
            self._timed_out(hold)
        except Exception as exc:
            hold.outcome = f"failed: {exc!r}"
        finally:
            self._hold_done(hold)

    def run_hold_blocking(self, hold: Hold) -> None:
        hold.begin = self.stamp(f"{hold} entering")
        try:
            with hold.obj:
                self._body_starts(hold)
                for policy, _, allow_ro in hold.helpers:
                    helper = self.new_job(True, policy, allow_ro, inside=hold)
                    token = CURRENT_JOB.set(helper)
                    try:
                        self.call_blocking(helper)
                    finally:
                        CURRENT_JOB.reset(token)
                if not hold.leave.wait_blocking():
                    raise RuntimeError("never told to leave")
                hold.exit_at = self.stamp(f"{hold} leaves ({hold.how})")
                if hold.how != "return":
                    raise Boom
            hold.outcome = "returned"
        except Boom:
            hold.outcome = "raised"
        except DrainTimeout:
            self._timed_out(hold)
        except Exception as exc:
            hold.outcome = f"failed: {exc!r}"
        finally:
            self._hold_done(hold)

    def _timed_out(self, hold: Hold) -> None:
        keys = hold.obj._fixed[1] if hold.obj._fixed else []
        hold.released_at_timeout = not keys  # its frame left at once
        hold.outcome = "drain timed out"
        hold.timeout_at = self.stamp(f"{hold}: DrainTimeout")

    def _hold_done(self, hold: Hold) -> None:
        hold.keys_left = list(hold.obj._fixed[1]) if hold.obj._fixed else []
        hold.done = self.stamp(f"{hold}: {hold.outcome}")
        hold.finished.set()

    def cancel(self, hold: Hold) -> None:
        """Cancel ``hold`` from outside (in its event loop's thread), draining or not."""
        hold.cancel_at = self.stamp(f"{hold} cancelled from outside")
        hold.cancel_requested = True
        if hold.scope is not None:
            hold.scope.cancel()

    def seen_visible(self, hold: Hold) -> bool:
        """Whether ``hold`` is entered (readers see it); stamps the first time it is seen."""
        if hold.visible is not None:
            return True
        keys = hold.obj._fixed[1] if hold.obj._fixed else []
        try:
            key = keys[-1]
        except IndexError:
            return False
        if key in self.ctrl.stack:
            hold.visible = self.stamp(f"{hold} seen entered")
            return True
        return False

    def tell_exit(self, hold: Hold, how: str) -> None:
        hold.told = True
        hold.how = how
        hold.leave.set()

    # -- explicit state and the end ----------------------------------------------------------

    def explicit_begins(self, value: bool, mode: str) -> Explicit:
        op = Explicit(value, Mode.parse(mode), self.stamp(f"explicit {value} {mode} begins"))
        self.explicit.append(op)
        return op

    def explicit_ends(self, op: Explicit) -> None:
        op.end = self.stamp(f"explicit {op.value} ends")

    def explicit_on(self) -> bool:
        return bool(self.explicit) and self.explicit[-1].value

    def check_after_holds(self, state: MaintenanceState) -> None:
        on = self.explicit_on()  # I2: exactly what the explicit state says
        if state.active is not on or state.holds != 0:
            self.problems.append(f"(c) after the last hold: {_show(state)}, explicit on={on}")
        elif state.phase is not (Phase.ON if on else Phase.OFF):
            self.problems.append(f"(c) after the last hold: phase {state.phase}")

    def check_end(self, state: MaintenanceState, stored: MaintenanceState | None) -> None:
        if state.active or state.holds or state.phase is not Phase.OFF:
            self.problems.append(f"(c) maintenance still on at the end: {_show(state)}")
        if stored is not None and (stored.active or stored.holds):
            self.problems.append(f"(c) the store still says on at the end: {_show(stored)}")
        work = self.store.work
        if work.live:
            left = sorted(str(self.table.owners.get(k, k)) for k in list(work.live))
            self.problems.append(f"(c) in-flight work still counted at the end: {left}")
        if not all(not table for _, table in work.tables):
            self.problems.append("(c) a work table is not empty at the end")

    def failure(self, schedule: list[Any], problems: list[str]) -> str:
        lines = [f"schedule: {schedule}", *problems, "timeline:"]
        start = self.timeline[0][1] if self.timeline else 0.0
        lines += [
            f"  {seq:4} {1000 * (t - start):8.1f}ms  {what}" for seq, t, what in self.timeline
        ]
        return "\n".join(lines)


def _show(state: MaintenanceState) -> str:
    if not state.active:
        return "off"
    return f"on {state.mode.value} {state.phase.value} holds={state.holds}"


def _free(job: Job, state: MaintenanceState | None) -> bool:
    assert state is not None
    return not state.active or (job.allow_ro and state.mode is Mode.READ_ONLY)


# -- the rules, checked after the example ---------------------------------------------------


@dataclass
class Source:
    """Something that turns maintenance on: a hold, or one explicit "on"."""

    what: str
    mode: Mode
    begin: int  # its entry began (seq)
    visible_by: float  # if it became visible, it did so by this seq
    sure_from: float  # from this seq on it was surely visible (inf: never known)
    gone_by: float  # by this seq it was surely released
    may_be_gone: Callable[[Stamp], bool]  # it may have been released by this stamp

    def refuses(self, job: Job) -> bool:
        return self.mode is Mode.FULL or not job.allow_ro


def _hold_source(hold: Hold) -> Source:
    assert hold.begin is not None and hold.done is not None
    begin, done = hold.begin, hold.done
    seen = [s.seq for s in (hold.visible, hold.body) if s is not None]
    sure = min(seen) if seen else math.inf

    def may_be_gone(at: Stamp) -> bool:
        for mark in (hold.exit_at, hold.cancel_at):
            if mark is not None and mark.seq < at.seq:
                return True
        if hold.outcome is not None and hold.outcome.startswith("failed"):
            return True
        # A drain that times out with "raise" releases the hold by itself, D seconds on.
        return (
            hold.body is None
            and hold.drain is not None
            and hold.on_timeout == "raise"
            and at.t >= begin.t + hold.drain - MARGIN
        )

    return Source(
        str(hold), hold.mode, begin.seq, sure if seen else done.seq, sure, done.seq, may_be_gone
    )


def _explicit_sources(ops: list[Explicit]) -> list[Source]:
    found = []
    for i, op in enumerate(ops):
        if not op.value:
            continue
        assert op.end is not None
        after = ops[i + 1] if i + 1 < len(ops) else None
        gone_by = math.inf if after is None or after.end is None else after.end.seq

        def may_be_gone(at: Stamp, after: Explicit | None = after) -> bool:
            return after is not None and after.begin.seq < at.seq

        end = op.end.seq
        found.append(
            Source(
                f"explicit {op.mode.value} #{i}",
                op.mode,
                op.begin.seq,
                end,
                end,
                gone_by,
                may_be_gone,
            )
        )
    return found


def _last_count(job: Job, before: Stamp) -> Stamp | None:
    counts = [s for s in job.counts if s.seq < before.seq]
    return counts[-1] if counts else None


def _check_job(job: Job, sources: list[Source], problems: list[str]) -> None:
    outcome = job.outcome
    if job.inside is None and (outcome in (None, "cancelled") or outcome.startswith("failed")):
        problems.append(f"{job} did not end well: {outcome}")
        return
    if job.inside is not None:  # the self-context rule
        if job.outcome == "cancelled" and job.inside.cancel_at is not None:
            return
        if job.outcome != "ran":
            problems.append(f"(a) {job} called inside {job.inside}'s own context: {job.outcome}")
        return
    if job.policy == "wait" and job.outcome != "ran":
        problems.append(f"(a) {job} never ran: {job.outcome}")
    if job.body is not None:
        assert job.end is not None
        seen = _last_count(job, job.body)
        if seen is None or not job.body_counted or not job.end_counted:
            problems.append(f"(a) {job} ran without being counted as in-flight work")
            return
        for source in sources:
            if (
                source.refuses(job)
                and source.sure_from < seen.seq
                and not source.may_be_gone(job.body)
            ):
                problems.append(f"(a) {job} started its body while {source.what} was on")
        state = job.body_state
        assert state is not None
        if not _free(job, state) and not any(
            s.refuses(job) and s.begin < job.body.seq and s.visible_by > seen.seq for s in sources
        ):
            problems.append(
                f"(a) {job} body saw maintenance on ({_show(state)}), on before the guard looked"
            )
    elif job.outcome in ("skipped", "refused"):
        assert job.outcome_at is not None
        seen = _last_count(job, job.outcome_at)
        if seen is None:
            problems.append(f"(a) {job} was {job.outcome} without being counted first")
        elif not any(
            s.refuses(job) and s.begin < job.outcome_at.seq and s.gone_by > seen.seq
            for s in sources
        ):
            problems.append(f"(a) {job} was {job.outcome} while maintenance was off")


def _check_hold(hold: Hold, run: Run, problems: list[str]) -> None:
    if hold.outcome is None or hold.outcome.startswith("failed"):
        problems.append(f"{hold} did not end well: {hold.outcome}")
    if hold.keys_left:
        problems.append(f"(c) {hold} still has entered frames after it ended: {hold.keys_left}")
    if hold.body_state is not None and not hold.body_state.active:
        problems.append(f"{hold} body saw maintenance off (I1)")
    if hold.drain is None:
        return
    mine = [e.kind for e in run.events if e.owner == hold.owner]
    finished = mine.count(EventKind.DRAIN_FINISHED)
    timed_out = mine.count(EventKind.DRAIN_TIMED_OUT)
    if finished + timed_out > 1 or (hold.body is not None and finished + timed_out != 1):
        problems.append(f"(b) {hold}: heard {finished} drain_finished, {timed_out} timed_out")
    if hold.outcome == "drain timed out":
        if hold.on_timeout != "raise":
            problems.append(f"(b) {hold} raised DrainTimeout with on_drain_timeout='proceed'")
        if not timed_out:
            problems.append(f"(b) {hold} raised DrainTimeout but drain_timed_out was not heard")
        if hold.body is not None:
            problems.append(f"(b) {hold} raised DrainTimeout after its body ran")
        if not hold.released_at_timeout:
            problems.append(f"(b) {hold} raised DrainTimeout but was not released")
    elif timed_out and hold.cancel_at is None:
        if hold.on_timeout == "raise":
            problems.append(f"(b) {hold}: drain timed out but DrainTimeout was not raised")
        elif hold.body is None:
            problems.append(f"(b) {hold}: drain timed out ('proceed') but the body never ran")
    assert hold.begin is not None and hold.done is not None
    if timed_out:
        ended = (hold.body or hold.timeout_at or hold.done).t
        deadline = hold.begin.t + hold.drain - MARGIN
        if not any(
            j.counts and j.counts[0].t <= ended and j.outcome_at and j.outcome_at.t >= deadline
            for j in run.jobs
        ):
            problems.append(f"(b) {hold}: drain timed out with nothing in flight at its deadline")
    elif hold.body is not None:
        for job in run.jobs:
            if job.inside is not None or job.body is None:
                continue
            refused = hold.mode is Mode.FULL or not job.allow_ro
            if (
                refused
                and job.body.seq < hold.begin.seq
                and (job.end is None or job.end.seq > hold.body.seq)
            ):
                problems.append(
                    f"(b) {hold} body started while {job}, in flight when it was entered, "
                    "still ran (and the drain did not time out)"
                )


def analyse(run: Run) -> list[str]:
    problems = list(run.problems)
    sources = [_hold_source(h) for h in run.holds] + _explicit_sources(run.explicit)
    for job in run.jobs:
        _check_job(job, sources, problems)
    for hold in run.holds:
        _check_hold(hold, run, problems)
    skipped = sum(1 for j in run.jobs if j.outcome == "skipped")
    heard = sum(1 for e in run.events if e.kind is EventKind.JOB_SKIPPED)
    if skipped != heard:
        problems.append(f"{skipped} calls skipped but {heard} job_skipped events heard")
    return problems


# -- schedules --------------------------------------------------------------------------------

POLICIES = ("wait", "skip", "raise")
MODES = ("full", "full", "read_only")
DRAINS = (None, 0.05, 0.05, 0.1, 0.25, 0.5)
EXITS = ("return", "raise", "cancel-inside", "cancel-outside")
PAUSES = (0.005, 0.03, 0.12)
helpers = st.lists(
    st.tuples(st.sampled_from(POLICIES), st.booleans(), st.booleans()), max_size=2
)  # (policy, sync, allow_read_only)


def steps(job_actors: tuple[str, ...], hold_actors: tuple[str, ...]) -> st.SearchStrategy[Any]:
    job = st.tuples(
        st.just("job"),
        st.sampled_from(job_actors),
        st.sampled_from(POLICIES),
        st.booleans(),  # allow_read_only
        st.booleans(),  # slow to be counted
    )
    finish = st.tuples(st.just("finish"), st.integers(0, 7))
    hold = st.tuples(
        st.just("hold"),
        st.sampled_from(hold_actors),
        st.sampled_from(DRAINS),
        st.sampled_from(("proceed", "raise")),
        st.sampled_from(MODES),
        helpers,
    )
    leave = st.tuples(st.just("exit"), st.integers(0, 7), st.sampled_from(EXITS))
    explicit = st.tuples(st.just("explicit"), st.booleans(), st.sampled_from(MODES))
    pause = st.tuples(st.just("pause"), st.sampled_from(PAUSES))
    # Weighted: jobs and holds often, so that drains find work in flight.
    return st.one_of(job, job, job, hold, hold, finish, finish, leave, explicit, pause, pause)


def _pick(items: list[Any], i: int) -> Any:
    return items[i % len(items)] if items else None


def _new_backend(kind: str, tmp: str) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    return LocalFileBackend(Path(tmp) / "m.json", refresh_interval=0.05)


def _unwatch(backend: Backend) -> None:
    # Guards keep a file store watched while they live: let them go (and the watcher
    # end, removing this process's presence record) before the directory goes.
    store = store_of(backend)
    if not backend.stores_holds:
        return
    gc.collect()
    deadline = time.monotonic() + 5
    while (store.watching or store.reported is not None) and time.monotonic() < deadline:
        time.sleep(0.005)


def _stored(backend: Backend) -> Any:
    # What another process would see.
    async def read() -> MaintenanceState | None:
        if not backend.stores_holds:
            return None
        return derive(None, [await backend.read_state(None)], utcnow())

    return read


# -- asyncio and trio tasks in one loop -------------------------------------------------------


async def until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    with anyio.fail_after(seconds):
        while not check():  # noqa: ASYNC110 - the state under test changes elsewhere
            await anyio.sleep(0.0005)


async def _drive_tasks(run: Run, schedule: list[Any]) -> None:
    backend = run.backend
    async with anyio.create_task_group() as tg:
        for step in schedule:
            kind = step[0]
            if kind == "job":
                _, where, policy, allow_ro, slow = step
                job = run.new_job(where == "thread", policy, allow_ro, slow=slow)
                if job.sync:
                    tg.start_soon(anyio.to_thread.run_sync, run.run_job_blocking, job)
                else:
                    tg.start_soon(run.run_job, job)
                with anyio.fail_after(10):
                    await job.decided.wait()  # it has looked: runs, waits or was refused
            elif kind == "finish":
                job = _pick([j for j in run.jobs if j.inside is None and not j.told], step[1])
                if job is not None:
                    job.told = True
                    job.finish.set()
            elif kind == "hold":
                _, _, drain, on_timeout, mode, calls = step
                hold = run.new_hold(drain, on_timeout, mode, calls)
                tg.start_soon(run.run_hold, hold)
                await until(lambda hold=hold: run.seen_visible(hold) or hold.finished.is_set())
            elif kind == "exit":
                live = [h for h in run.holds if not h.told and not h.finished.is_set()]
                hold = _pick(live, step[1])
                if hold is not None:
                    if step[2] == "cancel-outside":
                        hold.told = True
                        run.cancel(hold)
                    else:
                        run.tell_exit(hold, step[2])
            elif kind == "explicit":
                op = run.explicit_begins(step[1], step[2])
                if op.value:
                    await set_maintenance_mode(True, backend, reason="ops", mode=step[2])
                else:
                    await set_maintenance_mode(False, backend)
                run.explicit_ends(op)
            elif kind == "pause":
                await anyio.sleep(step[1])
            await anyio.lowlevel.checkpoint()

        # The end: every hold leaves and every job may finish...
        for hold in run.holds:
            if not hold.told:
                run.tell_exit(hold, "return")
        for job in run.jobs:
            job.finish.set()
        with anyio.fail_after(SETTLE):
            for hold in run.holds:
                await hold.finished.wait()
        run.check_after_holds(await get_state(backend))
        if run.explicit_on():  # ...then the explicit state goes off: the waiting jobs run
            op = run.explicit_begins(False, "full")
            await set_maintenance_mode(False, backend)
            run.explicit_ends(op)
        with anyio.fail_after(SETTLE):
            for job in run.jobs:
                await job.finished.wait()
    run.check_end(await get_state(backend), await _stored(backend)())


def _run_example(kind: str, schedule: list[Any], drive: Callable[[Run, list[Any]], None]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backend = _new_backend(kind, tmp)
        run = Run(backend)
        add_listener(run.listen)
        try:
            drive(run, schedule)
        finally:
            flush_listeners()
            remove_listener(run.listen)
            for job in run.jobs:
                job.call = None  # the guards go, and with them their watch of the store
            _unwatch(backend)
        problems = analyse(run)
        assert not problems, run.failure(schedule, problems)


KEY_SCHEDULES = [
    # (b): the drain waits for a job in flight (a broken count lets the body in at once)
    [
        ("job", "task", "wait", False, False),
        ("hold", "task", 0.5, "proceed", "full", []),
        ("finish", 0),
    ],
    [
        ("job", "thread", "skip", False, False),
        ("job", "task", "raise", True, False),
        ("hold", "task", 0.5, "raise", "read_only", []),
        ("pause", 0.03),
        ("finish", 1),
        ("pause", 0.005),
        ("finish", 0),
    ],
    # (b): drains that time out, "raise" (released, body never runs) and "proceed"
    [
        ("job", "task", "wait", False, False),
        ("hold", "task", 0.05, "raise", "full", []),
        ("hold", "task", 0.05, "proceed", "full", []),
        ("pause", 0.12),
        ("finish", 0),
    ],
    # (b): cancelled while draining; a job that waits through it
    [
        ("job", "thread", "wait", False, False),
        ("hold", "task", 0.5, "raise", "full", []),
        ("job", "task", "wait", False, False),
        ("exit", 0, "cancel-outside"),
        ("finish", 0),
    ],
    # (a): helpers called inside the hold's own context run, whatever their policy
    [
        (
            "hold",
            "task",
            0.1,
            "raise",
            "full",
            [("raise", False, False), ("raise", True, False)],
        ),
        ("hold", "task", None, "proceed", "full", [("skip", False, True), ("wait", True, False)]),
        ("job", "thread", "raise", False, False),
        ("explicit", True, "read_only"),
        ("exit", 1, "cancel-inside"),
        ("explicit", False, "full"),
    ],
]


def _with_examples(schedules: list[list[Any]]) -> Callable[[Any], Any]:
    def add(test: Any) -> Any:
        for schedule in schedules:
            test = example(schedule=schedule)(test)
        return test

    return add


@pytest.mark.parametrize("kind", ["memory", "file"])
@pytest.mark.parametrize("framework", ["asyncio", "trio"])
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@_with_examples(KEY_SCHEDULES)
@given(schedule=st.lists(steps(("task", "thread"), ("task",)), min_size=3, max_size=20))
def test_guards_and_drains_over_task_interleavings(
    kind: str, framework: str, schedule: list[Any]
) -> None:
    def drive(run: Run, schedule: list[Any]) -> None:
        anyio.run(_drive_tasks, run, schedule, backend=framework)

    _run_example(kind, schedule, drive)


# -- real threads and the tasks of two event loops at once ------------------------------------

ACTORS = ("thread", "asyncio", "trio")
THREAD_SCHEDULES = [
    # (a): a job looks while off, then a hold is entered before its count lands (slow):
    # harmless when the count comes first, a job running under the hold otherwise
    [
        ("job", "thread", "raise", False, True),
        ("hold", "thread", None, "proceed", "full", []),
        ("pause", 0.03),
    ],
    [
        ("job", "thread", "wait", False, True),
        ("hold", "asyncio", 0.25, "proceed", "full", []),
        ("pause", 0.03),
        ("finish", 0),
    ],
    [
        ("job", "trio", "skip", False, True),
        ("hold", "thread", 0.25, "raise", "full", []),
        ("pause", 0.03),
    ],
    # (b): drains of sync holds in threads that time out
    [
        ("job", "asyncio", "wait", False, False),
        ("pause", 0.005),
        ("hold", "thread", 0.05, "raise", "full", [("raise", True, False)]),
        ("hold", "thread", 0.05, "proceed", "read_only", []),
        ("pause", 0.12),
        ("finish", 0),
    ],
]


def until_blocking(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the example did not settle")
        time.sleep(0.0002)


def _drive_threads(run: Run, schedule: list[Any]) -> None:
    backend = run.backend
    threads: list[threading.Thread] = []
    hold_portals: dict[Hold, Any] = {}

    def start(target: Callable[..., None], arg: Any) -> None:
        thread = threading.Thread(target=target, args=(arg,), daemon=True)
        thread.start()
        threads.append(thread)

    switch = sys.getswitchinterval()
    with start_blocking_portal("asyncio") as aio, start_blocking_portal("trio") as trio_portal:
        portals = {"asyncio": aio, "trio": trio_portal}
        sys.setswitchinterval(1e-5)  # threads take turns often: more interleavings
        try:
            for step in schedule:
                kind = step[0]
                if kind == "job":  # started, not waited for: it races what comes next
                    _, actor, policy, allow_ro, slow = step
                    job = run.new_job(actor == "thread", policy, allow_ro, slow=slow)
                    if actor == "thread":
                        start(run.run_job_blocking, job)
                    else:
                        portals[actor].start_task_soon(run.run_job, job)
                    if slow:  # what comes next comes while it is being counted
                        until_blocking(lambda job=job: job.request is not None)
                        time.sleep(SLOW_COUNT / 5)
                elif kind == "finish":
                    job = _pick([j for j in run.jobs if j.inside is None and not j.told], step[1])
                    if job is not None:
                        job.told = True
                        job.finish.set()
                elif kind == "hold":
                    _, actor, drain, on_timeout, mode, calls = step
                    if actor == "thread":
                        calls = [(p, True, ro) for p, _, ro in calls]
                    hold = run.new_hold(drain, on_timeout, mode, calls)
                    if actor == "thread":
                        start(run.run_hold_blocking, hold)
                    else:
                        hold_portals[hold] = portals[actor]
                        portals[actor].start_task_soon(run.run_hold, hold)
                    until_blocking(
                        lambda hold=hold: run.seen_visible(hold) or hold.finished.is_set()
                    )
                elif kind == "exit":
                    live = [h for h in run.holds if not h.told and not h.finished.is_set()]
                    hold = _pick(live, step[1])
                    if hold is not None:
                        portal = hold_portals.get(hold)
                        if portal is None:  # a thread: no cancellation, an exception
                            run.tell_exit(hold, "return" if step[2] == "return" else "raise")
                        elif step[2] == "cancel-outside":
                            hold.told = True
                            portal.call(run.cancel, hold)
                        else:
                            run.tell_exit(hold, step[2])
                elif kind == "explicit":
                    op = run.explicit_begins(step[1], step[2])
                    if op.value:
                        aio.call(
                            lambda mode=step[2]: set_maintenance_mode(
                                True, backend, reason="ops", mode=mode
                            )
                        )
                    else:
                        aio.call(set_maintenance_mode, False, backend)
                    run.explicit_ends(op)
                elif kind == "pause":
                    time.sleep(step[1])

            for hold in run.holds:
                if not hold.told:
                    run.tell_exit(hold, "return")
            for job in run.jobs:
                job.finish.set()
            for hold in run.holds:
                assert hold.finished.wait_blocking(SETTLE), f"{hold} did not end"
            run.check_after_holds(aio.call(get_state, backend))
            if run.explicit_on():
                op = run.explicit_begins(False, "full")
                aio.call(set_maintenance_mode, False, backend)
                run.explicit_ends(op)
            for job in run.jobs:
                assert job.finished.wait_blocking(SETTLE), f"{job} did not end"
            for thread in threads:
                thread.join(SETTLE)
            run.check_end(aio.call(get_state, backend), aio.call(_stored(backend)))
        finally:
            sys.setswitchinterval(switch)
            for job in run.jobs:
                job.finish.set()
            for hold in run.holds:
                hold.leave.set()


@pytest.mark.parametrize("kind", ["memory", "file"])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@_with_examples(THREAD_SCHEDULES)
@given(schedule=st.lists(steps(ACTORS, ACTORS), min_size=3, max_size=20))
def test_guards_and_drains_over_threads_and_two_loops(kind: str, schedule: list[Any]) -> None:
    _run_example(kind, schedule, _drive_threads)
