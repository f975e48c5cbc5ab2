"""A FastAPI service with maintenance mode.

    uvicorn examples.fastapi_app:app --port 8000

Switch maintenance from any other process that shares the state file, e.g.:

    export MAINTGUARD_BACKEND=file:/tmp/maintguard-example.json
    maintguard on --reason "DB upgrade" --for 30m
    maintguard status
    maintguard run --reason "schema migration" -- alembic upgrade head
    maintguard off
    maintguard cordon --drain 30     # this host out of rotation, once its requests end
    maintguard uncordon

- /health stays up (exempt): a liveness probe never restarts the instance.
- /_maintenance/ready is the readiness probe: 503 while this host is cordoned.
- /_maintenance/status shows the state as JSON, during maintenance too.
- POST /admin/sync runs a data sync under maintenance_mode_on(): the app is in
  maintenance exactly while it runs, using the middleware's backend.
- The lifespan loads a "model" once; it is untouched by the middleware.
- People get an HTML page, API clients application/problem+json, with Retry-After.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI

from maintguard import MaintenanceModeMiddleware, exempt, maintenance_mode_on
from maintguard.backends import LocalFileBackend

STATE_FILE = os.environ.get("MAINTGUARD_EXAMPLE_FILE", "/tmp/maintguard-example.json")
SYNC_SECONDS = float(os.environ.get("MAINTGUARD_EXAMPLE_SYNC_SECONDS", "2"))
models: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    models["sentiment"] = lambda text: "positive" if "good" in text else "neutral"  # loaded once
    yield
    models.clear()


app = FastAPI(lifespan=lifespan)
app.add_middleware(
    MaintenanceModeMiddleware,
    backend=LocalFileBackend(STATE_FILE),
    exempt_docs=True,
    readiness_path="/_maintenance/ready",
    status_path="/_maintenance/status",
)


@app.get("/health")
@exempt
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/predict")
async def predict(text: str) -> dict[str, str]:
    return {"label": models["sentiment"](text)}


@app.post("/admin/sync")
@exempt  # the caller gets its answer; everyone else sees maintenance while it runs
async def sync_data() -> dict[str, str]:
    async with maintenance_mode_on(reason="syncing the catalogue", retry_after=30):
        await anyio.sleep(SYNC_SECONDS)  # stands in for the real sync
    return {"status": "synced"}
