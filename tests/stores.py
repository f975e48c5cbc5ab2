"""Stores that tests in other processes open by name: ``file:PATH`` or ``redis:PREFIX``."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from maintguard.backends import Backend, LocalFileBackend, MemoryBackend, RedisBackend

REDIS_URL = os.environ.get("MAINTGUARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""The Redis server the tests use (.ci/run starts one when none answers)."""
TEST_PREFIX = f"mgtest-{os.getpid()}"
_count = itertools.count()


def redis_prefix() -> str:
    """A key prefix no other test uses (the session removes its keys at the end)."""
    return f"{TEST_PREFIX}-{next(_count)}"


def new_spec(kind: str, folder: Path) -> str:
    """A fresh store of ``kind`` (``file`` or ``redis``)."""
    if kind == "redis":
        return f"redis:{redis_prefix()}"
    return f"file:{folder / 'maintenance.json'}"


def backend_of(kind: str, folder: Path) -> Backend:
    """A fresh store of ``kind`` (``memory``, ``file``, ``redis``), read afresh on every
    read (a file in ``folder``; Redis under a prefix of its own)."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "redis":
        return RedisBackend(REDIS_URL, key_prefix=redis_prefix(), refresh_interval=0)
    return LocalFileBackend(folder / "maintenance.json", refresh_interval=0)


def open_store(spec: str, **options: Any) -> Backend:
    kind, _, where = spec.partition(":")
    if kind == "redis":
        return RedisBackend(REDIS_URL, key_prefix=where, **options)
    return LocalFileBackend(where, **options)


class RedisServer:
    """``redis-server`` on a spare port (and a socket), keeping nothing on disk."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.socket = folder / "redis.sock"
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", str(self.socket), "--save", "", "--appendonly", "no",
             "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def file_holds(path: Path) -> list[Any]:
    """The hold records a file store holds, as another process reads them."""
    if not path.exists():
        return []
    text = path.read_text()
    if text.strip() in ("0", "1", "read_only"):
        return []
    return list(json.loads(text).get("holds", []))


def schedule_elsewhere(path: Path, start: datetime, **options: Any) -> None:
    """``schedule_maintenance`` on the file store ``path``, run by another process."""
    code = (
        "import sys, datetime; from maintguard import sync; "
        "from maintguard.backends import LocalFileBackend; "
        "sync.schedule_maintenance(start=datetime.datetime.fromisoformat(sys.argv[2]), "
        "backend=LocalFileBackend(sys.argv[1]), **eval(sys.argv[3]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), start.isoformat(), repr(options)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
