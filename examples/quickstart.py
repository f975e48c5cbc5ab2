"""maintguard in one minute: a real server on 127.0.0.1 goes 200 -> 503 -> 200.

    python examples/quickstart.py

A FastAPI app runs under uvicorn with the middleware. A job holds maintenance for as
long as it runs; the health check stays up throughout.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI

from maintguard import MaintenanceModeMiddleware, exempt, under_maintenance
from maintguard.backends import LocalFileBackend

app = FastAPI()


@app.get("/")
async def home() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/health")
@exempt  # monitoring keeps working during maintenance
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def show(client: httpx.AsyncClient, label: str) -> None:
    print(label)
    for path in ("/", "/health"):
        r = await client.get(path, headers={"accept": "application/json"})
        extra = f"  Retry-After: {r.headers['retry-after']}" if "retry-after" in r.headers else ""
        print(f"  GET {path:<8} -> {r.status_code} {r.text}{extra}")


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalFileBackend(Path(tmp) / "maintenance.json")
        app.add_middleware(MaintenanceModeMiddleware, backend=backend)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await show(client, "before the job:")
            async with under_maintenance(
                backend=backend, reason="upgrading the database", retry_after=60
            ):
                await show(client, "while the job holds maintenance:")
            await show(client, "after the job:")
        server.should_exit = True
        await serving


if __name__ == "__main__":
    asyncio.run(main())
