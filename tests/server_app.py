"""An app served by real uvicorn processes in tests/test_server.py."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from maintguard import MaintenanceModeMiddleware, exempt
from maintguard.backends import LocalFileBackend


async def home(request: Request) -> Response:
    return PlainTextResponse(f"served by {os.getpid()}")


@exempt
async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", home), Route("/health", health)])
app.add_middleware(
    MaintenanceModeMiddleware,
    backend=LocalFileBackend(
        os.environ["MAINTGUARD_TEST_FILE"],
        refresh_interval=float(os.environ.get("MAINTGUARD_TEST_REFRESH", "1.0")),
    ),
)
