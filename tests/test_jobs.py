"""Guards for ordinary work: each policy, sync and async, decorator and context object."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from maintguard import (
    ConfigurationError,
    EventKind,
    MaintenanceEvent,
    Mode,
    UnderMaintenance,
    add_listener,
    flush_listeners,
    not_during_maintenance,
    remove_listener,
    schedule_maintenance,
    set_maintenance_mode,
    sync,
    under_maintenance,
)
from maintguard._core import store_of
from maintguard.backends import LocalFileBackend, MemoryBackend
from tests.stores import REDIS_URL, new_spec, open_store, schedule_elsewhere

pytestmark = pytest.mark.anyio


async def test_each_policy_while_off_runs_the_call() -> None:
    backend = MemoryBackend()
    for policy in ("wait", "skip", "raise"):

        @not_during_maintenance(policy=policy, backend=backend)  # type: ignore[arg-type]
        async def job(x: int) -> int:
            return x * 2

        assert await job(21) == 42


async def test_raise_refuses_with_the_state() -> None:
    backend = MemoryBackend()
    ran: list[int] = []

    @not_during_maintenance(policy="raise", backend=backend)
    async def job() -> None:
        ran.append(1)

    await set_maintenance_mode(True, backend, reason="DB upgrade")
    with pytest.raises(UnderMaintenance) as caught:
        await job()
    assert caught.value.state.reason == "DB upgrade" and ran == []


async def test_skip_returns_none_logs_and_tells_listeners(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    heard: list[MaintenanceEvent] = []
    add_listener(heard.append)
    try:

        @not_during_maintenance(policy="skip", backend=backend)
        def nightly_report() -> str:
            return "sent"

        await set_maintenance_mode(True, backend, reason="reindex")
        with caplog.at_level(logging.INFO, "maintguard"):
            assert await anyio.to_thread.run_sync(nightly_report) is None
        assert flush_listeners()
    finally:
        remove_listener(heard.append)
    skipped = [e for e in heard if e.kind is EventKind.JOB_SKIPPED]
    assert len(skipped) == 1 and "nightly_report" in (skipped[0].owner or "")
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "nightly_report" in lines[0] and "reindex" in lines[0]


async def test_wait_returns_when_maintenance_ends_and_the_loop_keeps_running() -> None:
    backend = MemoryBackend()
    ran: list[str] = []
    ticks = 0

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        ran.append("job")

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    started = anyio.Event()

    async def worker() -> None:  # runs outside the hold's context (not its own helper)
        await started.wait()
        await job()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        tg.start_soon(worker)
        async with under_maintenance(backend=backend):
            started.set()
            await anyio.sleep(0.2)
            assert ran == []  # waiting, not running
            assert ticks >= 5  # and the event loop is not blocked
        with anyio.fail_after(5):
            while not ran:  # noqa: ASYNC110 - the job under test appends
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert ran == ["job"]


async def test_wait_is_bounded_by_timeout() -> None:
    backend = MemoryBackend()

    @not_during_maintenance(backend=backend, timeout=0.1)
    async def job() -> None:
        raise AssertionError("must not run")

    await set_maintenance_mode(True, backend)
    with anyio.fail_after(10), pytest.raises(UnderMaintenance):  # (a broken bound: fails)
        await job()


def test_sync_wait_blocks_only_its_thread_and_is_woken_by_the_change() -> None:
    backend = MemoryBackend()
    done = threading.Event()

    @not_during_maintenance(backend=backend)
    def job() -> None:
        done.set()

    hold = under_maintenance(backend=backend)
    hold.__enter__()
    worker = threading.Thread(target=job)
    worker.start()
    time.sleep(0.1)
    assert not done.is_set()
    hold.__exit__(None, None, None)
    assert done.wait(5)
    worker.join(5)


def test_sync_wait_timeout_raises() -> None:
    backend = MemoryBackend()
    sync.set_maintenance_mode(True, backend)

    outcome: list[str] = []

    def guarded() -> None:
        try:
            with not_during_maintenance(backend=backend, timeout=0.05):
                outcome.append("ran")
        except UnderMaintenance:
            outcome.append("refused")

    worker = threading.Thread(target=guarded, daemon=True)  # (a broken bound: fails, not hangs)
    worker.start()
    worker.join(10)
    assert outcome == ["refused"]


async def test_wait_sees_another_process_change_through_the_store(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text("1")  # another tool switched maintenance on
    backend = LocalFileBackend(path, refresh_interval=0.05)
    ran: list[int] = []

    @not_during_maintenance(backend=backend)
    async def job() -> None:
        ran.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job)
        await anyio.sleep(0.2)
        assert ran == []
        path.write_text("0")  # and off again, from outside this process
        with anyio.fail_after(5):
            while not ran:  # noqa: ASYNC110 - the job under test appends
                await anyio.sleep(0.01)


async def test_context_objects_wait_and_raise_but_cannot_skip() -> None:
    backend = MemoryBackend()
    async with not_during_maintenance(backend=backend):
        pass
    with not_during_maintenance(backend=backend, policy="raise"):
        pass
    await set_maintenance_mode(True, backend)
    with pytest.raises(UnderMaintenance):
        async with not_during_maintenance(backend=backend, policy="raise"):
            raise AssertionError("must not run")
    with pytest.raises(ConfigurationError, match="decorate"):
        async with not_during_maintenance(backend=backend, policy="skip"):
            raise AssertionError("must not run")


async def test_read_only_mode_refuses_unless_allowed() -> None:
    backend = MemoryBackend()
    await set_maintenance_mode(True, backend, mode=Mode.READ_ONLY)

    @not_during_maintenance(backend=backend, policy="raise")
    async def writer() -> str:
        return "wrote"

    @not_during_maintenance(backend=backend, policy="raise", allow_read_only=True)
    async def reader() -> str:
        return "read"

    with pytest.raises(UnderMaintenance):
        await writer()
    assert await reader() == "read"


async def test_scopes_follow_their_own_state_and_the_global_one() -> None:
    backend = MemoryBackend()

    @not_during_maintenance(backend=backend, scope="billing", policy="raise")
    async def invoice() -> str:
        return "invoiced"

    @not_during_maintenance(backend=backend, scope="search", policy="raise")
    async def reindex() -> str:
        return "reindexed"

    await set_maintenance_mode(True, backend, scope="billing")
    with pytest.raises(UnderMaintenance):
        await invoice()
    assert await reindex() == "reindexed"
    await set_maintenance_mode(True, backend)
    with pytest.raises(UnderMaintenance):
        await reindex()


async def test_generators_methods_and_bare_form() -> None:
    backend = MemoryBackend()

    class Jobs:
        @not_during_maintenance(backend=backend, policy="skip")
        def rows(self) -> Iterator[int]:
            yield from (1, 2, 3)

        @not_during_maintenance(backend=backend, policy="skip")
        async def pages(self) -> AsyncIterator[int]:
            for i in (1, 2):
                yield i

        @classmethod
        @not_during_maintenance(backend=backend, policy="raise")
        def build(cls) -> str:
            return cls.__name__

    jobs = Jobs()
    assert list(jobs.rows()) == [1, 2, 3]
    assert [p async for p in jobs.pages()] == [1, 2]
    assert Jobs.build() == "Jobs"
    await set_maintenance_mode(True, backend)
    assert list(jobs.rows()) == []  # skipped as a whole: no rows at all
    assert [p async for p in jobs.pages()] == []
    with pytest.raises(UnderMaintenance):
        Jobs.build()

    @not_during_maintenance
    def bare() -> str:
        return "ran"

    assert bare() == "ran"  # the default backend (MAINTGUARD_MODE) is off


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": "later"}, "policy must be one of 'wait', 'skip', 'raise'"),
        ({"timeout": -1}, "timeout must be None or a number of seconds >= 0"),
        ({"timeout": float("nan")}, "timeout must be None"),
        ({"allow_read_only": "yes"}, "allow_read_only must be True or False"),
        ({"scope": ""}, "scope must be None"),
        ({"lead": -1}, "lead must be None or a number of seconds >= 0 or a timedelta, not -1"),
        ({"lead": timedelta(seconds=-1)}, "lead must be None or a number of seconds >= 0"),
        ({"lead": float("nan")}, "lead must be None or a number of seconds"),
        ({"lead": "1h"}, "lead must be None or a number of seconds >= 0 or a timedelta"),
        ({"lead": True}, "lead must be None"),
    ],
)
def test_bad_options_name_the_option_and_the_accepted_values(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        not_during_maintenance(**options)


def test_guarding_something_that_is_not_callable_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="decorates functions"):
        not_during_maintenance(policy="skip")("not a function")  # type: ignore[type-var]


@pytest.mark.processes
@pytest.mark.parametrize("kind", ["file", "redis"])
@pytest.mark.parametrize("face", ["sync", "async", "with", "async with"])
def test_a_guard_made_per_call_decides_on_a_fresh_state(
    tmp_path: Path, kind: str, face: str
) -> None:
    # Found: the Celery recipe (docs/how-to/jobs-and-drains.md) makes a guard per call. Once the
    # first guard was freed its watcher stopped, and a later guard read the store only if it had
    # never been read: `maintguard on` between two calls, and the next call ran anyway.
    spec = new_spec(kind, tmp_path)
    backend = open_store(spec, refresh_interval=0.3)
    ran: list[str] = []

    async def guarded_async() -> None:
        if face == "async":

            @not_during_maintenance(policy="raise", backend=backend)
            async def job() -> None:
                ran.append(face)

            await job()
        else:
            async with not_during_maintenance(policy="raise", backend=backend):
                ran.append(face)

    def call() -> None:
        if face in ("async", "async with"):
            anyio.run(guarded_async)
        elif face == "sync":

            @not_during_maintenance(policy="raise", backend=backend)
            def job() -> None:
                ran.append(face)

            job()
        else:
            with not_during_maintenance(policy="raise", backend=backend):
                ran.append(face)

    call()
    assert ran == [face]
    store = store_of(backend)
    gc.collect()  # the first guard is gone, and with it its watcher
    deadline = time.monotonic() + 10
    while store.watching:
        assert time.monotonic() < deadline, "the watcher did not stop"
        time.sleep(0.02)
    url = f"file:{spec[5:]}" if kind == "file" else f"{REDIS_URL}?key_prefix={spec[6:]}"
    switched = subprocess.run(
        [sys.executable, "-m", "maintguard", "on", "--reason", "migration", "--backend", url],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=60,
    )
    assert switched.returncode == 0, switched.stderr
    time.sleep(0.4)  # the last read is now older than refresh_interval
    with pytest.raises(UnderMaintenance) as refused:
        call()
    assert refused.value.state.reason == "migration"
    assert ran == [face]


# -- the work a guarded call runs inside ---------------------------------------------------

OUTER = (10**15, None)  # as if this test ran inside some other work


async def test_a_guarded_call_runs_inside_its_work_and_leaves_it_on_every_way_out() -> None:
    # While the call runs, its context says so (core.inflight.current_work: the call's key,
    # linked to the work it runs inside); after it, on return, exception or cancellation,
    # the context is as it was. A generator's body is inside only while a step runs.
    from maintguard._core.inflight import current_work

    backend = MemoryBackend()
    guard = not_during_maintenance(backend=backend)
    live = store_of(backend).work.live
    keys: list[int] = []

    def inside() -> None:
        chain = current_work.get()
        assert chain is not None and chain[1] == OUTER and chain[0] in live
        keys.append(chain[0])

    def outside() -> None:
        assert current_work.get() == OUTER

    @guard
    def call(fail: bool) -> None:
        inside()
        if fail:
            raise ValueError("fail")

    @guard
    async def acall(fail: bool) -> None:
        inside()
        await anyio.lowlevel.checkpoint()
        inside()
        if fail:
            raise ValueError("fail")
        await anyio.sleep(10)  # cancelled

    @guard
    def rows() -> Iterator[int]:
        inside()
        try:
            yield 1
        except KeyError:
            inside()
            yield 2
        inside()

    @guard
    async def pages() -> AsyncIterator[int]:
        inside()
        await anyio.lowlevel.checkpoint()
        try:
            yield 1
        except KeyError:
            inside()
            yield 2
        inside()
        await anyio.sleep(10)  # cancelled
        yield 3  # pragma: no cover

    token = current_work.set(OUTER)
    try:
        call(False)
        outside()
        with pytest.raises(ValueError, match="fail"):
            call(True)
        outside()
        with pytest.raises(ValueError, match="fail"):
            await acall(True)
        outside()
        with anyio.move_on_after(0.05) as cancelled:
            await acall(False)
        assert cancelled.cancelled_caught
        outside()
        assert await anyio.to_thread.run_sync(lambda: list(rows())) == [1]
        outside()
        gen = rows()
        assert next(gen) == 1
        outside()  # between steps
        assert gen.throw(KeyError()) == 2
        outside()
        gen.close()  # GeneratorExit at `yield 2`: no step runs the last inside()
        outside()
        agen = pages()
        assert await agen.__anext__() == 1
        outside()
        assert await agen.athrow(KeyError()) == 2
        outside()
        with anyio.move_on_after(0.05) as cancelled:
            await agen.__anext__()
        assert cancelled.cancelled_caught
        outside()
        await agen.aclose()
        for fail in (False, True):
            with pytest.raises(ValueError, match="block") if fail else nullcontext(), guard:
                inside()
                if fail:
                    raise ValueError("block")
            outside()
            with pytest.raises(ValueError, match="block") if fail else nullcontext():
                async with guard:
                    inside()
                    if fail:
                        raise ValueError("block")
            outside()
        with anyio.move_on_after(0.05) as cancelled:
            async with guard:
                inside()
                await anyio.sleep(10)
        assert cancelled.cancelled_caught
        outside()
    finally:
        current_work.reset(token)
    assert current_work.get() is None
    assert live == {}  # every call ended
    assert len(keys) == 18 and len(set(keys)) == 12  # each call its own key


async def test_nested_guarded_work_runs_inside_both_and_unwinds_in_order() -> None:
    from maintguard._core.inflight import current_work, own_keys

    backend = MemoryBackend()
    guard = not_during_maintenance(backend=backend)
    seen: list[frozenset[int]] = []

    @guard
    async def inner() -> None:
        seen.append(own_keys())

    @guard
    def sync_inner() -> None:
        seen.append(own_keys())

    @guard
    async def outer() -> None:
        seen.append(own_keys())
        await inner()
        async with guard:
            await anyio.to_thread.run_sync(sync_inner)
        seen.append(own_keys())

    await outer()
    assert current_work.get() is None
    (job,), (job2, inner_key), (job3, block, thread), (job4,) = (sorted(s) for s in seen)
    assert job == job2 == job3 == job4 < inner_key < block < thread


# -- lead: no work starting just before a planned window ------------------------------------

UTC = timezone.utc


class Planned:
    """A memory store on a hand-moved clock (``Store.clock``, the documented test clock),
    with a one-off window an hour ahead, for an hour."""

    def __init__(self) -> None:
        self.backend = MemoryBackend()
        self.now = time.time()
        store_of(self.backend).clock = lambda: self.now
        self.start = datetime.fromtimestamp(self.now, UTC) + timedelta(hours=1)
        self.end = self.start + timedelta(hours=1)
        self.id = ""

    async def schedule(self, **options: Any) -> None:
        window = await schedule_maintenance(
            start=self.start, end=self.end, backend=self.backend, **options
        )
        self.id = window.id

    def at(self, moment: datetime) -> None:
        self.now = moment.timestamp()


@pytest.fixture
def planned() -> Planned:
    return Planned()


async def test_lead_refuses_every_face_while_a_window_is_near_or_running(
    planned: Planned,
) -> None:
    ran: list[str] = []
    guard = not_during_maintenance(backend=planned.backend, policy="raise", lead=1800)

    @guard
    async def job() -> None:
        ran.append("async")

    @guard
    def sync_job() -> None:
        ran.append("sync")

    async def every_face() -> list[UnderMaintenance]:
        refusals = []
        for face in ("async", "sync", "with", "async with"):
            try:
                if face == "async":
                    await job()
                elif face == "sync":
                    await anyio.to_thread.run_sync(sync_job)
                elif face == "with":
                    with guard:
                        ran.append(face)
                else:
                    async with guard:
                        ran.append(face)
            except UnderMaintenance as refused:
                refusals.append(refused)
        return refusals

    await planned.schedule()
    assert await every_face() == []  # an hour ahead: more than the lead
    assert ran == ["async", "sync", "with", "async with"]
    ran.clear()

    planned.at(planned.start - timedelta(minutes=20))  # within the lead
    refusals = await every_face()
    assert ran == [] and len(refusals) == 4
    for refused in refusals:
        assert not refused.state.active  # refused by the window ahead, not by maintenance
        assert refused.state.next_window is not None
        assert refused.state.next_window.id == planned.id
        assert f"maintenance window {planned.id} starts at" in str(refused)
        assert "lead=1800s" in str(refused)

    planned.at(planned.start + timedelta(minutes=10))  # running: the state says so itself
    refusals = await every_face()
    assert ran == [] and len(refusals) == 4 and all(r.state.active for r in refusals)
    assert str(refusals[0]) == "maintenance is on"

    planned.at(planned.end + timedelta(seconds=1))  # over
    assert await every_face() == []
    assert ran == ["async", "sync", "with", "async with"]


async def test_lead_takes_a_timedelta_and_the_edge_counts(planned: Planned) -> None:
    @not_during_maintenance(backend=planned.backend, policy="raise", lead=timedelta(minutes=30))
    async def job() -> str:
        return "ran"

    await planned.schedule()
    planned.at(planned.start - timedelta(minutes=30, microseconds=1))
    assert await job() == "ran"
    planned.at(planned.start - timedelta(minutes=30))  # start - now <= lead
    with pytest.raises(UnderMaintenance):
        await job()


async def test_lead_with_read_only_allowed_still_sees_a_full_window_right_after(
    planned: Planned,
) -> None:
    # Found: only the next window was looked at, so a read-only window (next, or in force)
    # hid a full one starting within the lead right after it.
    @not_during_maintenance(
        backend=planned.backend, policy="raise", lead=1800, allow_read_only=True
    )
    async def job() -> str:
        return "ran"

    read_only_start = planned.start - timedelta(minutes=20)
    await schedule_maintenance(
        start=read_only_start, duration=600, mode="read_only", backend=planned.backend
    )
    planned.at(planned.start - timedelta(hours=2))
    assert await job() == "ran"  # nothing within the lead
    await planned.schedule()  # a full window 20 minutes after the read-only one starts
    planned.at(read_only_start - timedelta(minutes=5))
    with pytest.raises(UnderMaintenance, match=f"window {planned.id}"):
        await job()
    planned.at(read_only_start + timedelta(minutes=1))  # the read-only one in force
    with pytest.raises(UnderMaintenance, match=f"window {planned.id}"):
        await job()


async def test_lead_skip_returns_none_for_every_kind_of_callable(
    planned: Planned, caplog: pytest.LogCaptureFixture
) -> None:
    guard = not_during_maintenance(backend=planned.backend, policy="skip", lead=3600)

    @guard
    def report() -> str:
        return "sent"

    @guard
    async def areport() -> str:
        return "sent"

    @guard
    def rows() -> Iterator[int]:
        yield from (1, 2, 3)

    @guard
    async def pages() -> AsyncIterator[int]:
        for i in (1, 2):
            yield i

    await planned.schedule(reason="DB upgrade")
    planned.at(planned.start - timedelta(minutes=59))
    with caplog.at_level(logging.INFO, "maintguard"):
        assert report() is None and await areport() is None
        assert list(rows()) == [] and [p async for p in pages()] == []
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 4
    assert all(f"maintenance window {planned.id} starts at" in line for line in lines)
    planned.at(planned.start - timedelta(minutes=61))
    assert report() == "sent" and list(rows()) == [1, 2, 3]


async def test_lead_wait_waits_until_the_window_has_ended() -> None:
    backend = MemoryBackend()
    ran_at: list[datetime] = []
    ticks = 0

    @not_during_maintenance(backend=backend, lead=60)
    async def job() -> None:
        ran_at.append(datetime.now(UTC))

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    window = await schedule_maintenance(start=0.3, duration=0.3, backend=backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        with anyio.fail_after(5):
            await job()  # the window starts within the lead: wait it out
        tg.cancel_scope.cancel()
    assert ran_at and ran_at[0] >= window.end
    assert ticks >= 20  # the event loop ran meanwhile


def test_lead_wait_in_a_thread_waits_until_the_window_has_ended() -> None:
    backend = MemoryBackend()
    ran_at: list[datetime] = []
    window = sync.schedule_maintenance(start=0.3, duration=0.3, backend=backend)

    def guarded() -> None:
        with not_during_maintenance(backend=backend, lead=timedelta(minutes=1)):
            ran_at.append(datetime.now(UTC))

    worker = threading.Thread(target=guarded, daemon=True)  # (a broken wait: fails, not hangs)
    worker.start()
    worker.join(10)
    assert ran_at and ran_at[0] >= window.end


async def test_lead_wait_is_bounded_by_timeout(planned: Planned) -> None:
    @not_during_maintenance(backend=planned.backend, lead=7200, timeout=0.1)
    async def job() -> None:
        raise AssertionError("must not run")

    await planned.schedule()
    with anyio.fail_after(10), pytest.raises(UnderMaintenance, match="within lead=7200s"):
        await job()


async def test_a_read_only_window_ahead_holds_back_only_what_it_would_refuse(
    planned: Planned,
) -> None:
    @not_during_maintenance(backend=planned.backend, policy="raise", lead=7200)
    async def writer() -> str:
        return "wrote"

    @not_during_maintenance(
        backend=planned.backend, policy="raise", lead=7200, allow_read_only=True
    )
    async def reader() -> str:
        return "read"

    await planned.schedule(mode="read_only")
    with pytest.raises(UnderMaintenance):
        await writer()
    assert await reader() == "read"
    planned.at(planned.start + timedelta(minutes=1))
    assert await reader() == "read"


async def test_without_lead_a_window_ahead_changes_nothing(planned: Planned) -> None:
    plain = not_during_maintenance(backend=planned.backend, policy="raise")
    ahead = not_during_maintenance(backend=planned.backend, policy="raise", lead=60)
    # The common path of a guard without a lead is the class's own, as it was.
    assert "_admit_now" not in vars(plain) and plain.lead is None
    assert vars(ahead)["_admit_now"] == ahead._admit_ahead

    @plain
    async def job() -> str:
        return "ran"

    await planned.schedule()
    planned.at(planned.start - timedelta(seconds=1))
    assert await job() == "ran"
    with plain:
        pass
    with pytest.raises(UnderMaintenance), ahead:
        raise AssertionError("must not run")
    planned.at(planned.start + timedelta(seconds=1))
    with pytest.raises(UnderMaintenance):
        await job()


@pytest.mark.processes
@pytest.mark.parametrize("face", ["sync", "async"])
def test_lead_sees_a_window_another_process_scheduled_through_a_file(
    tmp_path: Path, face: str
) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0.05)
    ran: list[str] = []

    @not_during_maintenance(backend=backend, policy="raise", lead=timedelta(hours=2))
    def sync_job() -> None:
        ran.append("sync")

    @not_during_maintenance(backend=backend, policy="raise", lead=timedelta(hours=2))
    async def async_job() -> None:
        ran.append("async")

    def call() -> None:
        if face == "sync":
            sync_job()
        else:
            anyio.run(async_job)

    call()
    assert ran == [face]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    schedule_elsewhere(path, start, duration=600)
    deadline = time.monotonic() + 10
    while True:
        try:
            call()
        except UnderMaintenance as refused:
            window = refused.state.next_window
            assert window is not None and window.start == start
            break
        assert time.monotonic() < deadline, "the window never reached the guard"
        time.sleep(0.05)
