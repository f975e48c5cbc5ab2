"""Render the default maintenance page in headless Chromium to docs/maintenance-page.png.

    apt-get install chromium      # Debian's package
    python docs/render_page.py

The picture shows the page at a desktop width and a phone width side by side, as real
Chromium lays it out (the page itself has no external assets: what you see is all of it).
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from maintguard.starlette.responses import prepare
from maintguard.state import MaintenanceState

OUT = Path(__file__).with_name("maintenance-page.png")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def page() -> str:
    state = MaintenanceState(
        active=True,
        reason="We are upgrading our database to make things faster.",
        until=datetime.now(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=45),
    )
    return prepare(state, 503, None).html[1].decode()


def main() -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("Chromium is not installed: apt-get install chromium")
    frames = "".join(
        f'<figure><iframe width="{w}" height="{h}" srcdoc="{html.escape(page())}"></iframe>'
        f"<figcaption>{label} ({w}px)</figcaption></figure>"
        for label, w, h in (("desktop", 1024, 680), ("phone", 390, 680))
    )
    sheet = (
        "<!doctype html><body style='margin:0;padding:24px;display:flex;gap:24px;"
        "align-items:flex-start;background:#d9dde3;font:14px system-ui'>"
        "<style>iframe{border:1px solid #999;background:#fff}figure{margin:0}</style>"
        f"{frames}</body>"
    )
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "sheet.html"
        source.write_text(sheet)
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--user-data-dir={tmp}/profile",
                f"--screenshot={OUT}",
                "--window-size=1510,770",
                source.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
