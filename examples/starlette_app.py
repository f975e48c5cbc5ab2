"""A plain Starlette app with maintenance mode, scopes and a read-only window.

    uvicorn examples.starlette_app:app --port 8000

- /health is exempt; /status/* is exempt by path.
- /billing/* belongs to the "billing" scope: maintenance of billing alone blocks it.
- In read-only mode, GET pages keep working while writes get 503.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from maintguard import MaintenanceModeMiddleware, exempt, maintenance_scope
from maintguard.backends import LocalFileBackend

STATE_FILE = os.environ.get("MAINTGUARD_EXAMPLE_FILE", "/tmp/maintguard-example.json")


@exempt
async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def status(request: Request) -> Response:
    return PlainTextResponse("all systems nominal")


async def articles(request: Request) -> Response:
    if request.method == "POST":
        return JSONResponse({"created": True}, status_code=201)
    return JSONResponse(["hello", "world"])


@maintenance_scope("billing")
async def invoices(request: Request) -> Response:
    return JSONResponse([{"id": 1, "total": 42}])


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/status/{part:path}", status),
        Route("/articles", articles, methods=["GET", "POST"]),
        Mount("/billing", routes=[Route("/invoices", invoices)]),
    ]
)
app.add_middleware(
    MaintenanceModeMiddleware,
    backend=LocalFileBackend(STATE_FILE),
    exempt_paths=["/status/*"],
)
