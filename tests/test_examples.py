"""The examples and the benchmark run as users run them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.mark.parametrize("flag", [[], ["--trio"]])
def test_async_script(flag: list[str], tmp_path: Path) -> None:
    out = run("examples/script.py", "--state", str(tmp_path / "m.json"), *flag)
    assert "maintenance on: 'importing customers', 1 hold(s)" in out
    assert "imported batch 3/3" in out
    assert out.rstrip().endswith("maintenance off after the import")
    assert ("(trio)" in out) is bool(flag)


def test_sync_script(tmp_path: Path) -> None:
    out = run("examples/sync_script.py", "--state", str(tmp_path / "m.json"))
    assert "holds recorded in m.json: 1" in out
    assert "rebuilt 42 documents" in out
    assert out.rstrip().endswith("maintenance off, holds recorded: 0")


def test_holds_benchmark_prints_ratios() -> None:
    out = run("benchmarks/holds.py", "--n", "50", "--rounds", "1")
    lines = out.splitlines()
    assert lines[0].split() == ["operation", "per", "op", "x", "bare", "call"]
    names = [line.rsplit(None, 2)[0] for line in lines[1:]]
    assert names[0] == "bare async call" and len(names) == 7
    assert all(float(line.split()[-1]) > 0 for line in lines[1:])


def test_typed_usage_file_runs(tmp_path: Path) -> None:
    out = run("tests/typing_usage.py", str(tmp_path / "m.json"))
    assert out.startswith("MaintenanceState(active=False")


def test_quickstart_shows_200_503_200_with_health_up() -> None:
    out = run("examples/quickstart.py")
    sections = out.split("while the job holds maintenance:")
    assert "GET /        -> 200" in sections[0]
    during, after = sections[1].split("after the job:")
    assert "GET /        -> 503" in during and "Retry-After: 60" in during
    assert '"detail": "upgrading the database"' in during
    assert "GET /health  -> 200" in during
    assert "GET /        -> 200" in after


def _load(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib

    monkeypatch.setenv("MAINTGUARD_EXAMPLE_FILE", str(tmp_path / "m.json"))
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


def test_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    from starlette.testclient import TestClient

    from maintguard import set_maintenance_mode

    monkeypatch.setenv("MAINTGUARD_EXAMPLE_SYNC_SECONDS", "0")
    example = _load("examples.fastapi_app", tmp_path, monkeypatch)
    with TestClient(example.app) as client:
        assert client.get("/predict", params={"text": "good"}).json() == {"label": "positive"}
        assert client.post("/admin/sync").json() == {"status": "synced"}
        anyio.run(lambda: set_maintenance_mode(True, f"file:{tmp_path / 'm.json'}", reason="DB"))
        deadline = time.monotonic() + 10
        while client.get("/predict", params={"text": "x"}).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/health").status_code == 200
        assert client.get("/docs").status_code == 200  # exempt_docs
        page = client.get("/predict", params={"text": "x"}, headers={"accept": "text/html"})
        assert "<h1>Down for maintenance</h1>" in page.text and "DB" in page.text


def test_starlette_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    from starlette.testclient import TestClient

    from maintguard import set_maintenance_mode
    from maintguard.backends import LocalFileBackend

    example = _load("examples.starlette_app", tmp_path, monkeypatch)
    backend = LocalFileBackend(tmp_path / "m.json", refresh_interval=0)
    with TestClient(example.app) as client:
        anyio.run(lambda: set_maintenance_mode(True, backend, scope="billing"))
        deadline = time.monotonic() + 10
        while client.get("/billing/invoices").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/articles").status_code == 200
        anyio.run(lambda: set_maintenance_mode(False, backend, scope="billing"))
        anyio.run(lambda: set_maintenance_mode(True, backend, mode="read_only"))
        while client.post("/articles").status_code != 503:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert client.get("/articles").status_code == 200
        assert client.get("/status/db").status_code == 200
        assert client.get("/health").status_code == 200
