"""Apps served by real uvicorn processes in tests/test_server.py: their store is
MAINTGUARD_TEST_STORE (see tests/stores.py), else the file MAINTGUARD_TEST_FILE, whose
folder also holds the files through which slow requests and the tests talk.

- ``app``: a Starlette app (its router speaks lifespan; the middleware hooks into it);
- ``app_with_lifespan``: the same with a lifespan of its own, which notes its shutdown;
- ``plain``: a bare ASGI app that does not speak lifespan (the middleware speaks it);
- ``probed``: ``app`` with a readiness path and a status path (its host is the
  ``MAINTGUARD_HOST`` it is started with)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from maintguard import MaintenanceModeMiddleware, exempt, not_during_maintenance
from maintguard.backends import Backend
from tests.stores import open_store

FOLDER = Path(os.environ["MAINTGUARD_TEST_FILE"]).parent


def backend() -> Backend:
    return open_store(
        os.environ.get("MAINTGUARD_TEST_STORE") or "file:" + os.environ["MAINTGUARD_TEST_FILE"],
        lease_ttl=float(os.environ.get("MAINTGUARD_TEST_LEASE", "30")),
        refresh_interval=float(os.environ.get("MAINTGUARD_TEST_REFRESH", "1.0")),
    )


async def home(request: Request) -> Response:
    return PlainTextResponse(f"served by {os.getpid()}")


@exempt
async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def slow(request: Request) -> Response:
    # In flight until the test creates release-<name>; says when it started and ended.
    name = request.query_params["name"]
    (FOLDER / f"started-{name}").write_text(str(os.getpid()))
    while not (FOLDER / f"release-{name}").exists():  # noqa: ASYNC110 - another process
        await anyio.sleep(0.01)
    (FOLDER / f"ending-{name}").write_text(repr(time.time()))
    return PlainTextResponse("slow done")


routes = [Route("/", home), Route("/health", health), Route("/slow", slow)]
app = Starlette(routes=routes)
app.add_middleware(MaintenanceModeMiddleware, backend=backend())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    (FOLDER / f"shutdown-{os.getpid()}").touch()


app_with_lifespan = Starlette(routes=routes, lifespan=lifespan)
app_with_lifespan.add_middleware(MaintenanceModeMiddleware, backend=backend())


async def _plain(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        raise RuntimeError(f"this app does not speak {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


plain = MaintenanceModeMiddleware(_plain, backend=backend())


probed = Starlette(routes=routes)
probed.add_middleware(
    MaintenanceModeMiddleware,
    backend=backend(),
    readiness_path="/_maintenance/ready",
    status_path="/_maintenance/status",
)


allowing = Starlette(routes=routes)  # the office network may pass during maintenance
allowing.add_middleware(MaintenanceModeMiddleware, backend=backend(), allow_ips=["10.0.0.0/8"])


_store = backend()


@not_during_maintenance(policy="raise", backend=_store)  # a guard kept for the process's life
def _send_invoice() -> str:
    return "invoice sent"


async def invoice(request: Request) -> Response:
    return PlainTextResponse(_send_invoice())


guarded = Starlette(routes=[*routes, Route("/invoice", invoice)])  # the app calls a guarded job
guarded.add_middleware(MaintenanceModeMiddleware, backend=_store)
