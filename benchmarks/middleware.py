"""Request cost of the middleware against a bare app and a no-op pure ASGI middleware.

    python benchmarks/middleware.py [--n 3000] [--rounds 7]

Raw ASGI calls (no server, no network) on a Starlette app with 20 routes, hitting the 10th.
Variants are measured in interleaved rounds in this one run; each keeps its best round.
"throughput vs X" is X's time per request divided by the variant's: 1.00 means as fast.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from maintguard import MaintenanceModeMiddleware, set_maintenance_mode
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend


class NoOpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


def build(middleware: Callable[[Starlette], None] | None = None) -> Starlette:
    routes = [Route(f"/section{i}/{{item_id:int}}", endpoint) for i in range(20)]
    app = Starlette(routes=routes)
    if middleware is not None:
        middleware(app)
    return app


SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/section9/42",
    "raw_path": b"/section9/42",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"localhost"), (b"accept", b"application/json")],
    "client": ("127.0.0.1", 50000),
    "server": ("localhost", 8000),
}


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def main(n: int, rounds: int) -> None:
    statuses: dict[str, int] = {}

    async def measure(name: str, app: Any) -> float:
        status = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        start = time.perf_counter()
        for _ in range(n):
            await app(dict(SCOPE), receive, send)
        elapsed = (time.perf_counter() - start) / n
        statuses[name] = status[-1]
        return elapsed

    with tempfile.TemporaryDirectory() as tmp:
        memory_off, memory_on = MemoryBackend(), MemoryBackend()
        file_off = LocalFileBackend(Path(tmp) / "maintenance.json")
        await set_maintenance_mode(True, memory_on, reason="benchmark", retry_after=60)

        def guarded(backend: Backend) -> Callable[[Starlette], None]:
            return lambda app: app.add_middleware(MaintenanceModeMiddleware, backend=backend)

        variants = {
            "bare app": build(),
            "no-op pure ASGI middleware": build(lambda app: app.add_middleware(NoOpMiddleware)),
            "maintguard off (memory)": build(guarded(memory_off)),
            "maintguard off (file)": build(guarded(file_off)),
            "maintguard on: 503 (memory)": build(guarded(memory_on)),
        }
        best = {name: float("inf") for name in variants}
        for name, app in variants.items():  # warm up: build stacks, start watchers, caches
            await measure(name, app)
        for _ in range(rounds):
            for name, app in variants.items():
                best[name] = min(best[name], await measure(name, app))

    bare, noop = best["bare app"], best["no-op pure ASGI middleware"]
    print(f"{n} requests x {rounds} rounds, best round per variant, raw ASGI calls")
    header = ("variant", "status", "per request", "throughput vs bare", "vs no-op")
    print(f"{header[0]:<30} {header[1]:>6} {header[2]:>12} {header[3]:>19} {header[4]:>9}")
    for name, seconds in best.items():
        print(
            f"{name:<30} {statuses[name]:>6} {seconds * 1e6:>10.2f}us "
            f"{bare / seconds:>19.3f} {noop / seconds:>9.3f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.n, args.rounds)
