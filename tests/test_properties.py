"""Property-based tests of invariants I1 and I2 and of the hold stack's snapshot/restore."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from maintguard import get_state, set_maintenance_mode, under_maintenance
from maintguard.backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend
from maintguard.core.stack import Frame, HoldStack, details_of, record, to_datetime
from maintguard.state import Mode, derive, utcnow

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


@pytest.mark.parametrize("kind", ["memory", "env", "file"])
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
        self.model: list[Frame] = []
        self.now = 1_000_000.0

    @rule(
        target=frames,
        owner=st.sampled_from(["job", "cli"]),
        reason=st.none() | st.sampled_from(["a", "b", "c"]),
        retry_after=st.none() | st.sampled_from([1.0, 2.0]),
        mode=st.sampled_from(list(Mode)),
    )
    def push(self, owner: str, reason: str | None, retry_after: float | None, mode: Mode) -> Frame:
        frame = Frame(owner, reason, retry_after, mode, self.now)
        assert self.stack.push(frame) is (not self.model)
        self.model.append(frame)
        return frame

    @rule(frame=consumes(frames))
    def remove(self, frame: Frame) -> None:
        self.model.remove(frame)
        assert self.stack.remove(frame) is (not self.model)
        assert self.stack.remove(frame) is None  # a second exit of one frame changes nothing

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
        newest_first = self.model[::-1]
        assert details.owner == newest_first[0].owner
        assert details.started == newest_first[0].started
        assert details.acquired == self.model[0].started
        assert details.reason == next((f.reason for f in newest_first if f.reason), None)
        assert details.retry_after == next(
            (f.retry_after for f in newest_first if f.retry_after), None
        )
        expected = Mode.FULL if any(f.mode is Mode.FULL for f in self.model) else Mode.READ_ONLY
        assert details.mode is expected
        held = record(details, hold_id="h", host="x", pid=1, now=self.now, lease_ttl=30.0)
        assert held.live(to_datetime(self.now + 29.9))
        assert not held.live(to_datetime(self.now + 30.0))


TestHoldStackModel = HoldStackModel.TestCase
TestHoldStackModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
