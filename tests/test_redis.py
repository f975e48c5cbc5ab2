"""The Redis backend's own behaviour, against the real Redis server of tests/stores.py:
URLs and passwords, the rule that objects naming one store share it, hostile data under
the prefix's keys, a Redis that stalls, pauses or refuses at the worst moment, cancellation
of every kind, and forks.

Every test uses a key prefix of its own (tests/stores.py); tests that pause or stall a
server use a redis-server or a socket of their own, never the shared one."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import anyio.to_thread
import pytest
import redis
from redis.crc import key_slot
from starlette.testclient import TestClient

from maintguard import (
    BackendError,
    ConfigurationError,
    get_state,
    set_maintenance_mode,
    sync,
    under_maintenance,
)
from maintguard._core import presence, watcher
from maintguard._core.controller import ScopeController
from maintguard._core.registry import controller, store_of
from maintguard._state import HoldRecord, StoredState, WindowRecord, window_to_dict
from maintguard.backends import PutWindow, RedisBackend, backend_from_url
from maintguard.exceptions import PartialReadError
from tests.asgi import request
from tests.conftest import redis_backend
from tests.stores import REDIS_URL, RedisServer, redis_prefix
from tests.test_redis_server import app_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def twin(backend: RedisBackend, **options: Any) -> RedisBackend:
    """Another process's view of the same keys: the same server under another host name
    is another store in this process, so nothing is shared but Redis itself."""
    url = backend.url.replace("127.0.0.1", "localhost")
    assert url != backend.url
    return RedisBackend(url, key_prefix=backend.key_prefix, **options)


def eventually(check: Callable[[], bool], limit: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < limit, f"not seen within {limit}s"
        time.sleep(0.005)
    return time.monotonic() - start


@contextlib.contextmanager
def watched(backend: RedisBackend, raw: redis.Redis) -> Iterator[ScopeController]:
    """The global scope of ``backend``'s store with its watcher running and subscribed."""
    stop = watcher.watch(backend)
    try:
        channel = "{" + backend.key_prefix + "}:changes"
        eventually(lambda: raw.pubsub_numsub(channel)[0][1] >= 1, 5)
        yield controller(backend, None)
    finally:
        stop()


def backend_at(prefix: str, url: str = REDIS_URL, **options: Any) -> RedisBackend:
    options.setdefault("refresh_interval", 0)
    return RedisBackend(url, key_prefix=prefix, **options)


def elsewhere(prefix: str, **options: Any) -> RedisBackend:
    """Another process's view of :func:`backend_at`'s keys (see :func:`twin`)."""
    options.setdefault("refresh_interval", 0)
    return twin(backend_at(prefix), **options)


def state_of(backend: RedisBackend, scope: str | None = None) -> Any:
    return sync.get_state(backend, scope)


def tag(prefix: str) -> str:
    return "{" + prefix + "}"


@contextlib.contextmanager
def stalled_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(5)
        for conn in accepted:  # pending calls fail at once now
            with contextlib.suppress(OSError):
                conn.close()


# -- URLs, names and options ------------------------------------------------------------------


def test_urls_build_redis_backends_with_their_options() -> None:
    tcp = backend_from_url("redis://cache.internal:6380/2", key_prefix="shop", lease_ttl=10)
    assert isinstance(tcp, RedisBackend)
    assert (tcp.key_prefix, tcp.lease_ttl, tcp.refresh_interval) == ("shop", 10.0, 5.0)
    assert tcp.store_key() == ("redis", "cache.internal", 6380, 2, "shop")
    tls = backend_from_url("rediss://cache.internal/0")
    assert tls._where["connection_class"].__name__ == "SSLConnection"
    unix = backend_from_url("unix:///run/redis/redis.sock?db=3")
    assert unix.store_key() == ("redis", "unix", "/run/redis/redis.sock", 3, "maintguard")


def test_same_server_database_and_prefix_is_one_store() -> None:
    a = RedisBackend("redis://CACHE:6379/1", key_prefix="p")
    assert store_of(a) is store_of(RedisBackend("redis://cache:6379/1", key_prefix="p"))
    assert store_of(a) is not store_of(RedisBackend("redis://cache:6379/2", key_prefix="p"))
    assert store_of(a) is not store_of(RedisBackend("redis://cache:6379/1", key_prefix="q"))
    with pytest.raises(ConfigurationError, match=r"lease_ttl=10\.0 here but lease_ttl=30\.0"):
        store_of(RedisBackend("redis://cache:6379/1", key_prefix="p", lease_ttl=10))


@pytest.mark.parametrize(
    "second",
    ["rediss://cache:6379/0", "redis://:other-password@cache:6379/0"],
)
def test_a_second_object_with_other_connection_settings_is_not_silently_ignored(
    second: str,
) -> None:
    prefix = redis_prefix()
    first = RedisBackend("redis://:first-password@cache:6379/0", key_prefix=prefix)
    store_of(first)
    with pytest.raises(ConfigurationError):
        store_of(RedisBackend(second, key_prefix=prefix))


def test_spellings_of_one_server_share_a_store_and_other_dbs_do_not() -> None:
    prefix = redis_prefix()
    one = RedisBackend("redis://Cache:6379/1", key_prefix=prefix)
    for same in ["redis://cache/1", "redis://cache:6379/01", "redis://cache:6379/0?db=1"]:
        assert store_of(RedisBackend(same, key_prefix=prefix)) is store_of(one), same
    for other in ["redis://cache:6379/2", "redis://cache:6380/1", "redis://cache2:6379/1"]:
        assert store_of(RedisBackend(other, key_prefix=prefix)) is not store_of(one), other


def test_a_given_client_names_its_own_server_and_agrees_on_options() -> None:
    import redis.asyncio as aioredis

    prefix = redis_prefix()
    by_url = RedisBackend("redis://127.0.0.1:6379/0", key_prefix=prefix)
    client = aioredis.Redis(host="127.0.0.1", port=6379, db=0)
    by_client = RedisBackend(key_prefix=prefix, client=client)
    assert store_of(by_client) is store_of(by_url)
    with pytest.raises(ConfigurationError, match="lease_ttl"):
        store_of(RedisBackend(key_prefix=prefix, client=client, lease_ttl=5))
    assert "127.0.0.1:6379/0" in by_client.describe()


def test_passwords_never_show() -> None:
    backend = RedisBackend("redis://app:s3cret@cache:6379/0?password=s3cret")
    assert "s3cret" not in backend.describe() and "***" in backend.describe()
    with pytest.raises(ConfigurationError) as bad:
        backend_from_url("rediss://app:s3cret@cache:notaport/0")
    assert "s3cret" not in str(bad.value) and "is not understood" in str(bad.value)


def test_a_password_with_an_at_sign_never_shows() -> None:
    backend = RedisBackend("redis://app:p@ss-w0rd@cache:6379/0")
    assert backend._where["password"] == "p@ss-w0rd"  # redis-py takes it so
    assert "ss-w0rd" not in backend.describe()
    assert "ss-w0rd" not in repr(backend)


@pytest.mark.parametrize("password", ["pa/ss", "pa#ss", "pa?ss"])
def test_an_unparsable_url_never_echoes_its_password(password: str) -> None:
    with pytest.raises(ConfigurationError) as bad:
        RedisBackend(f"redis://app:{password}@cache:6379/0")
    assert "ss@" not in str(bad.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key_prefix": ""}, "key_prefix must be a non-empty name"),
        ({"key_prefix": "a{b}"}, "without braces"),
        ({"url": 6379}, "needs a redis://, rediss:// or unix:// URL"),
        ({"url": "http://cache"}, "is not understood"),
        ({"lease_ttl": 0}, "lease_ttl must be a positive number"),
        ({"on_error": "ignore"}, "on_error must be one of"),
    ],
)
def test_bad_options_say_what_to_do(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisBackend(**options)


@pytest.mark.parametrize(
    "url",
    [
        "redis://cache:99999/0",
        "redis://cache/0?db=x",
        "redis://cache?socket_timeout=abc",
        "ftp://cache",
        "",
        "redis://[::1",
        "redis://cache:-1/0",
    ],
)
def test_bad_urls_are_configuration_errors_not_tracebacks(url: str) -> None:
    with pytest.raises(ConfigurationError, match="is not understood"):
        backend_from_url(url) if url else RedisBackend(url)


def test_a_url_option_that_can_never_work_is_refused_when_built() -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://127.0.0.1:6379/0?bogus=1", key_prefix=redis_prefix())


def test_a_mistyped_database_is_refused_not_taken_for_db_0() -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend("redis://cache:6379/1x")


def test_without_redis_py_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio.connection", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"pip install 'maintguard\[redis\]'"):
        RedisBackend()


@pytest.mark.parametrize(
    ("refresh_interval", "query", "expected"),
    [
        (0, "", (1.0, 1.0)),  # "read every time" keeps a sane floor
        (1, "", (1.0, 1.0)),
        (2.5, "", (2.5, 2.5)),
        (60, "", (5.0, 5.0)),  # rare polling keeps redis-py's usual 5 s
        (1, "?socket_timeout=7", (7.0, 1.0)),  # what the URL says wins
    ],
)
def test_timeouts_follow_the_refresh_interval(
    refresh_interval: float, query: str, expected: tuple[float, float]
) -> None:
    backend = RedisBackend(
        REDIS_URL + query, key_prefix=redis_prefix(), refresh_interval=refresh_interval
    )
    kwargs = backend._connection().connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == expected


def test_a_given_client_keeps_its_own_timeouts() -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=9)
    backend = RedisBackend(key_prefix=redis_prefix(), refresh_interval=1, client=client)
    assert backend._connection().connection_pool.connection_kwargs["socket_timeout"] == 9


def test_a_huge_lease_is_refused_or_works() -> None:
    prefix = redis_prefix()
    try:
        backend = backend_at(prefix, lease_ttl=1e12)
    except ConfigurationError:
        return
    with under_maintenance(backend=backend, reason="long"):
        assert state_of(elsewhere(prefix)).active is True


# -- what is stored, and how ---------------------------------------------------------------------


async def test_keys_share_one_hash_tag_and_are_tidied(raw: redis.Redis) -> None:
    backend = redis_backend()
    tag = "{" + backend.key_prefix + "}"
    await set_maintenance_mode(True, backend, reason="upgrade")
    async with under_maintenance(backend=backend, scope="billing"):
        keys = set(raw.scan_iter(match=tag + "*"))
        assert keys == {
            f"{tag}:explicit",
            f"{tag}:history",  # the audit trail: the operator's `on`
            f"{tag}:scope:billing:holds",
            f"{tag}:scope:billing:leases",
            f"{tag}:scopes",
            f"{tag}:version",
        }
        assert len({key_slot(k.encode()) for k in keys}) == 1  # Redis Cluster takes the scripts
        assert raw.smembers(f"{tag}:scopes") == {"billing"}
    await set_maintenance_mode(False, backend)
    assert set(raw.scan_iter(match=tag + "*")) == {f"{tag}:version", f"{tag}:history"}


@pytest.mark.parametrize("damage", ["junk hold in a named scope", "scopes key of the wrong type"])
def test_a_corrupt_named_scope_does_not_blind_readers_of_the_global_scope(
    raw: redis.Redis, damage: str
) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    reader, operator = backend_at(prefix), elsewhere(prefix)
    assert state_of(reader).active is False  # read once: last_known is "off"
    if damage.startswith("junk"):
        raw.hset(f"{t}:scope:junk:holds", "x", "{not json")
        raw.zadd(f"{t}:scope:junk:leases", {"x": float("inf")})
        raw.sadd(f"{t}:scopes", "junk")
    else:
        raw.set(f"{t}:scopes", "oops")
    sync.set_maintenance_mode(True, operator, reason="DB upgrade")
    assert state_of(reader).active is True


@pytest.mark.parametrize("damage", ["junk hold", "windows key of another type"])
def test_a_named_scope_that_cannot_be_read_follows_on_error_not_off(
    raw: redis.Redis, damage: str
) -> None:
    # Asked for by name and listed, but unreadable: never taken for a scope that stores
    # nothing (off). A first read raises; later ones follow on_error.
    prefix = redis_prefix()
    t = tag(prefix)
    reader = backend_at(prefix, on_error="closed")
    assert state_of(reader, "junk").active is False  # read once
    if damage == "junk hold":
        raw.hset(f"{t}:scope:junk:holds", "x", "{not json")
        raw.zadd(f"{t}:scope:junk:leases", {"x": float("inf")})
    else:
        raw.set(f"{t}:scope:junk:windows", "oops")
    raw.sadd(f"{t}:scopes", "junk")
    state = state_of(reader, "junk")
    assert (state.active, state.reason) == (True, "maintenance state unavailable")
    assert state_of(reader, "other").active is False  # the others are read as usual
    assert state_of(reader).active is False
    with pytest.raises(BackendError, match="did not write"):
        state_of(elsewhere(prefix), "junk")  # a first read raises


@pytest.mark.parametrize("version", ["abc", str(2**63 - 1)])
def test_a_write_that_reports_failure_changed_nothing(raw: redis.Redis, version: str) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    raw.set(f"{t}:version", version)
    backend = backend_at(prefix)
    try:
        sync.set_maintenance_mode(True, backend, reason="op")
    except BackendError:
        assert raw.exists(f"{t}:explicit") == 0  # failed: nothing was stored
    else:
        assert raw.exists(f"{t}:explicit") == 1


def test_a_broken_version_counter_starts_again_and_the_hold_works(raw: redis.Redis) -> None:
    # The counter only numbers change messages: a value something else wrote is replaced.
    prefix = redis_prefix()
    t = tag(prefix)
    raw.set(f"{t}:version", "abc")
    with under_maintenance(backend=backend_at(prefix)):
        assert raw.hlen(f"{t}:holds") == 1 and raw.get(f"{t}:version") == "1"
    assert raw.hlen(f"{t}:holds") == 0 and raw.zcard(f"{t}:leases") == 0


def test_a_hold_next_to_a_corrupt_record_raises_and_leaves_nothing(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    raw.hset(f"{t}:holds", "junk", "[1, 2")
    raw.zadd(f"{t}:leases", {"junk": float("inf")})
    ran = False
    with (
        pytest.raises(BackendError, match="did not write"),
        under_maintenance(backend=backend_at(prefix)),
    ):
        ran = True
    assert not ran
    assert raw.hkeys(f"{t}:holds") == ["junk"]  # ours went again; theirs is left alone


@pytest.mark.parametrize(
    "damage",
    [
        "explicit without state",
        "explicit not json",
        "explicit a list",
        "explicit since nan",
        "explicit until huge",
        "hold lease huge",
        "hold lease -inf",
        "hold not an object",
        "hold pid float",
        "holds a string",
        "invalid utf-8",
        "retry_after nan",
    ],
)
def test_hostile_values_fail_loudly_then_recover(raw: redis.Redis, damage: str) -> None:
    # Never a crash or a wrong state: a BackendError when what says "on" cannot be read;
    # on, without the detail, when only a detail is invalid; nothing for an expired lease.
    # Once the keys are mended the store reads again.
    prefix = redis_prefix()
    t = tag(prefix)
    binary = redis.Redis.from_url(REDIS_URL)
    good = '{"reason":"x"}'
    now = str(time.time())
    try:
        if damage == "explicit without state":
            raw.hset(f"{t}:explicit", "since", now)
        elif damage == "explicit not json":
            raw.hset(f"{t}:explicit", mapping={"state": "{", "since": now})
        elif damage == "explicit a list":
            raw.hset(f"{t}:explicit", mapping={"state": "[]", "since": now})
        elif damage == "explicit since nan":
            raw.hset(f"{t}:explicit", mapping={"state": good, "since": "nan"})
        elif damage == "explicit until huge":
            raw.hset(f"{t}:explicit", mapping={"state": good, "until": "1e300"})
        elif damage == "retry_after nan":
            raw.hset(f"{t}:explicit", mapping={"state": '{"retry_after":NaN}', "since": now})
        elif damage == "invalid utf-8":
            binary.hset(f"{t}:explicit", mapping={"state": b'{"reason":"\xff"}', "since": now})
        elif damage == "holds a string":
            raw.set(f"{t}:holds", "x")
            raw.zadd(f"{t}:leases", {"x": float("inf")})
        else:
            record = {
                "hold lease huge": '{"acquired":"2020-01-01T00:00:00+00:00",'
                '"started":"2020-01-01T00:00:00+00:00"}',
                "hold lease -inf": "{}",
                "hold not an object": '"text"',
                "hold pid float": '{"acquired":"2020-01-01T00:00:00+00:00",'
                '"started":"2020-01-01T00:00:00+00:00","pid":1.5}',
            }[damage]
            score = {"hold lease huge": 1e300, "hold lease -inf": float("-inf")}.get(
                damage, float("inf")
            )
            raw.hset(f"{t}:holds", "h", record)
            raw.zadd(f"{t}:leases", {"h": score})
        backend = backend_at(prefix)
        if damage == "hold lease -inf":  # long expired: simply not there
            assert state_of(backend).active is False
        elif damage in ("explicit since nan", "explicit until huge", "retry_after nan"):
            state = state_of(backend)  # the hash is there: on, the detail dropped
            field = damage.split()[-2] if damage.startswith("explicit") else "retry_after"
            assert (state.active, getattr(state, field)) == (True, None)
        elif damage == "hold pid float":
            state = state_of(backend)
            assert (state.active, state.holders[0].pid) == (True, 0)
        elif damage == "invalid utf-8":  # read as U+FFFD: on, as the hash says
            state = state_of(backend)
            assert (state.active, state.reason) == (True, "\ufffd")
        else:
            with pytest.raises(BackendError):
                state_of(backend)
        for key in raw.scan_iter(match=t + "*"):
            raw.delete(key)
        assert state_of(backend).active is False
        with under_maintenance(backend=backend, reason="after"):
            assert state_of(elsewhere(prefix)).reason == "after"
    finally:
        binary.close()


@pytest.mark.slow
def test_hostile_values_through_the_middleware_never_give_a_500(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix, refresh_interval=0.05)
    now = str(time.time())
    damages: list[Callable[[], object]] = [
        lambda: raw.hset(f"{t}:explicit", mapping={"state": "{", "since": now}),
        lambda: raw.hset(
            f"{t}:explicit",
            mapping={"state": '{"retry_after":1e308,"reason":"\\r\\nX: y\\u2028\\ud83d"}'},
        ),
        lambda: raw.hset(
            f"{t}:explicit",
            mapping={"state": '{"retry_after":"9999-12-31T23:59:59+00:00"}', "until": "1e11"},
        ),
        lambda: raw.hset(f"{t}:explicit", mapping={"state": '{"reason":"' + "é" * 300_000 + '"}'}),
        lambda: raw.hset(f"{t}:explicit", mapping={"state": '{"mode":"read_only"}'}),
        lambda: raw.set(f"{t}:holds", "wrong type"),
        lambda: raw.set(f"{t}:version", "abc"),
        lambda: raw.publish(f"{t}:changes", "garbage" * 1000),
    ]
    with TestClient(app_for(backend)) as client:
        assert client.get("/").status_code == 200
        for damage in damages:
            damage()
            seen = set()
            for _ in range(15):
                for accept in ("text/html", "application/json", "*/*"):
                    seen.add(client.get("/", headers={"accept": accept}).status_code)
                    seen.add(client.head("/").status_code)
                time.sleep(0.01)
            assert seen <= {200, 503}, (damage, seen)
            for key in raw.scan_iter(match=t + "*"):
                raw.delete(key)
        sync.set_maintenance_mode(True, elsewhere(prefix), reason="real")
        eventually(lambda: client.get("/").status_code == 503, 5)
        sync.set_maintenance_mode(False, elsewhere(prefix))
        eventually(lambda: client.get("/").status_code == 200, 5)


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("cordons", b"caf\xe9", b'{"since": "2026-01-01T00:00:00+00:00"}'),
        ("cordons", b"web-1", b'{"since": "2026-01-01T00:00:00+00:00", "reason": "caf\xe9"}'),
        ("windows", b"w\xff", b'{"start": "2030-01-01T00:00:00+00:00", "end": "x\xff"}'),
        ("explicit", b"state", b'{"active": true, "reason": "caf\xe9"}'),
    ],
)
def test_bytes_that_are_not_utf8_never_block_the_store(
    raw: redis.Redis, key: str, field: bytes, value: bytes
) -> None:
    # Something else wrote a Latin-1 byte: the whole reply failed to decode, so every read
    # and every write of the store failed (on_error everywhere, `maintguard off` exit 3).
    prefix = redis_prefix()
    raw.hset(f"{tag(prefix)}:{key}", field, value)
    backend = backend_at(prefix)
    sync.get_state(backend)  # read: no error
    assert store_of(backend).read_error is None
    sync.set_maintenance_mode(True, backend, reason="urgent")
    assert sync.get_state(backend).reason == "urgent"
    sync.set_maintenance_mode(False, backend)
    url = f"{REDIS_URL}?key_prefix={prefix}"
    off = subprocess.run(
        [sys.executable, "-m", "maintguard", "--backend", url, "off"],
        capture_output=True,
        text=True,
    )
    assert off.returncode == 0, off.stderr


def test_scope_names_with_colons_braces_and_unicode_stay_apart(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend, other = backend_at(prefix), elsewhere(prefix)
    odd = ["a:b", "a:b:holds", "{x}", "scope:a", "ünï🙂", "a b", "x}:scope:{y"]
    for scope in odd:
        with under_maintenance(backend=backend, scope=scope, reason=scope):
            assert state_of(other, scope).reason == scope
            assert state_of(other).active is False
            assert all(state_of(other, s).active is False for s in odd if s != scope)
            keys = list(raw.scan_iter(match=t + "*"))
            assert len({key_slot(k.encode()) for k in keys}) == 1
    assert set(raw.scan_iter(match=t + "*")) == {f"{t}:version"}


async def test_scripts_survive_a_script_flush(raw: redis.Redis) -> None:
    backend = redis_backend()
    async with under_maintenance(backend=backend, reason="before"):
        raw.script_flush()
    assert (await get_state(backend)).active is False
    raw.script_flush()
    async with under_maintenance(backend=backend, reason="after"):
        assert (await get_state(twin(backend, refresh_interval=0))).reason == "after"


async def test_leases_come_from_the_servers_clock(raw: redis.Redis) -> None:
    backend = redis_backend(lease_ttl=20)
    store_of(backend).clock = lambda: time.time() + 3600  # this process is an hour ahead
    async with under_maintenance(backend=backend):
        (score,) = raw.zrange("{" + backend.key_prefix + "}:leases", 0, -1, withscores=True)
        sec, usec = raw.time()
        assert abs(score[1] - (sec + usec / 1e6 + 20)) < 2
        assert (await get_state(twin(backend, refresh_interval=0))).holds == 1


async def test_a_hold_entered_while_redis_is_down_raises_and_its_body_never_runs() -> None:
    with anyio.fail_after(20):  # never a long wait
        backend = RedisBackend("redis://:pw@127.0.0.1:1/0", key_prefix=redis_prefix())
        ran = False
        with pytest.raises(BackendError) as error:
            async with under_maintenance(backend=backend):
                ran = True
    assert not ran
    assert "RedisBackend(redis://:***@127.0.0.1:1/0" in str(error.value)
    assert "pw@" not in str(error.value)


def test_a_hold_through_a_bad_password_fails_clearly_without_the_password() -> None:
    backend = backend_at(redis_prefix(), REDIS_URL.replace("redis://", "redis://nobody:hunter2@"))
    ran = False
    start = time.monotonic()
    with pytest.raises(BackendError) as error, under_maintenance(backend=backend):
        ran = True
    assert not ran and time.monotonic() - start < 20
    assert "hunter2" not in str(error.value) and "***" in str(error.value)


# -- notification --------------------------------------------------------------------------------


def test_a_switch_elsewhere_is_seen_at_once_through_pub_sub(raw: redis.Redis) -> None:
    backend = redis_backend(refresh_interval=60)  # polling would take a minute
    other = twin(backend)
    with watched(backend, raw) as ctrl:
        sync.set_maintenance_mode(True, other)
        assert eventually(lambda: ctrl.snapshot.active, 2) < 1
        sync.set_maintenance_mode(False, other)
        assert eventually(lambda: not ctrl.snapshot.active, 2) < 1


def test_a_lost_message_is_made_up_for_by_polling(raw: redis.Redis) -> None:
    backend = redis_backend(refresh_interval=0.5)
    other = twin(backend)
    other._channel = "{elsewhere}:changes"  # its messages never reach the watcher
    with watched(backend, raw) as ctrl:
        sync.set_maintenance_mode(True, other)
        assert eventually(lambda: ctrl.snapshot.active, 3) <= 1.5  # one interval and a read


def test_a_lease_that_runs_out_is_heard_then_without_any_message(raw: redis.Redis) -> None:
    # A holder that dies publishes nothing more: the watcher's own timer ends the hold.
    backend = redis_backend(refresh_interval=60)  # polls, and would tick, every 10 s
    heard: list[tuple[bool, float]] = []
    with watched(backend, raw) as ctrl:
        ctrl.wakers.add(lambda: heard.append((ctrl.active, time.monotonic())))
        now = datetime.now(timezone.utc)
        dead = HoldRecord("dead", "job", "elsewhere", 1, now, now, now + timedelta(seconds=1))
        anyio.run(twin(backend).write_state, None, StoredState(holds=(dead,)))
        start = time.monotonic()
        eventually(lambda: len(heard) >= 2, 5)
    assert [active for active, _ in heard[:2]] == [True, False]
    assert heard[1][1] - start < 2.5


# -- requests never wait on Redis ---------------------------------------------------------------


def test_requests_after_startup_do_not_wait_on_a_paused_redis(redis_server: RedisServer) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix, f"redis://127.0.0.1:{redis_server.port}/0", refresh_interval=0.1)
    with TestClient(app_for(backend)) as client:
        assert client.get("/").status_code == 200
        paused(redis_server, 2500)  # the watcher's reads hang meanwhile
        took, seen = [], set()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            start = time.monotonic()
            seen.add(client.get("/").status_code)
            took.append(time.monotonic() - start)
        assert seen == {200} and max(took) < 1


def test_the_first_request_without_a_lifespan_does_not_wait_on_a_hung_redis() -> None:
    prefix = redis_prefix()
    with stalled_server() as port:
        backend = backend_at(prefix, f"redis://127.0.0.1:{port}/0")
        app = app_for(backend)

        async def first() -> int | None:
            with anyio.fail_after(3):
                return (await request(app, "/")).status

        assert anyio.run(first) in (200, 503)


# -- renewals, forks and sync code ---------------------------------------------------------------


def test_a_renewal_that_finds_its_record_gone_writes_it_again_with_a_warning(
    raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    backend = redis_backend(lease_ttl=0.6)  # renewed every 0.2 s
    tag = "{" + backend.key_prefix + "}"
    with under_maintenance(backend=backend, reason="migration"):
        assert raw.hlen(f"{tag}:holds") == 1
        with caplog.at_level(logging.WARNING, "maintguard"):
            raw.delete(f"{tag}:holds", f"{tag}:leases")  # a flushed or restarted Redis
            eventually(lambda: raw.hlen(f"{tag}:holds") == 1, 3)
            eventually(
                lambda: any("had gone from the store" in r.getMessage() for r in caplog.records),
                3,
            )
        assert sync.get_state(twin(backend, refresh_interval=0)).reason == "migration"


def test_a_failed_release_is_retried_once_redis_answers_again(raw: redis.Redis) -> None:
    prefix, user = redis_prefix(), f"mgtest-acl-{os.getpid()}"
    raw.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
    try:
        backend = backend_at(
            prefix, REDIS_URL.replace("redis://", f"redis://{user}:pw@"), refresh_interval=0.2
        )
        other = elsewhere(prefix)
        stop = watcher.watch(backend)  # the process goes on watching the store
        try:
            with under_maintenance(backend=backend, reason="job"):
                assert state_of(other).active is True
                raw.execute_command("ACL", "SETUSER", user, "-evalsha", "-eval")
            raw.execute_command("ACL", "SETUSER", user, "+@all")  # Redis answers again
            assert state_of(backend).active is False  # this process is off (I2)...
            eventually(lambda: state_of(other).active is False, 4)  # ...and so are others
        finally:
            stop()
    finally:
        raw.execute_command("ACL", "DELUSER", user)


def test_a_live_hold_is_never_missed_by_another_process_with_a_short_lease(
    raw: redis.Redis,
) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix, lease_ttl=0.3)  # renewed every 0.1 s
    reader = elsewhere(prefix, lease_ttl=0.3)
    with under_maintenance(backend=backend, reason="short"):
        end = time.monotonic() + 1.5
        misses = 0
        while time.monotonic() < end:
            misses += state_of(reader).active is False
            time.sleep(0.01)
    assert misses == 0
    eventually(lambda: state_of(reader).active is False, 2)


def test_a_flushed_script_cache_and_keys_mid_hold_are_written_again(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix, lease_ttl=0.6)
    with under_maintenance(backend=backend, scope="billing", reason="migration"):
        raw.script_flush()
        for key in raw.scan_iter(match=t + "*"):
            raw.delete(key)
        eventually(lambda: state_of(elsewhere(prefix), "billing").reason == "migration", 3)
        assert raw.sismember(f"{t}:scopes", "billing")  # readers' whole-store read finds it
    eventually(lambda: state_of(elsewhere(prefix), "billing").active is False, 3)


@pytest.mark.processes
def test_a_forked_child_uses_a_connection_of_its_own() -> None:
    backend = redis_backend()
    with under_maintenance(backend=backend, reason="parent"):
        pass  # the parent's client is connected
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            with under_maintenance(backend=backend, reason="child"):
                os.write(write, b"held\n")
                time.sleep(1.0)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(write)
    with os.fdopen(read) as pipe:
        assert pipe.readline() == "held\n"
        state = sync.get_state(twin(backend, refresh_interval=0))
        assert (state.active, state.reason, state.holders[0].pid) == (True, "child", pid)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sync.get_state(twin(backend, refresh_interval=0)).active is False


@pytest.mark.processes
def test_a_child_forked_mid_hold_sees_it_and_does_not_end_it() -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix)
    with under_maintenance(backend=backend, reason="parent"):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                os.close(read)
                seen = sync.get_state(backend)
                with under_maintenance(backend=backend, reason="child"):
                    inside = sync.get_state(backend).holds
                after = sync.get_state(backend)
                os.write(write, f"{seen.active} {inside} {after.active} {after.reason}\n".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            line = pipe.readline().strip()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert line == "True 2 True parent"
        state = state_of(elsewhere(prefix))
        assert (state.holds, state.reason) == (1, "parent")
    assert state_of(elsewhere(prefix)).active is False


# -- planned windows ------------------------------------------------------------------------------


def _window(window_id: str, reason: str = "planned") -> WindowRecord:
    start = datetime(2031, 3, 2, 1, 2, 3, 456789, tzinfo=timezone.utc)
    return WindowRecord(
        id=window_id,
        start=start,
        end=start + timedelta(hours=1),
        reason=reason,
        created=start - timedelta(days=1),
        by="ops@db1",
    )


def _put_window(
    backend: RedisBackend, scope: str | None, window_id: str, record: WindowRecord | None, **kw: Any
) -> PutWindow:
    write = PutWindow(window_id, record, **kw)
    anyio.run(backend.update_state, scope, write)
    return write


def _windows_read(backend: RedisBackend, scope: str | None) -> dict[str, WindowRecord]:
    return {w.id: w for w in anyio.run(backend.read_state, scope).windows}


def test_windows_live_in_a_hash_of_their_scope_that_keeps_it_listed(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix)
    record = _window("w1")
    assert _put_window(backend, "billing", "w1", record).found is False
    keys = set(raw.scan_iter(match=t + "*"))
    assert keys == {f"{t}:scope:billing:windows", f"{t}:scopes", f"{t}:version"}
    assert len({key_slot(k.encode()) for k in keys}) == 1  # Redis Cluster takes the scripts
    assert {k: json.loads(v) for k, v in raw.hgetall(f"{t}:scope:billing:windows").items()} == {
        "w1": window_to_dict(record)
    }
    assert raw.smembers(f"{t}:scopes") == {"billing"}  # listed: readers find the scope
    # The explicit hash is deleted and written again on every switch: the windows stay,
    # and so does the listing once the explicit state is off.
    sync.set_maintenance_mode(True, backend, scope="billing", reason="op")
    sync.set_maintenance_mode(False, backend, scope="billing")
    assert raw.hkeys(f"{t}:scope:billing:windows") == ["w1"]
    assert raw.smembers(f"{t}:scopes") == {"billing"}
    assert [w.id for w in sync.list_windows(backend=elsewhere(prefix), scope="billing")] == ["w1"]
    # The last window gone, the scope stores nothing: its key and listing go (the store's
    # audit trail keeps the operator's on and off).
    assert _put_window(backend, "billing", "w1", None).found is True
    assert set(raw.scan_iter(match=t + "*")) == {f"{t}:version", f"{t}:history"}


def test_the_global_scopes_windows_sit_beside_its_other_keys(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix)
    _put_window(backend, None, "w1", _window("w1"))
    with under_maintenance(backend=backend, reason="job"):
        assert raw.hkeys(f"{t}:windows") == ["w1"]
        assert not raw.exists(f"{t}:scopes")  # (the global scope is always read)
    assert [w.id for w in sync.list_windows(backend=elsewhere(prefix))] == ["w1"]


def test_write_state_replaces_the_windows_key(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix)
    _put_window(backend, "jobs", "old", _window("old"))
    anyio.run(backend.write_state, "jobs", StoredState(windows=(_window("a"), _window("b"))))
    assert sorted(raw.hkeys(f"{t}:scope:jobs:windows")) == ["a", "b"]
    assert raw.smembers(f"{t}:scopes") == {"jobs"}
    anyio.run(backend.write_state, "jobs", StoredState())
    assert set(raw.scan_iter(match=t + "*")) == {f"{t}:version"}


def test_a_refused_window_changes_nothing_and_wakes_nobody(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix)
    for name in ("a", "b", "c"):
        _put_window(backend, "jobs", name, _window(name), limit=3)
    version = raw.get(f"{t}:version")
    pubsub = raw.pubsub()
    pubsub.subscribe(f"{t}:changes")
    try:
        assert pubsub.get_message(timeout=1)["type"] == "subscribe"  # type: ignore[index]
        refused = PutWindow("d", _window("d"), limit=3)
        with pytest.raises(ConfigurationError, match="at most 3 windows") as info:
            anyio.run(backend.update_state, "jobs", refused)
        with pytest.raises(ConfigurationError) as own:  # PutWindow's own words
            PutWindow("d", _window("d"), limit=3)(
                StoredState(windows=(_window("a"), _window("b"), _window("c")))
            )
        assert str(info.value) == str(own.value)
        assert refused.found is False
        assert sorted(raw.hkeys(f"{t}:scope:jobs:windows")) == ["a", "b", "c"]
        assert raw.get(f"{t}:version") == version
        assert pubsub.get_message(timeout=0.2) is None  # nobody re-reads for nothing
        # A window the full scope has is replaced, and that is heard.
        assert _put_window(backend, "jobs", "b", _window("b", "moved"), limit=3).found is True
        message = pubsub.get_message(timeout=1)
        assert message is not None and message["type"] == "message"
        assert json.loads(raw.hget(f"{t}:scope:jobs:windows", "b") or "")["reason"] == "moved"
    finally:
        pubsub.close()


def test_windows_are_stored_as_planned_not_moved_to_the_servers_clock(
    raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's clock an hour behind the server's: the explicit state's times are
    # stored on the server's clock, a window's as planned (a skipped occurrence must stay
    # equal to the start cron gives every reader).
    import maintguard.backends._redis as module

    real = time.time
    monkeypatch.setattr(module, "time", SimpleNamespace(time=lambda: real() - 3600))
    prefix = redis_prefix()
    t = tag(prefix)
    backend = backend_at(prefix)
    sync.set_maintenance_mode(True, backend, reason="op")
    since = float(raw.hget(f"{t}:explicit", "since") or "nan")
    assert abs(since - real() - 3600) < 60  # moved by the hour it measured
    record = replace(_window("w1"), skip=(datetime(2031, 3, 9, 2, tzinfo=timezone.utc),))
    _put_window(backend, None, "w1", record)
    assert json.loads(raw.hget(f"{t}:windows", "w1") or "") == window_to_dict(record)
    assert _windows_read(backend, None) == {"w1": record}


@pytest.mark.parametrize(
    "junk",
    ["{not json", "[1, 2]", '"text"', "[" * 100_000, '{"start": "2031-01-01T00:00:00+00:00"}'],
    ids=["not json", "a list", "a string", "nested deep", "no end"],
)
def test_a_junk_window_is_dropped_with_a_warning_and_the_rest_read(
    raw: redis.Redis, caplog: pytest.LogCaptureFixture, junk: str
) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    backend, reader = backend_at(prefix), elsewhere(prefix)
    sync.set_maintenance_mode(True, backend, reason="op")
    _put_window(backend, None, "good", _window("good"))
    raw.hset(f"{t}:windows", "junk", junk)
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        state = state_of(reader)
        assert (state.active, state.reason) == (True, "op")  # never switched off
        assert state.next_window is not None and state.next_window.id == "good"
        # A write's reply carries the windows too: read the same way, never raised.
        with under_maintenance(backend=backend, reason="job"):
            assert state_of(reader).holds == 1
        assert _put_window(backend, None, "more", _window("more")).found is False
    assert sorted(_windows_read(reader, None)) == ["good", "more"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("window 'junk' is ignored" in w for w in warnings), warnings
    assert raw.hexists(f"{t}:windows", "junk")  # left for the operator to see and mend


def test_a_windows_key_of_another_type_blinds_its_scope_only(raw: redis.Redis) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    reader, operator = backend_at(prefix), elsewhere(prefix)
    assert state_of(reader).active is False  # read once: last_known is "off"
    raw.set(f"{t}:scope:junk:windows", "oops")
    raw.sadd(f"{t}:scopes", "junk")
    sync.set_maintenance_mode(True, operator, reason="DB upgrade")
    assert state_of(reader).active is True  # the other scopes are read as usual
    with pytest.raises(PartialReadError, match="did not write") as info:
        anyio.run(reader.read_scopes, [None, "junk"])
    assert "junk" not in info.value.found  # that scope follows on_error ...
    assert info.value.found[None].explicit.reason == "DB upgrade"  # ... the others are read
    # Writes to that scope fail before they change anything.
    with pytest.raises(BackendError, match="WRONGTYPE"):
        _put_window(operator, "junk", "w1", _window("w1"))
    with pytest.raises(BackendError), under_maintenance(backend=operator, scope="junk"):
        pass
    assert set(raw.scan_iter(match=f"{t}:scope:junk:*")) == {f"{t}:scope:junk:windows"}
    assert raw.get(f"{t}:scope:junk:windows") == "oops"


_ADDER = """
import sys, time
from pathlib import Path
from maintguard import sync, under_maintenance
from tests.stores import open_store

prefix, name, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
backend = open_store("redis:" + prefix, refresh_interval=0)
with under_maintenance(backend=backend, scope="jobs", reason=name):
    while not go.exists():
        time.sleep(0.005)
    for i in range(count):
        sync.schedule_maintenance(3600 + i, duration=60, reason=f"{name}-{i}", backend=backend,
                                  scope="jobs")
    (go.parent / f"done-{name}").touch()
    while not (go.parent / "leave").exists():
        time.sleep(0.005)
"""


@pytest.mark.processes
def test_processes_adding_windows_at_once_lose_none_and_keep_each_others_holds(
    raw: redis.Redis, tmp_path: Path
) -> None:
    prefix = redis_prefix()
    t = tag(prefix)
    procs, each = 4, 12
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    go = tmp_path / "go"
    started = [
        subprocess.Popen(
            [sys.executable, "-c", _ADDER, prefix, f"p{n}", str(each), str(go)], env=env
        )
        for n in range(procs)
    ]
    try:
        eventually(lambda: raw.hlen(f"{t}:scope:jobs:holds") == procs, 60)
        go.touch()  # all at once
        eventually(lambda: all((tmp_path / f"done-p{n}").exists() for n in range(procs)), 60)
        reasons = sorted(
            w.reason or "" for w in sync.list_windows(backend=elsewhere(prefix), scope="jobs")
        )
        assert reasons == sorted(f"p{n}-{i}" for n in range(procs) for i in range(each))
        state = state_of(elsewhere(prefix), "jobs")
        assert sorted(h.reason or "" for h in state.holders) == [f"p{n}" for n in range(procs)]
        (tmp_path / "leave").touch()
        for proc in started:
            assert proc.wait(60) == 0
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert raw.hlen(f"{t}:scope:jobs:windows") == procs * each
    assert state_of(elsewhere(prefix), "jobs").holds == 0


# -- interrupted entries and exits, on a server of the test's own -------------------------------


def paused(server: RedisServer, ms: int) -> None:
    client = redis.Redis(port=server.port)
    try:
        client.execute_command("CLIENT", "PAUSE", ms, "ALL")
    finally:
        client.close()


def records(server: RedisServer, prefix: str) -> int:
    client = redis.Redis(port=server.port)
    try:
        return int(client.hlen(f"{tag(prefix)}:holds"))
    finally:
        client.close()


@pytest.mark.anyio
async def test_an_entry_cancelled_while_redis_is_paused_leaves_nothing(
    redis_server: RedisServer,
) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix, f"redis://127.0.0.1:{redis_server.port}/0")
    async with under_maintenance(backend=backend):  # connected and scripts loaded
        pass
    ran = False
    paused(redis_server, 600)
    with anyio.move_on_after(0.1) as scope:
        async with under_maintenance(backend=backend, reason="cancelled"):
            ran = True
    assert scope.cancelled_caught and not ran
    ctrl = controller(backend, None)
    await anyio.to_thread.run_sync(
        eventually, lambda: not ctrl.holding() and records(redis_server, prefix) == 0, 10
    )
    assert (await get_state(backend)).active is False


@pytest.mark.anyio
async def test_an_exit_cancelled_while_redis_is_paused_still_releases(
    redis_server: RedisServer,
) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix, f"redis://127.0.0.1:{redis_server.port}/0")
    with anyio.move_on_after(0.3):
        async with under_maintenance(backend=backend, reason="held"):
            paused(redis_server, 500)
            await anyio.sleep(5)  # cancelled here; the release waits out the pause
    assert records(redis_server, prefix) == 0
    assert (await get_state(backend)).active is False


def test_ctrl_c_during_a_sync_entry_on_a_paused_redis_leaves_nothing(
    redis_server: RedisServer,
) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix, f"redis://127.0.0.1:{redis_server.port}/0")
    with under_maintenance(backend=backend):
        pass

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    ran = False
    try:
        paused(redis_server, 600)
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt), under_maintenance(backend=backend):
            ran = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not ran
    eventually(lambda: records(redis_server, prefix) == 0, 10)
    assert not controller(backend, None).holding()


def test_a_generator_closed_in_another_thread_and_one_collected_end_their_holds(
    raw: redis.Redis,
) -> None:
    prefix = redis_prefix()
    backend = backend_at(prefix)

    @under_maintenance(backend=backend, reason="export")
    def export() -> Iterator[int]:
        yield from range(10)

    first = export()
    next(first)
    second = export()
    next(second)
    assert state_of(elsewhere(prefix)).holds == 1  # one process, one record
    closer = threading.Thread(target=first.close)
    closer.start()
    closer.join(10)
    assert state_of(elsewhere(prefix)).active is True  # the other still iterates
    del second
    gc.collect()
    assert state_of(elsewhere(prefix)).active is False
    assert raw.hlen(f"{tag(prefix)}:holds") == 0


@pytest.mark.parametrize("page", ["docs/how-to/many-servers.md", "docs/reference/storage.md"])
def test_the_documented_acl_user_can_do_everything_maintguard_needs(
    raw: redis.Redis, page: str
) -> None:
    # The ACL line is in the many-servers how-to and in the storage reference: each is
    # tested as written. The how-to must carry it; the reference is checked when it does.
    path = Path(__file__).parents[1] / page
    text = path.read_text() if path.exists() else ""
    lines = [x for x in text.splitlines() if x.startswith("ACL SETUSER shop ")]
    if not lines and page != "docs/how-to/many-servers.md":
        pytest.skip(f"{page} shows no ACL SETUSER line")
    assert lines, f"{page} shows the ACL user's line (ACL SETUSER shop ...)"
    line = lines[0]
    prefix, user = redis_prefix(), f"mg-{os.getpid()}"
    words = shlex.split(line.replace("{maintguard}", "{" + prefix + "}"))
    words[2] = user
    raw.execute_command(*words)
    try:
        backend = RedisBackend(
            REDIS_URL.replace("redis://", f"redis://{user}:s3cret@"),
            key_prefix=prefix,
            refresh_interval=0.2,
        )
        stop = watcher.watch(backend)  # subscribes, reads ...
        anyio.run(presence.join, store_of(backend))  # ... and records its presence
        try:
            sync.set_maintenance_mode(True, backend, scope="billing", reason="x")
            window = sync.schedule_maintenance(3600, duration=60, backend=backend, scope="jobs")
            assert [w.id for w in sync.list_windows(backend=backend, scope="jobs")] == [window.id]
            assert sync.cancel_window(window.id, backend=backend, scope="jobs") is True
            sync.cordon("web-1", reason="kernel", drain=0.5, backend=backend)
            assert [c.host for c in sync.list_cordons(backend=backend)] == ["web-1"]
            assert sync.uncordon("web-1", backend=backend) is True
            with under_maintenance(backend=backend, reason="job", drain=1):
                assert sync.get_state(backend).holds == 1
            sync.set_maintenance_mode(False, backend, scope="billing")
            eventually(lambda: store_of(backend).reported is not None, 5)
        finally:
            stop()
        eventually(lambda: store_of(backend).reported is None, 5)  # left, through the ACL
        assert sync.get_state(backend).active is False
        denied = RedisBackend(
            REDIS_URL.replace("redis://", f"redis://{user}:s3cret@"), key_prefix="other"
        )
        with pytest.raises(BackendError, match=r"no permissions"):
            sync.set_maintenance_mode(True, denied)
    finally:
        raw.acl_deluser(user)
