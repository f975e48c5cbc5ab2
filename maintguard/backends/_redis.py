"""State in Redis, shared by every process of every server that names the same store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from .. import _ioloop as ioloop
from .._state import (
    EPOCH,
    AuditEntry,
    Cordon,
    ExplicitState,
    HoldRecord,
    StoredState,
    WindowRecord,
    WorkerRecord,
    cordon_from_dict,
    cordon_to_dict,
    entry_from_dict,
    entry_to_dict,
    explicit_from_dict,
    explicit_to_dict,
    hold_from_dict,
    hold_to_dict,
    warn_invalid,
    window_from_dict,
    window_to_dict,
    worker_from_dict,
    worker_to_dict,
)
from ..exceptions import BackendError, ConfigurationError, PartialReadError
from ._base import Backend, OnError, overrides
from ._writes import PutCordon, PutHold, PutWindow, PutWorker, Record, SetExplicit

__all__ = ["RedisBackend"]

logger = logging.getLogger("maintguard")

INSTALL = "pip install 'maintguard[redis]'"
_RESUBSCRIBE_MAX = 0.5  # seconds between attempts to subscribe again to a lost server
SKEW = 0.5
"""Clock differences to the Redis server below this many seconds are taken as none: they
are within what one round trip can measure, and writes then round-trip exactly."""

# -- the scripts: one per operation, every write publishes the store's new version -------
#
# KEYS of a write, for scope S (B = "{prefix}" for the global scope, "{prefix}:scope:S"
# for a named one): 1 B:explicit, 2 B:holds, 3 B:leases, 4 {prefix}:scopes,
# 5 {prefix}:version, 6 {prefix}:workers, 7 {prefix}:worker-leases, 8 B:windows,
# 9 {prefix}:history (the audit trail: a list of JSON entries, newest first),
# 10 {prefix}:cordons (each cordoned host's JSON, by host name).
# ARGV[1] is the channel, ARGV[2] the scope ('' = global). Times are the server's, but
# a window's: B:windows maps each window's id to its JSON, with the times as planned (see
# RedisBackend._apply).

_PRELUDE = """
local t = redis.call('TIME')
local ts = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local now = tonumber(ts)

local function prune(hash, zset)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', ts)
  for i = 1, #dead do redis.call('HDEL', hash, dead[i]) end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', zset, '-inf', ts) end
end

local function live(hash, zset)
  local out = {}
  local found = redis.call('ZRANGEBYSCORE', zset, '(' .. ts, '+inf', 'WITHSCORES')
  for i = 1, #found, 2 do
    local value = redis.call('HGET', hash, found[i])
    if value then
      out[#out + 1] = found[i]
      out[#out + 1] = value
      out[#out + 1] = found[i + 1]
    end
  end
  return out
end
"""

_WRITE = (
    _PRELUDE
    + """
local scope = ARGV[2]

-- All or nothing: a key of another type (written by something else) fails the script
-- before it changes anything.
local function expect(key, kind)
  local found = redis.call('TYPE', key).ok
  if found ~= 'none' and found ~= kind then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind})
  end
end
expect(KEYS[1], 'hash')
expect(KEYS[2], 'hash')
expect(KEYS[3], 'zset')
expect(KEYS[8], 'hash')
if scope ~= '' then expect(KEYS[4], 'set') else
  expect(KEYS[6], 'hash')
  expect(KEYS[7], 'zset')
end

-- A named scope is listed while it stores something readers must see: the explicit
-- state, a live lease or a window (the read script reads the listed scopes only).
local function tidy()
  if scope ~= '' then
    if redis.call('ZCARD', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[1]) == 0
        and redis.call('EXISTS', KEYS[8]) == 0 then
      redis.call('SREM', KEYS[4], scope)
    else
      redis.call('SADD', KEYS[4], scope)
    end
  end
end

-- The version is taken here, once the write is made: a write refused before it changes
-- anything takes none. The counter only numbers messages: a broken one starts again.
local function finish(extra)
  tidy()
  local version = redis.pcall('INCR', KEYS[5])
  if type(version) ~= 'number' then
    redis.call('SET', KEYS[5], 1)
    version = 1
  end
  redis.call('PUBLISH', ARGV[1], version)
  local workers, history, cordons = {}, {}, {}
  if scope == '' then
    workers = live(KEYS[6], KEYS[7])
    -- The trail and the cordons never decide whether maintenance is on: a key of another
    -- type is told (as its error), not a failed write.
    history = redis.pcall('LRANGE', KEYS[9], 0, -1)
    if history.err then history = history.err end
    cordons = redis.pcall('HGETALL', KEYS[10])
    if cordons.err then cordons = cordons.err end
  end
  return {t[1], t[2], extra, redis.call('HGETALL', KEYS[1]), live(KEYS[2], KEYS[3]), workers,
    redis.call('HGETALL', KEYS[8]), history, cordons}
end
"""
)

SCRIPTS = {
    # ARGV 3 hold id, 4 record, 5 lease seconds. Returns whether a live record was there.
    "hold": _WRITE
    + """
prune(KEYS[2], KEYS[3])
local there = redis.call('ZSCORE', KEYS[3], ARGV[3]) and 1 or 0
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[3])
return finish(there)
""",
    # ARGV 3 hold id.
    "release": _WRITE
    + """
prune(KEYS[2], KEYS[3])
redis.call('HDEL', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
return finish(0)
""",
    # ARGV 3 the state's JSON ('' = off), 4 since, 5 until ('' = none). On while in force
    # already: the old since stays.
    "explicit": _WRITE
    + """
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  local old = redis.call('HMGET', KEYS[1], 'since', 'until')
  local since = ARGV[4]
  -- Values something else wrote are read as readers take them: an until that is not a
  -- number is no end; a since that is no time (nan, text) is replaced.
  local old_since, old_until = tonumber(old[1]), tonumber(old[2])
  local sane = old_since and old_since >= 0 and old_since < 1e11  -- (false for nan)
  if sane and (not old_until or old_until > now) then since = old[1] end
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'since', since)
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'until', ARGV[5]) end
end
return finish(0)
""",
    # ARGV 3 worker id, 4 record ('' = remove), 5 lease seconds.
    "worker": _WRITE
    + """
prune(KEYS[6], KEYS[7])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[6], ARGV[3])
  redis.call('ZREM', KEYS[7], ARGV[3])
else
  redis.call('HSET', KEYS[6], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[5]), ARGV[3])
end
return finish(0)
""",
    # ARGV 3 window id, 4 record ('' = remove), 5 the most windows a scope keeps. Returns
    # whether the window was there; -1 (and nothing changed) for a new one past the limit.
    "window": _WRITE
    + """
local there = redis.call('HGET', KEYS[8], ARGV[3]) and 1 or 0
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[8], ARGV[3])  -- (Redis deletes the hash with its last field)
else
  -- Counted in the script that adds: writers in other processes cannot both take the
  -- last place. HGETALL, not HLEN: it is among the commands the documented ACL user is
  -- granted, and a full scope is a hundred small values.
  if there == 0 and #redis.call('HGETALL', KEYS[8]) / 2 >= tonumber(ARGV[5]) then
    return {t[1], t[2], -1}
  end
  redis.call('HSET', KEYS[8], ARGV[3], ARGV[4])
end
return finish(there)
""",
    # ARGV 3 host, 4 its cordon (JSON; '' = remove). The global scope only. Returns whether
    # the host was cordoned.
    "cordon": _WRITE
    + """
expect(KEYS[10], 'hash')
local there = redis.call('HGET', KEYS[10], ARGV[3]) and 1 or 0  -- (HGET: in the documented ACL)
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[10], ARGV[3])
else
  redis.call('HSET', KEYS[10], ARGV[3], ARGV[4])
end
return finish(there)
""",
    # ARGV 3 the audit entry (JSON), 4 how many entries are kept. The global scope only.
    "record": _WRITE
    + """
expect(KEYS[9], 'list')
redis.call('LPUSH', KEYS[9], ARGV[3])
redis.call('LTRIM', KEYS[9], 0, tonumber(ARGV[4]) - 1)
return finish(0)
""",
    # `write_state`: ARGV 3 state ('' = off), 4 since ('' = none), 5 until, then the
    # number of holds and (id, record, expiry) each, then the number of windows and
    # (id, record) each, then (global scope) the number of workers and (id, record,
    # expiry) each, the number of audit entries and each, oldest first, and the number of
    # cordons and (host, record) each.
    "replace": _WRITE
    + """
if scope == '' then
  expect(KEYS[9], 'list')
  expect(KEYS[10], 'hash')
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[8])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[3])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'since', ARGV[4]) end
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'until', ARGV[5]) end
end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
  i = i + 3
end
for _ = 1, tonumber(ARGV[i]) do
  redis.call('HSET', KEYS[8], ARGV[i + 1], ARGV[i + 2])
  i = i + 2
end
i = i + 1
if scope == '' then
  redis.call('DEL', KEYS[6], KEYS[7])
  for _ = 1, tonumber(ARGV[i]) do
    redis.call('HSET', KEYS[6], ARGV[i + 1], ARGV[i + 2])
    redis.call('ZADD', KEYS[7], ARGV[i + 3], ARGV[i + 1])
    i = i + 3
  end
  i = i + 1
  redis.call('DEL', KEYS[9])
  for _ = 1, tonumber(ARGV[i]) do
    redis.call('LPUSH', KEYS[9], ARGV[i + 1])
    i = i + 1
  end
  i = i + 1
  redis.call('DEL', KEYS[10])
  for _ = 1, tonumber(ARGV[i]) do
    redis.call('HSET', KEYS[10], ARGV[i + 1], ARGV[i + 2])
    i = i + 2
  end
end
return finish(0)
""",
    # The whole store: KEYS 1 {prefix}:scopes, 2 {prefix}:workers, 3 {prefix}:worker-leases;
    # ARGV 1 "{prefix}". Returns the time, the live workers, then (scope, (explicit, live
    # holds, windows[, history, cordons])) for the global scope (with its audit trail and
    # cordons) and every
    # named scope that stores something.
    # A scope whose keys cannot be read (another type) comes as (scope, (false, error)).
    "read": _PRELUDE
    + """
local function try(f, ...)
  local ok, found = pcall(f, ...)
  if ok then return found end
  return {false, type(found) == 'table' and found.err or tostring(found)}
end
local function scope_of(scope)
  local base = ARGV[1]
  if scope ~= '' then base = base .. ':scope:' .. scope end
  local found = {
    redis.call('HGETALL', base .. ':explicit'),
    live(base .. ':holds', base .. ':leases'),
    redis.call('HGETALL', base .. ':windows'),
  }
  if scope == '' then  -- the audit trail, newest first, and the cordons (a key of
    -- another type: its error)
    local history = redis.pcall('LRANGE', base .. ':history', 0, -1)
    if history.err then history = history.err end
    found[4] = history
    local cordons = redis.pcall('HGETALL', base .. ':cordons')
    if cordons.err then cordons = cordons.err end
    found[5] = cordons
  end
  return found
end
local scopes = redis.pcall('SMEMBERS', KEYS[1])
local listed = false  -- or why the named scopes are not known
if scopes.err then
  listed = scopes.err
  scopes = {}
end
local out = {t[1], t[2], try(live, KEYS[2], KEYS[3]), listed}
table.insert(scopes, 1, '')
for _, scope in ipairs(scopes) do
  out[#out + 1] = scope
  out[#out + 1] = try(scope_of, scope)
end
return out
""",
}

_CLIENT_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    # Bytes that are not UTF-8 (written by something else) are read as U+FFFD, never fail
    # the whole reply: the part they sit in is judged as any other value.
    "encoding_errors": "replace",
    "client_name": "maintguard",
}
TIMEOUT_FLOOR = 1.0
TIMEOUT_CAP = 5.0


def timeout_for(refresh_interval: float) -> float:
    """The connect and read timeout of a client maintguard makes: ``refresh_interval``
    within [1 s, 5 s].

    A server that stops answering without closing the connection (SIGSTOP, a network
    partition) is only noticed by a timeout: readers then follow ``on_error`` about
    ``refresh_interval`` plus this after it stopped. The floor keeps a slow but alive
    server usable (``refresh_interval=0`` reads every time; it must not make every
    command time out); the cap keeps redis-py's usual 5 s for rare polling."""
    return min(TIMEOUT_CAP, max(TIMEOUT_FLOOR, refresh_interval))


_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``: everything between ``user:`` and the
    last ``@`` (a password may hold ``@``, ``/``, ``#`` or ``?``), and a ``password=``."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, place = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}:***@{place}" if colon else f"{userinfo}@{place}"
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + rest)


class RedisBackend(Backend):
    """Keeps the state in Redis, so that every process of every server sees one state.

    Each write is one Lua script, atomic on the server, that also publishes the store's new
    version on ``{prefix}:changes``: the watcher of every process subscribes and re-reads
    at once, re-reads in full after every reconnect, and still re-reads every
    ``refresh_interval`` seconds in case a message was lost. Leases are judged by the
    Redis server's clock (``TIME``), so servers whose clocks disagree still agree on which
    holds are live.

    Creating the backend does no I/O. When Redis cannot be reached, readers keep the last
    state read (or follow ``on_error``), a warning is logged once and an info line on
    recovery, and entering a hold raises ``BackendError`` (the body does not run). The
    client's connect and read timeouts are ``refresh_interval`` within [1 s, 5 s] (a
    ``socket_timeout`` in the URL wins), so a server that stops answering without closing
    the connection is noticed within about twice the refresh interval.

    ``client`` is a ``redis.asyncio.Redis`` to use instead of one made from ``url`` (for
    settings a URL cannot carry); maintguard uses it on its own I/O loop only, so do not
    share it with the app's loop. A forked child makes a fresh client with its settings.

    >>> backend = RedisBackend("redis://localhost:6379/0", key_prefix="shop")
    """

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        key_prefix: str = "maintguard",
        lease_ttl: float = 30.0,
        refresh_interval: float = 5.0,
        on_error: OnError = "last_known",
        client: Any = None,
    ) -> None:
        super().__init__(on_error=on_error, lease_ttl=lease_ttl, refresh_interval=refresh_interval)
        try:
            import redis.asyncio.connection  # noqa: F401 - imported when the backend is made
        except ImportError:
            raise ConfigurationError(f"RedisBackend needs the redis package: {INSTALL}") from None
        if not isinstance(url, str):
            raise ConfigurationError(
                f"RedisBackend needs a redis://, rediss:// or unix:// URL, not {url!r}"
            )
        if not isinstance(key_prefix, str) or not key_prefix or re.search(r"[{}\s]", key_prefix):
            raise ConfigurationError(
                f"key_prefix must be a non-empty name without braces or spaces, such as "
                f"'maintguard' or 'shop', not {key_prefix!r}"
            )
        self.url = url
        self.key_prefix = key_prefix
        if client is not None:
            where = dict(client.connection_pool.connection_kwargs)
        else:
            where = _parse(url)
        self._where = where
        self._base = "{" + key_prefix + "}"
        self._channel = self._base + ":changes"
        self._given = client
        self._given_pid = os.getpid()
        self._conn = _Connection()
        self._offset: float | None = None  # server clock minus ours (seconds)
        weakref.finalize(self, self._conn.close).atexit = False  # at exit the loop ends

    # -- what names the store ---------------------------------------------------------------

    def store_key(self) -> tuple[object, ...]:
        where = self._where
        db = int(where.get("db", 0) or 0)
        if where.get("path"):
            return ("redis", "unix", where["path"], db, self.key_prefix)
        host = str(where.get("host", "localhost")).lower()
        return ("redis", host, int(where.get("port", 6379)), db, self.key_prefix)

    def options(self) -> dict[str, object]:
        # Two objects for one store must also connect alike: over TLS or not, as the same
        # user with the same password (compared, never shown).
        where = self._where
        kind = where.get("connection_class")
        secret = f"{where.get('username')}\0{where.get('password')}".encode()
        return {
            **super().options(),
            "connection": "tcp" if kind is None else kind.__name__,
            "credentials": hashlib.sha256(secret).hexdigest()[:12],
        }

    def describe(self) -> str:
        where = redact(self.url)
        if self._given is not None:  # the client's server, not the URL's
            _, *place, db, _ = self.store_key()
            where = (
                f"unix://{place[1]}?db={db}"
                if place[0] == "unix"
                else f"redis://{place[0]}:{place[1]}/{db}"
            )
        return f"RedisBackend({where}, key_prefix={self.key_prefix!r})"

    def keys(self, scope: str | None) -> list[str]:
        """The keys one scope's write touches (all share the hash tag ``{prefix}``)."""
        base = self._base
        at = base if scope is None else f"{base}:scope:{scope}"
        return [
            f"{at}:explicit",
            f"{at}:holds",
            f"{at}:leases",
            f"{base}:scopes",
            f"{base}:version",
            f"{base}:workers",
            f"{base}:worker-leases",
            f"{at}:windows",
            f"{base}:history",
            f"{base}:cordons",
        ]

    # -- the backend face: every call runs on maintguard's I/O loop -------------------------

    async def read_state(self, scope: str | None) -> StoredState:
        return (await self._read_scopes(scope))[scope]

    async def read_scopes(self, scopes: Collection[str | None]) -> Mapping[str | None, StoredState]:
        if overrides(type(self), RedisBackend, "read_state"):
            return await super().read_scopes(scopes)  # the subclass's reads, one per scope
        return await self._read_scopes(*scopes)

    async def _read_scopes(self, *scopes: str | None) -> dict[str | None, StoredState]:
        # The whole store in one script (what read_state and read_scopes both are).
        return await ioloop.run(self._read_all(scopes))

    async def write_state(self, scope: str | None, state: StoredState) -> None:
        await ioloop.run(self._replace(scope, state))

    async def update_state(
        self, scope: str | None, mutate: Callable[[StoredState], StoredState]
    ) -> StoredState:
        """maintguard's own writes run as one script each; any other ``mutate`` reads,
        applies and writes the scope (not atomic against other processes), as do all writes
        of a subclass that overrides ``read_state`` or ``write_state``."""
        if isinstance(
            mutate, PutHold | PutWorker | SetExplicit | PutWindow | PutCordon | Record
        ) and not overrides(type(self), RedisBackend, "read_state", "write_state"):
            return await ioloop.run(self._apply(scope, mutate))
        return await super().update_state(scope, mutate)

    def _changes(self) -> AsyncIterator[object]:
        return self._subscribe()

    # -- on the I/O loop ------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = self._conn
        pid = os.getpid()
        if conn.pid != pid or conn.client is None:  # first use, or a forked child
            import redis
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            given = self._given
            if given is not None and pid == self._given_pid:
                client, own = given, False
            elif given is not None:
                pool = given.connection_pool
                pool = aioredis.ConnectionPool(
                    connection_class=pool.connection_class, **pool.connection_kwargs
                )
                client, own = (
                    aioredis.Redis(connection_pool=pool, auto_close_connection_pool=True),
                    True,
                )
            else:
                # One quick retry of a connection error (a pooled connection a restarted
                # server closed), then the error: a hold entered while Redis is down fails
                # at once. A timeout is not retried: it would double the time to notice a
                # server that stopped answering. Options in the URL win over these.
                retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
                timeout = timeout_for(self.refresh_interval)
                client = aioredis.Redis.from_url(
                    self.url,
                    retry=retry,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    **_CLIENT_OPTIONS,
                )
                own = True
            conn.client, conn.own, conn.pid = client, own, pid
            _open.add(conn)
            conn.scripts = {name: client.register_script(src) for name, src in SCRIPTS.items()}
            self._offset = None
        return conn.client

    async def _call(self, name: str, keys: list[str], args: list[object], doing: str) -> Any:
        self._connection()
        sent = time.time()
        try:
            reply = await self._conn.scripts[name](keys=keys, args=args)
        except Exception as exc:
            raise BackendError(f"{self.describe()}: {doing} failed: {_say(exc)}") from exc
        self._clock(reply[0], reply[1], sent)
        return reply

    async def _offset_now(self, doing: str) -> float:
        # How far the server's clock is from ours, to put the times a write stores on the
        # server's clock (every reply tells it again; the first write asks TIME).
        client = self._connection()
        if self._offset is None:
            sent = time.time()
            try:
                sec, usec = await client.time()
            except Exception as exc:
                raise BackendError(f"{self.describe()}: {doing} failed: {_say(exc)}") from exc
            self._clock(sec, usec, sent)
        return self._offset or 0.0

    def _clock(self, sec: Any, usec: Any, sent: float) -> None:
        server = int(sec) + int(usec) / 1e6
        offset = server - (sent + time.time()) / 2
        self._offset = offset if abs(offset) >= SKEW else 0.0

    async def _read_all(self, asked: tuple[str | None, ...]) -> dict[str | None, StoredState]:
        base = self._base
        reply = await self._call(
            "read",
            [f"{base}:scopes", f"{base}:workers", f"{base}:worker-leases"],
            [base],
            "reading the maintenance state",
        )
        # Each scope stands alone: one that cannot be read (keys something else wrote)
        # follows on_error while the others are read as usual.
        offset = self._offset or 0.0
        found: dict[str | None, StoredState] = {}
        failed: dict[str | None, str] = {}
        workers: tuple[WorkerRecord, ...] = ()
        try:
            workers = self._workers(_unless_failed(reply[2]), offset)
        except _UNREADABLE as exc:
            failed[None] = repr(exc)
        rest = reply[4:]
        for i in range(0, len(rest), 2):
            scope = _text(rest[i]) or None
            if scope in failed:
                continue
            try:
                explicit, holds, windows, *trail = _unless_failed(rest[i + 1])
                found[scope] = self._scope(
                    scope,
                    explicit,
                    holds,
                    windows,
                    workers if scope is None else (),
                    offset,
                    *trail,  # the global scope's history and cordons
                )
            except _UNREADABLE as exc:
                failed[scope] = repr(exc)
        # A scope asked for that the reply left out stores nothing, when every named scope
        # was listed; one that failed is not one of them (it follows on_error).
        if reply[3] is None:
            for scope in asked:
                if scope not in failed:
                    found.setdefault(scope, StoredState())
        if failed or reply[3] is not None:
            raise PartialReadError(
                self._bad_data(
                    "; ".join(f"{k or 'global'}: {v}" for k, v in failed.items()) or _text(reply[3])
                ).args[0],
                found,
                complete=reply[3] is None,
            )
        return found

    async def _apply(
        self,
        scope: str | None,
        write: PutHold | PutWorker | SetExplicit | PutWindow | PutCordon | Record,
    ) -> StoredState:
        keys = self.keys(scope)
        args: list[object] = [self._channel, scope or ""]
        if isinstance(write, PutHold):
            held = write.record
            name = "release" if held is None else "hold"
            doing = "releasing the hold" if held is None else "writing the hold"
            args.append(write.hold_id)
            if held is not None:  # (a release carries no times: no clock needed)
                held = replace(_shift_hold(held, await self._offset_now(doing)), expires=None)
                args += [_dump(hold_to_dict(held)), write.lease_ttl]
        elif isinstance(write, PutWorker):
            if scope is not None:
                raise BackendError("presence records live in the global scope")
            name, doing = "worker", "recording this process's presence"
            worker = write.record
            data = "" if worker is None else _dump(worker_to_dict(worker) | {"expires": None})
            args += [write.worker_id, data, write.lease_ttl]
        elif isinstance(write, PutWindow):
            # A window's times are stored as planned, not moved to the server's clock as a
            # lease's are: they name moments on the wall clock ("Sunday 03:00"), and a
            # skipped occurrence must stay equal to the start cron gives every reader.
            name, doing = "window", "writing the window"
            window = write.record
            data = "" if window is None else _dump(window_to_dict(window))
            args += [write.window_id, data, write.limit]
        elif isinstance(write, PutCordon):
            # As a window's, a cordon's times are stored as the operator's clock told them.
            if scope is not None:
                raise BackendError("cordons live in the global scope")
            name, doing = "cordon", "writing the cordon"
            cordon = write.record
            args += [write.host, "" if cordon is None else _dump(cordon_to_dict(cordon))]
        elif isinstance(write, Record):
            # As a window's, the entry's time is stored as the operator's clock told it.
            if scope is not None:
                raise BackendError("the audit trail lives in the global scope")
            name, doing = "record", "recording the change in the audit trail"
            args += [_dump(entry_to_dict(write.entry)), write.keep]
        else:
            name, doing = "explicit", "writing the state"
            args += self._explicit_args(write.explicit, await self._offset_now(doing))
        reply = await self._call(name, keys, args, doing)
        if isinstance(write, PutHold) and write.renewal and write.record is not None:
            write.lost = not reply[2]
        elif isinstance(write, PutWindow):
            if reply[2] == -1:
                raise _refusal(write)
            write.found = bool(reply[2])
        elif isinstance(write, PutCordon):
            write.found = bool(reply[2])
        return self._reply(scope, reply)

    async def _replace(self, scope: str | None, state: StoredState) -> None:
        offset = await self._offset_now("writing the state")
        args: list[object] = [
            self._channel,
            scope or "",
            *self._explicit_args(state.explicit, offset),
        ]
        args.append(len(state.holds))
        for hold in state.holds:
            shifted = _shift_hold(hold, offset)
            args += [
                hold.id,
                _dump(hold_to_dict(replace(shifted, expires=None))),
                _score(shifted.expires),
            ]
        args.append(len(state.windows))
        for window in state.windows:  # (as planned: see _apply)
            args += [window.id, _dump(window_to_dict(window))]
        if scope is None:
            args.append(len(state.workers))
            for worker in state.workers:
                expires = worker.expires + timedelta(seconds=offset)
                args += [
                    worker.id,
                    _dump(worker_to_dict(worker) | {"expires": None}),
                    _score(expires),
                ]
            args.append(len(state.history))
            args += [_dump(entry_to_dict(e)) for e in reversed(state.history)]
            args.append(len(state.cordons))
            for cordon in state.cordons:
                args += [cordon.host, _dump(cordon_to_dict(cordon))]
        await self._call("replace", self.keys(scope), args, "writing the state")

    def _explicit_args(self, explicit: ExplicitState, offset: float) -> list[object]:
        if not explicit.active:
            return ["", "", ""]
        shift = timedelta(seconds=offset)
        state = explicit_to_dict(
            replace(
                explicit, since=None, until=None, retry_after=_later(explicit.retry_after, shift)
            )
        )
        since = "" if explicit.since is None else repr((explicit.since + shift).timestamp())
        until = "" if explicit.until is None else repr((explicit.until + shift).timestamp())
        return [_dump(state), since, until]

    def _reply(self, scope: str | None, reply: Any) -> StoredState:
        try:
            offset = self._offset or 0.0
            workers = self._workers(reply[5], offset) if scope is None else ()
            trail = (reply[7], reply[8]) if scope is None else ()
            return self._scope(scope, reply[3], reply[4], reply[6], workers, offset, *trail)
        except _UNREADABLE as exc:
            raise self._bad_data(repr(exc)) from exc

    def _scope(
        self,
        scope: str | None,
        explicit: Any,
        holds: Any,
        windows: Any,
        workers: tuple[WorkerRecord, ...],
        offset: float,
        history: Any = (),
        cordons: Any = (),
    ) -> StoredState:
        # The explicit hash is there only while the operator's state is on, and a hold
        # counts while its lease runs: those must be readable (or the scope follows
        # on_error). An invalid detail is dropped with a warning, and stays in Redis until
        # that part is written again; so is a window that cannot be read.
        problems: list[str] = []
        fields = {_text(explicit[i]): _text(explicit[i + 1]) for i in range(0, len(explicit), 2)}
        state = ExplicitState()
        if fields:
            back = timedelta(seconds=-offset)
            loaded = explicit_from_dict(json.loads(fields["state"]), problems)
            state = replace(
                loaded,
                active=True,
                since=_time_detail(fields, "since", offset, problems),
                until=_time_detail(fields, "until", offset, problems),
                retry_after=_later(loaded.retry_after, back),
            )
        records = []
        for i in range(0, len(holds), 3):
            data = json.loads(_text(holds[i + 1]))
            if not isinstance(data, dict):
                raise ValueError(f"a hold must be an object, found {data!r}")
            hold = hold_from_dict(data | {"id": _text(holds[i])}, problems)
            expires = float(_text(holds[i + 2]))
            if not math.isinf(expires):
                hold = replace(hold, expires=datetime.fromtimestamp(expires, timezone.utc))
            records.append(_shift_hold(hold, -offset))
        readable = _windows(windows, problems)
        trail = _history(history, problems)
        hosts = _cordons(cordons, problems, f"{self._base}:cordons")
        warn_invalid(self.describe() + ("" if scope is None else f" scope {scope!r}"), problems)
        return StoredState(state, tuple(records), workers, readable, trail, hosts)

    def _workers(self, flat: Any, offset: float) -> tuple[WorkerRecord, ...]:
        # A presence record that cannot be read is dropped with a warning: whether
        # maintenance is on never depends on one (see worker_from_dict).
        found = []
        problems: list[str] = []
        for i in range(0, len(flat), 3):
            worker_id = _text(flat[i])
            try:
                data = json.loads(_text(flat[i + 1]))
            except ValueError:
                data = None
            if not isinstance(data, dict):
                problems.append(f"presence record {worker_id!r} is ignored: not a JSON object")
                continue
            data = data | {"id": worker_id}
            data["expires"] = _time(flat[i + 2], offset).isoformat()  # type: ignore[union-attr]
            worker = worker_from_dict(data, problems)
            if worker is not None:
                found.append(worker)
        warn_invalid(f"{self.describe()} (presence records)", problems)
        return tuple(found)

    def _bad_data(self, why: str) -> BackendError:
        return BackendError(
            f"{self.describe()}: the keys under {self._base} hold something maintguard did "
            f"not write ({why}); delete them (redis-cli --scan --pattern '{self._base}*') "
            "or fix them"
        )

    async def _subscribe(self) -> AsyncIterator[object]:
        # Every message wakes the watcher; so does every (re)subscription, after which the
        # watcher re-reads in full: nothing published while unsubscribed is missed.
        pause = 0.05
        while True:
            pubsub = self._connection().pubsub()
            try:
                await pubsub.subscribe(self._channel)
                pinged = False
                while True:
                    message = await pubsub.get_message(timeout=max(self.refresh_interval, 1.0))
                    if message is None:  # quiet: is the connection still there?
                        if pinged:
                            raise TimeoutError("no answer to PING on the subscription")
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    kind = _text(message.get("type"))
                    if kind == "subscribe":
                        pause = 0.05
                        yield kind
                    elif kind == "message":
                        yield message.get("data")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling goes on meanwhile; subscribe again
                logger.debug(
                    "%s: change notification lost (%s); subscribing again", self.describe(), exc
                )
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            # Back within half a second of the server: the re-read that follows is what
            # brings a restarted server's readers and holders together again.
            pause = min(pause * 2, _RESUBSCRIBE_MAX)


class _Connection:
    """The client of one process (a forked child makes its own) and its scripts."""

    __slots__ = ("__weakref__", "client", "own", "pid", "scripts")

    def __init__(self) -> None:
        self.client: Any = None
        self.own = False
        self.pid = -1
        self.scripts: dict[str, Any] = {}

    def close(self) -> None:
        # The backend object is gone: close the connections this process opened for it.
        client, self.client = self.client, None
        if client is not None and self.own and self.pid == os.getpid():
            ioloop.tidy(client.aclose())


_open: weakref.WeakSet[_Connection] = weakref.WeakSet()


async def _close_all() -> None:
    # The I/O loop shuts down (interpreter exit): close what this process opened on it.
    for conn in list(_open):
        client, conn.client = conn.client, None
        if client is not None and conn.own and conn.pid == os.getpid():
            await client.aclose()


ioloop.on_shutdown(_close_all)


_URL_FORMS = (
    "use redis://[user:password@]host[:port][/db], rediss://... (TLS) or "
    "unix:///path/to/redis.sock[?db=N], with a password's special characters %-encoded"
)


def _parse(url: str) -> dict[str, Any]:
    """redis-py's reading of ``url``, checked as far as it can be without connecting."""
    import inspect

    from redis.asyncio.connection import parse_url

    def bad(why: str) -> ConfigurationError:
        return ConfigurationError(
            f"RedisBackend URL {redact(url)!r} is not understood ({why}); {_URL_FORMS}"
        )

    try:
        where = dict(parse_url(url))
        split = urlsplit(url)
    except ValueError as exc:
        raise bad(str(exc)) from None
    path = split.path.strip("/")
    if split.scheme in ("redis", "rediss") and path and not path.isdigit():
        raise bad(f"the database must be a number, not {path!r}")
    if split.scheme == "unix" and not where.get("path"):
        raise bad("a unix:// URL needs the socket's path")
    from redis.asyncio.connection import Connection

    connection_class: Any = where.get("connection_class") or Connection
    known: set[str] = {"db", "username", "password", "connection_class"}
    for cls in inspect.getmro(connection_class):
        init = cls.__dict__.get("__init__")
        if init is not None:
            known |= set(inspect.signature(init).parameters)
    unknown = sorted(set(where) - known - {"self", "args", "kwargs"})
    if unknown:
        raise bad(f"unknown option {', '.join(unknown)}")
    return where


_UNREADABLE = (ValueError, TypeError, KeyError, IndexError, OverflowError)


def _unless_failed(entry: Any) -> Any:
    # The read script's (false, why) for keys it could not read.
    if isinstance(entry, list) and len(entry) == 2 and entry[0] is None:
        raise ValueError(_text(entry[1]))
    return entry


def _windows(flat: Any, problems: list[str]) -> tuple[WindowRecord, ...]:
    # Whether maintenance is on never hangs on one window: one that cannot be read is
    # dropped and noted (see window_from_dict), the rest of the scope read as usual. A hash
    # has no order: by id, so that one store reads alike every time.
    found = []
    for i in range(0, len(flat), 2):
        window_id = _text(flat[i])
        try:
            data = json.loads(_text(flat[i + 1]))
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            problems.append(f"window {window_id!r} is ignored: not a JSON object")
            continue
        record = window_from_dict(data | {"id": window_id}, problems)
        if record is not None:
            found.append(record)
    return tuple(sorted(found, key=lambda w: w.id))


def _history(flat: Any, problems: list[str]) -> tuple[AuditEntry, ...]:
    # The audit trail, newest first: an entry that cannot be read is dropped and noted;
    # a key of another type comes as its error (the trail never says whether it is on).
    if isinstance(flat, str | bytes):
        problems.append(f"'history' is ignored: {_text(flat)}")
        return ()
    found = []
    for raw in flat:
        try:
            data = json.loads(_text(raw))
        except (ValueError, RecursionError):
            data = None
        entry = entry_from_dict(data, problems)
        if entry is not None:
            found.append(entry)
    return tuple(found)


def _cordons(flat: Any, problems: list[str], key: str) -> tuple[Cordon, ...]:
    # A cordon that cannot be read is dropped and noted; a key of another type comes as its
    # error (a cordon never says whether maintenance is on). By host, as windows by id.
    if isinstance(flat, str | bytes):
        problems.append(
            f"'cordons' is ignored: the key {key} {_text(flat)}; delete it (DEL {key}) and "
            "cordon the hosts again"
        )
        return ()
    found = []
    for i in range(0, len(flat), 2):
        host = _text(flat[i])
        try:
            data = json.loads(_text(flat[i + 1]))
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            problems.append(f"the cordon of {host!r} is ignored: not a JSON object")
            continue
        cordon = cordon_from_dict(data | {"host": host}, problems)
        if cordon is not None:
            found.append(cordon)
    return tuple(sorted(found, key=lambda c: c.host))


def _refusal(write: PutWindow) -> ConfigurationError:
    # The script found the scope full: PutWindow says so in its own words, applied to a
    # scope as full (of windows other than the one it adds).
    other = WindowRecord(id=write.window_id + "-", start=EPOCH, end=EPOCH)
    try:
        write(StoredState(windows=(other,) * write.limit))
    except ConfigurationError as exc:
        return exc
    raise AssertionError("PutWindow took a window past its limit")  # pragma: no cover


def _dump(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise TypeError(f"expected text, found {value!r}")
    return value


def _time(value: Any, offset: float) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(float(_text(value)) - offset, timezone.utc)


def _time_detail(
    fields: Mapping[str, str], key: str, offset: float, problems: list[str]
) -> datetime | None:
    try:
        return _time(fields.get(key), offset)
    except (ValueError, OverflowError, OSError):  # nan, 1e300, text
        problems.append(f"{key!r} is ignored: expected a time in seconds, found {fields[key]!r}")
        return None


def _score(expires: datetime | None) -> str:
    return "+inf" if expires is None else repr(expires.timestamp())


def _later(value: Any, shift: timedelta) -> Any:
    return value + shift if isinstance(value, datetime) and shift else value


def _shift_hold(hold: HoldRecord, offset: float) -> HoldRecord:
    if not offset:
        return hold
    shift = timedelta(seconds=offset)
    return replace(
        hold,
        acquired=hold.acquired + shift,
        started=hold.started + shift,
        expires=None if hold.expires is None else hold.expires + shift,
        retry_after=_later(hold.retry_after, shift),
    )


def _say(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return redact(text)
