"""Cost of entering and leaving a hold, and of reading the state, against a bare async call.

    python benchmarks/holds.py [--rounds 5] [--n 2000]

Every figure is measured in this one run, best of several rounds, and printed as time per
operation and as a ratio to an awaited no-op coroutine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from maintguard import get_maintenance_mode, under_maintenance
from maintguard.backends import LocalFileBackend, MemoryBackend


async def noop() -> None:
    pass


async def best(op: Callable[[], Awaitable[None]], n: int, rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            await op()
        timings.append((time.perf_counter() - start) / n)
    return min(timings)


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = MemoryBackend()
        file = LocalFileBackend(Path(tmp) / "maintenance.json")
        memory_hold = under_maintenance(backend=memory)
        file_hold = under_maintenance(backend=file)

        async def hold_memory() -> None:
            async with memory_hold:
                pass

        async def hold_file() -> None:
            async with file_hold:
                pass

        async def nested_memory() -> None:  # a frame on top of a live hold: no I/O at all
            async with memory_hold:
                pass

        async def nested_file() -> None:
            async with file_hold:
                pass

        async def get_memory() -> None:
            await get_maintenance_mode(memory)

        async def get_file() -> None:
            await get_maintenance_mode(file)

        bare = await best(noop, n, rounds)
        rows = [
            ("bare async call", bare),
            ("hold enter+exit, memory", await best(hold_memory, n, rounds)),
            ("hold enter+exit, file", await best(hold_file, max(n // 20, 20), rounds)),
            ("get_maintenance_mode, memory", await best(get_memory, n, rounds)),
            ("get_maintenance_mode, file (cached)", await best(get_file, n, rounds)),
        ]
        async with memory_hold:
            rows.append(("nested hold enter+exit, memory", await best(nested_memory, n, rounds)))
        async with file_hold:
            rows.append(("nested hold enter+exit, file", await best(nested_file, n, rounds)))
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'per op':>10}  {'x bare call':>11}")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1e6:>8.2f}us  {seconds / bare:>11.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="operations per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.n, args.rounds)
