"""A worker loop whose jobs are guarded, and a nightly job that drains it first.

    python examples/background_jobs.py            # asyncio
    python examples/background_jobs.py --trio     # the same under trio

- ``charge_card`` waits while maintenance is on (``policy="wait"``, the default), woken by
  the change, then runs;
- ``send_newsletter`` is skipped while maintenance is on (``policy="skip"``): it returns
  None, and maintguard logs it and tells listeners;
- ``nightly_reindex`` holds maintenance with ``drain=30``: maintenance is on at once (new
  jobs wait or skip, requests get 503), then it waits for the jobs already running to
  finish before its body runs (at most 30 s, then it goes on with a warning).

With a file (or, later, Redis) backend the same holds across processes: a worker process
and a web app on the same store are drained alike.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from maintguard import configure, get_state, not_during_maintenance, under_maintenance
from maintguard.backends import LocalFileBackend


@not_during_maintenance  # waits while maintenance is on
async def charge_card(order: int) -> str:
    print(f"  charge #{order} started")
    await anyio.sleep(0.3)  # stands in for the payment provider's call
    print(f"  charge #{order} done")
    return "charged"


@not_during_maintenance(policy="skip")
async def send_newsletter(issue: int) -> str:
    print(f"  newsletter #{issue} sent")
    return "sent"


@under_maintenance(reason="nightly reindex", retry_after=600, drain=30)
async def nightly_reindex() -> None:
    state = await get_state()
    print(f"nightly: drained; maintenance {state.phase.value}, reindexing")
    await anyio.sleep(0.3)
    print("nightly: done")


async def worker(jobs: MemoryObjectReceiveStream[tuple[str, int]]) -> None:
    async with jobs:
        async for kind, n in jobs:
            if kind == "charge":
                await charge_card(n)
            elif await send_newsletter(n) is None:
                print(f"  newsletter #{n} skipped: maintenance is on")


async def main_async() -> None:
    send, receive = anyio.create_memory_object_stream[tuple[str, int]](10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, receive)
        await send.send(("charge", 1))
        await anyio.sleep(0.1)  # charge #1 is running when the nightly job starts

        async def nightly() -> None:
            print("nightly: maintenance on, draining the jobs in flight")
            await nightly_reindex()

        tg.start_soon(nightly)
        await anyio.sleep(0.05)
        state = await get_state()
        print(f"phase while charge #1 runs: {state.phase.value}")
        await anyio.sleep(0.35)  # charge #1 has ended; the reindex runs
        await send.send(("newsletter", 7))  # skipped
        await send.send(("charge", 2))  # waits until the reindex ends
        await anyio.sleep(0.05)
        print("  charge #2 waits for maintenance to end")
        await send.aclose()
    state = await get_state()
    print(f"all done; maintenance {'on' if state.active else 'off'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trio", action="store_true", help="run under trio instead of asyncio")
    parser.add_argument("--state", type=Path, help="the state file (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        # The jobs and the hold name no backend: they use the process default.
        configure(backend=LocalFileBackend(args.state or Path(tmp) / "maintenance.json"))
        anyio.run(main_async, backend="trio" if args.trio else "asyncio")


if __name__ == "__main__":
    main()
