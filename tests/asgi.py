"""Raw ASGI calls for tests: scopes as a server sends them, and the messages the app sent.

Tests that need what a test client cannot send (``%2E%2E`` in ``raw_path``, repeated or
missing headers, no client address, a WebSocket without the denial extension, a lifespan
run by hand) call the app with these, rather than building scopes or collecting messages
of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal

import anyio
import anyio.lowlevel
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

Message = dict[str, Any]
Header = tuple[bytes, bytes]

CLIENT = ("127.0.0.1", 50000)


def http_scope(
    path: str = "/",
    method: str = "GET",
    *,
    raw_path: bytes | None = None,
    headers: Iterable[Header] = (),
    client: tuple[str, int] | None = CLIENT,
    host: bytes = b"testserver",
    root_path: str = "",
    scheme: str = "http",
    query_string: bytes = b"",
) -> Message:
    """One HTTP request's scope: ``raw_path`` defaults to ``path`` encoded, and a ``host``
    header comes before ``headers``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode("utf-8", "surrogateescape"),
        "root_path": root_path,
        "query_string": query_string,
        "headers": [(b"host", host), *headers],
        "client": client,
        "server": (host.decode(errors="replace"), 80),
    }


def websocket_scope(
    path: str = "/ws",
    *,
    raw_path: bytes | None = None,
    headers: Iterable[Header] = (),
    client: tuple[str, int] | None = CLIENT,
    host: bytes = b"testserver",
    root_path: str = "",
    scheme: str = "ws",
    extensions: dict[str, Any] | None = None,
) -> Message:
    """One WebSocket handshake's scope; ``extensions={"websocket.http.response": {}}`` is a
    server that can send an HTTP denial response (without it: accept, then close)."""
    scope = {
        **http_scope(
            path,
            raw_path=raw_path,
            headers=headers,
            client=client,
            host=host,
            root_path=root_path,
            scheme=scheme,
        ),
        "type": "websocket",
        "subprotocols": [],
    }
    del scope["method"]
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


def says(body: str) -> Any:
    """A new endpoint answering ``body`` (a body a test can look for: which endpoint ran)."""

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse(body)

    endpoint.__name__ = body.replace(" ", "_")
    return endpoint


class Sent(list[Message]):
    """The messages an app sent, in order, with the response's parts at hand."""

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self]

    @property
    def start(self) -> Message | None:
        return next((m for m in self if m["type"].endswith("response.start")), None)

    @property
    def status(self) -> int | None:
        """The response's status (an HTTP response or a WebSocket denial); None if none began."""
        start = self.start
        return None if start is None else int(start["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = self.start
        return {} if start is None else dict(start["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self if m["type"].endswith("response.body"))


async def call(
    app: Any,
    scope: Message,
    *,
    then: Literal["wait", "disconnect"] = "wait",
    sent: Sent | None = None,
) -> Sent:
    """Call ``app`` with ``scope`` as a server would; the messages it sent.

    ``receive`` gives the request (``http.request`` with an empty body, or
    ``websocket.connect``) once. After that it waits, as for a client still connected
    (``then="wait"``), or says the client has gone (``then="disconnect"``). Pass ``sent`` to
    see the messages while the app runs.
    """
    if scope["type"] == "websocket":
        first: Message = {"type": "websocket.connect"}
        gone: Message = {"type": "websocket.disconnect", "code": 1000}
    else:
        first = {"type": "http.request", "body": b"", "more_body": False}
        gone = {"type": "http.disconnect"}
    answers = Sent() if sent is None else sent
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return first
        if then == "disconnect":
            await anyio.lowlevel.checkpoint()
            return gone
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: Message) -> None:
        answers.append(message)

    await app(scope, receive, send)
    return answers


async def request(app: Any, path: str = "/", method: str = "GET", **scope: Any) -> Sent:
    """One raw HTTP request (``scope`` takes :func:`http_scope`'s options)."""
    return await call(app, http_scope(path, method, **scope))


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[Sent]:
    """The app's lifespan: started on entry (the startup's answer is in the yielded list),
    shut down on exit. A startup that fails leaves ``lifespan.startup.failed`` there."""
    answers = Sent()
    started, stop = anyio.Event(), anyio.Event()
    asked = 0

    async def receive() -> Message:
        nonlocal asked
        asked += 1
        if asked == 1:
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        answers.append(message)
        if message["type"].startswith("lifespan.startup."):
            started.set()

    async def run() -> None:
        with contextlib.suppress(Exception):  # a failed startup raises after saying so
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
        started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            await started.wait()
        try:
            yield answers
        finally:
            stop.set()


async def lifespan_startup(app: Any) -> Sent:
    """Run the lifespan's startup and shut it down again; the startup's messages."""
    async with served(app) as answers:
        return Sent(answers)
