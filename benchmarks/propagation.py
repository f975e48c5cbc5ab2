"""How fast a switch reaches another process's app, and what requests cost the store.

    python benchmarks/propagation.py [--switches 50] [--requests 1000] [--quick]
    pip install -e '.[examples,redis,watch]'     # uvicorn, redis-py, watchfiles

For each store (a file with OS notifications, the same file polled, Redis) this starts an
app in a uvicorn process of its own on 127.0.0.1 and switches maintenance on and off from
this process, one switch after another with a random pause between them. Each switch is
timed from just before the write starts until the app answers the new status (it is asked
continuously over one keep-alive connection); the table gives p50, p99 and max.

Then, with the state steady, the app serves 1,000 requests: for Redis the server's
``INFO commandstats`` (every command from every client) is read before and after; for every
store the app counts its own backend calls. Both should show the watcher's background
reads only, never one per request. Last, the cost of a hold's enter+exit on Redis next to
the file backend, in this process. Redis is the one on REDIS_URL (default
redis://127.0.0.1:6379/0). It is a report, not a test: it exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
GOAL_MS = 50.0  # p99, for Redis and for notified files


def open_backend(spec: str, **options: Any) -> Any:
    from maintguard.backends import LocalFileBackend, RedisBackend

    kind, _, where = spec.partition(":")
    if kind == "redis":
        return RedisBackend(REDIS_URL, key_prefix=where, **options)
    return LocalFileBackend(where, **options)


# -- the app process ------------------------------------------------------------------------


def serve(spec: str, port: int, poll_only: bool) -> None:
    if poll_only:
        sys.modules["watchfiles"] = None  # type: ignore[assignment] # as if not installed
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from maintguard import MaintenanceModeMiddleware, exempt

    backend = open_backend(spec)
    calls = {"n": 0}
    for name in ("read_scopes", "update_state", "_read_scopes_blocking", "_update_blocking"):
        method = getattr(backend, name)

        def counted(*args: Any, _method: Callable[..., Any] = method) -> Any:
            calls["n"] += 1
            return _method(*args)

        setattr(backend, name, counted)

    async def home(request: Request) -> Response:
        return PlainTextResponse("ok")

    @exempt
    async def backend_calls(request: Request) -> Response:
        return JSONResponse(calls)

    app = Starlette(routes=[Route("/", home), Route("/_calls", backend_calls)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- this process: switch, watch, count --------------------------------------------------------


async def until_status(client: Any, url: str, status: int, limit: float = 10.0) -> None:
    deadline = time.perf_counter() + limit
    while (await client.get(url)).status_code != status:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} did not answer {status} within {limit}s")


def measure(spec: str, poll_only: bool, switches: int, requests: int) -> dict[str, Any]:
    port = free_port()
    args = [sys.executable, __file__, "--serve", spec, str(port)]
    proc = subprocess.Popen([*args, *(["--poll-only"] if poll_only else [])])
    try:
        return asyncio.run(switching(spec, port, poll_only, switches, requests))
    finally:
        proc.terminate()
        proc.wait(10)


async def switching(
    spec: str, port: int, poll_only: bool, switches: int, requests: int
) -> dict[str, Any]:
    import httpx

    from maintguard import set_maintenance_mode

    url = f"http://127.0.0.1:{port}/"
    backend = open_backend(spec)
    delays: list[float] = []
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                await client.get(url)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the watcher is subscribed / watching
        for i in range(switches):
            on = i % 2 == 0
            # Polling: switch at any moment of the poll's cycle, not in step with it.
            await asyncio.sleep(random.uniform(0.02, 1.1 if poll_only else 0.25))
            start = time.perf_counter()
            await set_maintenance_mode(on, backend)
            await until_status(client, url, 503 if on else 200)
            delays.append((time.perf_counter() - start) * 1000)
        await until_status(client, url, 200)
        before_calls = (await client.get(url + "_calls")).json()["n"]
        before_cmds = redis_commands() if spec.startswith("redis:") else None
        for _ in range(requests):
            await client.get(url)
        after_cmds = redis_commands() if spec.startswith("redis:") else None
        after_calls = (await client.get(url + "_calls")).json()["n"]
    result: dict[str, Any] = {
        "delays": delays,
        "calls": after_calls - before_calls,
    }
    if before_cmds is not None and after_cmds is not None:
        result["commands"] = after_cmds - before_cmds - 1  # the INFO call itself
    return result


def redis_commands() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())
    finally:
        client.close()


async def hold_cost(spec: str, n: int) -> float:
    from maintguard import under_maintenance

    backend = open_backend(spec)
    for _ in range(5):  # connect, load scripts
        async with under_maintenance(backend=backend):
            pass
    start = time.perf_counter()
    for _ in range(n):
        async with under_maintenance(backend=backend):
            pass
    return (time.perf_counter() - start) / n * 1e6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--holds", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few switches")
    parser.add_argument("--serve", nargs=2, metavar=("STORE", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--poll-only", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve[0], int(options.serve[1]), options.poll_only)
        return
    if options.quick:
        options.switches, options.requests, options.holds = 6, 100, 20
    folder = Path(tempfile.mkdtemp(prefix="maintguard-propagation-"))
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    cases = [
        ("file, OS notifications", f"file:{folder / 'notified.json'}", False),
        ("file, polling every 1 s", f"file:{folder / 'polled.json'}", True),
        ("Redis, pub/sub", f"redis:{prefix}", False),
    ]
    print(f"maintguard propagation: {options.switches} switches, one process to another's app")
    print(f"python {sys.version.split()[0]}, Redis at {REDIS_URL}\n")
    print(f"{'store':<26}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}   calls per request")
    report: dict[str, Any] = {}
    for name, spec, poll_only in cases:
        found = measure(spec, poll_only, options.switches, options.requests)
        report[name] = found
        delays = found["delays"]
        p50, p99 = statistics.median(delays), percentile(delays, 0.99)
        per = f"{found['calls']} backend calls in {options.requests} requests"
        if "commands" in found:
            per += f"; Redis ran {found['commands']} commands"
        print(f"{name:<26}{p50:>9.1f}{p99:>9.1f}{max(delays):>9.1f}   {per}")
    print()
    redis_us = asyncio.run(hold_cost(f"redis:{prefix}-holds", options.holds))
    file_us = asyncio.run(hold_cost(f"file:{folder / 'holds.json'}", options.holds))
    print(f"hold enter+exit: Redis {redis_us:.0f} µs, file {file_us:.0f} µs "
          f"(Redis / file = {redis_us / file_us:.2f})")  # fmt: skip
    print("\nGOALS")
    for name in ("file, OS notifications", "Redis, pub/sub"):
        p99 = percentile(report[name]["delays"], 0.99)
        mark = "ok " if p99 <= GOAL_MS else "MISS"
        print(f"  [{mark}] {name}: p99 {p99:.1f} ms <= {GOAL_MS:.0f} ms")
    calls = sum(found["calls"] for found in report.values())
    cmds = report["Redis, pub/sub"].get("commands", 0)
    per_request = (calls + cmds) / (options.requests * len(report))
    mark = "ok " if per_request < 0.05 else "MISS"
    print(f"  [{mark}] backend calls per request: {per_request:.3f} (background reads only)")
    cleanup(prefix)


def cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match="{" + prefix + "*"):
            client.delete(key)
    finally:
        client.close()


if __name__ == "__main__":
    main()
