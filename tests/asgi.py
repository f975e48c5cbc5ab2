"""Raw ASGI requests for tests: one HTTP scope as a server would send it."""

from __future__ import annotations

from typing import Any


def http_scope(
    path: str,
    method: str = "GET",
    *,
    raw_path: bytes | None = None,
    headers: Any = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    host: bytes = b"testserver",
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path if raw_path is not None else path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", host), *headers],
        "client": client,
        "server": (host.decode(), 80),
    }
