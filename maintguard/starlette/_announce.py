"""The ``announce_header`` option: a planned window, announced on every response.

While a window is announced (within its ``announce`` before the start) or in force,
responses carry ``<name>: <start>/<end>`` (:func:`._responses.window_interval`). The header is
worked out once per state (a window's announcement, start and end each bring a new one),
and ``send`` is wrapped only while there is one to send.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._core import ScopeController
from .._state import MaintenanceState
from ..exceptions import ConfigurationError
from ._access import is_token
from ._responses import window_interval

__all__ = ["Announcer", "announce_name", "with_header"]

Header = tuple[bytes, bytes]

_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})
# Headers the middleware's own answers set: a window's header must not stand for one.
_OWN_HEADERS = frozenset(
    {"cache-control", "content-length", "content-type", "location", "retry-after", "set-cookie"}
)


def announce_name(name: object) -> bytes | None:
    """The header name ``announce_header`` gives, checked (lower-case bytes); None: none."""
    if name is None:
        return None
    if not isinstance(name, str) or not is_token(name):
        raise ConfigurationError(
            "announce_header must be a header name such as 'x-maintenance-window' (letters, "
            f"digits and !#$%&'*+-.^_`|~; no spaces or colons), not {name!r}"
        )
    if name.lower() in _OWN_HEADERS:
        raise ConfigurationError(
            f"announce_header {name!r} is a header maintguard's own responses set: choose a "
            "name of its own, such as 'x-maintenance-window'"
        )
    return name.lower().encode("ascii")


class Announcer:
    """The header of one middleware, and the app a request let through while maintenance
    is off runs (:meth:`__call__`): the app, told of the global scope's window.

    ``root`` is the global scope's controller, set when the middleware starts.
    """

    __slots__ = ("app", "cached", "name", "root")

    def __init__(self, app: ASGIApp, name: bytes) -> None:
        self.app = app
        self.name = name
        self.root: ScopeController | None = None
        self.cached: tuple[MaintenanceState | None, Header | None] = (None, None)

    def header(self, state: MaintenanceState) -> Header | None:
        """The header for ``state`` (None: no window announced or in force). A state
        without a window (no route matched, a forced route while off: not a scope's own
        state) defers to the global scope's."""
        root = self.root
        if root is None:
            return None
        return self._of(root.snapshot if state.next_window is None else state, root)

    def _of(self, state: MaintenanceState, root: ScopeController) -> Header | None:
        cached = self.cached
        if cached[0] is state:
            return cached[1]
        value = window_interval(state, root.store.clock)
        header = None if value is None else (self.name, value)
        self.cached = (state, header)
        return header

    def send(self, send: Send, state: MaintenanceState) -> Send:
        """``send``, adding the header for ``state`` to a response's start; ``send`` itself
        while there is none."""
        header = self.header(state)
        return send if header is None else with_header(send, header)

    def app_for(self, scope: Scope, state: MaintenanceState) -> ASGIApp:
        """The app to run for a request let through in ``state`` (a WebSocket session runs
        the app as it is)."""
        header = self.header(state) if scope["type"] == "http" else None
        return self.app if header is None else _HeaderedApp(self.app, header)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A request let through while maintenance is off: the global scope's state, read
        # once from memory (no cron: the planned occurrences are in it).
        root = self.root
        if root is not None and scope["type"] == "http":
            header = self._of(root.snapshot, root)
            if header is not None:
                send = with_header(send, header)
        await self.app(scope, receive, send)


class _HeaderedApp:
    __slots__ = ("app", "header")

    def __init__(self, app: ASGIApp, header: Header) -> None:
        self.app = app
        self.header = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, with_header(send, self.header))


def with_header(send: Send, header: Header) -> Send:
    """``send``, adding ``header`` to the response's start message."""

    async def announced(message: Message) -> None:
        if message["type"] in _STARTS:
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return announced
