"""The maintenance response: negotiated by ``Accept``, prepared once per state."""

from __future__ import annotations

import html
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from http import HTTPStatus

from ..state import MaintenanceState

__all__ = ["DEFAULT_TEMPLATE", "Prepared", "choose", "prepare"]

Headers = list[tuple[bytes, bytes]]
Template = str | Callable[[MaintenanceState], str]

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
    const rel = minutes > 90 ? `about ${Math.round(minutes / 60)} hours`
      : minutes > 1 ? `about ${minutes} minutes` : "a moment";
    el.textContent = minutes > 0 ? `${local} (in ${rel})` : local;
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
        return self.html if kind == "html" else self.json if kind == "json" else self.text


def _http_date(value: datetime) -> str:
    return format_datetime(value, usegmt=True)


def prepare(state: MaintenanceState, status: int, template: Template | None) -> Prepared:
    title = "Down for maintenance"
    message = "We are doing some maintenance right now and will be back shortly."
    seconds = state.retry_after_seconds()
    come_back = state.retry_after if isinstance(state.retry_after, datetime) else None
    if come_back is None and state.retry_after is None:
        come_back = state.until
    common: Headers = [(b"cache-control", b"no-store")]
    if come_back is not None:
        common.append((b"retry-after", _http_date(come_back).encode()))
    elif seconds is not None:
        common.append((b"retry-after", str(seconds).encode()))

    until = come_back or state.until
    until_text = until.strftime("%Y-%m-%d %H:%M UTC") if until else None
    if callable(template):
        page = template(state)
    else:
        reason_html = f"<p><strong>{html.escape(state.reason)}</strong></p>" if state.reason else ""
        until_html = (
            f'<p>Expected back: <time datetime="{until.isoformat()}" data-local>'
            f"{until_text}</time></p>"
            if until
            else ""
        )
        page = string.Template(template or DEFAULT_TEMPLATE).safe_substitute(
            title=html.escape(title),
            message=html.escape(message),
            reason=html.escape(state.reason or ""),
            reason_html=reason_html,
            until=until.isoformat() if until else "",
            until_text=until_text or "",
            until_html=until_html,
            retry_after=str(seconds) if seconds is not None else "",
        )
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else title,
        "status": status,
        "detail": state.reason or message,
    }
    if seconds is not None:
        problem["retry_after"] = seconds
    if until is not None:
        problem["until"] = until.isoformat()
    text = f"{title}: {state.reason}" if state.reason else f"{title}. {message}"
    if until_text:
        text += f" Expected back: {until_text}."

    def body(content_type: bytes, data: bytes) -> tuple[Headers, bytes]:
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(data)).encode()),
            *common,
        ]
        return headers, data

    return Prepared(
        status,
        body(b"text/html; charset=utf-8", page.encode()),
        body(b"application/problem+json", json.dumps(problem).encode()),
        body(b"text/plain; charset=utf-8", (text + "\n").encode()),
    )


_HTML = ("text/html", "application/xhtml+xml")
_JSON = ("application/problem+json", "application/json")
_cache: dict[bytes, str] = {}


def choose(accept: bytes) -> str:
    """``"html"``, ``"json"`` or ``"text"`` for an ``Accept`` header (cached per value)."""
    kind = _cache.get(accept)
    if kind is None:
        kind = _negotiate(accept.decode("latin-1"))
        if len(_cache) > 512:  # headers are few; a flood of odd ones must not grow memory
            _cache.clear()
        _cache[accept] = kind
    return kind


def _negotiate(accept: str) -> str:
    best = {"html": 0.0, "json": 0.0, "text": 0.0}
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media in _HTML:
            kind = "html"
        elif media in _JSON or (media.startswith("application/") and media.endswith("+json")):
            kind = "json"
        elif media in ("text/plain", "text/*", "*/*"):
            kind = "text"
        else:
            continue
        best[kind] = max(best[kind], q)
    top = max(best.values())
    if top <= 0:
        return "text"
    return next(k for k in ("html", "json", "text") if best[k] == top)
