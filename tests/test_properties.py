"""Property-based tests of invariants I1 and I2 and of the hold stack's snapshot/restore."""

from __future__ import annotations

import math
import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from maintguard import get_state, set_maintenance_mode, under_maintenance
from maintguard._core import store_of
from maintguard._core.decide import Book
from maintguard._core.stack import HoldStack, Presents, details_of, new_key, record, to_datetime
from maintguard._state import (
    ExplicitState,
    HoldRecord,
    Mode,
    Phase,
    StoredState,
    derive,
    utcnow,
)
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    RedisBackend,
)
from tests.stores import REDIS_URL, redis_prefix

HOLDERS = 6

step = st.one_of(
    st.tuples(st.just("enter"), st.integers(0, HOLDERS - 1)),
    st.tuples(
        st.just("exit"), st.integers(0, HOLDERS - 1), st.sampled_from(["return", "raise", "cancel"])
    ),
    st.tuples(st.just("explicit"), st.booleans()),
)


@dataclass
class Holder:
    leave: anyio.Event = field(default_factory=anyio.Event)
    entered: anyio.Event = field(default_factory=anyio.Event)
    left: anyio.Event = field(default_factory=anyio.Event)
    how: str = "return"
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class Boom(Exception):
    pass


async def _run_schedule(make: Any, writable: bool, schedule: list[tuple[Any, ...]]) -> None:
    holders: dict[int, Holder] = {}
    explicit = False

    async def hold(i: int, h: Holder) -> None:
        try:
            with h.scope:
                async with under_maintenance(backend=make(), reason=f"holder {i}"):
                    h.entered.set()
                    await h.leave.wait()
                    if h.how == "raise":
                        raise Boom
                    if h.how == "cancel":
                        h.scope.cancel()
                        await anyio.sleep_forever()
        except Boom:
            pass
        finally:
            h.left.set()

    async def check() -> None:
        # Every reader sees the same truth: this process through any backend object naming
        # the store, and another process, which sees only what is stored.
        views = [await get_state(make())]
        backend = make()
        if backend.stores_holds:
            stored = await backend.read_state(None)
            views.append(derive(None, [stored], utcnow()))
        live = len(holders)
        for state in views:
            if live:  # I1
                assert state.active, (schedule, state)
                assert state.holds == 1  # one record for this process, however many frames
                assert state.reason is not None and state.reason.startswith("holder")
            else:  # I2: exactly what the explicit state says
                assert state.active is explicit, (schedule, state)
                assert state.holds == 0
                assert state.reason == ("ops" if explicit else None)

    async with anyio.create_task_group() as tg:
        for op in schedule:
            if op[0] == "enter" and op[1] not in holders:
                holders[op[1]] = h = Holder()
                tg.start_soon(hold, op[1], h)
                await h.entered.wait()
            elif op[0] == "exit" and op[1] in holders:
                h = holders.pop(op[1])
                h.how = op[2]
                if h.how == "cancel" and op[1] % 2:
                    h.scope.cancel()  # cancelled from outside, while waiting
                else:
                    h.leave.set()
                await h.left.wait()
            elif op[0] == "explicit" and writable:
                explicit = op[1]
                await set_maintenance_mode(
                    explicit, make(), **({"reason": "ops"} if explicit else {})
                )
            await check()
        for h in holders.values():
            h.leave.set()
        holders.clear()
    await check()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["memory", "env", "file", "redis"])
@pytest.mark.parametrize("framework", ["asyncio", "trio"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(schedule=st.lists(step, max_size=25))
def test_random_schedules_keep_invariants(kind: str, framework: str, schedule: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "memory":
            backend = MemoryBackend()

            def make() -> Backend:
                return backend
        elif kind == "env":
            var = f"MAINTGUARD_PROP_{os.getpid()}"
            os.environ.pop(var, None)

            def make() -> Backend:
                return EnvVarBackend(var)
        elif kind == "redis":
            prefix = redis_prefix()  # a store of its own for each schedule

            def make() -> Backend:
                return RedisBackend(REDIS_URL, key_prefix=prefix, refresh_interval=0)
        else:
            path = Path(tmp) / "m.json"

            def make() -> Backend:
                return LocalFileBackend(path, refresh_interval=0)

        anyio.run(_run_schedule, make, kind != "env", schedule, backend=framework)


# -- the hold stack as a pure model -----------------------------------------------------------


class HoldStackModel(RuleBasedStateMachine):
    """Frames pushed and removed in any order, fake time: what the stack presents follows
    the newest frame that sets each detail, and its record's lease runs out on time."""

    frames = Bundle("frames")

    def __init__(self) -> None:
        super().__init__()
        self.stack = HoldStack()
        self.model: list[tuple[int, Presents, float]] = []
        self.counts: dict[int, int] = {}
        self.now = 1_000_000.0

    @rule(
        target=frames,
        owner=st.sampled_from(["job", "cli"]),
        reason=st.none() | st.sampled_from(["a", "b", "c"]),
        retry_after=st.none() | st.sampled_from([1.0, 2.0]),
        mode=st.sampled_from(list(Mode)),
    )
    def push(self, owner: str, reason: str | None, retry_after: float | None, mode: Mode) -> int:
        key, presents = new_key(), Presents(owner, reason, retry_after, mode)
        assert self.stack.push(key, presents, self.now) is (not self.model)
        self.model.append((key, presents, self.now))
        return key

    @rule(key=consumes(frames))
    def remove(self, key: int) -> None:
        count = self.counts.pop(key, 1)
        for left in range(count - 1, -1, -1):  # counted entries leave one by one
            frame = self.stack.remove(key)
            assert frame is not None and frame[2] == left
            assert (key in self.stack) is (left > 0)
        self.model = [f for f in self.model if f[0] != key]
        assert bool(self.stack) is bool(self.model)
        assert self.stack.remove(key) is None  # a second exit of one frame changes nothing

    @rule(key=frames)
    def enter_again(self, key: int) -> None:
        on_top = bool(self.model) and self.model[-1][0] == key
        before = details_of(self.stack)
        assert self.stack.again(key) is on_top  # only the top frame counts one more entry
        if on_top:
            self.counts[key] = self.counts.get(key, 1) + 1
        assert details_of(self.stack) == before  # counting changes nothing presented

    @rule(seconds=st.floats(0, 100))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def presented_details_follow_the_stack(self) -> None:
        details = details_of(self.stack)
        assert len(self.stack) == len(self.model)
        if not self.model:
            assert details is None
            return
        assert details is not None
        newest_first = [p for _, p, _ in self.model[::-1]]
        assert details.owner == newest_first[0].owner
        assert details.started == self.model[-1][2]
        assert details.acquired == self.model[0][2]
        assert details.reason == next((p.reason for p in newest_first if p.reason), None)
        assert details.retry_after == next(
            (p.retry_after for p in newest_first if p.retry_after), None
        )
        expected = Mode.FULL if any(p.mode is Mode.FULL for p in newest_first) else Mode.READ_ONLY
        assert details.mode is expected
        held = record(details, hold_id="h", host="x", pid=1, now=self.now, lease_ttl=30.0)
        assert held.live(to_datetime(self.now + 29.9))
        assert not held.live(to_datetime(self.now + 30.0))


TestHoldStackModel = pytest.mark.slow(HoldStackModel.TestCase)
TestHoldStackModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- threads, asyncio tasks and trio tasks at once; two scopes; fake time --------------------

SCOPES = (None, "billing")
ACTORS = ("asyncio", "trio", "thread")
START = 2_000_000_000.0  # fake wall-clock seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Live:
    """A holder running in one actor: `depth` nested entries of one or two hold objects."""

    scope: str | None
    leave: Any
    left: threading.Event
    how: str = "return"
    cancel: Any = None


mixed_step = st.one_of(
    st.tuples(
        st.just("enter"),
        st.sampled_from(ACTORS),
        st.sampled_from(SCOPES),
        st.integers(1, 3),  # nesting depth in one task or thread
        st.booleans(),  # nest the same hold object (True) or a fresh one per level
    ),
    st.tuples(st.just("exit"), st.integers(0, 7), st.sampled_from(["return", "raise", "cancel"])),
    st.tuples(st.just("explicit"), st.sampled_from(SCOPES), st.sampled_from([None, 5.0, 50.0])),
    st.tuples(st.just("explicit_off"), st.sampled_from(SCOPES)),
    st.tuples(st.just("crashed"), st.sampled_from(SCOPES), st.sampled_from([3.0, 30.0])),
    st.tuples(st.just("time"), st.sampled_from([1.0, 4.0, 10.0, 40.0])),
)


def _run_mixed(path: Path, schedule: list[tuple[Any, ...]]) -> None:
    clock = FakeClock()
    backend = LocalFileBackend(path, lease_ttl=1e6, refresh_interval=0)
    store_of(backend).clock = clock
    holders: list[Live] = []
    explicit: dict[str | None, float | None] = {}  # scope -> until (inf: none)
    crashed: dict[str | None, list[float]] = {s: [] for s in SCOPES}

    async def async_holder(holds: list[Any], live: Live, entered: threading.Event) -> None:
        async def level(i: int) -> None:
            if i == len(holds):
                entered.set()
                await live.leave.wait()
                if live.how == "raise":
                    raise Boom
                if live.how == "cancel":
                    live.cancel.cancel()
                    await anyio.sleep_forever()
                return
            async with holds[i]:
                await level(i + 1)

        try:
            with anyio.CancelScope() as live.cancel:
                await level(0)
        except Boom:
            pass
        finally:
            live.left.set()

    def thread_holder(holds: list[Any], live: Live, entered: threading.Event) -> None:
        def level(i: int) -> None:
            if i == len(holds):
                entered.set()
                live.leave.wait()
                if live.how != "return":
                    raise Boom
                return
            with holds[i]:
                level(i + 1)

        try:
            level(0)
        except Boom:
            pass
        finally:
            live.left.set()

    def expected(scope: str | None) -> bool:
        own = any(h.scope == scope for h in holders)
        until = explicit.get(scope, -1.0)
        in_force = until is not None and (until == math.inf or until > clock.now)
        dead = any(expiry > clock.now for expiry in crashed[scope])
        return own or in_force or dead or (scope is not None and expected(None))

    def check(portals: dict[str, Any]) -> None:
        stored = LocalFileBackend(path)._read_scopes_blocking(SCOPES)  # as another process
        now = to_datetime(clock.now)
        for scope in SCOPES:
            want = expected(scope)
            here = portals["asyncio"].call(get_state, backend, scope)
            levels = [stored[scope]] + ([stored[None]] if scope is not None else [])
            there = derive(scope, levels, now)
            assert here.active is want, (scope, schedule, here)  # I1 and I2, this process
            assert there.active is want, (scope, schedule, there)  # ... and another one
            own_records = [r for r in stored[scope].holds if r.pid == os.getpid()]
            assert len(own_records) == (1 if any(h.scope == scope for h in holders) else 0)

    with (
        start_blocking_portal("asyncio") as aio,
        start_blocking_portal("trio") as trio_portal,
    ):
        portals = {"asyncio": aio, "trio": trio_portal}
        for op in schedule:
            if op[0] == "enter":
                _, actor, scope, depth, same = op
                one = under_maintenance(backend=backend, scope=scope, reason=actor)
                more = [under_maintenance(backend=backend, scope=scope) for _ in range(depth - 1)]
                holds = [one] * depth if same else [one, *more]
                entered = threading.Event()
                if actor == "thread":
                    live = Live(scope, threading.Event(), threading.Event())
                    threading.Thread(target=thread_holder, args=(holds, live, entered)).start()
                else:
                    portal = portals[actor]
                    live = Live(scope, portal.call(anyio.Event), threading.Event())
                    live.leave_portal = portal  # type: ignore[attr-defined]
                    portal.start_task_soon(async_holder, holds, live, entered)
                assert entered.wait(10)
                holders.append(live)
            elif op[0] == "exit" and holders:
                live = holders.pop(op[1] % len(holders))
                live.how = op[2]
                portal = getattr(live, "leave_portal", None)
                if portal is None:
                    live.leave.set()
                elif live.how == "cancel" and op[1] % 2:
                    portal.call(live.cancel.cancel)  # cancelled from outside while waiting
                else:
                    portal.call(live.leave.set)
                assert live.left.wait(10)
            elif op[0] == "explicit":
                _, scope, seconds = op
                if seconds is None:
                    aio.call(lambda scope=scope: set_maintenance_mode(True, backend, scope=scope))
                    explicit[scope] = math.inf
                else:
                    until = clock.now + seconds
                    aio.call(
                        lambda scope=scope, until=until: set_maintenance_mode(
                            True, backend, scope=scope, until=to_datetime(until)
                        )
                    )
                    explicit[scope] = until
            elif op[0] == "explicit_off":
                aio.call(lambda scope=op[1]: set_maintenance_mode(False, backend, scope=scope))
                explicit[op[1]] = None
            elif op[0] == "crashed":  # a holder that died: its lease runs out by itself
                _, scope, ttl = op
                expiry = clock.now + ttl
                dead = HoldRecord(
                    id=f"dead:{len(crashed[scope])}",
                    owner="killed job",
                    host="elsewhere",
                    pid=1,
                    acquired=to_datetime(clock.now),
                    started=to_datetime(clock.now),
                    expires=to_datetime(expiry),
                )
                backend._update_blocking(
                    scope, lambda s, dead=dead: replace(s, holds=(*s.holds, dead))
                )
                crashed[scope].append(expiry)
            elif op[0] == "time":
                clock.now += op[1]
            check(portals)
        for live in holders:
            portal = getattr(live, "leave_portal", None)
            if portal is None:
                live.leave.set()
            else:
                portal.call(live.leave.set)
            assert live.left.wait(10)
        holders.clear()
        check(portals)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("MAINTGUARD_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=st.lists(mixed_step, max_size=30))
def test_threads_and_tasks_of_both_loops_keep_invariants(schedule: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run_mixed(Path(tmp) / "m.json", schedule)


class NestedHoldObjects(RuleBasedStateMachine):
    """Hold objects nested in any order in one thread (the same object again included):
    what readers see is always the innermost entry's details, restored as entries leave."""

    def __init__(self) -> None:
        super().__init__()
        self.backend = MemoryBackend()
        self.holds = [
            under_maintenance(backend=self.backend, reason=r, mode=m)
            for r, m in (("a", "full"), ("b", "read_only"), (None, "full"))
        ]
        self.entered: list[int] = []

    @rule(i=st.integers(0, 2))
    def enter(self, i: int) -> None:
        self.holds[i].__enter__()
        self.entered.append(i)

    @rule()
    def leave(self) -> None:
        if self.entered:
            self.holds[self.entered.pop()].__exit__(None, None, None)

    @invariant()
    def readers_see_the_innermost_details(self) -> None:
        state = store_of(self.backend).root.snapshot
        assert state.active is bool(self.entered)
        reasons = [self.holds[i]._presents.reason for i in self.entered]
        assert state.reason == next((r for r in reversed(reasons) if r), None)
        modes = {self.holds[i]._presents.mode for i in self.entered}
        if self.entered:
            assert state.mode is (Mode.FULL if Mode.FULL in modes else Mode.READ_ONLY)

    def teardown(self) -> None:
        while self.entered:
            self.leave()


TestNestedHoldObjects = NestedHoldObjects.TestCase
TestNestedHoldObjects.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


# -- the pure decisions (decide.Book) against a plain model of the rules ---------------------


class BookModel(RuleBasedStateMachine):
    """Random interleavings of entries, re-entries, exits in any order, drains, reads of
    other processes' holds and of the operator's state (with ``until``), time passing and
    the global scope's phase changing, driven straight into :class:`decide.Book` with the
    clock passed in. After every step the book's activity and phase match the rules
    computed here from scratch, and :func:`derive` over the book's level agrees."""

    objects = Bundle("objects")

    def __init__(self) -> None:
        super().__init__()
        self.book = Book(stores_holds=False, hold_id="me")
        self.now = 1_000_000.0
        self.parent = Phase.OFF
        self.named = False
        self.frames: dict[int, bool] = {}  # key -> still draining
        self.counts: dict[int, int] = {}  # key -> entries counted on it
        self.explicit = ExplicitState()
        self.others: tuple[HoldRecord, ...] = ()

    def clock(self) -> float:
        return self.now

    def _parent(self) -> Phase | None:
        return self.parent if self.named else None

    @rule(target=objects, reason=st.none() | st.sampled_from(["a", "b"]), drain=st.booleans())
    def enter_new(self, reason: str | None, drain: bool) -> list[int]:
        keys: list[int] = []
        if drain:
            self.book.decide_begin_drain(self.now, self.parent)
        out = self.book.decide_enter(
            Presents("o", reason, None, Mode.FULL), keys, drain, self.clock, self.parent
        )
        assert not isinstance(out, int)  # holds are not stored: nothing to write first
        self.frames[keys[-1]] = drain
        self.counts[keys[-1]] = 1
        return keys

    @rule(keys=objects)
    def enter_again(self, keys: list[int]) -> None:
        on_top = bool(keys) and keys[-1] == max(self.frames, default=None)
        before = list(keys)
        self.book.decide_enter(
            Presents("o", None, None, Mode.FULL), keys, False, self.clock, self.parent
        )
        if on_top:
            assert keys == before
            self.counts[keys[-1]] += 1
        else:
            self.frames[keys[-1]] = False
            self.counts[keys[-1]] = 1

    @rule(keys=objects)
    def leave(self, keys: list[int]) -> None:
        if not keys:
            assert self.book.decide_leave(keys, self.clock, self._parent()) is None
            return
        key = keys[-1]
        left = self.book.decide_leave(keys, self.clock, self._parent())
        assert left is not None and left[0] is not None
        self.counts[key] -= 1
        if self.counts[key] == 0:
            del self.counts[key]
            del self.frames[key]
            assert key not in keys

    @rule(data=st.data())
    def drain_ends(self, data: st.DataObject) -> None:
        draining = [k for k, d in self.frames.items() if d]
        if not draining:
            return
        key = data.draw(st.sampled_from(draining))
        self.book.decide_end_drain(key, self.now, self.parent)
        self.frames[key] = False

    @rule(
        active=st.booleans(),
        until=st.none() | st.floats(-50, 50),
        others=st.lists(st.booleans(), max_size=3),
    )
    def read(self, active: bool, until: float | None, others: list[bool]) -> None:
        self.explicit = ExplicitState(
            active=active, until=None if until is None else to_datetime(self.now + until)
        )
        started = to_datetime(self.now)
        self.others = tuple(
            HoldRecord(f"other{i}", "o", "h", i, started, started, drain="t" if d else None)
            for i, d in enumerate(others)
        )
        stored = StoredState(self.explicit, self.others)
        self.book.decide_read(stored, None, "w", self.now, self.parent, 0.0)

    @rule(seconds=st.floats(0, 60))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.book.recompute(self.now, self.parent)  # (what a snapshot's deadline does)

    @rule(phase=st.sampled_from(Phase))
    def global_scope_changes(self, phase: Phase) -> None:
        self.named = True
        self.parent = phase
        self.book.recompute(self.now, self.parent)

    def expected(self) -> tuple[Phase, bool]:
        until = self.explicit.until
        explicit = self.explicit.active and (until is None or until > to_datetime(self.now))
        own = [all(self.frames.values())] if self.frames else []
        own += [h.draining for h in self.others]
        parent = (
            [self.parent is Phase.DRAINING] if self.named and self.parent is not Phase.OFF else []
        )

        def rule_of(sources: list[bool]) -> Phase:
            if explicit or any(not d for d in sources):
                return Phase.ON
            return Phase.DRAINING if sources else Phase.OFF

        return rule_of(own + parent), rule_of(own) is not Phase.OFF

    @invariant()
    def decisions_follow_the_rules(self) -> None:
        phase, own = self.expected()
        book = self.book
        assert len(book.stack) == len(self.frames)
        assert (book.phase, book.active, book.own_active) == (phase, phase is not Phase.OFF, own)
        if not self.named:  # derive, over what the book presents, says the same
            state = derive(None, [book.level(self.now, "h", 1)], to_datetime(self.now))
            assert (state.phase, state.active) == (phase, phase is not Phase.OFF)


TestBookModel = BookModel.TestCase
TestBookModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
