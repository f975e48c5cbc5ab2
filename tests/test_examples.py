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


@pytest.mark.processes
@pytest.mark.parametrize("flag", [[], ["--trio"]])
def test_async_script(flag: list[str], tmp_path: Path) -> None:
    out = run("examples/script.py", "--state", str(tmp_path / "m.json"), *flag)
    assert "maintenance on: 'importing customers', 1 hold(s)" in out
    assert "imported batch 3/3" in out
    assert out.rstrip().endswith("maintenance off after the import")
    assert ("(trio)" in out) is bool(flag)


@pytest.mark.processes
@pytest.mark.parametrize("flag", [[], ["--trio"]])
def test_background_jobs(flag: list[str], tmp_path: Path) -> None:
    out = run("examples/background_jobs.py", "--state", str(tmp_path / "m.json"), *flag)
    lines = [line.strip() for line in out.splitlines()]
    assert lines == [
        "charge #1 started",
        "nightly: maintenance on, draining the jobs in flight",
        "phase while charge #1 runs: draining",
        "charge #1 done",  # the drain waited for it ...
        "nightly: drained; maintenance on, reindexing",  # ... before the body ran
        "newsletter #7 skipped: maintenance is on",
        "charge #2 waits for maintenance to end",
        "nightly: done",
        "charge #2 started",  # woken when maintenance ended
        "charge #2 done",
        "all done; maintenance off",
    ]


@pytest.mark.processes
def test_sync_script(tmp_path: Path) -> None:
    out = run("examples/sync_script.py", "--state", str(tmp_path / "m.json"))
    assert "holds recorded in m.json: 1" in out
    assert "rebuilt 42 documents" in out
    assert out.rstrip().endswith("maintenance off, holds recorded: 0")


@pytest.mark.slow
@pytest.mark.processes
def test_holds_benchmark_prints_ratios(tmp_path: Path) -> None:
    import importlib.util
    import os
    import re

    ours = [
        "bare awaited no-op coroutine (reference)",
        "minimal correct hold (lock + frames, newest reason shown)",
        "memory hold enter+exit (async with)",
        "nested memory hold enter+exit (on an entered hold)",
        "memory hold enter+exit (sync with)",
        "get_maintenance_mode(), memory",
        "get_maintenance_mode(), default env backend",
        "10,000 live holds: leave one, reverse order",
        "10,000 live holds: leave one, entry order",
        "hold change with 10,000 live holds",
        "hold change with 1 live hold",
        "nesting one hold 3,000 deep, per level",
        "nesting one hold 300 deep, per level",
        "file hold enter+exit (LocalFileBackend)",
        "guarded async call while off (not_during_maintenance)",
    ]
    peer_rows = [
        "fastapi-maintenance maintenance_mode_on() enter+exit",
        "fastapi-maintenance get_maintenance_mode()",
        "fastapi-maintenance maintenance_mode_on(file) enter+exit",
    ]
    our_goals = [
        "memory hold enter+exit <= 2.5x the minimal hold",
        "nested memory hold enter+exit <= 2x the minimal hold",
        "10,000 live holds leaving in reverse order <= 1.5x entry order",
        "10,000 live holds leaving in entry order <= 1.5x reverse order",
        "a hold change with 10,000 live holds <= 2x with 1 live hold",
        "nesting one object deep: per-level cost 3,000 deep <= 1.5x 300 deep"
        " (linear, not quadratic)",
        "a guarded async call while off, over the bare call",
    ]
    peer_goals = [
        "memory hold enter+exit <= 0.9x fastapi-maintenance's maintenance_mode_on() enter+exit",
        "get_maintenance_mode() on memory <= 0.8x the peer's get_maintenance_mode()",
        "get_maintenance_mode() on the default env backend"
        " <= 0.8x the peer's get_maintenance_mode()",
        "file hold enter+exit <= the peer's maintenance_mode_on(backend=LocalFileBackend(path))"
        " (ours is atomic + fsynced)",
    ]
    hint = "pip install -r benchmarks/requirements.txt"

    def check(out: str, with_peer: bool) -> None:
        lines = out.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("operation"))
        assert lines[start].split() == ["operation", "per", "op", "x", "bare", "call"]
        table = {}
        for line in lines[start + 1 : lines.index("", start)]:
            row = re.fullmatch(r"(.+?)\s+(\d+\.\d+)us\s+(\d+\.\d+)", line)
            assert row, f"not a timed row: {line!r}"
            table[row[1]] = float(row[2])
        assert list(table) == ours + (peer_rows if with_peer else [])
        assert all(seconds > 0 for seconds in table.values()), table
        goals = lines[lines.index("GOALS") + 1 :]
        expected = our_goals + (peer_goals if with_peer else [])
        assert len(goals) == len(expected)
        for text in expected:
            line = next((g for g in goals if g.endswith("  " + text)), None)
            assert line is not None, f"goal missing: {text!r}"
            assert line.split()[0] in ("ok", "MISSED"), line
        assert (hint in out) is not with_peer

    installed = importlib.util.find_spec("fastapi_maintenance") is not None
    check(run("benchmarks/holds.py", "--quick"), with_peer=installed)

    # Without the peer the benchmark still runs: it skips the peer's rows and goals.
    stub = tmp_path / "fastapi_maintenance"
    stub.mkdir()
    (stub / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "benchmarks/holds.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    check(done.stdout, with_peer=False)


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.redis
def test_many_servers_example_reaches_both_workers() -> None:
    import os

    from tests.stores import REDIS_URL, redis_prefix

    url = f"{REDIS_URL}?key_prefix={redis_prefix()}"
    done = subprocess.run(
        [sys.executable, "examples/many_servers.py", "--backend", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAINTGUARD_")},
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    answers = [line.split("workers answer ")[1] for line in done.stdout.splitlines()]
    assert answers == ["200, 200", "503, 503", "200, 200", "503, 503", "200, 200"]


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.redis
def test_propagation_benchmark_reports_every_store() -> None:
    out = run("benchmarks/propagation.py", "--quick")
    for store in ("file, OS notifications", "file, polling every 1 s", "Redis, pub/sub"):
        row = next(line for line in out.splitlines() if line.startswith(store))
        p50, p99, top = (float(x) for x in row[len(store) :].split()[:3])
        assert 0 < p50 <= p99 <= top
    assert "hold enter+exit: Redis" in out
    goals = out.split("GOALS")[1].splitlines()
    assert len([g for g in goals if g.strip().startswith("[")]) == 3


@pytest.mark.processes
def test_typed_usage_file_runs(tmp_path: Path) -> None:
    out = run("tests/typing_usage.py", str(tmp_path / "m.json"))
    assert out.startswith("MaintenanceState(active=False")


@pytest.mark.processes
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


@pytest.mark.processes
def test_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    monkeypatch.setenv("MAINTGUARD_EXAMPLE_SYNC_SECONDS", "0")
    example = _load("examples.fastapi_app", tmp_path, monkeypatch)
    with TestClient(example.app) as client:
        assert client.get("/predict", params={"text": "good"}).json() == {"label": "positive"}
        assert client.post("/admin/sync").json() == {"status": "synced"}
        # the operator, from another process, as the example's docstring says
        switch = [sys.executable, "-m", "maintguard", "on", "--reason", "DB"]
        subprocess.run([*switch, "--backend", f"file:{tmp_path / 'm.json'}"], check=True)
        deadline = time.monotonic() + 10
        while client.get("/predict", params={"text": "x"}).status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/health").status_code == 200
        assert client.get("/docs").status_code == 200  # exempt_docs
        page = client.get("/predict", params={"text": "x"}, headers={"accept": "text/html"})
        assert "<h1>Down for maintenance</h1>" in page.text and "DB" in page.text
        assert client.get("/_maintenance/status").json()["reason"] == "DB"
        assert client.get("/_maintenance/ready").json() == {"ready": True}  # it serves the page
        cordon = [sys.executable, "-m", "maintguard", "cordon", "--drain", "5"]
        subprocess.run([*cordon, "--backend", f"file:{tmp_path / 'm.json'}"], check=True)
        while client.get("/_maintenance/ready").status_code != 503:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)


def test_starlette_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    from maintguard import sync
    from maintguard.backends import LocalFileBackend

    example = _load("examples.starlette_app", tmp_path, monkeypatch)
    backend = LocalFileBackend(tmp_path / "m.json")  # the example's options: one store
    with TestClient(example.app) as client:
        sync.set_maintenance_mode(True, backend, scope="billing")
        deadline = time.monotonic() + 10
        while client.get("/billing/invoices").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/articles").status_code == 200
        sync.set_maintenance_mode(False, backend, scope="billing")
        sync.set_maintenance_mode(True, backend, mode="read_only")
        while client.post("/articles").status_code != 503:
            assert time.monotonic() < deadline + 10
            time.sleep(0.05)
        assert client.get("/articles").status_code == 200
        assert client.get("/status/db").status_code == 200
        assert client.get("/health").status_code == 200
