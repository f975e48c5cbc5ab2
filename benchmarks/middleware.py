"""Request cost of the middleware against a bare app and a no-op pure ASGI middleware.

    python benchmarks/middleware.py [--n 3000] [--rounds 7]

Raw ASGI calls (no server, no network). Two apps: 20 routes ``/section{i}/{item_id:int}``
hit at the 10th; and 1,000 routes ``/r{i}/{id}`` hit at ``/r500/{a new id every request}``,
where ``/r999/{id}`` is ``@force_maintenance_mode_on`` and ``/r500/{id}`` is ``@exempt``
(so a cache by path never hits, and finding the endpoint must not repeat the app's scan).
Variants are measured in interleaved rounds in this one run; each keeps its best round.
"throughput vs X" is X's time per request divided by the variant's: 1.00 means as fast.
"""

from __future__ import annotations

import argparse
import itertools
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

from maintguard import (
    MaintenanceModeMiddleware,
    exempt,
    force_maintenance_mode_on,
    set_maintenance_mode,
)
from maintguard.backends import Backend, LocalFileBackend, MemoryBackend


class NoOpMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


@exempt
async def exempt_endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


@force_maintenance_mode_on
async def forced_endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


def build(middleware: Callable[[Starlette], None] | None = None) -> Starlette:
    routes = [Route(f"/section{i}/{{item_id:int}}", endpoint) for i in range(20)]
    app = Starlette(routes=routes)
    if middleware is not None:
        middleware(app)
    return app


def build_large(middleware: Callable[[Starlette], None] | None = None) -> Starlette:
    def pick(i: int) -> Callable[[Request], Any]:
        return {500: exempt_endpoint, 999: forced_endpoint}.get(i, endpoint)

    app = Starlette(routes=[Route(f"/r{i}/{{id}}", pick(i)) for i in range(1000)])
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


LARGE = "1,000 routes:"


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def main(n: int, rounds: int) -> None:
    statuses: dict[str, int] = {}
    ids = itertools.count()

    async def measure(name: str, app: Any) -> float:
        status = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        large = name.startswith(LARGE)
        count = n // 10 if large else n
        scopes = [dict(SCOPE) for _ in range(count)]
        if large:
            for scope in scopes:
                scope["path"] = f"/r500/{next(ids)}"
                scope["raw_path"] = scope["path"].encode()
        start = time.perf_counter()
        for scope in scopes:
            await app(scope, receive, send)
        elapsed = (time.perf_counter() - start) / count
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
            f"{LARGE} bare app": build_large(),
            f"{LARGE} maintguard off, forced route": build_large(guarded(memory_off)),
            f"{LARGE} maintguard on, exempt route": build_large(guarded(memory_on)),
        }
        best = {name: float("inf") for name in variants}
        for name, app in variants.items():  # warm up: build stacks, start watchers, caches
            await measure(name, app)
        for _ in range(rounds):
            for name, app in variants.items():
                best[name] = min(best[name], await measure(name, app))

    bare, noop = best["bare app"], best["no-op pure ASGI middleware"]
    large_bare = best[f"{LARGE} bare app"]
    print(
        f"{n} requests x {rounds} rounds ({n // 10} on the 1,000-route app), best round per "
        "variant, raw ASGI calls"
    )
    header = ("variant", "status", "per request", "throughput vs bare", "vs no-op")
    print(f"{header[0]:<48} {header[1]:>6} {header[2]:>12} {header[3]:>19} {header[4]:>9}")
    for name, seconds in best.items():
        reference = large_bare if name.startswith(LARGE) else bare
        versus_noop = "" if name.startswith(LARGE) else f"{noop / seconds:>9.3f}"
        print(
            f"{name:<48} {statuses[name]:>6} {seconds * 1e6:>10.2f}us "
            f"{reference / seconds:>19.3f} {versus_noop}"
        )
    print()
    print("GOALS (throughput ratios; higher is faster)")
    goals = [
        (
            "off (memory) vs a no-op middleware, 20 routes",
            noop / best["maintguard off (memory)"],
            0.97,
        ),
        ("503 vs the bare app's 200, 20 routes", bare / best["maintguard on: 503 (memory)"], 1.0),
        (
            "off, app with a forced route, vs bare, 1,000 routes",
            large_bare / best[f"{LARGE} maintguard off, forced route"],
            0.90,
        ),
        (
            "on, exempt route, vs bare, 1,000 routes",
            large_bare / best[f"{LARGE} maintguard on, exempt route"],
            0.85,
        ),
    ]
    for text, ratio, target in goals:
        verdict = "ok    " if ratio >= target else "MISSED"
        print(f"  {verdict}  {ratio:.3f} (target >= {target})  {text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.n, args.rounds)
