"""OpenTelemetry: maintguard's gauges, counters and drain histogram on a meter.

>>> from maintguard.metrics.otel import instrument
>>> instruments = instrument()  # a meter of the global MeterProvider

``pip install 'maintguard[otel]'`` (the API; an SDK or a distribution exports them). The
gauges and counters are observable instruments whose callbacks read, at collection time,
the state this process keeps in memory and its tally (:mod:`maintguard._core.tally`); the
drain histogram is recorded when a drain ends. Names are the Prometheus ones, counters
without ``_total`` (an exporter to Prometheus adds it): ``maintguard_active``,
``maintguard_phase``, ``maintguard_holds``, ``maintguard_next_window_start_seconds``,
``maintguard_next_window_end_seconds``, ``maintguard_requests_refused``,
``maintguard_jobs``, ``maintguard_backend_errors``, ``maintguard_drain_seconds``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable

from .._core.tally import DRAIN_BUCKETS, OUTCOMES, counts
from ..exceptions import ConfigurationError
from . import _gauges

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "maintguard.metrics.otel needs opentelemetry-api: pip install 'maintguard[otel]'"
    ) from exc

__all__ = ["Instruments", "instrument"]

_instrumented: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()
_lock = threading.Lock()

Gauge = Callable[[_gauges.ScopeGauges], float | None]


def _gauge(value: Gauge) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        found = []
        for scope in _gauges.read():
            measured = value(scope)
            if measured is not None:
                found.append(Observation(measured, scope.labels()))
        return found

    return callback


def _phases(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(1 if phase == scope.phase else 0, {**scope.labels(), "phase": phase})
        for scope in _gauges.read()
        for phase in _gauges.PHASES
    ]


def _refused(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(n, {"scope": scope}) for scope, n in counts.read().refused.items()]


def _jobs(options: CallbackOptions) -> Iterable[Observation]:
    jobs = counts.read().jobs
    return [Observation(jobs[outcome], {"outcome": outcome}) for outcome in OUTCOMES]


def _backend_errors(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(counts.read().backend_errors)]


class Instruments:
    """The instruments :func:`instrument` created on one meter provider's meter."""

    def __init__(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("maintguard")
        self.meter = meter
        self.gauges = [
            meter.create_observable_gauge(
                "maintguard_active",
                [_gauge(lambda s: 1 if s.active else 0)],
                description="1 while maintenance is on for the scope, else 0",
            ),
            meter.create_observable_gauge(
                "maintguard_phase",
                [_phases],
                description="The scope's phase: 1 for the current one, 0 for the others",
            ),
            meter.create_observable_gauge(
                "maintguard_holds",
                [_gauge(lambda s: s.holds)],
                description="Live maintenance holds on the scope",
            ),
            meter.create_observable_gauge(
                "maintguard_next_window_start_seconds",
                [_gauge(lambda s: s.next_start)],
                unit="s",
                description="Start (Unix seconds) of the planned window in force, or else the next",
            ),
            meter.create_observable_gauge(
                "maintguard_next_window_end_seconds",
                [_gauge(lambda s: s.next_end)],
                unit="s",
                description="End (Unix seconds) of the planned window in force, or else the next",
            ),
        ]
        self.counters = [
            meter.create_observable_counter(
                "maintguard_requests_refused",
                [_refused],
                description="Requests the middleware answered with a maintenance response, "
                "by the scope shown",
            ),
            meter.create_observable_counter(
                "maintguard_jobs",
                [_jobs],
                description="Guarded calls that met maintenance, by outcome "
                "(waited, skipped, refused)",
            ),
            meter.create_observable_counter(
                "maintguard_backend_errors",
                [_backend_errors],
                description="Backend reads and writes that failed",
            ),
        ]
        self.drain: Histogram = meter.create_histogram(
            "maintguard_drain_seconds",
            unit="s",
            description="How long drains waited for in-flight work (finished or timed out)",
            explicit_bucket_boundaries_advisory=DRAIN_BUCKETS,
        )

    def record_drain(self, seconds: float) -> None:
        self.drain.record(seconds)


def instrument(meter_provider: MeterProvider | None = None) -> Instruments:
    """Create maintguard's instruments on a meter of ``meter_provider`` (default: the
    global one, ``opentelemetry.metrics.get_meter_provider()``) and turn counting on.
    Called again for the same provider, it returns the instruments made there."""
    if meter_provider is None:
        meter_provider = get_meter_provider()
    if not isinstance(meter_provider, MeterProvider):
        raise ConfigurationError(
            "meter_provider must be an opentelemetry.metrics.MeterProvider (such as the SDK's "
            "opentelemetry.sdk.metrics.MeterProvider; None for the global one), not "
            f"{meter_provider!r}; for a prometheus_client registry use "
            "maintguard.metrics.prometheus.instrument(registry)"
        )
    with _lock:
        found = _instrumented.get(meter_provider)
        if found is None:
            found = _instrumented[meter_provider] = Instruments(meter_provider)
            counts.drain_hooks.append(found.record_drain)
        counts.on = True
    return found
