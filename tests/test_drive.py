"""One body per waiting operation: :func:`drive` runs it in the calling thread, blocking."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import anyio
import anyio.lowlevel
import pytest

from maintguard._core.drive import ASYNC, BLOCKING, Runtime, drive


async def wait_for_signal(rt: Runtime, seconds: float, log: list[str]) -> str:
    signal, waker = rt.signal()
    threading.Timer(0.05, waker).start()
    try:
        started = time.monotonic()
        await rt.wait(signal, seconds)
        return "woken" if time.monotonic() - started < seconds else "timed out"
    finally:
        log.append("finally ran")


def test_the_blocking_driver_runs_the_body_in_this_thread_and_is_woken_from_another() -> None:
    log: list[str] = []
    assert drive(wait_for_signal(BLOCKING, 5.0, log)) == "woken"
    assert log == ["finally ran"]


@pytest.mark.anyio
async def test_the_same_body_waits_under_asyncio_and_trio() -> None:
    log: list[str] = []
    assert await wait_for_signal(ASYNC, 5.0, log) == "woken"
    assert log == ["finally ran"]


def test_a_wait_ends_at_its_time_limit() -> None:
    async def body(rt: Runtime) -> float:
        signal, _ = rt.signal()
        started = time.monotonic()
        await rt.wait(signal, 0.05)
        return time.monotonic() - started

    assert 0.04 <= drive(body(BLOCKING)) < 1.0


def test_an_interrupt_while_blocked_reaches_the_body_and_its_finally_runs() -> None:
    log: list[str] = []

    def interrupt(_: threading.Event, __: float) -> None:
        raise KeyboardInterrupt

    async def body(rt: Runtime) -> None:
        signal, _ = rt.signal()
        try:
            await rt.wait(signal, math.inf)
        finally:
            log.append("cleaned up")

    import maintguard._core.drive as module

    real = module._block
    module._block = interrupt  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            drive(body(BLOCKING))
    finally:
        module._block = real
    assert log == ["cleaned up"]


def test_a_body_that_awaits_something_else_is_refused_not_left_hanging() -> None:
    async def body() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited"):
        drive(body())


def test_blocking_io_runs_on_the_io_loop_and_returns_its_result() -> None:
    async def io_call() -> str:
        await anyio.lowlevel.checkpoint()
        return "read"

    async def body(rt: Runtime) -> str:
        return await rt.io(io_call())

    assert drive(body(BLOCKING)) == "read"


def test_offload_blocks_this_thread_for_a_blocking_body_and_a_worker_for_an_async_one() -> None:
    async def body(rt: Runtime) -> int:
        return await rt.offload(threading.get_ident)

    here = threading.get_ident()
    assert drive(body(BLOCKING)) == here  # a sync face's file write: no thread hop
    assert anyio.run(body, ASYNC) != here  # an event loop is never blocked


def test_on_loop_runs_on_the_io_loop_for_both() -> None:
    from maintguard import _ioloop

    async def where() -> bool:
        return _ioloop.on_io_thread()

    async def body(rt: Runtime) -> bool:
        return await rt.on_loop(where())

    assert drive(body(BLOCKING))
    assert anyio.run(body, ASYNC)


@pytest.mark.anyio
async def test_a_shielded_cleanup_runs_to_its_end_when_the_caller_is_cancelled() -> None:
    log: list[str] = []

    async def cleanup(rt: Runtime) -> None:
        with rt.shield():
            signal, _ = rt.signal()
            await rt.wait(signal, 0.05)  # (a cancelled wait would end at once)
            log.append("cleaned up")

    with anyio.CancelScope() as scope:
        scope.cancel()
        started = time.monotonic()
        await cleanup(ASYNC)
    assert time.monotonic() - started >= 0.04
    await anyio.to_thread.run_sync(drive, cleanup(BLOCKING))
    assert log == ["cleaned up", "cleaned up"]
