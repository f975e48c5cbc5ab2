from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import maintguard
from maintguard.backends import (
    Backend,
    EnvVarBackend,
    LocalFileBackend,
    MemoryBackend,
    RedisBackend,
)
from tests.stores import REDIS_URL, TEST_PREFIX, RedisServer, redis_prefix

pytest_plugins = ["pytester"]  # tests/test_pytest_plugin.py runs pytest on test files of its own

_vars = itertools.count()


def redis_backend(**options: object) -> RedisBackend:
    """A Redis store of its own, read afresh on every read unless told otherwise."""
    options.setdefault("refresh_interval", 0)
    return RedisBackend(REDIS_URL, key_prefix=redis_prefix(), **options)  # type: ignore[arg-type]


@pytest.fixture
def raw() -> Iterator[Any]:
    """A plain redis-py client of the tests' Redis server, answering text."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own on a spare port (to kill, pause or restart)."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


@pytest.fixture(scope="session", autouse=True)
def _redis_keys_removed() -> Iterator[None]:
    """The keys of this run's Redis stores are deleted at the end."""
    yield
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match="{" + TEST_PREFIX + "*"):
            client.delete(key)
    except redis.RedisError:
        pass
    finally:
        client.close()


# What some fixtures need, their tests are marked with (setup.cfg lists the markers); so is
# every test parametrized with the Redis store ("redis", alone or in a tuple). Other tests
# carry their marks themselves.
MARKS_OF_FIXTURES = {
    "raw": ("redis",),
    "redis_server": ("redis", "processes"),
    "mg": ("processes",),
    "workers": ("processes",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        names: set[str] = set()
        for fixture in getattr(item, "fixturenames", ()):
            if fixture not in params:  # a fixture, not a parametrized argument of that name
                names.update(MARKS_OF_FIXTURES.get(fixture, ()))
        for value in params.values():
            if value == "redis" or (isinstance(value, tuple) and "redis" in value):
                names.add("redis")
        for name in sorted(names):
            item.add_marker(name)


asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])
"""For an async test that runs under asyncio alone (the others run under asyncio and trio)."""


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
    if kind == "redis":
        prefix = redis_prefix()
        return lambda: RedisBackend(REDIS_URL, key_prefix=prefix, refresh_interval=0)
    path = tmp_path / "maintenance.json"
    return lambda: LocalFileBackend(path, refresh_interval=0)


@pytest.fixture(params=["memory", "env", "file", "redis"])
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


@pytest.fixture(params=["memory", "file", "redis"])
def writable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backends that set_maintenance_mode can write."""
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "redis":
        return redis_backend()
    return LocalFileBackend(tmp_path / "maintenance.json", refresh_interval=0)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """The CLI tests' state file (tests/cli.py)."""
    return tmp_path / "state.json"


@pytest.fixture
def mg(state: Path) -> Callable[..., Any]:
    """``maintguard ARGS`` as a real process on ``state`` (tests/cli.py)."""
    from tests.cli import runner

    return runner(state)
