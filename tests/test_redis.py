"""The Redis backend's own behaviour, against the real Redis server of tests/stores.py."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
from redis.crc import key_slot

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
from maintguard._state import HoldRecord, StoredState
from maintguard.backends import RedisBackend, backend_from_url
from tests.conftest import redis_backend
from tests.stores import REDIS_URL, redis_prefix

pytestmark = pytest.mark.anyio


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


def test_passwords_never_show() -> None:
    backend = RedisBackend("redis://app:s3cret@cache:6379/0?password=s3cret")
    assert "s3cret" not in backend.describe() and "***" in backend.describe()
    with pytest.raises(ConfigurationError) as bad:
        backend_from_url("rediss://app:s3cret@cache:notaport/0")
    assert "s3cret" not in str(bad.value) and "is not understood" in str(bad.value)


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


# -- what is stored, and how ---------------------------------------------------------------------


async def test_keys_share_one_hash_tag_and_are_tidied(raw: redis.Redis) -> None:
    backend = redis_backend()
    tag = "{" + backend.key_prefix + "}"
    await set_maintenance_mode(True, backend, reason="upgrade")
    async with under_maintenance(backend=backend, scope="billing"):
        keys = set(raw.scan_iter(match=tag + "*"))
        assert keys == {
            f"{tag}:explicit",
            f"{tag}:scope:billing:holds",
            f"{tag}:scope:billing:leases",
            f"{tag}:scopes",
            f"{tag}:version",
        }
        assert len({key_slot(k.encode()) for k in keys}) == 1  # Redis Cluster takes the scripts
        assert raw.smembers(f"{tag}:scopes") == {"billing"}
    await set_maintenance_mode(False, backend)
    assert set(raw.scan_iter(match=tag + "*")) == {f"{tag}:version"}


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


def test_the_readmes_acl_user_can_do_everything_maintguard_needs(raw: redis.Redis) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("ACL SETUSER shop "))
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
