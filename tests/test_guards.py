"""The faces: decorators and context objects, on every backend, under asyncio and trio."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import trio

from maintguard import (
    ConfigurationError,
    Mode,
    UnderMaintenance,
    configure,
    get_maintenance_mode,
    get_state,
    maintenance_mode_on,
    not_during_maintenance,
    set_maintenance_mode,
    sync,
    under_maintenance,
)
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend, backend_from_url

from .conftest import BackendFactory

pytestmark = pytest.mark.anyio


async def test_nesting_example_on_default_backend() -> None:
    # The nesting example of the FastAPI-maintenance docs, on the default (env var) backend.
    async with maintenance_mode_on():
        assert await get_maintenance_mode() is True
        async with maintenance_mode_on():
            assert await get_maintenance_mode() is True
        assert await get_maintenance_mode() is True
    assert await get_maintenance_mode() is False
    assert "MAINTGUARD_MODE" not in os.environ


async def test_non_lifo_overlap(new_backend: BackendFactory) -> None:
    # A and B use different backend objects naming the same store.
    a_in, b_in, a_out, b_out = (anyio.Event() for _ in range(4))
    seen: dict[str, bool] = {}

    async def holder(entered: anyio.Event, leave: anyio.Event) -> None:
        async with under_maintenance(backend=new_backend()):
            entered.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder, a_in, a_out)
        await a_in.wait()
        tg.start_soon(holder, b_in, b_out)
        await b_in.wait()
        a_out.set()
        await anyio.wait_all_tasks_blocked()
        await anyio.sleep(0.01)
        seen["after A left"] = await get_maintenance_mode(new_backend())
        b_out.set()
    seen["after B left"] = await get_maintenance_mode(new_backend())
    assert seen == {"after A left": True, "after B left": False}


async def test_explicit_state_survives_holds(writable_backend: Backend) -> None:
    await set_maintenance_mode(True, writable_backend, reason="DB upgrade")
    async with under_maintenance(backend=writable_backend, reason="reindex"):
        state = await get_state(writable_backend)
        assert (state.active, state.reason, state.holds) == (True, "reindex", 1)
    state = await get_state(writable_backend)
    assert (state.active, state.reason, state.holds, state.explicit) == (
        True,
        "DB upgrade",
        0,
        True,
    )
    await set_maintenance_mode(False, writable_backend)
    assert await get_maintenance_mode(writable_backend) is False


async def test_turning_explicit_off_keeps_holds(writable_backend: Backend) -> None:
    await set_maintenance_mode(True, writable_backend)
    async with under_maintenance(backend=writable_backend):
        await set_maintenance_mode(False, writable_backend)
        assert await get_maintenance_mode(writable_backend) is True
    assert await get_maintenance_mode(writable_backend) is False


async def test_details_restored_from_frame_below(backend: Backend) -> None:
    async with under_maintenance(backend=backend, reason="outer", retry_after=60):
        async with under_maintenance(backend=backend, reason="inner", mode="read_only"):
            state = await get_state(backend)
            assert (state.reason, state.retry_after, state.mode) == ("inner", 60.0, Mode.FULL)
        state = await get_state(backend)
        assert (state.reason, state.retry_after) == ("outer", 60.0)
    assert (await get_state(backend)).reason is None


async def test_read_only_mode_when_only_read_only_holds(backend: Backend) -> None:
    async with under_maintenance(backend=backend, mode="read_only"):
        assert (await get_state(backend)).mode is Mode.READ_ONLY
        async with under_maintenance(backend=backend):
            assert (await get_state(backend)).mode is Mode.FULL
        assert (await get_state(backend)).mode is Mode.READ_ONLY


async def test_same_object_reentrant_and_concurrent(backend: Backend) -> None:
    hold = under_maintenance(backend=backend)
    results = []

    async def worker(delay: float) -> None:
        async with hold, hold:
            await anyio.sleep(delay)
            results.append(await get_maintenance_mode(backend))

    async with anyio.create_task_group() as tg:
        for delay in (0.01, 0.03, 0.02):
            tg.start_soon(worker, delay)
    assert results == [True, True, True]
    assert await get_maintenance_mode(backend) is False


# -- decorator forms -------------------------------------------------------------------------


async def test_decorators_on_every_kind_of_callable(backend: Backend) -> None:
    seen: list[tuple[str, bool]] = []

    @under_maintenance(backend=backend)
    async def coro(x: int) -> int:
        seen.append(("coro", await get_maintenance_mode(backend)))
        return x + 1

    class Jobs:
        @under_maintenance(backend=backend)
        async def method(self, x: int) -> int:
            seen.append(("method", await get_maintenance_mode(backend)))
            return x * 2

        @under_maintenance(backend=backend)
        @classmethod
        async def cmethod(cls, x: int) -> str:
            seen.append(("classmethod", await get_maintenance_mode(backend)))
            return f"{cls.__name__}{x}"

        @classmethod
        @under_maintenance(backend=backend)
        async def cmethod_below(cls) -> str:
            seen.append(("classmethod below", await get_maintenance_mode(backend)))
            return cls.__name__

        @under_maintenance(backend=backend)
        @staticmethod
        async def smethod(x: int) -> int:
            seen.append(("staticmethod", await get_maintenance_mode(backend)))
            return -x

    assert await coro(1) == 2
    assert await Jobs().method(2) == 4
    assert await Jobs.cmethod(3) == "Jobs3"
    assert await Jobs().cmethod(4) == "Jobs4"
    assert await Jobs.cmethod_below() == "Jobs"
    assert await Jobs.smethod(5) == -5
    assert all(active for _, active in seen), seen
    assert len(seen) == 6
    assert await get_maintenance_mode(backend) is False


async def test_bare_decorator_uses_default_backend() -> None:
    @under_maintenance
    async def job() -> bool:
        return await get_maintenance_mode()

    assert await job() is True
    assert await get_maintenance_mode() is False


async def test_async_generator_hold_spans_iteration(backend: Backend) -> None:
    @under_maintenance(backend=backend)
    async def rows() -> AsyncIterator[int]:
        for i in range(3):
            received = yield i
            assert received is None

    collected = []
    async for row in rows():
        collected.append((row, await get_maintenance_mode(backend)))
    assert collected == [(0, True), (1, True), (2, True)]
    assert await get_maintenance_mode(backend) is False


async def test_async_generator_closed_early_releases(backend: Backend) -> None:
    @under_maintenance(backend=backend)
    async def forever() -> AsyncIterator[int]:
        while True:
            yield 1

    gen = forever()
    assert await gen.__anext__() == 1
    assert await get_maintenance_mode(backend) is True
    await gen.aclose()  # type: ignore[attr-defined]
    assert await get_maintenance_mode(backend) is False


async def test_async_generator_asend_and_athrow_reach_the_body(backend: Backend) -> None:
    @under_maintenance(backend=backend)
    async def echo() -> Any:
        value = None
        while True:
            try:
                value = yield value
            except KeyError:
                value = "caught"

    gen = echo()
    assert await gen.asend(None) is None
    assert await gen.asend("x") == "x"
    assert await gen.athrow(KeyError()) == "caught"
    await gen.aclose()
    assert await get_maintenance_mode(backend) is False


async def test_decorated_function_keeps_metadata(backend: Backend) -> None:
    import inspect

    async def plain(a: int, b: str = "x") -> str:
        """Docs."""
        return b * a

    documented = under_maintenance(backend=backend)(plain)
    assert documented.__name__ == "plain"
    assert documented.__doc__ == "Docs."
    assert inspect.signature(documented) == inspect.signature(plain)
    assert str(inspect.signature(documented)).startswith("(a:")
    assert inspect.iscoroutinefunction(documented)
    assert await documented(2, "y") == "yy"


async def test_decorated_callables_stay_what_they_were_to_inspect(backend: Backend) -> None:
    # Decorators make plain closures (not object proxies): each must still look like what
    # it wraps to inspect (FastAPI picks how to call an endpoint or a dependency by it).
    import inspect

    class Fetch:
        async def __call__(self, x: int) -> int:
            return x + 1

    guarded = not_during_maintenance(backend=backend, policy="raise")(Fetch())
    held = under_maintenance(backend=backend)(Fetch())
    assert inspect.iscoroutinefunction(guarded) and inspect.iscoroutinefunction(held)
    assert str(inspect.signature(guarded)) == "(x: 'int') -> 'int'"
    assert await guarded(1) == 2 and await held(2) == 3

    @not_during_maintenance(backend=backend)
    async def pages() -> AsyncIterator[int]:
        yield 1

    @under_maintenance(backend=backend)
    def rows() -> Iterator[int]:
        yield 1

    assert inspect.isasyncgenfunction(pages) and inspect.isgeneratorfunction(rows)
    assert [p async for p in pages()] == [1] and list(rows()) == [1]
    assert pages.__wrapped__.__name__ == "pages"  # type: ignore[attr-defined]

    class Jobs:
        @not_during_maintenance(backend=backend)
        @classmethod
        async def build(cls) -> str:
            return cls.__name__

    assert isinstance(vars(Jobs)["build"], classmethod)
    assert inspect.iscoroutinefunction(vars(Jobs)["build"].__func__)
    assert await Jobs.build() == "Jobs"
    assert await get_maintenance_mode(backend) is False


# -- ending on every path ---------------------------------------------------------------------


async def test_hold_ends_on_exception(backend: Backend) -> None:
    with pytest.raises(ZeroDivisionError):
        async with under_maintenance(backend=backend):
            1 / 0  # noqa: B018
    assert await get_maintenance_mode(backend) is False


async def test_hold_ends_on_cancel_scope(backend: Backend) -> None:
    with anyio.move_on_after(0.05) as scope:
        async with under_maintenance(backend=backend):
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert await get_maintenance_mode(backend) is False


async def test_hold_ends_when_cancelled_by_outer_task_group(backend: Backend) -> None:
    entered = anyio.Event()

    async def hold_forever() -> None:
        async with under_maintenance(backend=backend):
            entered.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_forever)
        await entered.wait()
        assert await get_maintenance_mode(backend) is True
        tg.cancel_scope.cancel()
    assert await get_maintenance_mode(backend) is False


async def test_hold_ends_on_fail_after_timeout(backend: Backend) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.05):
            async with under_maintenance(backend=backend):
                await anyio.sleep(10)
    assert await get_maintenance_mode(backend) is False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_hold_ends_on_asyncio_task_cancel(backend: Backend) -> None:
    entered = asyncio.Event()

    @under_maintenance(backend=backend)
    async def job() -> None:
        entered.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(job())
    await entered.wait()
    assert await get_maintenance_mode(backend) is True
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await get_maintenance_mode(backend) is False


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_hold_ends_on_trio_cancellation(backend: Backend) -> None:
    async with trio.open_nursery() as nursery:

        async def job(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            async with under_maintenance(backend=backend):
                task_status.started()
                await trio.sleep_forever()

        await nursery.start(job)
        assert await get_maintenance_mode(backend) is True
        nursery.cancel_scope.cancel()
    assert await get_maintenance_mode(backend) is False


async def test_cancelled_while_entering_leaves_no_hold(backend: Backend) -> None:
    # Cancellation that lands while the hold is being registered must not leak a frame.
    for delay in (0, 0.0001, 0.001, 0.005):
        with anyio.move_on_after(delay):
            async with under_maintenance(backend=backend):
                await anyio.sleep(10)
        assert await get_maintenance_mode(backend) is False


# -- sync faces ---------------------------------------------------------------------------------


def test_sync_with_and_decorator_without_event_loop(new_backend: BackendFactory) -> None:
    backend = new_backend()
    hold = under_maintenance(backend=backend, reason="sync import")

    def active() -> bool:
        return anyio.run(get_maintenance_mode, new_backend())

    @under_maintenance(backend=backend)
    def job() -> bool:
        return active()

    @under_maintenance(backend=backend)
    def generator() -> Iterator[bool]:
        yield active()
        yield active()

    with hold:
        assert active()
        with hold:
            assert active()
        assert active()
    assert not active()
    assert job() is True
    assert list(generator()) == [True, True]
    assert not active()


def test_sync_hold_ends_on_keyboard_interrupt(backend: Backend) -> None:
    with pytest.raises(KeyboardInterrupt), under_maintenance(backend=backend):
        raise KeyboardInterrupt
    assert anyio.run(get_maintenance_mode, backend) is False


async def test_sync_hold_in_worker_thread_while_loop_runs(backend: Backend) -> None:
    entered, leave = threading.Event(), threading.Event()

    def worker() -> None:
        with under_maintenance(backend=backend):
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=worker)
    thread.start()
    await anyio.to_thread.run_sync(entered.wait, 10)
    assert await get_maintenance_mode(backend) is True
    leave.set()
    await anyio.to_thread.run_sync(thread.join, 10)
    assert await get_maintenance_mode(backend) is False


def test_many_threads_overlapping(backend: Backend) -> None:
    barrier = threading.Barrier(8)
    seen: list[bool] = []

    @under_maintenance(backend=backend)
    def job(i: int) -> None:
        barrier.wait(10)
        seen.append(anyio.run(get_maintenance_mode, backend))

    threads = [threading.Thread(target=job, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [True] * 8
    assert anyio.run(get_maintenance_mode, backend) is False


# -- scopes -----------------------------------------------------------------------------------


async def test_named_scope_follows_global_but_not_the_reverse(backend: Backend) -> None:
    async with under_maintenance(backend=backend, scope="billing", reason="ledger"):
        assert await get_maintenance_mode(backend, scope="billing") is True
        assert await get_maintenance_mode(backend) is False
        assert await get_maintenance_mode(backend, scope="search") is False
    async with under_maintenance(backend=backend, reason="everything"):
        state = await get_state(backend, scope="billing")
        assert (state.active, state.reason, state.scope) == (True, "everything", "billing")
    assert await get_maintenance_mode(backend, scope="billing") is False


async def test_named_scope_explicit(writable_backend: Backend) -> None:
    await set_maintenance_mode(True, writable_backend, scope="billing", reason="audit")
    assert await get_maintenance_mode(writable_backend, scope="billing") is True
    assert await get_maintenance_mode(writable_backend) is False
    await set_maintenance_mode(False, writable_backend, scope="billing")
    assert await get_maintenance_mode(writable_backend, scope="billing") is False


# -- set_maintenance_mode details ---------------------------------------------------------------


async def test_until_expires_and_retry_after(writable_backend: Backend) -> None:
    from datetime import datetime, timedelta, timezone

    come_back = datetime.now(timezone.utc) + timedelta(minutes=5)
    await set_maintenance_mode(
        True, writable_backend, retry_after=come_back, until=60, mode="read_only"
    )
    state = await get_state(writable_backend)
    assert state.active and state.mode is Mode.READ_ONLY
    assert state.retry_after == come_back
    assert (
        state.until is not None
        and 55 < (state.until - datetime.now(timezone.utc)).total_seconds() <= 60
    )
    assert 290 < (state.retry_after_seconds() or 0) <= 300
    await set_maintenance_mode(True, writable_backend, until=0.05)
    await anyio.sleep(0.1)
    assert await get_maintenance_mode(writable_backend) is False


async def test_env_backend_reads_variable_and_refuses_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maintguard import ReadOnlyBackendError
    from maintguard.backends import EnvVarBackend

    backend = EnvVarBackend("APP_MAINT")
    for value, expected in [
        ("1", True),
        ("OFF", False),
        ("Yes", True),
        ("read_only", True),
        ("", False),
    ]:
        monkeypatch.setenv("APP_MAINT", value)
        assert await get_maintenance_mode(backend) is expected, value
    monkeypatch.setenv("APP_MAINT", "read_only")
    assert (await get_state(backend)).mode is Mode.READ_ONLY
    monkeypatch.setenv("APP_MAINT_BILLING", "on")
    monkeypatch.setenv("APP_MAINT", "0")
    assert await get_maintenance_mode(backend, scope="billing") is True
    with pytest.raises(ReadOnlyBackendError, match="only reads APP_MAINT"):
        await set_maintenance_mode(True, backend)
    assert os.environ["APP_MAINT"] == "0"


# -- misuse --------------------------------------------------------------------------------------


def test_decorating_non_callables_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="pass options as keywords"):
        under_maintenance("nightly reindex")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="not 42"):
        under_maintenance()(42)  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="not <class"):

        @under_maintenance
        class Job:
            pass

    with pytest.raises(ConfigurationError, match="takes a backend, not a function"):

        @maintenance_mode_on  # type: ignore[arg-type]
        async def job() -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "partial"}, "unknown maintenance mode 'partial'"),
        ({"retry_after": -1}, "retry_after must be a number of seconds >= 0"),
        ({"retry_after": "soon"}, "retry_after must be seconds"),
        ({"scope": ""}, "scope must be None"),
        ({"backend": 3}, "backend must be a Backend or a URL"),
        ({"backend": "ftp://x"}, "not understood"),
        ({"reason": 5}, "reason must be a string"),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        hold = under_maintenance(**options)
        with hold:
            pass


async def test_bad_set_maintenance_mode_arguments() -> None:
    from datetime import datetime

    backend = MemoryBackend()
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await set_maintenance_mode(True, backend, until=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="not in the future"):
        await set_maintenance_mode(True, backend, until=-5)
    with pytest.raises(ConfigurationError, match="only go with value=True"):
        await set_maintenance_mode(False, backend, reason="x")
    with pytest.raises(ConfigurationError, match="True or False"):
        await set_maintenance_mode("yes", backend)  # type: ignore[arg-type]
    assert await get_maintenance_mode(backend) is False


def test_exit_without_enter_is_a_clear_error() -> None:
    hold = under_maintenance(backend=MemoryBackend())
    with pytest.raises(RuntimeError, match="exited more often than entered"):
        hold.__exit__(None, None, None)


# -- the default backend ---------------------------------------------------------------------------


async def test_default_backend_resolved_at_entry(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maintguard import configure

    hold = under_maintenance(reason="late binding")
    first, second = MemoryBackend(), LocalFileBackend(tmp_path / "m.json")
    configure(backend=first)
    async with hold:
        assert await get_maintenance_mode(first) is True
        configure(backend=second)
        async with hold:
            assert await get_maintenance_mode(second) is True
    assert not await get_maintenance_mode(first) and not await get_maintenance_mode(second)
    configure(backend=None)
    monkeypatch.setenv("MAINTGUARD_BACKEND", f"file:{tmp_path / 'env.json'}")
    async with hold:
        assert (tmp_path / "env.json").exists()
    monkeypatch.setenv("MAINTGUARD_BACKEND", "bogus")
    with pytest.raises(ConfigurationError, match="MAINTGUARD_BACKEND"):
        await get_maintenance_mode()


async def test_backend_objects_naming_one_file_share_state(tmp_path: Any) -> None:
    one = LocalFileBackend(tmp_path / "m.json")
    other = LocalFileBackend(str(tmp_path / "." / "m.json"))  # default 1 s refresh: no re-read
    await get_maintenance_mode(other)
    async with under_maintenance(backend=one):
        assert await get_maintenance_mode(other) is True


async def test_maintenance_mode_on_takes_backend_by_keyword_or_position(tmp_path: Any) -> None:
    # As the FastAPI-maintenance docs write it: maintenance_mode_on(backend=custom_backend).
    custom_backend = LocalFileBackend(file_path=tmp_path / "custom_file.txt")
    async with maintenance_mode_on(backend=custom_backend):
        assert await get_maintenance_mode(custom_backend) is True
        async with maintenance_mode_on(custom_backend, reason="positional"):
            assert (await get_state(custom_backend)).reason == "positional"
    assert await get_maintenance_mode(custom_backend) is False


def test_a_url_names_one_store_however_often_a_hold_is_entered() -> None:
    # Found: the URL was turned into a new backend at every entry, so `memory:` gave each
    # entry a store of its own (no reader saw the hold) and the hold object one controller
    # more per entry.
    hold = under_maintenance(backend="memory:", reason="from a URL")
    for _ in range(300):
        with hold:
            assert sync.get_maintenance_mode("memory:")
            assert sync.get_state(backend_from_url("memory:")).reason == "from a URL"
    assert not sync.get_maintenance_mode("memory:")
    assert len(hold._live) == 1  # one controller, whatever the number of entries
    assert backend_from_url("memory:") is backend_from_url("memory:")
    assert backend_from_url("memory:") is not MemoryBackend()  # an object of one's own


def test_a_guard_and_the_state_functions_given_a_url_share_its_store() -> None:
    ran: list[int] = []

    @not_during_maintenance(policy="raise", backend="memory:")
    def job() -> None:
        ran.append(1)

    job()
    sync.set_maintenance_mode(True, "memory:", reason="by URL")
    try:
        assert sync.get_state("memory:").reason == "by URL"
        with pytest.raises(UnderMaintenance):
            job()
    finally:
        sync.set_maintenance_mode(False, "memory:")
    job()
    assert ran == [1, 1]


def test_memory_url_takes_no_options() -> None:
    with pytest.raises(ConfigurationError, match="takes no options"):
        backend_from_url("memory:", lease_ttl=3)


@pytest.mark.parametrize(
    ("call", "wrong", "meant"),
    [
        (lambda: under_maintenance(reasn="x"), "reasn", "reason"),  # type: ignore[call-overload]
        (lambda: maintenance_mode_on(retry_afer=5), "retry_afer", "retry_after"),  # type: ignore[call-arg]
        (lambda: not_during_maintenance(polcy="skip"), "polcy", "policy"),  # type: ignore[call-overload]
        (lambda: sync.set_maintenance_mode(True, reson="x"), "reson", "reason"),  # type: ignore[call-arg]
        (lambda: sync.get_state(scop="billing"), "scop", "scope"),  # type: ignore[call-arg]
        (lambda: configure(bakend="memory:"), "bakend", "backend"),  # type: ignore[call-arg]
    ],
)
def test_a_misspelled_option_names_the_options_that_exist(
    call: Any, wrong: str, meant: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        call()
    assert isinstance(info.value, TypeError)  # what Python itself would have raised
    message = str(info.value)
    assert f"no option {wrong!r} (did you mean {meant!r}?)" in message
    assert "its options are: " in message


async def test_a_misspelled_option_of_the_async_switch() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'until'"):
        await set_maintenance_mode(True, untl=5)  # type: ignore[call-arg]


# -- decorated functions stay ordinary module functions ----------------------------------------


@not_during_maintenance(policy="raise", backend="memory:")
def guarded_square(x: int) -> int:
    return x * x


@under_maintenance(backend="memory:", reason="picklable")
def held_square(x: int) -> int:
    return x * x


@maintenance_mode_on(reason="picklable")
def held_cube(x: int) -> int:
    return x * x * x


def test_decorated_module_functions_pickle_by_name_and_run_in_a_process_pool() -> None:
    # Found: pickle.dumps(guarded_square) raises NotImplementedError("object proxy must
    # define __reduce__()"), as does copy.deepcopy. A functools.wraps decorator pickles by
    # its qualified name; users hand guarded jobs to process pools and task queues.
    import copy
    import multiprocessing
    import pickle
    from concurrent.futures import ProcessPoolExecutor

    failed = {}
    for func in (guarded_square, held_square, held_cube):
        try:
            assert pickle.loads(pickle.dumps(func)) is func
            assert copy.deepcopy(func) is func
        except NotImplementedError as exc:
            failed[func.__name__] = str(exc)
    assert failed == {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(guarded_square, 7).result(60) == 49
        assert pool.submit(held_square, 3).result(60) == 9
