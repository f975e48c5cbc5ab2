"""The maintenance response and the user's handlers: checked when built, never a 500."""

from __future__ import annotations

import functools
import json
import os
import re
import string
from datetime import datetime, timedelta, timezone, tzinfo
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from maintguard._state import MaintenanceState, Phase
from maintguard.exceptions import ConfigurationError
from maintguard.starlette import _responses as responses
from maintguard.starlette._handlers import (
    check_exempt_handler,
    check_response_handler,
    exempt_by,
    respond_with,
)
from maintguard.starlette._responses import (
    DEFAULT_TEMPLATE,
    MAX_RETRY_AFTER,
    Prepared,
    check_template,
    choose,
    prepare,
)
from tests.asgi import http_scope

UTC = timezone.utc
SOON = datetime.now(UTC) + timedelta(hours=1)


def state(**values: Any) -> MaintenanceState:
    """An active state holding whatever a user-written backend might have produced."""
    return MaintenanceState(active=True, phase=Phase.ON, **values)


def request() -> Request:
    return Request(http_scope("/"))


def strict_json(data: bytes) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(data, parse_constant=refuse)


def retry_after(prepared: Prepared) -> str | None:
    values = dict(prepared.json[0])
    found = values.get(b"retry-after")
    return None if found is None else found.decode("ascii")


def assert_sound(prepared: Prepared, status: int) -> None:
    """What every response must be, whatever the state: a valid, self-consistent answer."""
    assert prepared.status == status
    for kind in ("html", "json", "text"):
        headers, body = prepared.pick(kind)
        values = dict(headers)
        assert int(values[b"content-length"]) == len(body)
        assert values[b"cache-control"] == b"no-store"
    problem = strict_json(prepared.json[1])
    assert isinstance(problem, dict) and problem["title"]
    prepared.html[1].decode("utf-8")
    prepared.text[1].decode("utf-8")
    header = retry_after(prepared)
    if header is not None:
        if header.isdigit():
            assert int(header) <= MAX_RETRY_AFTER
        else:
            assert parsedate_to_datetime(header).tzinfo is not None
            assert header.endswith(" GMT")


# -- templates checked when the middleware is built -------------------------------------------


def test_default_template_and_plain_strings_pass() -> None:
    assert check_template(None) is None
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE
    page = "<p>$reason until ${until_text}; costs $$5; $unknown stays</p>"
    assert check_template(page) == page
    body = prepare(state(reason="r"), 503, page).html[1].decode()
    assert body == "<p>r until ; costs $5; $unknown stays</p>"


def test_default_page_keeps_its_script() -> None:
    page = prepare(state(until=SOON), 503, None).html[1].decode()
    assert "`about ${Math.round(minutes / 60)} hours`" in page
    assert "`${local} (in ${rel})`" in page


def test_string_template_objects_render() -> None:
    class Percent(string.Template):
        delimiter = "%"

    plain = string.Template("<p>$reason</p>")
    percent = Percent("<p>%reason costs $5</p>")
    assert check_template(plain) is plain and check_template(percent) is percent
    reasoned = state(reason="<db>")
    assert prepare(reasoned, 503, plain).html[1] == b"<p>&lt;db&gt;</p>"
    assert prepare(reasoned, 503, percent).html[1] == b"<p>&lt;db&gt; costs $5</p>"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (b"<p>$reason</p>", r"not bytes: decode it: template=data\.decode\(\)"),
        (bytearray(b"<p></p>"), r"decode it"),
        (Path("page.html"), r"not a path: read it: template=path\.read_text\(\)"),
        (42, r"a str with \$placeholders, a string\.Template or a callable.*not int"),
        (["<p>"], r"not list"),
        ("<p>costs $5</p>", r"Invalid placeholder.*line 1, col 10.*\$\$ for a literal \$"),
        ("<p>${reason</p>", r"Invalid placeholder.*write \$name or \$\{name\}"),
        ("<p>trailing $", r"Invalid placeholder"),
        (string.Template("<p>$1</p>"), r"Invalid placeholder"),
    ],
)
def test_bad_templates_are_refused_with_the_fix(template: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        check_template(template)


def test_callable_templates_are_rendered_when_checked() -> None:
    def good(s: MaintenanceState) -> str:
        return f"<h1>{s.reason or 'down'}</h1>"

    def raising(s: MaintenanceState) -> str:
        raise KeyError("title")

    def needs_until(s: MaintenanceState) -> str:
        assert s.until is not None
        return s.until.isoformat()

    async def asynchronous(s: MaintenanceState) -> str:
        return "never awaited"

    assert check_template(good) is good
    with pytest.raises(ConfigurationError, match=r"KeyError: 'title'.*template\(state\)"):
        check_template(raising)
    with pytest.raises(ConfigurationError, match="AssertionError"):
        check_template(needs_until)  # the bare sample state has no until
    with pytest.raises(ConfigurationError, match="returned bytes, not a str"):
        check_template(lambda s: b"<p></p>")
    with pytest.raises(ConfigurationError, match="cannot be async"):
        check_template(asynchronous)
    with pytest.raises(ConfigurationError, match="TypeError"):
        check_template(lambda: "no state")


# -- templates failing at request time -----------------------------------------------------------


def test_a_template_failing_at_request_time_gives_the_default_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fussy(s: MaintenanceState) -> Any:
        if s.reason == "boom":
            raise RuntimeError("template bug")
        return None if s.reason == "none" else f"<p>{s.reason}</p>"

    assert prepare(state(reason="fine"), 503, fussy).html[1] == b"<p>fine</p>"
    for reason in ("boom", "none"):
        caplog.clear()
        prepared = prepare(state(reason=reason), 503, fussy)
        page = prepared.html[1].decode()
        assert "<!doctype html>" in page and f"<strong>{reason}</strong>" in page
        assert "the template failed; sending the default page" in caplog.text
        assert_sound(prepared, 503)


def test_template_output_that_cannot_be_encoded() -> None:
    prepared = prepare(state(), 503, lambda s: "<p>\ud800</p>")
    assert prepared.html[1] == b"<p>?</p>"


# -- hostile state values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (90.0, "90"),
        (0.2, "1"),
        (-30.0, "0"),
        (-30, "0"),
        (1e300, str(MAX_RETRY_AFTER)),
        (10**400, str(MAX_RETRY_AFTER)),
        (float("nan"), None),
        (float("inf"), None),
        (float("-inf"), None),
        (float("1e999"), None),
        (True, None),
        ("30", None),
    ],
)
def test_retry_after_seconds_are_whole_and_sane(value: Any, expected: str | None) -> None:
    prepared = prepare(state(retry_after=value), 503, None)
    assert retry_after(prepared) == expected
    assert_sound(prepared, 503)
    problem = strict_json(prepared.json[1])
    assert problem.get("retry_after") == (None if expected is None else int(expected))


def test_unusable_retry_after_falls_back_to_until() -> None:
    prepared = prepare(state(retry_after=float("nan"), until=SOON), 503, None)
    header = retry_after(prepared)
    assert header is not None
    assert abs(parsedate_to_datetime(header) - SOON) < timedelta(seconds=1)
    left = (SOON - datetime.now(UTC)).total_seconds()  # SOON was fixed at import time
    assert abs(strict_json(prepared.json[1])["retry_after"] - left) <= 2


@pytest.mark.parametrize(
    "until",
    [
        SOON.astimezone(timezone(timedelta(hours=2))),  # aware, not UTC
        SOON.replace(tzinfo=None),  # naive: taken as UTC
    ],
)
def test_until_in_any_zone_gives_an_http_date(until: datetime) -> None:
    prepared = prepare(state(until=until), 503, None)
    header = retry_after(prepared)
    assert header is not None and header.endswith(" GMT")
    assert abs(parsedate_to_datetime(header) - SOON) < timedelta(seconds=1)
    assert_sound(prepared, 503)


def test_far_future_is_capped_in_the_header_only() -> None:
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    for prepared in (
        prepare(state(until=far), 503, None),
        prepare(state(retry_after=far), 503, None),
    ):
        header = retry_after(prepared)
        assert header is not None
        wait = parsedate_to_datetime(header) - datetime.now(UTC)
        assert timedelta(days=364) < wait <= timedelta(seconds=MAX_RETRY_AFTER)
        assert "9999-12-31 23:59 UTC" in prepared.html[1].decode()
        assert strict_json(prepared.json[1])["retry_after"] == MAX_RETRY_AFTER


def test_past_dates_are_sent_as_now() -> None:
    long_ago = datetime(68, 1, 1, tzinfo=UTC)  # "01 Jan 0068" is read as 2068
    for prepared in (
        prepare(state(retry_after=long_ago), 503, None),
        prepare(state(until=long_ago), 503, None),
    ):
        header = retry_after(prepared)
        assert header is not None
        assert abs(parsedate_to_datetime(header) - datetime.now(UTC)) < timedelta(seconds=60)
        assert strict_json(prepared.json[1])["retry_after"] == 0


def test_times_that_cannot_be_converted_are_left_out() -> None:
    edge = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2)))  # before year 1 in UTC
    prepared = prepare(state(retry_after=edge, until="tomorrow"), 503, None)
    assert retry_after(prepared) is None
    assert_sound(prepared, 503)


def test_reasons_that_are_odd() -> None:
    surrogate = prepare(state(reason="disk \ud800 full"), 503, None)
    assert_sound(surrogate, 503)
    assert "disk ? full" in surrogate.text[1].decode()
    assert strict_json(surrogate.json[1])["detail"] == "disk ? full"

    huge = prepare(state(reason="x" * 1_000_000), 503, None)
    assert_sound(huge, 503)
    assert len(huge.text[1]) < 2000 and len(huge.json[1]) < 3000
    assert strict_json(huge.json[1])["detail"].endswith("x…")

    not_text = prepare(state(reason=42), 503, None)
    assert strict_json(not_text.json[1])["detail"] == responses._MESSAGE


BACK = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
SHORTLY = "We are doing some maintenance right now and will be back shortly."


@pytest.mark.parametrize(
    ("reason", "until", "text"),
    [
        (None, None, f"Down for maintenance. {SHORTLY}"),
        (None, BACK, f"Down for maintenance. {SHORTLY} Expected back: 2030-01-01 12:30 UTC."),
        ("DB upgrade", None, "Down for maintenance: DB upgrade."),
        (
            "DB upgrade",
            BACK,
            "Down for maintenance: DB upgrade. Expected back: 2030-01-01 12:30 UTC.",
        ),
        (
            "DB upgrade. ",
            BACK,
            "Down for maintenance: DB upgrade. Expected back: 2030-01-01 12:30 UTC.",
        ),
        (
            "Back soon!",
            BACK,
            "Down for maintenance: Back soon! Expected back: 2030-01-01 12:30 UTC.",
        ),
        ("Why?\n", None, "Down for maintenance: Why?"),
        (" \t\n", None, f"Down for maintenance. {SHORTLY}"),
    ],
)
def test_each_detail_is_its_own_sentence_or_element(
    reason: str | None, until: datetime | None, text: str
) -> None:
    # Found: the plain-text body ran the reason and "Expected back" together:
    # "Down for maintenance: DB upgrade Expected back: 2030-01-01 12:30 UTC."
    prepared = prepare(state(reason=reason, until=until), 503, None)
    assert prepared.text[1].decode() == text + "\n"
    shown = reason.strip() if reason else None
    problem = strict_json(prepared.json[1])
    assert problem["detail"] == (shown or SHORTLY)
    assert problem.get("until") == (until.isoformat() if until else None)
    page = prepared.html[1].decode()
    paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", page, re.S)
    assert ("<strong>" + shown + "</strong>" in paragraphs) if shown else "<strong>" not in page
    backs = [p for p in paragraphs if p.startswith("Expected back: <time")]
    assert len(backs) == (1 if until else 0)
    assert all(p.endswith("2030-01-01 12:30 UTC</time>") for p in backs)


def test_anything_else_gives_a_minimal_response(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(tzinfo):
        def utcoffset(self, dt: datetime | None) -> timedelta:
            raise RuntimeError("a broken time zone")

    broken = datetime(2030, 1, 1, tzinfo=Broken())  # type: ignore[abstract]
    prepared = prepare(state(until=broken), 504, None)
    assert_sound(prepared, 504)
    assert retry_after(prepared) is None
    assert b"Down for maintenance" in prepared.html[1]
    assert "sending a minimal one" in caplog.text and "a broken time zone" in caplog.text


# -- negotiation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "kind"),
    [
        (b"", "text"),
        (b"*/*", "text"),
        (b"text/*", "text"),
        (b"application/*", "json"),
        (b"application/*;q=0.9, text/plain;q=0.5", "json"),
        (b"application/json", "json"),
        (b"application/vnd.api+json", "json"),
        (b"APPLICATION/PROBLEM+JSON", "json"),
        (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "html"),
        (b"TEXT/HTML", "html"),
        (b"text/html;Q=0.1, application/json;q=0.2", "json"),
        (b"*/*;q=0", "text"),
        (b"text/html;q=0", "text"),
        (b"text/plain;q=0, */*", "html"),  # text refused by name; anything else will do
        (b"text/html;q=0, */*", "text"),
        (b"text/html;q=NaN, application/json;q=0.1", "json"),
        (b"text/html;q=1e999, application/json", "html"),
        (b"text/html;q=-1, application/json;q=0.1", "json"),
        (b"text/html;q=banana, text/plain", "text"),
        (b"image/png", "text"),
        (b"\xff\xfe\x00;;;,,,=q", "text"),
    ],
)
def test_choose(accept: bytes, kind: str) -> None:
    assert choose(accept) == kind


def test_choose_bounds_header_size_and_its_cache() -> None:
    huge = b"text/html," + b"x/y;q=0.5," * 200_000
    assert choose(huge) == "html"
    assert max(len(key) for key in responses._cache) <= 2048  # what is kept is bounded too
    for i in range(2000):
        choose(b"x/%d" % i)
    assert len(responses._cache) <= 512


# -- handlers checked when the middleware is built ------------------------------------------------


async def reply(request: Request, state: MaintenanceState) -> Response:
    return PlainTextResponse(f"two {state.reason}")


def reply_sync(request: Request, state: MaintenanceState) -> Response:
    return PlainTextResponse(f"two {state.reason}")


async def reply_one(request: Request) -> Response:
    return PlainTextResponse("one")


def reply_one_sync(request: Request) -> Response:
    return PlainTextResponse("one")


def reply_any(*args: Any) -> Response:
    return PlainTextResponse(f"{len(args)}")


def reply_three(request: Request, state: MaintenanceState, extra: str) -> Response:
    return PlainTextResponse(extra)


class Replier:
    async def __call__(self, request: Request) -> Response:
        return PlainTextResponse("one")

    def method(self, request: Request, state: MaintenanceState) -> Response:
        return PlainTextResponse(f"two {state.reason}")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("handler", "text"),
    [
        (reply, "two r"),
        (reply_sync, "two r"),
        (reply_one, "one"),  # fastapi-maintenance's form
        (reply_one_sync, "one"),
        (reply_any, "2"),
        (functools.partial(reply_three, extra="x"), "x"),
        (functools.partial(reply_three, extra="x", state=state()), "x"),  # only request left
        (Replier(), "one"),
        (Replier().method, "two r"),
        (lambda request, state=None: PlainTextResponse(f"{state is not None}"), "True"),
    ],
)
async def test_response_handler_forms(handler: Any, text: str) -> None:
    checked = check_response_handler(handler)
    assert checked is not None
    response = await respond_with(checked, request(), state(reason="r"))
    assert isinstance(response, Response) and bytes(response.body).decode() == text


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda: None, r"its signature is \(\)"),
        (
            reply_three,
            r"signature is \(request: 'Request', state: 'MaintenanceState', extra: 'str'\)",
        ),
        (lambda request, *, state: None, r"signature is \(request, \*, state\)"),
        ("yes", "must be callable, not 'yes'"),
    ],
)
def test_response_handler_of_the_wrong_shape(handler: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        check_response_handler(handler)
    assert "write def handler(request, state): ..." in str(caught.value)


def test_handlers_that_cannot_be_inspected_are_trusted() -> None:
    assert check_response_handler(min) is not None
    assert check_exempt_handler(min) is not None
    assert check_response_handler(None) is None and check_exempt_handler(None) is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("result", "logged"),
    [
        (RuntimeError("handler bug"), "response_handler failed"),
        (None, "returned NoneType, not a Response"),
        ({"down": True}, "returned dict, not a Response"),
        (PlainTextResponse, "returned type, not a Response"),
    ],
)
async def test_respond_with_a_failing_handler(
    result: Any, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request, state: MaintenanceState) -> Any:
        if isinstance(result, Exception):
            raise result
        return result

    checked = check_response_handler(handler)
    assert checked is not None
    assert await respond_with(checked, request(), state()) is None
    assert logged in caplog.text and "sending the default page" in caplog.text


@pytest.mark.anyio
async def test_respond_with_any_asgi_app() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    checked = check_response_handler(lambda request: app)
    assert checked is not None
    assert await respond_with(checked, request(), state()) is app


class Staff:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def __call__(self, request: Request) -> Any:
        return self.answer


class Falsehood:
    def __bool__(self) -> bool:
        raise RuntimeError("no truth here")


@pytest.mark.anyio
async def test_exempt_handler_forms(caplog: pytest.LogCaptureFixture) -> None:
    async def yes(request: Request) -> bool:
        return True

    def header(request: Request) -> str | None:
        return request.headers.get("x-staff")

    def broken(request: Request) -> bool:
        raise RuntimeError("exempt bug")

    for handler, expected in [
        (yes, True),
        (header, False),
        (Staff(True), True),
        (functools.partial(lambda request, flag: flag, flag=True), True),
        (lambda request, state=None: state is None, True),
        (broken, False),
        (Staff(Falsehood()), False),
    ]:
        checked = check_exempt_handler(handler)
        assert checked is not None
        assert await exempt_by(checked, request()) is expected
    assert caplog.text.count("exempt_handler failed; the request is refused") == 2


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (lambda: True, r"signature is \(\)"),
        (lambda request, state: True, r"signature is \(request, state\)"),
        (42, "must be callable, not 42"),
    ],
)
def test_exempt_handler_of_the_wrong_shape(handler: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        check_exempt_handler(handler)
    assert "write def handler(request): ..." in str(caught.value)


# -- no state and no Accept header make a response fail --------------------------------------------

zones = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12, minutes=-30))]
)
times = st.datetimes(timezones=zones)
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
garbage = st.one_of(st.none(), st.integers(), st.binary(max_size=20), any_text)
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.booleans(),
)
media = st.sampled_from(
    ["text/html", "application/json", "application/*", "*/*", "text/*", "TEXT/PLAIN", "x/y", ""]
)
qvalues = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda q: f";q={q}"),
    st.sampled_from(["", ";q=", ";Q=0.5", ";q=1e999", ";q=-0", ";level=1"]),
)
accepts = st.one_of(
    st.binary(max_size=200),
    st.lists(st.tuples(media, qvalues).map("".join), max_size=6).map(
        lambda items: ",".join(items).encode("latin-1")
    ),
)


@settings(
    max_examples=int(os.environ.get("MAINTGUARD_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    reason=st.one_of(any_text, st.text(max_size=5).map(lambda t: t * 500), garbage),
    retry=st.one_of(st.none(), seconds, times, garbage),
    until=st.one_of(st.none(), times, garbage),
    status=st.integers(min_value=400, max_value=599),
    accept=accepts,
)
def test_no_state_or_header_makes_the_response_fail(
    reason: Any, retry: Any, until: Any, status: int, accept: bytes
) -> None:
    prepared = prepare(state(reason=reason, retry_after=retry, until=until), status, None)
    assert_sound(prepared, status)
    assert b"<main>" in prepared.html[1]  # the full page: not the last-resort minimal one
    header = retry_after(prepared)
    if header is not None and not header.isdigit():  # a date: within a year from now
        wait = parsedate_to_datetime(header) - datetime.now(UTC)
        assert timedelta(seconds=-60) < wait <= timedelta(seconds=MAX_RETRY_AFTER)
    problem = strict_json(prepared.json[1])
    if "retry_after" in problem:
        assert 0 <= problem["retry_after"] <= MAX_RETRY_AFTER
    assert re.fullmatch("html|json|text", choose(accept))
    assert prepared.pick(choose(accept))[1]
