"""Metrics: maintenance state and counts for Prometheus and OpenTelemetry (optional extras).

- :func:`maintguard.metrics.prometheus.instrument` (``pip install 'maintguard[prometheus]'``)
  registers a collector on a ``prometheus_client`` registry;
- :func:`maintguard.metrics.otel.instrument` (``pip install 'maintguard[otel]'``) creates
  the instruments on a meter of an OpenTelemetry ``MeterProvider``.

Either turns counting on. Gauges (``maintguard_active``, ``maintguard_phase``,
``maintguard_holds``, ``maintguard_next_window_start_seconds`` / ``_end_seconds``) are read
at collection time from the state this process keeps in memory, for every store it knows:
nothing is added to the request path for them, and a collection makes no backend call.
Counters (refused requests, guarded jobs by outcome, backend errors) and the drain
histogram cost one increment where they happen, never on the off path.

Importing :mod:`maintguard` or this package imports neither prometheus_client nor
opentelemetry.
"""
