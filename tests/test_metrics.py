"""Metrics (maintguard.metrics): a real ``/metrics`` endpoint scraped over HTTP and parsed
with ``prometheus_client.parser``, and OpenTelemetry through the SDK's in-memory reader,
after real actions: holds, refused requests through the middleware, guarded jobs, a backend
that fails, drains and a planned window. Counters are process-wide: each test compares
the values before and after its actions."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import maintguard.sync as msync
from maintguard import (
    BackendError,
    ConfigurationError,
    MaintenanceModeMiddleware,
    UnderMaintenance,
    not_during_maintenance,
    under_maintenance,
)
from maintguard.backends import LocalFileBackend, MemoryBackend
from maintguard.metrics import otel, prometheus

_names = itertools.count()


class Named(MemoryBackend):
    """A memory store with a name of its own (the ``backend`` label, when several stores
    are known, tells the test's store apart from other tests' stores)."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"metrics-test-{next(_names)}"

    def describe(self) -> str:
        return self.name


# -- a real /metrics endpoint -------------------------------------------------------------


class Scraper:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = prometheus.instrument(self.registry)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    def scrape(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of the endpoint: name -> [(labels, value)]."""
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            assert answer.status == 200
            text = answer.read().decode()
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scraper() -> Iterator[Scraper]:
    found = Scraper()
    yield found
    found.close()


def of(
    samples: dict[str, list[tuple[dict[str, str], float]]],
    name: str,
    backend: MemoryBackend | None = None,
    **labels: str,
) -> float | None:
    """The value of the one sample of ``name`` with ``labels`` (on ``backend``'s store:
    the backend label, present while several stores are known, names it); None: none."""
    found = [
        value
        for have, value in samples.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
        and (backend is None or have.get("backend") in (None, backend.describe()))
    ]
    assert len(found) <= 1, f"{name}{labels}: {found}"
    return found[0] if found else None


def app_on(backend: MemoryBackend) -> Starlette:
    async def page(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/page", page), Route("/billing/invoices", page)])
    app.add_middleware(MaintenanceModeMiddleware, backend=backend, scopes={"/billing/*": "billing"})
    return app


# -- gauges ---------------------------------------------------------------------------------


def test_a_hold_shows_as_active_phase_on_and_its_hold_count(scraper: Scraper) -> None:
    backend = Named()
    msync.get_state(backend)  # the store is known (read) before the hold
    before = scraper.scrape()
    assert of(before, "maintguard_active", backend, scope="") == 0.0
    assert of(before, "maintguard_phase", backend, scope="", phase="off") == 1.0
    with (
        under_maintenance(backend=backend, reason="reindex"),
        under_maintenance(backend=backend, reason="nested"),
    ):
        during = scraper.scrape()
        holds = msync.get_state(backend).holds  # this process's record: one
    after = scraper.scrape()
    assert of(during, "maintguard_active", backend, scope="") == 1.0
    assert of(during, "maintguard_holds", backend, scope="") == holds == 1
    phases = {p: of(during, "maintguard_phase", backend, scope="", phase=p) for p in ("off", "on")}
    assert phases == {"off": 0.0, "on": 1.0}
    assert of(during, "maintguard_phase", backend, scope="", phase="draining") == 0.0
    assert of(during, "maintguard_phase", backend, scope="", phase="announced") == 0.0
    assert of(after, "maintguard_active", backend, scope="") == 0.0
    assert of(after, "maintguard_holds", backend, scope="") == 0.0


def test_a_named_scope_has_series_of_its_own(scraper: Scraper) -> None:
    backend = Named()
    msync.get_state(backend)  # the global scope read too (a scope never read has no series)
    with under_maintenance(backend=backend, scope="billing"):
        samples = scraper.scrape()
    assert of(samples, "maintguard_active", backend, scope="billing") == 1.0
    assert of(samples, "maintguard_active", backend, scope="") == 0.0


def test_a_planned_window_gives_the_next_window_gauges(scraper: Scraper) -> None:
    backend = Named()
    msync.get_state(backend)
    assert of(scraper.scrape(), "maintguard_next_window_start_seconds", backend, scope="") is None
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=2)
    msync.schedule_maintenance(start, duration=1800, backend=backend)
    samples = scraper.scrape()
    assert of(samples, "maintguard_next_window_start_seconds", backend, scope="") == (
        start.timestamp()
    )
    assert of(samples, "maintguard_next_window_end_seconds", backend, scope="") == (
        start.timestamp() + 1800
    )
    assert of(samples, "maintguard_active", backend, scope="") == 0.0


def test_several_stores_of_one_name_keep_their_series_apart(scraper: Scraper) -> None:
    first, second = MemoryBackend(), MemoryBackend()
    msync.set_maintenance_mode(True, first)
    msync.get_state(second)
    samples = scraper.scrape()
    keys = [tuple(sorted(labels.items())) for labels, _ in samples["maintguard_active"]]
    assert len(keys) == len(set(keys)) >= 2
    assert all("backend" in labels for labels, _ in samples["maintguard_active"])
    memory = [
        v for labels, v in samples["maintguard_active"] if "MemoryBackend" in labels["backend"]
    ]
    assert 1.0 in memory and 0.0 in memory


# -- counters -------------------------------------------------------------------------------


def test_refused_requests_are_counted_by_the_scope_shown(scraper: Scraper) -> None:
    backend = Named()
    app = app_on(backend)
    with TestClient(app) as client:
        before = scraper.scrape()
        assert client.get("/page").status_code == 200  # off: not counted
        msync.set_maintenance_mode(True, backend, scope="billing")
        assert client.get("/billing/invoices").status_code == 503
        assert client.get("/page").status_code == 200
        msync.set_maintenance_mode(True, backend)
        assert client.get("/page").status_code == 503
        assert client.get("/page", headers={"accept": "application/json"}).status_code == 503
        after = scraper.scrape()
    name = "maintguard_requests_refused_total"
    assert (of(after, name, scope="billing") or 0) - (of(before, name, scope="billing") or 0) == 1
    assert (of(after, name, scope="") or 0) - (of(before, name, scope="") or 0) == 2


def test_the_off_path_counts_nothing(scraper: Scraper) -> None:
    backend = Named()
    app = app_on(backend)

    @not_during_maintenance(policy="raise", backend=backend)
    def job() -> int:
        return 1

    with TestClient(app) as client:
        before = scraper.scrape()
        for _ in range(5):
            assert client.get("/page").status_code == 200
            assert job() == 1
        after = scraper.scrape()
    for name in ("maintguard_requests_refused_total", "maintguard_jobs_total"):
        assert before.get(name) == after.get(name)


def jobs(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    return {
        outcome: of(samples, "maintguard_jobs_total", outcome=outcome) or 0.0
        for outcome in ("waited", "skipped", "refused")
    }


def test_guarded_jobs_count_waited_skipped_and_refused(scraper: Scraper) -> None:
    backend = Named()

    @not_during_maintenance(policy="skip", backend=backend)
    def skipped() -> int:
        return 1

    @not_during_maintenance(backend=backend)
    def waits() -> int:
        return 2

    before = jobs(scraper.scrape())
    msync.set_maintenance_mode(True, backend)
    assert skipped() is None
    with pytest.raises(UnderMaintenance), not_during_maintenance(policy="raise", backend=backend):
        pass
    # a wait that timed out is refused
    with pytest.raises(UnderMaintenance), not_during_maintenance(timeout=0.05, backend=backend):
        pass
    results: list[int] = []
    worker = threading.Thread(target=lambda: results.append(waits()))
    worker.start()
    time.sleep(0.2)
    assert not results  # still waiting
    msync.set_maintenance_mode(False, backend)
    worker.join(10)
    assert results == [2]
    assert waits() == 2  # off: not counted
    after = jobs(scraper.scrape())
    assert {k: after[k] - before[k] for k in after} == {"waited": 1, "skipped": 1, "refused": 2}


def test_a_failed_backend_read_is_counted_once(scraper: Scraper, tmp_path: Path) -> None:
    name = "maintguard_backend_errors_total"
    before = of(scraper.scrape(), name) or 0.0
    unreadable = LocalFileBackend(tmp_path)  # a directory: every read fails
    with pytest.raises(BackendError):
        msync.get_state(unreadable)
    assert (of(scraper.scrape(), name) or 0.0) - before == 1


def test_drains_are_observed_in_the_histogram(scraper: Scraper) -> None:
    backend = Named()
    release = threading.Event()

    @not_during_maintenance(backend=backend)
    def in_flight() -> None:
        release.wait(10)

    def buckets(samples: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
        found = {le: of(samples, "maintguard_drain_seconds_bucket", le=le) or 0.0 for le in LES}
        found["count"] = of(samples, "maintguard_drain_seconds_count") or 0.0
        found["sum"] = of(samples, "maintguard_drain_seconds_sum") or 0.0
        return found

    before = buckets(scraper.scrape())
    with under_maintenance(backend=backend, drain=5):  # nothing in flight: at once
        pass
    worker = threading.Thread(target=in_flight)
    worker.start()
    time.sleep(0.05)
    threading.Timer(0.3, release.set).start()
    with under_maintenance(backend=backend, drain=5):  # waits about 0.3 s
        pass
    worker.join(10)
    after = buckets(scraper.scrape())
    grew = {k: after[k] - before[k] for k in after}
    assert grew["count"] == 2
    assert grew["0.1"] == 1  # the first one (cumulative buckets)
    assert grew["0.5"] == 2 and grew["+Inf"] == 2
    assert 0.25 <= grew["sum"] < 1.0


LES = ("0.1", "0.5", "1.0", "5.0", "10.0", "30.0", "60.0", "300.0", "+Inf")


def test_a_timed_out_drain_is_observed_too(scraper: Scraper) -> None:
    backend = Named()
    release = threading.Event()

    @not_during_maintenance(backend=backend)
    def in_flight() -> None:
        release.wait(10)

    before = of(scraper.scrape(), "maintguard_drain_seconds_count") or 0.0
    worker = threading.Thread(target=in_flight)
    worker.start()
    time.sleep(0.05)
    try:
        with under_maintenance(backend=backend, drain=0.2):  # proceeds after 0.2 s
            pass
    finally:
        release.set()
        worker.join(10)
    samples = scraper.scrape()
    assert (of(samples, "maintguard_drain_seconds_count") or 0.0) - before == 1


# -- instrument() ---------------------------------------------------------------------------


def test_instrument_twice_returns_the_same_collector() -> None:
    registry = CollectorRegistry()
    assert prometheus.instrument(registry) is prometheus.instrument(registry)
    assert prometheus.instrument(CollectorRegistry()) is not prometheus.instrument(registry)


@pytest.mark.parametrize("wrong", ["default", object(), MeterProvider()])
def test_an_unknown_registry_is_refused_with_what_to_pass(wrong: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"prometheus_client\.CollectorRegistry"):
        prometheus.instrument(wrong)


@pytest.mark.parametrize("wrong", ["global", CollectorRegistry()])
def test_an_unknown_meter_provider_is_refused_with_what_to_pass(wrong: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"opentelemetry\.metrics\.MeterProvider"):
        otel.instrument(wrong)


def test_import_maintguard_imports_no_metrics_library() -> None:
    code = (
        "import sys, maintguard, maintguard.metrics\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("module", "library", "extra"),
    [("prometheus", "prometheus_client", "prometheus"), ("otel", "opentelemetry", "otel")],
)
def test_a_missing_extra_names_the_install_command(module: str, library: str, extra: str) -> None:
    code = f"import sys; sys.modules[{library!r}] = None\nimport maintguard.metrics.{module}\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert f"pip install 'maintguard[{extra}]'" in done.stderr


# -- OpenTelemetry --------------------------------------------------------------------------


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), point))
    return found


def point(
    found: dict[str, list[tuple[dict[str, Any], Any]]],
    name: str,
    backend: MemoryBackend | None = None,
    **labels: str,
) -> Any:
    matched = [
        p
        for have, p in found.get(name, [])
        if all(have.get(k) == v for k, v in labels.items())
        and (backend is None or have.get("backend") in (None, backend.describe()))
    ]
    assert len(matched) <= 1, f"{name}{labels}: {matched}"
    return matched[0] if matched else None


def test_opentelemetry_gauges_counters_and_the_drain_histogram() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instruments = otel.instrument(provider)
    assert otel.instrument(provider) is instruments
    backend = Named()
    app = app_on(backend)

    @not_during_maintenance(policy="skip", backend=backend)
    def skipped() -> int:
        return 1

    def value(found: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **labels: str) -> Any:
        found_point = point(found, name, **labels)
        return 0 if found_point is None else found_point.value

    before = points(reader)
    with TestClient(app) as client:
        with under_maintenance(backend=backend, reason="reindex"):
            during = points(reader)
            assert client.get("/page").status_code == 503
        start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=3)
        msync.schedule_maintenance(start, duration=600, backend=backend)
        msync.set_maintenance_mode(True, backend)
        assert skipped() is None
        msync.set_maintenance_mode(False, backend)
    with under_maintenance(backend=backend, drain=5):
        pass
    after = points(reader)

    assert point(during, "maintguard_active", backend, scope="").value == 1
    assert point(during, "maintguard_holds", backend, scope="").value == 1
    assert point(during, "maintguard_phase", backend, scope="", phase="on").value == 1
    assert point(during, "maintguard_phase", backend, scope="", phase="off").value == 0
    assert point(after, "maintguard_active", backend, scope="").value == 0
    assert point(after, "maintguard_next_window_start_seconds", backend, scope="").value == (
        start.timestamp()
    )
    assert point(after, "maintguard_next_window_end_seconds", backend, scope="").value == (
        start.timestamp() + 600
    )
    refused = "maintguard_requests_refused"
    assert value(after, refused, scope="") - value(before, refused, scope="") == 1
    assert (
        value(after, "maintguard_jobs", outcome="skipped")
        - value(before, "maintguard_jobs", outcome="skipped")
        == 1
    )
    drain = point(after, "maintguard_drain_seconds")
    assert drain is not None and drain.count == 1  # recorded since instrument()
    assert list(drain.explicit_bounds) == [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
    assert drain.bucket_counts[0] == 1


# -- what the gauges and counts are not ----------------------------------------------------------


def test_a_store_read_once_and_not_watched_shows_no_stale_series(
    scraper: Scraper, tmp_path: Path
) -> None:
    # A process that read a file store once (an admin service): when another process
    # switches maintenance off, its copy is stale; it shows nothing rather than "on".
    path = tmp_path / "g.json"
    backend = LocalFileBackend(path, refresh_interval=0.2)

    def active() -> list[float]:  # (the backend label is there while several stores are)
        return [
            value
            for labels, value in scraper.scrape().get("maintguard_active", [])
            if labels.get("scope") == "" and str(path) in labels.get("backend", str(path))
        ]

    msync.set_maintenance_mode(True, backend)
    assert msync.get_state(backend).active
    assert active() == [1.0]
    elsewhere = [sys.executable, "-m", "maintguard", "--backend", f"file:{path}", "off"]
    subprocess.run(elsewhere, check=True, capture_output=True)
    time.sleep(0.3)  # older than its refresh_interval now
    assert active() == []  # not the stale "on"
    assert msync.get_state(backend).active is False  # read again: known, and shown again
    assert active() == [0.0]


def test_a_forked_child_starts_counting_from_zero(tmp_path: Path) -> None:
    # A preloaded server's workers are forked: each must report its own counts, not the
    # parent's again.
    code = """
import os, sys
from prometheus_client import CollectorRegistry, generate_latest
from maintguard import sync, not_during_maintenance
from maintguard.backends import MemoryBackend
from maintguard.metrics import prometheus
registry = CollectorRegistry()
prometheus.instrument(registry)
backend = MemoryBackend()
sync.set_maintenance_mode(True, backend)
not_during_maintenance(backend=backend, policy="skip")(lambda: None)()
parent = 'maintguard_jobs_total{outcome="skipped"} 1.0' in generate_latest(registry).decode()
pid = os.fork()
if pid == 0:
    text = generate_latest(registry).decode()
    os._exit(0 if 'maintguard_jobs_total{outcome="skipped"} 0.0' in text else 1)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) if parent else 2)
"""
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path).returncode == 0
