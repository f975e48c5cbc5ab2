"""Webhooks: a listener that POSTs every :class:`~maintguard.MaintenanceEvent` as JSON.

>>> import maintguard
>>> from maintguard.hooks import Webhook
>>> hook = maintguard.add_listener(Webhook("https://ops.example.com/maintguard", secret="s3cret"))

The dispatcher thread (``maintguard-listeners``) only turns an event into its body and
queues it: each :class:`Webhook` posts from a worker thread of its own, one event after the
other in the order they happened. So a slow, failing or hanging receiver delays only that
webhook's own deliveries, never a hold, a request, or the listeners after it.
:func:`~maintguard.flush_listeners` therefore returns once the event has been handed to the
webhook (queued); :meth:`Webhook.flush` waits until it was delivered or given up.

httpx (``pip install 'maintguard[webhooks]'``) is imported when the first webhook is built,
never by ``import maintguard``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ._core import lifecycle
from ._options import seconds
from ._state import EventKind, MaintenanceEvent, MaintenanceState
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    import httpx

__all__ = ["SIGNATURE_HEADER", "Webhook"]

logger = logging.getLogger("maintguard.hooks")

SIGNATURE_HEADER = "X-Maintguard-Signature"
"""``sha256=<hex>``: HMAC-SHA256 of the exact body bytes with the webhook's secret."""
BACKOFF = 0.5
"""Seconds before the first retry; each next one waits twice as long, up to BACKOFF_CAP."""
BACKOFF_CAP = 30.0
MAX_PENDING = 1000
"""Events a webhook keeps queued while its receiver lags; newer ones are dropped (logged)."""
EXIT_WAIT = 2.0
"""At interpreter exit, how long all webhooks together may take to deliver what is queued."""

_httpx: ModuleType | None = None
_webhooks: weakref.WeakSet[Webhook] = weakref.WeakSet()


def _load_httpx() -> ModuleType:
    global _httpx
    if _httpx is None:
        try:
            import httpx
        except ImportError as exc:
            raise ConfigurationError(
                "maintguard.hooks.Webhook needs httpx: pip install 'maintguard[webhooks]'"
            ) from exc
        _httpx = httpx
    return _httpx


class Webhook:
    """A listener that POSTs each event as a JSON object to ``url``.

    The body has ``kind``, ``scope``, ``state`` (``active``, ``phase``, ``mode``,
    ``reason``, ``retry_after``, ``since``, ``until``, ``holds``), ``actor`` (the
    operator's ``user@host`` behind the event, or null) and ``time`` (when the event
    happened); times are ISO 8601 in UTC. With ``secret`` (str or bytes) the header
    ``X-Maintguard-Signature: sha256=<hex>`` carries the HMAC-SHA256 of the body bytes.
    ``events``: None for every event, or the :class:`~maintguard.EventKind` members (or
    their names) to send. ``timeout``: seconds
    one attempt may take in all (connecting, sending, the response's status and headers).
    ``retries``: attempts after the first, made on connection errors, timeouts, 5xx and
    429 after 0.5 s, 1 s, 2 s, ... or the receiver's ``Retry-After`` when longer (at most
    30 s); any other status is not retried. Errors
    are logged (``maintguard.hooks`` logger), never raised.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | bytes | None = None,
        events: Iterable[EventKind | str] | EventKind | str | None = None,
        timeout: float = 5,
        retries: int = 3,
    ) -> None:
        self.url = _check_url(url)
        self.events = _check_events(events)
        self.timeout = seconds("timeout", timeout, positive=True)
        self.retries = _check_retries(retries)
        self._secret = _check_secret(secret)
        self._httpx = _load_httpx()
        self._lock = threading.Lock()
        _webhooks.add(self)
        self._fresh(closed=False)

    def _fresh(self, *, closed: bool) -> None:
        # No worker, nothing queued (also in a forked child: the parent's thread is gone).
        self._queue: deque[tuple[str, bytes] | None] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._pending = 0  # queued or being delivered
        self._thread: threading.Thread | None = None
        self._closed = closed

    def __repr__(self) -> str:
        return f"Webhook({_origin(self.url)!r})"  # the path may carry a token: not shown

    def __call__(self, event: MaintenanceEvent) -> None:
        """Queue ``event`` for delivery (the dispatcher calls this); never blocks or raises."""
        if self.events is not None and event.kind not in self.events:
            return
        try:
            body = self.body(event)
        except Exception:  # a state this module cannot write must not stop the others
            logger.exception("webhook %r: could not build the body of %s", self, event.kind)
            return
        with self._ready:
            if self._closed:
                logger.warning("webhook %r is closed: %s not sent", self, event.kind.value)
                return
            if self._pending >= MAX_PENDING:
                logger.warning(
                    "webhook %r: %d events already wait for the receiver; %s dropped",
                    self,
                    self._pending,
                    event.kind.value,
                )
                return
            self._queue.append((event.kind.value, body))
            self._pending += 1
            self._ready.notify_all()
            self._start()

    def body(self, event: MaintenanceEvent) -> bytes:
        """The exact bytes posted for ``event`` (what the signature is computed over)."""
        payload = {
            "kind": event.kind.value,
            "scope": event.scope,
            "state": _state(event.state),
            "actor": event.actor,  # the operator's user@host behind it (None: no operator)
            "time": _time(event.at),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def headers(self, body: bytes) -> dict[str, str]:
        """The headers posted with ``body``: its type and, with a secret, its signature."""
        headers = {"Content-Type": "application/json", "User-Agent": "maintguard-webhook"}
        if self._secret is not None:
            digest = hmac.new(self._secret, body, hashlib.sha256).hexdigest()
            headers[SIGNATURE_HEADER] = f"sha256={digest}"
        return headers

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until every event queued so far was delivered or given up; False when
        ``timeout`` seconds passed first. Call :func:`~maintguard.flush_listeners` first
        to be sure the dispatcher has handed this webhook every event emitted so far."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._ready.wait(left)
        return True

    def close(self, timeout: float | None = 5.0) -> bool:
        """Deliver what is queued (within ``timeout``), then stop the worker thread; events
        after this are dropped (logged). Remove the webhook from the listeners first."""
        with self._ready:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.append(None)  # the worker stops there
                self._ready.notify_all()
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # -- the worker thread ---------------------------------------------------------------

    def _start(self) -> None:  # under self._ready
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"maintguard-webhook {_origin(self.url)}", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        client = self._httpx.AsyncClient(timeout=self._httpx.Timeout(self.timeout))
        try:
            while True:
                with self._ready:
                    while not self._queue:
                        self._ready.wait()
                    item = self._queue.popleft()
                if item is None:
                    return
                try:
                    loop.run_until_complete(self._deliver(client, *item))
                except BaseException:  # pragma: no cover - _deliver logs its own errors
                    logger.exception("webhook %r: delivery failed", self)
                finally:
                    with self._ready:
                        self._pending -= 1
                        self._ready.notify_all()
        finally:
            try:
                loop.run_until_complete(client.aclose())
            finally:
                loop.close()

    async def _deliver(self, client: httpx.AsyncClient, kind: str, body: bytes) -> None:
        httpx = self._httpx
        headers = self.headers(body)
        attempts = self.retries + 1
        why = ""
        asked = 0.0  # how long the receiver asked to wait (its Retry-After), if longer
        for attempt in range(attempts):
            if attempt:
                backoff = BACKOFF * 2 ** (attempt - 1)
                await asyncio.sleep(min(max(backoff, asked), BACKOFF_CAP))
            asked = 0.0
            try:
                # The whole attempt is bounded, not each read: a receiver that trickles
                # bytes cannot hold the worker past `timeout` either.
                status, asked = await asyncio.wait_for(
                    self._post(client, body, headers), self.timeout
                )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                why = f"no answer within {self.timeout:g} s"
                continue
            except httpx.TransportError as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            except Exception:
                logger.exception("webhook %r: %s could not be sent", self, kind)
                return
            if 200 <= status < 300:
                return
            if status == 429 or status >= 500:
                why = f"status {status}"
                continue
            logger.warning(
                "webhook %r: the receiver refused %s with status %d (not retried)",
                self,
                kind,
                status,
            )
            return
        logger.warning(
            "webhook %r: %s not delivered after %d attempt%s (last: %s)",
            self,
            kind,
            attempts,
            "" if attempts == 1 else "s",
            why,
        )

    async def _post(
        self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
    ) -> tuple[int, float]:
        # The status, and the seconds a Retry-After asks (0: none); the body is not read.
        async with client.stream("POST", self.url, content=body, headers=headers) as response:
            return int(response.status_code), _retry_after(response.headers.get("retry-after"))


def _state(state: MaintenanceState) -> dict[str, Any]:
    retry_after = state.retry_after
    return {
        "active": state.active,
        "phase": state.phase.value,
        "mode": state.mode.value,
        "reason": state.reason,
        "retry_after": _time(retry_after) if isinstance(retry_after, datetime) else retry_after,
        "since": _time(state.since),
        "until": _time(state.until),
        "holds": state.holds,
    }


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _retry_after(value: str | None) -> float:
    """Seconds a receiver's ``Retry-After`` asks for (whole seconds or an HTTP date); 0 when
    absent or unreadable. The wait is capped at BACKOFF_CAP wherever it is used."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        return 0.0
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


# -- checks: a bad option is refused when the webhook is built ---------------------------


def _check_url(url: object) -> str:
    hint = "give an http:// or https:// URL such as 'https://ops.example.com/maintguard'"
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a string: {hint}, not {url!r}")
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        raise ConfigurationError(f"url {url!r} cannot be read ({exc}): {hint}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"url {url!r} is not an http(s) URL with a host: {hint}")
    return url.strip()


def _check_events(
    events: Iterable[EventKind | str] | EventKind | str | None,
) -> frozenset[EventKind] | None:
    if events is None:
        return None
    valid = ", ".join(repr(kind.value) for kind in EventKind)
    items: Iterable[object] = [events] if isinstance(events, str) else events
    kinds = set()
    try:
        for item in items:
            if isinstance(item, str):
                try:
                    kinds.add(EventKind(item.strip().lower()))
                    continue
                except ValueError:
                    pass
            raise ConfigurationError(
                f"unknown event kind {item!r} in events: use None (every event) or some of "
                f"{valid} (EventKind members or their names)"
            )
    except TypeError:
        raise ConfigurationError(
            f"events must be None (every event) or a collection of event kinds such as "
            f"['transition'], not {events!r}; the kinds are {valid}"
        ) from None
    if not kinds:
        raise ConfigurationError(
            f"events is empty, so nothing would be sent: use None (every event) or some of {valid}"
        )
    return frozenset(kinds)


def _check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(
            f"retries must be a whole number >= 0 (attempts after the first; 0: never "
            f"retry), not {retries!r}"
        )
    return retries


def _check_secret(secret: object) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise ConfigurationError(
            f"secret must be a str or bytes (the key the receiver checks the signature with), "
            f"not a {type(secret).__name__}"
        )
    if not secret:
        raise ConfigurationError(
            "secret is empty, so the signature would prove nothing: give a long random "
            "string (e.g. secrets.token_hex(32)), or None to send unsigned"
        )
    return secret


# -- process lifecycle ----------------------------------------------------------------


def _at_exit() -> None:
    deadline = time.monotonic() + EXIT_WAIT
    for hook in list(_webhooks):
        if not hook.flush(max(0.0, deadline - time.monotonic())):
            logger.warning("webhook %r: events still queued at exit are dropped", hook)


def _after_fork_in_child() -> None:
    # The worker threads, their loops and their connections stay in the parent.
    for hook in list(_webhooks):
        hook._fresh(closed=hook._closed)


lifecycle.at_exit("webhooks", _at_exit)
lifecycle.after_fork("webhooks", _after_fork_in_child)
