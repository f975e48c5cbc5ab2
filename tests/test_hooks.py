"""Webhooks (maintguard.hooks) against a real HTTP server on 127.0.0.1: the body, the
signature, the events filter, retries with backoff, refusals, a hanging receiver, and that
neither holds nor the other listeners ever wait for a receiver."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from maintguard import (
    ConfigurationError,
    EventKind,
    MaintenanceEvent,
    MaintenanceState,
    Phase,
    add_listener,
    flush_listeners,
    remove_listener,
    under_maintenance,
)
from maintguard.backends import MemoryBackend
from maintguard.hooks import SIGNATURE_HEADER, Webhook

DEADLINE = 10.0
HANG = 30.0  # how long /hang keeps a request unanswered (released at teardown)
SECRET = "s3cret-for-tests"


@dataclass
class Request:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A local HTTP server whose paths answer as a receiver would: /ok 204, /flaky 503
    for its first ``fail_first`` requests then 200, /later 503 with ``Retry-After: 2``
    then 200, /bad 400, /busy 429, /hang nothing for HANG seconds."""

    port: int = 0
    fail_first: int = 2
    requests: list[Request] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout: float = DEADLINE) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(found := self.at(path)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return found


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.requests.append(
                    Request(time.monotonic(), self.path, dict(self.headers.items()), body)
                )
                seen = sum(r.path == self.path for r in receiver.requests)
            if self.path == "/hang":
                receiver.release.wait(HANG)
                status = 200
            elif self.path == "/flaky":
                status = 503 if seen <= receiver.fail_first else 200
            elif self.path == "/later":  # 503 asking for 2 s, then 200
                status = 503 if seen == 1 else 200
            else:
                status = {"/ok": 204, "/bad": 400, "/busy": 429}[self.path]
            try:
                self.send_response(status)
                if self.path == "/later" and status == 503:
                    self.send_header("Retry-After", "2")
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:  # the webhook gave up on a hanging request
                pass

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up is expected here


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = _Server(("127.0.0.1", 0), _handler(found))
    found.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield found
    found.release.set()
    server.shutdown()
    server.server_close()
    thread.join(DEADLINE)


@pytest.fixture
def webhook(receiver: Receiver) -> Iterator[Callable[..., Webhook]]:
    """Builds webhooks and adds them as listeners; at the end removes and closes them."""
    made: list[Webhook] = []

    def make(url: str, *, listen: bool = True, **options: Any) -> Webhook:
        hook = Webhook(url, **options)
        made.append(hook)
        if listen:
            add_listener(hook)
        return hook

    yield make
    for hook in made:
        remove_listener(hook)
    receiver.release.set()
    for hook in made:
        assert hook.close(DEADLINE)


def _event(kind: EventKind = EventKind.TRANSITION) -> MaintenanceEvent:
    state = MaintenanceState(active=True, phase=Phase.ON, reason="test", holds=1)
    return MaintenanceEvent(kind=kind, scope="billing", backend="test", state=state, phase=Phase.ON)


def _signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _utc(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset() == timedelta(0), text
    return parsed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- what is posted ----------------------------------------------------------------------


def test_a_hold_posts_signed_json_events(receiver: Receiver, webhook: Any) -> None:
    hook = webhook(receiver.url("/ok"), secret=SECRET)
    before = datetime.now(timezone.utc)
    with under_maintenance(backend=MemoryBackend(), reason="DB upgrade", retry_after=600):
        pass
    after = datetime.now(timezone.utc)
    assert flush_listeners(DEADLINE) and hook.flush(DEADLINE)
    posted = receiver.at("/ok")
    assert [r.json["kind"] for r in posted] == [
        "transition",
        "hold_acquired",
        "transition",
        "hold_released",
    ]
    for request in posted:
        assert request.headers["Content-Type"] == "application/json"
        signature = request.headers[SIGNATURE_HEADER]
        assert hmac.compare_digest(signature, _signature(request.body))
        assert not hmac.compare_digest(signature, _signature(request.body + b" "))
        assert not hmac.compare_digest(signature, _signature(request.body, "another secret"))
        body = request.json
        assert set(body) == {"kind", "scope", "state", "actor", "time"}
        assert body["scope"] is None and body["actor"] is None
        assert before <= _utc(body["time"]) <= after
    on, off = posted[0].json["state"], posted[2].json["state"]
    assert set(on) == {"active", "phase", "mode", "reason", "retry_after", "since", "until"} | {
        "holds"
    }
    assert on["active"] is True and on["phase"] == "on" and on["mode"] == "full"
    assert (on["reason"], on["retry_after"], on["until"], on["holds"]) == (
        "DB upgrade",
        600,
        None,
        1,
    )
    assert before <= _utc(on["since"]) <= after
    assert off == {
        "active": False,
        "phase": "off",
        "mode": "full",
        "reason": None,
        "retry_after": None,
        "since": None,
        "until": None,
        "holds": 0,
    }


def test_an_operators_change_posts_its_actor(receiver: Receiver, webhook: Any) -> None:
    from maintguard import sync
    from maintguard._core.identity import who

    hook = webhook(receiver.url("/ok"), events=["transition"])
    backend = MemoryBackend()
    sync.set_maintenance_mode(True, backend, reason="operator")
    sync.set_maintenance_mode(False, backend)
    assert flush_listeners(DEADLINE) and hook.flush(DEADLINE)
    assert [r.json["actor"] for r in receiver.at("/ok")] == [who(), who()]


def test_times_in_the_state_are_utc_and_retry_after_a_time_too(receiver: Receiver) -> None:
    hook = Webhook(receiver.url("/ok"))
    paris = timezone(timedelta(hours=2))
    since = datetime(2030, 1, 2, 5, 0, tzinfo=paris)
    state = MaintenanceState(
        active=True,
        phase=Phase.ON,
        since=since,
        until=since + timedelta(hours=1),
        retry_after=since + timedelta(hours=2),
    )
    at = datetime(2030, 1, 2, 4, 0, tzinfo=paris)
    event = MaintenanceEvent(EventKind.TRANSITION, "billing", "test", state, at=at)
    body = json.loads(hook.body(event))
    assert body["time"] == "2030-01-02T02:00:00+00:00"
    assert body["scope"] == "billing"
    assert body["state"]["since"] == "2030-01-02T03:00:00+00:00"
    assert body["state"]["until"] == "2030-01-02T04:00:00+00:00"
    assert body["state"]["retry_after"] == "2030-01-02T05:00:00+00:00"


def test_no_signature_header_without_a_secret(receiver: Receiver, webhook: Any) -> None:
    hook = webhook(receiver.url("/ok"), listen=False)
    hook(_event())
    assert hook.flush(DEADLINE)
    (request,) = receiver.at("/ok")
    assert SIGNATURE_HEADER not in request.headers
    assert request.json["kind"] == "transition" and request.json["scope"] == "billing"


def test_a_bytes_secret_signs_like_its_text(receiver: Receiver) -> None:
    body = Webhook(receiver.url("/ok")).body(_event())
    as_bytes = Webhook(receiver.url("/ok"), secret=SECRET.encode()).headers(body)
    as_text = Webhook(receiver.url("/ok"), secret=SECRET).headers(body)
    assert as_bytes[SIGNATURE_HEADER] == as_text[SIGNATURE_HEADER] == _signature(body)


def test_events_filter_sends_only_the_kinds_asked(receiver: Receiver, webhook: Any) -> None:
    transitions = webhook(receiver.url("/ok"), events=["transition"])
    holds = webhook(receiver.url("/bad"), events=[EventKind.HOLD_ACQUIRED, "HOLD_RELEASED"])
    single = webhook(receiver.url("/busy"), events=EventKind.HOLD_RELEASED, retries=0)
    with under_maintenance(backend=MemoryBackend()):
        pass
    assert flush_listeners(DEADLINE)
    assert transitions.flush(DEADLINE) and holds.flush(DEADLINE) and single.flush(DEADLINE)
    assert [r.json["kind"] for r in receiver.at("/ok")] == ["transition", "transition"]
    assert [r.json["kind"] for r in receiver.at("/bad")] == ["hold_acquired", "hold_released"]
    assert [r.json["kind"] for r in receiver.at("/busy")] == ["hold_released"]
    assert transitions.events == {EventKind.TRANSITION}


# -- retries -----------------------------------------------------------------------------


def test_5xx_is_retried_with_backoff_until_accepted(
    receiver: Receiver, webhook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = webhook(receiver.url("/flaky"), listen=False, secret=SECRET, retries=3)
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
        assert hook.flush(DEADLINE)
    attempts = receiver.at("/flaky")
    assert len(attempts) == 3  # 503, 503, then 200: the third is the last
    gaps = [b.at - a.at for a, b in itertools.pairwise(attempts)]
    assert 0.45 <= gaps[0] < 0.45 + 1.5, gaps  # 0.5 s, then 1 s
    assert 0.95 <= gaps[1] < 0.95 + 1.5, gaps
    assert gaps[1] > gaps[0] + 0.3, gaps
    assert len({r.body for r in attempts}) == 1  # the same bytes each time
    assert all(
        hmac.compare_digest(r.headers[SIGNATURE_HEADER], _signature(r.body)) for r in attempts
    )
    assert not [r for r in caplog.records if r.name == "maintguard.hooks"]  # delivered


def test_a_receivers_retry_after_is_honoured(receiver: Receiver, webhook: Any) -> None:
    hook = webhook(receiver.url("/later"), listen=False, retries=2)
    hook(_event())
    assert hook.flush(DEADLINE)
    first, second = receiver.at("/later")
    assert second.at - first.at >= 1.9  # asked 2 s; the backoff alone waits 0.5 s


def test_429_is_retried_then_given_up_and_logged(
    receiver: Receiver, webhook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = webhook(receiver.url("/busy"), listen=False, retries=1)
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
        assert hook.flush(DEADLINE)
    assert len(receiver.at("/busy")) == 2
    (record,) = [r for r in caplog.records if r.name == "maintguard.hooks"]
    message = record.getMessage()
    assert "transition not delivered after 2 attempts (last: status 429)" in message
    assert f"127.0.0.1:{receiver.port}" in message and "/busy" not in message  # no path


def test_other_4xx_is_not_retried(
    receiver: Receiver, webhook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = webhook(receiver.url("/bad"), listen=False, retries=3)
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
        assert hook.flush(DEADLINE)
        time.sleep(0.8)  # past the first backoff: a retry would have arrived by now
    assert len(receiver.at("/bad")) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "maintguard.hooks"]
    assert len(messages) == 1 and "refused transition with status 400 (not retried)" in messages[0]


def test_connection_errors_are_retried(webhook: Any, caplog: pytest.LogCaptureFixture) -> None:
    hook = webhook(f"http://127.0.0.1:{_free_port()}/gone", listen=False, retries=2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
        assert hook.flush(DEADLINE)
    assert time.monotonic() - started >= 1.5 - 0.05  # backoff 0.5 s + 1 s
    (record,) = [r for r in caplog.records if r.name == "maintguard.hooks"]
    assert "not delivered after 3 attempts (last: ConnectError" in record.getMessage()


# -- a hanging receiver ------------------------------------------------------------------


def test_a_hanging_receiver_is_bounded_by_the_timeout_per_attempt(
    receiver: Receiver, webhook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook = webhook(receiver.url("/hang"), listen=False, timeout=0.5, retries=1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
        assert hook.flush(DEADLINE)
    took = time.monotonic() - started
    assert 1.5 - 0.05 <= took < 1.5 + 2.0, took  # 0.5 s, backoff 0.5 s, 0.5 s; not HANG
    assert len(receiver.at("/hang")) == 2
    (record,) = [r for r in caplog.records if r.name == "maintguard.hooks"]
    assert "after 2 attempts (last: no answer within 0.5 s)" in record.getMessage()


def _holds(count: int) -> float:
    backend = MemoryBackend()
    started = time.perf_counter()
    for _ in range(count):
        with under_maintenance(backend=backend, reason="timed"):
            pass
    return time.perf_counter() - started


def test_holds_and_other_listeners_never_wait_for_a_hanging_receiver(
    receiver: Receiver, webhook: Any
) -> None:
    count = 50
    heard: list[MaintenanceEvent] = []
    add_listener(heard.append)
    try:
        _holds(5)  # warm up
        assert flush_listeners(DEADLINE)
        without = min(_holds(count) for _ in range(3))  # the same listener, no webhook
        assert flush_listeners(DEADLINE)
        remove_listener(heard.append)
        hook = webhook(receiver.url("/hang"), timeout=5, retries=0)
        add_listener(heard.append)  # after the webhook: it runs after it on the dispatcher
        heard.clear()
        with_hook = min(_holds(count) for _ in range(3))
        # flush_listeners() still means "handed to every listener": the webhook only
        # queued its events, so the listener after it heard them all, and promptly.
        started = time.monotonic()
        assert flush_listeners(DEADLINE)
        assert time.monotonic() - started < 2.0
    finally:
        remove_listener(heard.append)
    assert len(heard) == 3 * count * 4
    assert with_hook <= 3 * without + 0.25, (with_hook, without)
    assert with_hook < 5.0  # less than one attempt's timeout for 150 holds
    assert receiver.wait_for("/hang", 1, 2.0)  # the first event's attempt is under way
    assert not hook.flush(0.2)  # ...and its delivery has not ended: the receiver hangs


def test_one_hanging_webhook_does_not_hold_up_another(receiver: Receiver, webhook: Any) -> None:
    webhook(receiver.url("/hang"), timeout=5, retries=0)
    fine = webhook(receiver.url("/ok"))  # added after the hanging one
    started = time.monotonic()
    with under_maintenance(backend=MemoryBackend()):
        pass
    assert flush_listeners(DEADLINE) and fine.flush(DEADLINE)
    assert len(receiver.at("/ok")) == 4
    assert time.monotonic() - started < 2.0  # not the hanging one's 5 s timeout
    assert receiver.wait_for("/hang", 1, 2.0)  # which is being posted meanwhile


def test_close_delivers_what_is_queued_then_drops_events(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    hook = Webhook(receiver.url("/ok"))
    hook(_event(EventKind.HOLD_ACQUIRED))
    hook(_event(EventKind.HOLD_RELEASED))
    assert hook.close(DEADLINE)
    assert [r.json["kind"] for r in receiver.at("/ok")] == ["hold_acquired", "hold_released"]
    with caplog.at_level(logging.WARNING, logger="maintguard.hooks"):
        hook(_event())
    assert hook.flush(0.1)
    assert len(receiver.at("/ok")) == 2
    assert any("is closed: transition not sent" in r.getMessage() for r in caplog.records)


# -- bad options are refused when the webhook is built -----------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://example.com/hook"}, r"is not an http\(s\) URL with a host: give an http"),
        ({"url": "example.com/hook"}, r"is not an http\(s\) URL"),
        ({"url": "http://"}, r"is not an http\(s\) URL with a host"),
        ({"url": "http://example.com:port/"}, "cannot be read"),
        ({"url": b"http://example.com/"}, "url must be a string"),
        ({"timeout": 0}, "timeout must be a positive number of seconds, not 0"),
        ({"timeout": -1.5}, "timeout must be a positive number of seconds"),
        ({"timeout": math.inf}, "timeout must be a positive number of seconds"),
        ({"timeout": "5"}, "timeout must be a positive number of seconds"),
        ({"retries": -1}, r"retries must be a whole number >= 0 \(attempts after the first"),
        ({"retries": 1.5}, "retries must be a whole number >= 0"),
        ({"retries": True}, "retries must be a whole number >= 0"),
        ({"secret": 1234}, "secret must be a str or bytes .*, not a int"),
        ({"secret": ""}, r"secret is empty.*secrets.token_hex\(32\)"),
        ({"events": ["transitions"]}, "unknown event kind 'transitions'.*'transition', "),
        ({"events": [1]}, "unknown event kind 1 in events"),
        ({"events": 5}, r"events must be None \(every event\) or a collection"),
        ({"events": []}, "events is empty, so nothing would be sent"),
    ],
)
def test_bad_options_are_refused_with_the_fix(options: dict[str, Any], message: str) -> None:
    options = {"url": "https://example.com/hook", **options}
    with pytest.raises(ConfigurationError, match=message):
        Webhook(**options)


def test_unknown_event_names_list_every_valid_kind() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Webhook("https://example.com/hook", events=["transition", "hold"])
    assert all(repr(kind.value) in str(caught.value) for kind in EventKind)


def test_the_url_path_and_secret_stay_out_of_the_repr() -> None:
    hook = Webhook("https://hooks.example.com/T000/B000/token123", secret="hush")
    assert repr(hook) == "Webhook('https://hooks.example.com')"


# -- httpx is optional -------------------------------------------------------------------


@pytest.mark.processes
def test_importing_maintguard_does_not_import_httpx() -> None:
    code = (
        "import sys, maintguard, maintguard.hooks\n"
        "print('httpx' in sys.modules)\n"
        "maintguard.hooks.Webhook('https://example.com/hook')\n"
        "print('httpx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.processes
def test_a_webhook_without_httpx_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['httpx'] = None  # as if it were not installed\n"
        "from maintguard import ConfigurationError\n"
        "from maintguard.hooks import Webhook\n"
        "try:\n"
        "    Webhook('https://example.com/hook')\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "pip install 'maintguard[webhooks]'" in out.stdout


# -- the receiver of docs/how-to/metrics-and-webhooks.md -----------------------------------


def test_the_docs_receiver_accepts_what_a_webhook_signs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import anyio
    from starlette.requests import Request as StarletteRequest

    page = Path(__file__).parents[1] / "docs" / "how-to" / "metrics-and-webhooks.md"
    block = next(b for b in page.read_text().split("```python")[1:] if "maintguard_hook" in b)
    namespace: dict[str, Any] = {}
    exec(block.split("```")[0], namespace)
    namespace["SECRET"] = SECRET.encode()
    hook = Webhook("https://example.com/hook", secret=SECRET)
    body = hook.body(_event())

    def status(body: bytes, headers: dict[str, str]) -> int:
        sent = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return sent.pop(0)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/hook",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        request = StarletteRequest(scope, receive)
        return int(anyio.run(namespace["maintguard_hook"], request).status_code)

    assert status(body, hook.headers(body)) == 204
    assert capsys.readouterr().out.split()[:3] == ["transition", "billing", "on"]
    assert status(body + b" ", hook.headers(body)) == 401  # not the bytes signed
    assert status(body, {}) == 401  # unsigned
    other = Webhook("https://example.com/hook", secret="another secret")
    assert status(body, other.headers(body)) == 401
    assert capsys.readouterr().out == ""


@pytest.mark.processes
def test_events_queued_at_exit_are_delivered(receiver: Receiver) -> None:
    # The lifecycle step "webhooks" runs after the listeners' step: a hold's events that
    # the dispatcher hands over at exit still reach the receiver.
    code = (
        "import sys, maintguard\n"
        "from maintguard.backends import MemoryBackend\n"
        "from maintguard.hooks import Webhook\n"
        "maintguard.add_listener(Webhook(sys.argv[1]))\n"
        "with maintguard.under_maintenance(backend=MemoryBackend()):\n"
        "    pass\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, receiver.url("/ok")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [r.json["kind"] for r in receiver.at("/ok")] == [
        "transition",
        "hold_acquired",
        "transition",
        "hold_released",
    ]
