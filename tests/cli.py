"""Helpers of the CLI's tests: run ``maintguard`` as a real process, read what it said."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import maintguard
from maintguard import sync
from maintguard.backends import LocalFileBackend

ROOT = Path(__file__).parents[1]


# A guarded job on a file store, in flight until its flag file (argv[2]) is deleted.
JOB_SCRIPT = """
import sys, time
from pathlib import Path
from maintguard import not_during_maintenance
from maintguard.backends import LocalFileBackend
backend = LocalFileBackend(sys.argv[1], refresh_interval=0.1)
with not_during_maintenance(backend=backend):
    Path(sys.argv[2]).write_text("running")
    while Path(sys.argv[2]).exists():
        time.sleep(0.02)
"""


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout: {self.out}\nstderr: {self.err}>"


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAINTGUARD_")}
    env.update({"TZ": "UTC", "PYTHONPATH": str(ROOT), **extra})
    return env


Run = Callable[..., Result]


def runner(state: Path) -> Run:
    """``maintguard ARGS`` with the file store in MAINTGUARD_BACKEND (unless env= says)."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 30,
        tz: str | None = None,
        cwd: Path = ROOT,
        **popen: Any,
    ) -> Result:
        if env is None:
            env = environment(MAINTGUARD_BACKEND=f"file:{state}")
        if tz is not None:
            env = {**env, "TZ": tz}
        proc = subprocess.run(
            [sys.executable, "-m", "maintguard", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            cwd=cwd,
            **popen,
        )
        return Result(proc)

    return run


def one_line(result: Result) -> str:
    """A failure's stderr: one line, no traceback, not an 'unexpected' internal error."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result
    assert "Traceback" not in result.err
    assert lines[0].startswith("maintguard: "), result
    assert "unexpected" not in lines[0] and "please report" not in lines[0], result
    return lines[0]


def store_state(state: Path, scope: str | None = None) -> maintguard.MaintenanceState:
    return sync.get_state(LocalFileBackend(state, refresh_interval=0), scope)
