"""Prometheus: a collector of maintguard's gauges, counters and drain histogram.

>>> from maintguard.metrics.prometheus import instrument
>>> collector = instrument()  # the global prometheus_client.REGISTRY

``pip install 'maintguard[prometheus]'``. Everything is read when the registry is
collected (a scrape): gauges from the state this process keeps in memory, counters and
the histogram from its tally (:mod:`maintguard._core.tally`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from .._core.tally import DRAIN_BUCKETS, OUTCOMES, Reading, counts
from ..exceptions import ConfigurationError
from . import _gauges

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "maintguard.metrics.prometheus needs prometheus_client: "
        "pip install 'maintguard[prometheus]'"
    ) from exc

__all__ = ["MaintguardCollector", "instrument"]

_collectors: weakref.WeakKeyDictionary[CollectorRegistry, MaintguardCollector] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


class MaintguardCollector(Collector):
    """maintguard's metrics, read at collection time (see :mod:`maintguard.metrics`)."""

    def describe(self) -> Iterable[Metric]:
        # The names, without reading anything: registering checks them for collisions.
        return list(self._families([], counts.read()))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(_gauges.read(), counts.read()))

    def _families(self, scopes: list[_gauges.ScopeGauges], tally: Reading) -> Iterable[Metric]:
        names = ["backend", "scope"] if any(s.backend is not None for s in scopes) else ["scope"]

        def values(s: _gauges.ScopeGauges) -> list[str]:
            return [s.backend or "", s.scope] if len(names) == 2 else [s.scope]

        active = GaugeMetricFamily(
            "maintguard_active", "1 while maintenance is on for the scope, else 0", labels=names
        )
        phase = GaugeMetricFamily(
            "maintguard_phase",
            "The scope's phase: 1 for the current one, 0 for the others",
            labels=[*names, "phase"],
        )
        holds = GaugeMetricFamily(
            "maintguard_holds", "Live maintenance holds on the scope", labels=names
        )
        start = GaugeMetricFamily(
            "maintguard_next_window_start_seconds",
            "Start (Unix seconds) of the planned window in force, or else the next",
            labels=names,
        )
        end = GaugeMetricFamily(
            "maintguard_next_window_end_seconds",
            "End (Unix seconds) of the planned window in force, or else the next",
            labels=names,
        )
        for s in scopes:
            own = values(s)
            active.add_metric(own, 1.0 if s.active else 0.0)
            for value in _gauges.PHASES:
                phase.add_metric([*own, value], 1.0 if value == s.phase else 0.0)
            holds.add_metric(own, float(s.holds))
            if s.next_start is not None and s.next_end is not None:
                start.add_metric(own, s.next_start)
                end.add_metric(own, s.next_end)
        yield from (active, phase, holds, start, end)
        refused = CounterMetricFamily(
            "maintguard_requests_refused",
            "Requests the middleware answered with a maintenance response, by the scope shown",
            labels=["scope"],
        )
        for scope, count in sorted(tally.refused.items()):
            refused.add_metric([scope], float(count))
        jobs = CounterMetricFamily(
            "maintguard_jobs",
            "Guarded calls that met maintenance, by outcome (waited, skipped, refused)",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            jobs.add_metric([outcome], float(tally.jobs[outcome]))
        yield refused
        yield jobs
        yield CounterMetricFamily(
            "maintguard_backend_errors",
            "Backend reads and writes that failed",
            value=float(tally.backend_errors),
        )
        cumulative = 0
        buckets = []
        for bound, count in zip([*DRAIN_BUCKETS, float("inf")], tally.drain_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        yield HistogramMetricFamily(
            "maintguard_drain_seconds",
            "How long drains waited for in-flight work (finished or timed out)",
            buckets=buckets,
            sum_value=tally.drain_sum,
        )


def instrument(registry: CollectorRegistry | None = None) -> MaintguardCollector:
    """Register maintguard's collector on ``registry`` (default: prometheus_client's global
    ``REGISTRY``) and turn counting on; return the collector. Called again for the same
    registry, it returns the collector registered there."""
    if registry is None:
        registry = REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise ConfigurationError(
            "registry must be a prometheus_client.CollectorRegistry (None for the global "
            f"prometheus_client.REGISTRY), not {registry!r}; for OpenTelemetry use "
            "maintguard.metrics.otel.instrument(meter_provider)"
        )
    with _lock:
        found = _collectors.get(registry)
        if found is None:
            found = MaintguardCollector()
            registry.register(found)
            _collectors[registry] = found
        counts.on = True
    return found
