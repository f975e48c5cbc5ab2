"""A stored state whose ``active`` can be read keeps its meaning; an invalid detail is dropped.

A hand-edited file saying ``"active": true`` with a negative ``retry_after`` is on, not
"corrupt" (which, under the default ``on_error``, served the app as if it were off). The
detail is dropped with a warning naming the field, logged once while it lasts; a later
write by maintguard stores the state as read (the file then holds the field's default).
What cannot be read — ``active``, a hold's id or lease — still follows ``on_error``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis

import maintguard.sync
from maintguard import BackendError, get_state, under_maintenance
from maintguard._state import Mode
from maintguard.backends import Backend, LocalFileBackend, RedisBackend, StoredState
from tests.stores import REDIS_URL, redis_prefix

SOON = "2999-01-01T00:00:00+00:00"
HOLD = {"id": "h1", "acquired": SOON, "started": SOON, "expires": SOON, "owner": "job"}

# (field, where it goes, its invalid value): every detail a stored state has.
DETAILS = [
    ("retry_after", "explicit", -30),
    ("retry_after", "explicit", "soon"),
    ("reason", "explicit", 42),
    ("mode", "explicit", "emergency"),
    ("until", "explicit", "tomorrow"),
    ("until", "explicit", "2030-01-01T00:00:00"),  # no time zone
    ("since", "explicit", 5),
    ("reason", "hold", ["x"]),
    ("retry_after", "hold", float("nan")),
    ("mode", "hold", 1),
    ("pid", "hold", "12"),
    ("owner", "hold", {}),
    ("started", "hold", "yesterday"),
    ("drain", "hold", 7),
]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _document(field: str, where: str, value: Any) -> dict[str, Any]:
    if where == "explicit":
        return {"version": 1, "active": True, field: value, "x-team": "ops"}
    return {"version": 1, "active": False, "holds": [{**HOLD, field: value}], "x-team": "ops"}


@pytest.mark.parametrize(("field", "where", "value"), DETAILS)
def test_a_file_with_an_invalid_detail_stays_on_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, where: str, value: Any
) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_document(field, where, value)))
    backend = LocalFileBackend(path, refresh_interval=0)
    with caplog.at_level(logging.INFO, logger="maintguard"):
        for _ in range(4):  # every read parses the file again
            state = maintguard.sync.get_state(backend)
            assert state.active is True
            assert state.holds == (1 if where == "hold" else 0)
    [warning] = _warnings(caplog)
    assert f"'{field}'" in warning and str(path) in warning
    assert "Fix or remove the field" in warning
    if where == "hold":
        assert "hold 'h1'" in warning


def test_the_issues_file_is_on_with_the_default_on_error(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"version": 1, "active": true, "retry_after": -30}')
    backend = LocalFileBackend(path, refresh_interval=0)
    assert backend.on_error == "last_known"
    state = maintguard.sync.get_state(backend)
    assert (state.active, state.retry_after, state.mode) == (True, None, Mode.FULL)


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_retry_after_in_the_file_is_not_a_crash(
    tmp_path: Path, value: str
) -> None:
    # json.loads accepts NaN/Infinity; the file's retry_after was once taken as is, and
    # the state get_state() returned then raised ValueError/OverflowError from
    # retry_after_seconds() (what every response and status line calls). I5: bad stored
    # data is a clear error or follows on_error, never a crash.
    path = tmp_path / "m.json"
    path.write_text(f'{{"version": 1, "active": true, "retry_after": {value}}}')
    backend = LocalFileBackend(path, refresh_interval=0)
    try:
        state = await get_state(backend)
    except BackendError:
        return  # refused as corrupt: a clear error
    assert state.active
    seconds = state.retry_after_seconds()
    assert seconds is None or (isinstance(seconds, int) and seconds >= 0)


@pytest.mark.parametrize(("field", "where", "value"), DETAILS)
def test_a_write_keeps_the_state_and_drops_only_the_invalid_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, where: str, value: Any
) -> None:
    path = tmp_path / "m.json"
    original = _document(field, where, value)
    path.write_text(json.dumps(original))
    backend = LocalFileBackend(path, refresh_interval=0)
    with under_maintenance(backend=backend, reason="migration"):
        assert maintguard.sync.get_state(backend).holds == (2 if where == "hold" else 1)
    written = json.loads(path.read_text())  # valid JSON, the state as it was read
    assert written["x-team"] == "ops" and written["active"] is original["active"]
    record = written if where == "explicit" else written["holds"][0]
    if where == "hold":
        assert [h["id"] for h in written["holds"]] == ["h1"]  # ours is gone, theirs stays
    fallback = {"mode": "full", "owner": "", "pid": 0, "started": record.get("acquired")}
    assert record.get(field) == fallback.get(field)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        state = maintguard.sync.get_state(LocalFileBackend(path, refresh_interval=0))
    assert state.active is True and _warnings(caplog) == []


def test_a_named_scope_with_an_invalid_detail_is_named_in_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.json"
    document = {"version": 1, "scopes": {"billing": {"active": True, "reason": 1}}}
    path.write_text(json.dumps(document))
    backend = LocalFileBackend(path, refresh_interval=0)
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        assert maintguard.sync.get_state(backend, "billing").active is True
        assert maintguard.sync.get_state(backend).active is False
    [warning] = _warnings(caplog)
    assert "scope 'billing'" in warning and "'reason'" in warning


def test_a_problem_fixed_and_made_again_is_told_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0)
    with caplog.at_level(logging.WARNING, logger="maintguard"):
        for retry_after in (-30, -30, 30, -30, -1):
            path.write_text(json.dumps({"active": True, "retry_after": retry_after}))
            assert maintguard.sync.get_state(backend).active is True
    told = [w for w in _warnings(caplog) if "'retry_after'" in w]
    assert len(told) == 3, told  # -30, -30 again after the fix, then -1


@pytest.mark.parametrize("on_error", ["open", "closed"])
@pytest.mark.parametrize(
    "document",
    [
        {"active": "yes", "retry_after": -30},
        {"active": True, "holds": [{**HOLD, "expires": "never"}]},
        {"active": True, "holds": [{**HOLD, "id": 5}]},
    ],
    ids=["active", "hold lease", "hold id"],
)
def test_what_says_on_or_off_unreadable_still_follows_on_error(
    tmp_path: Path, on_error: Any, document: dict[str, Any]
) -> None:
    path = tmp_path / "m.json"
    backend = LocalFileBackend(path, refresh_interval=0, on_error=on_error)
    assert maintguard.sync.get_state(backend).active is False  # a first good read
    path.write_text(json.dumps(document))
    assert maintguard.sync.get_state(backend).active is (on_error == "closed")
    with pytest.raises(BackendError, match="Fix the file or delete it"):
        maintguard.sync.set_maintenance_mode(True, backend)
    assert json.loads(path.read_text()) == document  # never overwritten


def test_a_user_written_backend_gets_the_same_rule(caplog: pytest.LogCaptureFixture) -> None:
    class Rows(Backend):
        async def read_state(self, scope: str | None) -> StoredState:
            return StoredState.from_dict({"active": True, "mode": "emergency"}, where="rows")

        async def write_state(self, scope: str | None, state: StoredState) -> None:
            raise AssertionError("not written")

    with caplog.at_level(logging.WARNING, logger="maintguard"):
        state = maintguard.sync.get_state(Rows())
    assert (state.active, state.mode) == (True, Mode.FULL)
    assert any(w.startswith("rows: 'mode' is ignored") for w in _warnings(caplog))
    with pytest.raises(ValueError, match="'active' must be bool"):
        StoredState.from_dict({"active": "on"})


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture
def raw() -> Any:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.mark.parametrize(
    ("key", "field", "value", "named"),
    [
        ("explicit", "state", '{"active": true, "retry_after": -30}', "retry_after"),
        ("explicit", "state", '{"active": true, "mode": "emergency"}', "mode"),
        ("explicit", "since", "nan", "since"),
        ("explicit", "until", "soon", "until"),
        ("holds", "h1", '{"acquired": "x", "started": "2030-01-01T00:00:00+00:00"}', "acquired"),
        ("holds", "h1", '{"started": "2030-01-01T00:00:00+00:00", "pid": 1.5}', "pid"),
    ],
)
def test_redis_values_with_an_invalid_detail_stay_on_and_warn_once(
    raw: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    key: str,
    field: str,
    value: str,
    named: str,
) -> None:
    prefix = redis_prefix()
    base = "{" + prefix + "}"
    if key == "explicit":
        fields = {"state": '{"active": true}', "since": str(time.time()), field: value}
        raw.hset(f"{base}:explicit", mapping=fields)
    else:
        raw.hset(f"{base}:holds", field, value)
        raw.zadd(f"{base}:leases", {field: float("inf")})
    backend = RedisBackend(REDIS_URL, key_prefix=prefix, refresh_interval=0)
    with caplog.at_level(logging.INFO, logger="maintguard"):
        for _ in range(4):
            assert maintguard.sync.get_state(backend).active is True
    [warning] = _warnings(caplog)
    assert f"'{named}' is ignored" in warning and prefix in warning
    # Writes work next to it (the scripts read what they compare), and the operator's
    # next switch replaces the explicit state.
    with under_maintenance(backend=backend, reason="job"):
        assert maintguard.sync.get_state(backend).reason == "job"
    maintguard.sync.set_maintenance_mode(True, backend, reason="fixed")
    assert maintguard.sync.get_state(backend).reason == "fixed"
    if key == "explicit":
        assert raw.hget(f"{base}:explicit", field) != value


# -- presence records and hold times: not what says whether maintenance is on ----------------


def test_a_bad_presence_record_does_not_turn_an_active_state_off(tmp_path: Path) -> None:
    # A hold record's `pid` of "12" is an ignored detail (DETAILS above); the same field
    # of a presence record ("workers", which only drains read) made the whole file
    # "corrupt": with on_error="open" the operator's `"active": true` read as off.
    path = tmp_path / "m.json"
    worker = {"id": "w", "host": "h", "pid": "12", "expires": SOON}
    path.write_text(json.dumps({"version": 1, "active": True, "workers": [worker]}))
    backend = LocalFileBackend(path, refresh_interval=0, on_error="open")
    assert [s.active if s else None for s in read_twice(backend)] == [True, True]


def test_a_hold_with_unreadable_times_but_a_live_lease_still_counts(tmp_path: Path) -> None:
    # `started` alone may be invalid (DETAILS above); with `acquired` invalid too the file
    # was refused, though the hold's id and lease — what says it is on — read fine.
    path = tmp_path / "m.json"
    hold = {**HOLD, "acquired": "yesterday", "started": "yesterday"}
    path.write_text(json.dumps({"version": 1, "active": False, "holds": [hold]}))
    backend = LocalFileBackend(path, refresh_interval=0, on_error="open")
    assert [s.holds if s else None for s in read_twice(backend)] == [1, 1]


def read_twice(backend: LocalFileBackend) -> list[Any]:
    """The state read twice (the first read may raise; the second follows on_error)."""
    states: list[Any] = []
    for _ in range(2):
        try:
            states.append(maintguard.sync.get_state(backend))
        except BackendError:
            states.append(None)
    return states


@pytest.mark.parametrize(
    ("field", "value", "header"),
    [
        ("retry_after", 1e308, "31536000"),  # a year at most
        ("retry_after", 10**30, "31536000"),
        ("until", "9999-12-31T23:59:59+14:00", None),  # an HTTP date, clamped
        ("since", "0001-01-01T00:00:00+00:00", None),
    ],
)
def test_extreme_but_valid_details_answer_503_never_500(
    tmp_path: Path, field: str, value: Any, header: str | None
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from maintguard import MaintenanceModeMiddleware

    async def home(request: Request) -> Response:
        return PlainTextResponse("the app")

    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "active": True, field: value}))
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(MaintenanceModeMiddleware, backend=LocalFileBackend(path))
    with TestClient(app) as client:
        for accept in ("text/html", "application/json", "text/plain"):
            response = client.get("/", headers={"accept": accept})
            assert response.status_code == 503 and "the app" not in response.text
            if header is not None:
                assert response.headers["retry-after"] == header
