"""Stores that tests in other processes open by name: ``file:PATH`` or ``redis:PREFIX``."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

from maintguard.backends import Backend, LocalFileBackend, RedisBackend

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


def open_store(spec: str, **options: Any) -> Backend:
    kind, _, where = spec.partition(":")
    if kind == "redis":
        return RedisBackend(REDIS_URL, key_prefix=where, **options)
    return LocalFileBackend(where, **options)
