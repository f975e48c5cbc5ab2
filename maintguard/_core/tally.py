"""Tallies for metrics: plain in-process counts, read by :mod:`maintguard.metrics`.

One job: counting. The faces and the core count what happened where it happens, each
with one increment under a lock of its own (sync guards in threads, the I/O loop and
event loops count at once), and only once :func:`maintguard.metrics.prometheus.instrument`
or :func:`maintguard.metrics.otel.instrument` has turned counting on (:attr:`Tally.on`):
until then a counting site costs one attribute check, and the off path (a request let
through while maintenance is off, a guarded call admitted while off) counts nothing at all.

- refused requests, by the scope the maintenance response showed (``""``: global);
- guarded jobs by outcome: ``waited`` (a call that had to wait, once it runs),
  ``skipped``, ``refused`` (:class:`~maintguard.UnderMaintenance` raised);
- failed backend operations (reads and writes, counted where the core makes them);
- drain durations (seconds from the start of the wait to its end, finished or timed
  out) as a histogram: a count per bucket, their sum and count. Listeners of drain ends
  (an OpenTelemetry histogram) register in :attr:`Tally.drain_hooks`; they are called at a
  drain's end only, never on the hold path.

Nothing here imports prometheus_client or opentelemetry: the metrics modules read these
values at collection time.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable

from . import lifecycle

__all__ = ["DRAIN_BUCKETS", "OUTCOMES", "Reading", "Tally", "counts"]

logger = logging.getLogger("maintguard")

DRAIN_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds (seconds) of the drain histogram's buckets; ``+Inf`` follows them."""
OUTCOMES = ("waited", "skipped", "refused")
"""What became of a guarded call that met maintenance."""


class Tally:
    """The process's counts. Read them with :meth:`read` (a consistent copy)."""

    def __init__(self) -> None:
        self.on = False  # counting: turned on by the metrics modules' instrument()
        self._lock = threading.Lock()
        self.refused: dict[str, int] = {}
        self.jobs: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.backend_errors = 0
        self.drain_buckets = [0] * (len(DRAIN_BUCKETS) + 1)  # per bucket (not cumulative)
        self.drain_sum = 0.0
        self.drain_count = 0
        self.drain_hooks: list[Callable[[float], None]] = []

    def forked(self) -> None:
        """In a forked child: the counts start from zero (the parent's are the parent's
        to report: a preloaded server's workers would each report them again), and the
        lock is new (a parent thread may have held it at the fork)."""
        self._lock = threading.Lock()
        self.refused = {}
        self.jobs = dict.fromkeys(OUTCOMES, 0)
        self.backend_errors = 0
        self.drain_buckets = [0] * (len(DRAIN_BUCKETS) + 1)
        self.drain_sum = 0.0
        self.drain_count = 0

    def request_refused(self, scope: str | None) -> None:
        label = scope or ""
        with self._lock:
            self.refused[label] = self.refused.get(label, 0) + 1

    def job(self, outcome: str) -> None:
        with self._lock:
            self.jobs[outcome] += 1

    def backend_error(self) -> None:
        with self._lock:
            self.backend_errors += 1

    def drained(self, seconds: float) -> None:
        """A drain ended after ``seconds`` (finished or timed out)."""
        with self._lock:
            self.drain_buckets[bisect.bisect_left(DRAIN_BUCKETS, seconds)] += 1
            self.drain_sum += seconds
            self.drain_count += 1
            hooks = list(self.drain_hooks)
        for hook in hooks:
            try:
                hook(seconds)
            except Exception:  # a metrics library's failure never fails the drain
                logger.exception("maintguard: recording a drain's duration failed")

    def read(self) -> Reading:
        """A consistent copy of every count."""
        with self._lock:
            return Reading(
                dict(self.refused),
                dict(self.jobs),
                self.backend_errors,
                tuple(self.drain_buckets),
                self.drain_sum,
                self.drain_count,
            )


class Reading:
    """The counts at one moment (see :meth:`Tally.read`)."""

    __slots__ = (
        "backend_errors",
        "drain_buckets",
        "drain_count",
        "drain_sum",
        "jobs",
        "refused",
    )

    def __init__(
        self,
        refused: dict[str, int],
        jobs: dict[str, int],
        backend_errors: int,
        drain_buckets: tuple[int, ...],
        drain_sum: float,
        drain_count: int,
    ) -> None:
        self.refused = refused
        self.jobs = jobs
        self.backend_errors = backend_errors
        self.drain_buckets = drain_buckets
        self.drain_sum = drain_sum
        self.drain_count = drain_count


counts = Tally()
"""The one tally of this process."""


def _after_fork_in_child() -> None:
    counts.forked()


lifecycle.after_fork("tally", _after_fork_in_child)
