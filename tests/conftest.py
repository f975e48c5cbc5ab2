from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import maintguard
from maintguard.backends import Backend, EnvVarBackend, LocalFileBackend, MemoryBackend

_vars = itertools.count()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _fresh_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MAINTGUARD_BACKEND", raising=False)
    monkeypatch.delenv("MAINTGUARD_MODE", raising=False)
    maintguard.configure(backend=None)
    yield
    maintguard.configure(backend=None)


BackendFactory = Callable[[], Backend]


def make_backend(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BackendFactory:
    """A factory of backend objects that all name one store."""
    if kind == "memory":
        backend = MemoryBackend()
        return lambda: backend
    if kind == "env":
        var = f"MAINTGUARD_TEST_{os.getpid()}_{next(_vars)}"
        monkeypatch.delenv(var, raising=False)
        return lambda: EnvVarBackend(var)
    path = tmp_path / "maintenance.json"
    return lambda: LocalFileBackend(path, refresh_interval=0)


@pytest.fixture(params=["memory", "env", "file"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_backend(
    backend_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> BackendFactory:
    return make_backend(backend_kind, tmp_path, monkeypatch)


@pytest.fixture
def backend(new_backend: BackendFactory) -> Backend:
    return new_backend()


@pytest.fixture(params=["memory", "file"])
def writable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backends that set_maintenance_mode can write."""
    if request.param == "memory":
        return MemoryBackend()
    return LocalFileBackend(tmp_path / "maintenance.json", refresh_interval=0)
