"""Two uvicorn workers on one Redis store: a switch or a job anywhere reaches both at once.

    pip install -e '.[examples,redis]'
    python examples/many_servers.py [--backend 'redis://127.0.0.1:6379/0?key_prefix=example']

This starts two uvicorn processes serving the app below (as two servers behind a load
balancer would), then, from this third process, turns maintenance on, holds it for a job,
and turns it off, showing what each worker answers after each step. Each worker could be on
another machine: they share nothing but Redis. Every server, job and operator names the
store by one URL, its key prefix included; the app reads it from MAINTGUARD_BACKEND:

    MAINTGUARD_BACKEND='redis://cache:6379/0?key_prefix=shop' uvicorn examples.many_servers:app
    MAINTGUARD_BACKEND='redis://cache:6379/0?key_prefix=shop' maintguard on --reason upgrade
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from maintguard import (
    MaintenanceModeMiddleware,
    exempt,
    set_maintenance_mode,
    under_maintenance,
)
from maintguard.backends import Backend, backend_from_url

ROOT = Path(__file__).parents[1]


async def home(request: Request) -> Response:
    return PlainTextResponse(f"hello from worker {os.getpid()}")


@exempt
async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "worker": os.getpid()})


DEFAULT = "redis://127.0.0.1:6379/0?key_prefix=example"


def store() -> Backend:
    # The URL (and key prefix) every server of the deployment, its jobs and its operators use.
    return backend_from_url(os.environ.get("MAINTGUARD_BACKEND", DEFAULT))


app = Starlette(routes=[Route("/", home), Route("/health", health)])
app.add_middleware(MaintenanceModeMiddleware, backend=store())


# -- the demonstration: two workers and a third process ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_workers(env: dict[str, str]) -> list[tuple[str, subprocess.Popen[bytes]]]:
    workers = []
    for _ in range(2):
        port = free_port()
        command = [
            *(sys.executable, "-m", "uvicorn", "examples.many_servers:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ]
        workers.append((f"http://127.0.0.1:{port}", subprocess.Popen(command, env=env, cwd=ROOT)))
    for url, _ in workers:
        for _ in range(300):
            try:
                httpx.get(url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
    return workers


def show(step: str, urls: list[str], expect: int) -> None:
    # Ask until both workers answer as expected (a switch reaches them in milliseconds).
    deadline = time.monotonic() + 5
    while True:
        answers = [httpx.get(url + "/") for url in urls]
        if all(a.status_code == expect for a in answers) or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    codes = ", ".join(str(a.status_code) for a in answers)
    print(f"{step:<44} workers answer {codes}")


async def operate(urls: list[str]) -> None:
    backend = store()
    await anyio.to_thread.run_sync(show, "start", urls, 200)
    await set_maintenance_mode(True, backend, reason="database upgrade", retry_after=120)
    await anyio.to_thread.run_sync(show, "operator: maintenance on", urls, 503)
    await set_maintenance_mode(False, backend)
    await anyio.to_thread.run_sync(show, "operator: maintenance off", urls, 200)
    async with under_maintenance(backend=backend, reason="nightly reindex"):
        await anyio.to_thread.run_sync(show, "a job in this process holds maintenance", urls, 503)
    await anyio.to_thread.run_sync(show, "the job has ended", urls, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description="Two uvicorn workers on one Redis store.")
    parser.add_argument(
        "--backend",
        default=os.environ.get("MAINTGUARD_BACKEND", DEFAULT),
        help="the store's URL, key prefix included (default: $MAINTGUARD_BACKEND or %(default)s)",
    )
    args = parser.parse_args()
    os.environ["MAINTGUARD_BACKEND"] = args.backend  # for this process and both workers
    workers = start_workers(dict(os.environ))
    try:
        anyio.run(operate, [url for url, _ in workers])
    finally:
        for _, proc in workers:
            proc.terminate()
        for _, proc in workers:
            proc.wait(10)


if __name__ == "__main__":
    main()
