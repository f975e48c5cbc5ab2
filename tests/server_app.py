"""An app served by real uvicorn processes in tests/test_server.py: its store is
MAINTGUARD_TEST_STORE (see tests/stores.py), else the file MAINTGUARD_TEST_FILE, whose
folder also holds the files through which slow requests and the tests talk."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from maintguard import MaintenanceModeMiddleware, exempt
from tests.stores import open_store


async def home(request: Request) -> Response:
    return PlainTextResponse(f"served by {os.getpid()}")


@exempt
async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def slow(request: Request) -> Response:
    # In flight until the test creates release-<name>; says when it started and ended.
    name = request.query_params["name"]
    folder = Path(os.environ["MAINTGUARD_TEST_FILE"]).parent
    (folder / f"started-{name}").write_text(str(os.getpid()))
    while not (folder / f"release-{name}").exists():  # noqa: ASYNC110 - another process
        await anyio.sleep(0.01)
    (folder / f"ending-{name}").write_text(repr(time.time()))
    return PlainTextResponse("slow done")


app = Starlette(routes=[Route("/", home), Route("/health", health), Route("/slow", slow)])
app.add_middleware(
    MaintenanceModeMiddleware,
    backend=open_store(
        os.environ.get("MAINTGUARD_TEST_STORE") or "file:" + os.environ["MAINTGUARD_TEST_FILE"],
        lease_ttl=float(os.environ.get("MAINTGUARD_TEST_LEASE", "30")),
        refresh_interval=float(os.environ.get("MAINTGUARD_TEST_REFRESH", "1.0")),
    ),
)
