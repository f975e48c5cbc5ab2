"""FastAPI: decorators keep signatures, dependencies and OpenAPI; docs can stay up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from maintguard import (
    MaintenanceModeMiddleware,
    exempt,
    force_maintenance_mode_on,
    maintenance_scope,
    set_maintenance_mode,
    sync,
)
from maintguard.backends import MemoryBackend
from maintguard.pytest_plugin import Maintenance
from tests.asgi import request, says
from tests.conftest import asyncio_only


def common_params(q: str | None = None, limit: int = 10) -> dict[str, Any]:
    return {"q": q, "limit": limit}


def build(decorate: bool, backend: MemoryBackend | None = None, **options: Any) -> FastAPI:
    def mark(decorator: Any) -> Any:
        return decorator if decorate else (lambda f: f)

    app = FastAPI(docs_url="/api-docs", redoc_url=None)
    router = APIRouter(prefix="/v1/items", tags=["items"])

    @mark(exempt)  # above the route decorator
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    @mark(exempt)  # below the route decorator
    def ready(params: dict[str, Any] = Depends(common_params)) -> dict[str, Any]:
        return params

    @router.get("/{item_id}")
    @mark(exempt)
    async def read_item(
        item_id: int, params: dict[str, Any] = Depends(common_params)
    ) -> dict[str, Any]:
        return {"item_id": item_id, **params}

    @router.post("/{item_id}")
    async def update_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/billing")
    @mark(maintenance_scope("billing"))
    async def billing() -> dict[str, str]:
        return {"billing": "up"}

    @app.get("/legacy")
    @mark(force_maintenance_mode_on)
    async def legacy() -> dict[str, str]:
        return {"legacy": "up"}

    @app.get("/work")
    async def work() -> dict[str, str]:
        return {"work": "done"}

    app.include_router(router)
    if backend is not None:
        app.add_middleware(MaintenanceModeMiddleware, backend=backend, **options)
    return app


def test_openapi_identical_with_and_without_decorators() -> None:
    assert build(True).openapi() == build(False).openapi()


def test_decorators_above_and_below_routes_and_dependencies(maintenance: Maintenance) -> None:
    with TestClient(build(True, maintenance.backend)) as client:
        maintenance.on()
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready", params={"q": "x", "limit": 3}).json() == {"q": "x", "limit": 3}
        assert client.get("/v1/items/5", params={"q": "y"}).json() == {
            "item_id": 5,
            "q": "y",
            "limit": 10,
        }
        assert client.post("/v1/items/5").status_code == 503
        assert client.get("/work").status_code == 503
        assert client.get("/v1/items/not-an-int").status_code == 422  # the endpoint still validates
        assert client.head("/work").status_code == 503  # HEAD decided as GET, not FastAPI's 405
        assert client.head("/health").status_code == 405  # exempt: the app answers as it would


@pytest.mark.maintenance(reason="DB upgrade")
def test_exempt_docs_reads_urls_from_the_app(maintenance: Maintenance) -> None:
    backend = maintenance.backend
    with TestClient(build(True, backend, exempt_docs=True)) as client:
        assert client.get("/api-docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 404  # not the app's docs URL
        assert client.get("/work").status_code == 503
    with TestClient(build(True, backend)) as client:
        assert client.get("/api-docs").status_code == 503


@pytest.mark.anyio
@asyncio_only
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/files/docs"), ("POST", "/admin/openapi.json"), ("GET", "/nodocs/docs")],
)
async def test_exempt_docs_leaves_user_routes_at_docs_paths_blocked(method: str, path: str) -> None:
    backend = MemoryBackend()
    app = FastAPI()
    router = APIRouter()

    @router.post("/docs")
    async def upload_document() -> str:
        return "user endpoint"

    app.include_router(router, prefix="/files")
    app.router.routes.append(
        Mount("/admin", routes=[Route("/openapi.json", says("user endpoint"), methods=["POST"])])
    )
    no_docs = FastAPI(openapi_url=None)  # no docs routes, but docs_url is still "/docs"

    @no_docs.get("/docs")
    async def list_documents() -> str:
        return "user endpoint"

    app.mount("/nodocs", no_docs)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, exempt_docs=True)
    await request(app, "/")
    await set_maintenance_mode(True, backend=backend)
    assert (await request(app, "/docs")).status == 200  # the real docs stay up
    answer = await request(app, path, method=method)
    assert b"user endpoint" not in answer.body
    assert answer.status == 503


def test_scope_and_forced_routes_in_fastapi(maintenance: Maintenance) -> None:
    with TestClient(build(True, maintenance.backend)) as client:
        assert client.get("/legacy").status_code == 503
        assert client.get("/billing").status_code == 200
        maintenance.on(scope="billing")
        assert client.get("/billing").status_code == 503
        assert client.get("/work").status_code == 200


def test_fastapi_lifespan_loads_the_model_once_with_the_middleware() -> None:
    loads: list[str] = []
    models: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loads.append("load")
        models["answer"] = lambda x: x * 42
        yield
        models.clear()

    app = FastAPI(lifespan=lifespan)

    @app.get("/predict")
    async def predict(x: int) -> dict[str, int]:
        return {"result": models["answer"](x)}

    app.add_middleware(MaintenanceModeMiddleware, backend=MemoryBackend())
    with TestClient(app) as client:
        assert client.get("/predict", params={"x": 2}).json() == {"result": 84}
        assert client.get("/predict", params={"x": 1}).json() == {"result": 42}
    assert loads == ["load"] and models == {}


@pytest.mark.parametrize("placement", ["above", "below"])
def test_exempt_returns_the_same_function(placement: str) -> None:
    app = FastAPI()

    async def endpoint() -> None: ...

    registered = (
        app.get("/x")(exempt(endpoint)) if placement == "below" else exempt(app.get("/x")(endpoint))
    )
    assert registered is endpoint
    assert app.routes[-1].endpoint is endpoint  # type: ignore[attr-defined]


def test_nested_routers_with_prefixes() -> None:
    backend = MemoryBackend()
    app = FastAPI()
    outer, inner = APIRouter(prefix="/api"), APIRouter(prefix="/admin")

    @inner.get("/status")
    @exempt
    async def status() -> dict[str, str]:
        return {"admin": "up"}

    @inner.get("/users")
    async def users() -> list[str]:
        return []

    outer.include_router(inner)
    app.include_router(outer)
    app.add_middleware(MaintenanceModeMiddleware, backend=backend)
    sync.set_maintenance_mode(True, backend)
    with TestClient(app) as client:
        assert client.get("/api/admin/status").json() == {"admin": "up"}
        assert client.get("/api/admin/users").status_code == 503
        assert client.post("/api/admin/status").status_code == 405  # the app's own answer
        assert client.get("/api/admin/nothing").status_code == 404
