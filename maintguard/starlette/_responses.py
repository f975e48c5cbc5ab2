"""The maintenance response: checked when built, negotiated by ``Accept``, never a 500."""

from __future__ import annotations

import html
import inspect
import json
import logging
import math
import os
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http import HTTPStatus

from .._state import MaintenanceState, Phase, Window, utcnow
from ..exceptions import ConfigurationError

__all__ = [
    "DEFAULT_TEMPLATE",
    "MAX_RETRY_AFTER",
    "Prepared",
    "Template",
    "check_template",
    "choose",
    "counting_second",
    "prepare",
    "window_interval",
]

logger = logging.getLogger("maintguard")

Headers = list[tuple[bytes, bytes]]
Template = str | string.Template | Callable[[MaintenanceState], str]
"""A page with ``$name`` placeholders (see :func:`prepare`), or ``template(state) -> str``."""

MAX_RETRY_AFTER = 365 * 24 * 3600
"""The longest wait ``Retry-After`` announces (one year): later values are cut to it."""

_MAX_REASON = 1000  # characters of the reason shown; a longer one is cut
_MAX_ACCEPT = 2048  # bytes of an Accept header read; real ones are a few hundred
_TITLE = "Down for maintenance"
_MESSAGE = "We are doing some maintenance right now and will be back shortly."
_NAMES = "title, message, reason, reason_html, until, until_text, until_html, retry_after"

DEFAULT_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>$title</title>
<style>
  :root { color-scheme: light dark; --fg: #1d2330; --muted: #4a5263; --bg: #f6f7f9;
          --card: #ffffff; --accent: #2456c7; }
  @media (prefers-color-scheme: dark) {
    :root { --fg: #e8ebf1; --muted: #b4bbc8; --bg: #12151b; --card: #1b2029; --accent: #8fb0ff; }
  }
  * { box-sizing: border-box; }
  body { margin: 0; min-height: 100vh; display: grid; place-items: center; padding: 1.25rem;
         background: var(--bg); color: var(--fg);
         font: 1.0625rem/1.6 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  main { width: 100%; max-width: 34rem; background: var(--card); border-radius: 1rem;
         padding: 2rem 1.75rem; box-shadow: 0 1px 3px rgb(0 0 0 / .12); }
  .icon { width: 3rem; height: 3rem; color: var(--accent); }
  h1 { font-size: 1.6rem; line-height: 1.25; margin: 1rem 0 .5rem; }
  p { margin: .5rem 0; }
  .muted { color: var(--muted); }
</style>
</head>
<body>
<main>
  <svg class="icon" viewBox="0 0 24 24" aria-hidden="true" fill="none" stroke="currentColor"
       stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">
    <path d="M14.7 6.3a4 4 0 0 0-5.4 5.4L3 18l3 3 6.3-6.3a4 4 0 0 0 5.4-5.4
             l-2.5 2.5-2.4-.6-.6-2.4z"/>
  </svg>
  <h1>$title</h1>
  <p>$message</p>
  $reason_html
  $until_html
  <p class="muted">Please try again later. This page does not refresh by itself.</p>
</main>
<script>
  for (const el of document.querySelectorAll("time[data-local]")) {
    const when = new Date(el.getAttribute("datetime"));
    const minutes = Math.round((when - Date.now()) / 60000);
    const local = when.toLocaleString([], {dateStyle: "medium", timeStyle: "short"});
    const rel = minutes > 90 ? `about $${Math.round(minutes / 60)} hours`
      : minutes > 1 ? `about $${minutes} minutes` : "a moment";
    el.textContent = minutes > 0 ? `$${local} (in $${rel})` : local;
  }
</script>
</body>
</html>
"""


@dataclass(frozen=True, slots=True)
class Prepared:
    """Status, headers and bodies of one state's response, built once."""

    status: int
    html: tuple[Headers, bytes]
    json: tuple[Headers, bytes]
    text: tuple[Headers, bytes]

    def pick(self, kind: str) -> tuple[Headers, bytes]:
        """Headers and body for a :func:`choose` result."""
        return self.html if kind == "html" else self.json if kind == "json" else self.text

    def negotiated(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[Headers, bytes]:
        """Headers and body for a request's headers: :func:`choose` on its ``Accept``."""
        accept = b""
        for name, value in headers:
            if name == b"accept":
                accept = value
                break
        kind = choose(accept)
        return self.html if kind == "html" else self.json if kind == "json" else self.text


# -- checking the template when the middleware is built -------------------------------------


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


_SAMPLES = (
    MaintenanceState(
        active=True,
        phase=Phase.ON,
        reason='Upgrading <the "db"> & cache',
        retry_after=120.0,
        until=datetime(2030, 1, 1, 12, 30, tzinfo=timezone.utc),
        since=datetime(2030, 1, 1, 12, tzinfo=timezone.utc),
        holds=1,
        explicit=True,
    ),
    MaintenanceState(active=True, phase=Phase.ON),
)


def check_template(template: object) -> Template | None:
    """``template`` ready for :func:`prepare`, or :class:`ConfigurationError` saying what to pass.

    A ``str`` or :class:`string.Template` must have valid placeholders (``$$`` for a literal
    ``$``; unknown names are left as written). A callable is rendered for a detailed and a
    bare sample state and must return a ``str`` for both.
    """
    if template is None:
        return None
    if isinstance(template, bytes | bytearray | memoryview):
        raise ConfigurationError(
            "template must be text, not bytes: decode it: template=data.decode()"
        )
    if isinstance(template, os.PathLike):
        raise ConfigurationError(
            "template must be the page itself, not a path: read it: template=path.read_text()"
        )
    if isinstance(template, str | string.Template):
        try:
            (string.Template(template) if isinstance(template, str) else template).substitute(
                _Blank()
            )
        except Exception as exc:
            raise ConfigurationError(
                f"template cannot be rendered ({exc}): write $name or ${{name}} with a name "
                f"from {_NAMES}, and $$ for a literal $"
            ) from None
        return template
    if not callable(template):
        raise ConfigurationError(
            "template must be a str with $placeholders, a string.Template or a callable "
            f"template(state) -> str, not {type(template).__name__}"
        )
    for sample in _SAMPLES:
        try:
            _page(template, sample, {})
        except Exception as exc:
            raise ConfigurationError(
                f"template failed for a sample state ({type(exc).__name__}: {exc}): it is "
                "called as template(state) for every state (reason, until and retry_after "
                "may be None) and must return the page as a str"
            ) from None
    return template


def _page(template: Template | None, state: MaintenanceState, values: dict[str, str]) -> str:
    if template is None or isinstance(template, str):
        return string.Template(template or DEFAULT_TEMPLATE).safe_substitute(values)
    if isinstance(template, string.Template):
        return template.safe_substitute(values)
    page: object = template(state)
    if not isinstance(page, str):
        hint = ""
        if inspect.iscoroutine(page):
            page.close()
            hint = " (a template cannot be async)"
        raise TypeError(f"the template returned {type(page).__name__}, not a str{hint}")
    return page


# -- building the response once per state -----------------------------------------------------


def counting_second(state: MaintenanceState) -> int | None:
    """The current second while ``state``'s response counts down to a time (``retry_after``
    as a datetime, or ``until``): a prepared response is then good for that second only."""
    if isinstance(state.retry_after, datetime) or (
        state.retry_after is None and state.until is not None
    ):
        return int(utcnow().timestamp())
    return None


def prepare(state: MaintenanceState, status: int, template: Template | None) -> Prepared:
    """The response for ``state``; never raises, whatever the state or template hold.

    A ``str`` template may use ``$title``, ``$message``, ``$reason``, ``$reason_html``,
    ``$until``, ``$until_text``, ``$until_html`` and ``$retry_after`` (values HTML-escaped).
    ``Retry-After`` is an HTTP date (``retry_after`` as a datetime, else ``until``) or whole
    seconds, from now to at most :data:`MAX_RETRY_AFTER` ahead (a naive time counts as UTC);
    unusable values (NaN, infinite, not a number or time) are left out. A template that
    raises or returns no ``str`` gives the default page; any other failure a minimal page.
    Both are logged.
    """
    try:
        return _prepare(state, status, template)
    except Exception:
        logger.exception("maintguard: the maintenance response failed; sending a minimal one")
        return Prepared(status, *_MINIMAL)


def _prepare(state: MaintenanceState, status: int, template: Template | None) -> Prepared:
    now = utcnow()
    reason = _clean(state.reason)
    retry = state.retry_after
    come_back = _utc(retry) if isinstance(retry, datetime) else None
    seconds = _whole_seconds(retry)
    if come_back is None and seconds is None:
        come_back = _utc(state.until)
    common = list(_NO_STORE)
    if come_back is not None:
        seconds = _whole_seconds((come_back - now).total_seconds())
        # Kept within a year from now: parsers read a date in year 68 as 2068.
        date = min(max(come_back, now), now + timedelta(seconds=MAX_RETRY_AFTER))
        common.append((b"retry-after", _http_date(date)))
    elif seconds is not None:
        common.append((b"retry-after", str(seconds).encode()))

    until = come_back or _utc(state.until)
    until_text = until.strftime("%Y-%m-%d %H:%M UTC") if until else ""
    values = {
        "title": html.escape(_TITLE),
        "message": html.escape(_MESSAGE),
        "reason": html.escape(reason or ""),
        "reason_html": f"<p><strong>{html.escape(reason)}</strong></p>" if reason else "",
        "until": until.isoformat() if until else "",
        "until_text": until_text,
        "until_html": (
            f'<p>Expected back: <time datetime="{until.isoformat()}" data-local>'
            f"{until_text}</time></p>"
            if until
            else ""
        ),
        "retry_after": str(seconds) if seconds is not None else "",
    }
    try:
        page = _page(template, state, values)
    except Exception:
        logger.exception("maintguard: the template failed; sending the default page")
        page = _page(None, state, values)

    problem: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else _TITLE,
        "status": status,
        "detail": reason or _MESSAGE,
    }
    if seconds is not None:
        problem["retry_after"] = seconds
    if until is not None:
        problem["until"] = until.isoformat()
    # One sentence per detail: a reason gets the full stop it lacks, so the next
    # sentence never runs on from it.
    text = f"{_TITLE}: {_sentence(reason)}" if reason else f"{_TITLE}. {_MESSAGE}"
    if until_text:
        text += f" Expected back: {until_text}."
    return Prepared(
        status,
        _body(b"text/html; charset=utf-8", page.encode("utf-8", "replace"), common),
        _body(b"application/problem+json", json.dumps(problem, allow_nan=False).encode(), common),
        _body(b"text/plain; charset=utf-8", (text + "\n").encode(), common),
    )


def _body(content_type: bytes, data: bytes, common: Headers) -> tuple[Headers, bytes]:
    length = str(len(data)).encode()
    return [(b"content-type", content_type), (b"content-length", length), *common], data


_NO_STORE: Headers = [(b"cache-control", b"no-store")]
_MINIMAL = (
    _body(b"text/html; charset=utf-8", f"<!doctype html><h1>{_TITLE}</h1>\n".encode(), _NO_STORE),
    _body(b"application/problem+json", json.dumps({"title": _TITLE}).encode(), _NO_STORE),
    _body(b"text/plain; charset=utf-8", f"{_TITLE}.\n".encode(), _NO_STORE),
)


def _clean(reason: object) -> str | None:
    # What a user-written backend stores may be anything: show text only, trimmed (blank
    # is none), cut and encodable.
    if not isinstance(reason, str) or not (reason := reason.strip()):
        return None
    if len(reason) > _MAX_REASON:
        reason = reason[:_MAX_REASON] + "…"
    return reason.encode("utf-8", "replace").decode()


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def _utc(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.utcoffset() is None:  # naive: taken as UTC, as a user's backend most likely means
        value = value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # an offset that moves year 1 or 9999 out of range
        return None


def _whole_seconds(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return max(0, min(math.ceil(value), MAX_RETRY_AFTER))


def _http_date(value: datetime) -> bytes:
    return format_datetime(value, usegmt=True).encode()


# -- the window a header announces -------------------------------------------------------------


def window_interval(state: MaintenanceState, now: Callable[[], float]) -> bytes | None:
    """``start/end`` of ``state``'s planned window, an ISO 8601 interval in UTC to the
    second (``2027-01-10T03:00:00Z/2027-01-10T04:00:00Z``; the start rounded down, the end
    up, so that it covers the window), while the window is announced or in force; else
    None. Announced: the phase is ``ANNOUNCED``, or (maintenance being on for another
    reason) ``now()``, clock seconds, is within the window's ``announce`` before its start;
    the clock is read only when the phase does not tell.

    A state keeps its answer while it lasts: the announcement, start and end of a window
    are boundaries at which a new state is derived. Never raises: a window whose times
    cannot be written (what a user-written store may hold) gives None, logged once.
    """
    window = state.next_window
    if window is None or not (state.phase is Phase.ANNOUNCED or _due(window, now)):
        return None
    try:
        start, end = _utc(window.start), _utc(window.end)
        if start is None or end is None:
            raise ValueError("not a time")
        if end.microsecond:
            end = end.replace(microsecond=0) + timedelta(seconds=1)
        return f"{_zulu(start)}/{_zulu(end)}".encode("ascii")
    except Exception as exc:
        _unwritable(window, exc)
        return None


def _due(window: Window, now: Callable[[], float]) -> bool:
    # Within its announcement before the start, or started (then in force: the planned
    # window in force is the one a state names).
    try:
        ahead = window.announce.total_seconds() if window.announce is not None else 0.0
        return bool(window.start.timestamp() - ahead <= now())
    except Exception as exc:  # a time that is no time, or out of range
        _unwritable(window, exc)
        return False


def _zulu(value: datetime) -> str:
    return value.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


_logged: set[str] = set()  # windows whose times could not be written, said once each


def _unwritable(window: Window, exc: Exception) -> None:
    try:
        what = repr((window.id, window.start, window.end))
    except Exception:  # pragma: no cover - a repr that raises too
        what = "?"
    if what in _logged:
        return
    if len(_logged) > 256:
        _logged.clear()
    _logged.add(what)
    logger.warning(
        "maintguard: the planned window %s cannot be announced (%s: %s); responses go "
        "without its header. Fix or cancel the window in the store.",
        what,
        type(exc).__name__,
        exc,
    )


# -- negotiating the content -------------------------------------------------------------------

# Per kind, the media types that ask for it, each looked up from the most specific range
# that names it. The level ranks equal q values: an exact type (2) above the wildcard a
# kind stands for (1: text/* and */* for text, application/* for JSON) above others (0).
_OFFERS = (
    ("html", (("text/html", 2), ("text/*", 0), ("*/*", 0))),
    ("html", (("application/xhtml+xml", 2),)),
    ("json", (("application/problem+json", 2), ("application/*", 1), ("*/*", 0))),
    ("json", (("application/json", 2), ("application/*", 1), ("*/*", 0))),
    ("text", (("text/plain", 2), ("text/*", 1), ("*/*", 1))),
)
_RANK = {"html": 2, "json": 1, "text": 0}  # among equals, HTML, then JSON, then text
_cache: dict[bytes, str] = {}


def choose(accept: bytes) -> str:
    """``"html"``, ``"json"`` or ``"text"`` for an ``Accept`` header (cached per value).

    Never raises; a header that accepts none of them (or is garbage) gets ``"text"``.
    """
    if len(accept) > _MAX_ACCEPT:
        accept = accept[:_MAX_ACCEPT]
    kind = _cache.get(accept)
    if kind is None:
        kind = _negotiate(accept.decode("latin-1"))
        if len(_cache) >= 512:  # headers are few; a flood of odd ones must not grow memory
            _cache.clear()
        _cache[accept] = kind
    return kind


def _negotiate(accept: str) -> str:
    ranges: dict[str, float] = {}
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media.startswith("application/") and media.endswith("+json"):
            media = "application/json"
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                q = 0.0 if math.isnan(q) else min(max(q, 0.0), 1.0)  # inf is 1
        ranges[media] = max(q, ranges.get(media, 0.0))
    best, top = "text", (0.0, 0, 0)
    for kind, lookups in _OFFERS:
        for media, level in lookups:
            found = ranges.get(media)
            if found is not None:
                score = (found, level, _RANK[kind])
                if found > 0 and score > top:
                    best, top = kind, score
                break
    return best
