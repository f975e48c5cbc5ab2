"""Process lifecycle: what runs at interpreter exit and in a forked child, in one order.

Modules register a callback for a named step; this module runs the steps in the order
listed below (callbacks of one step in the order they were registered), from one
``atexit`` hook and one ``os.register_at_fork`` hook. A callback that raises is logged and
the next step still runs. It imports nothing of maintguard, so any module may use it.

At exit (:data:`EXIT_ORDER`):

1. ``holds`` (registry): holds still entered (a daemon thread's, an abandoned generator's)
   end with the process: their records are removed rather than left to their lease;
2. ``presence`` (presence): this process's presence records are removed (drains elsewhere
   stop waiting for it);
3. ``listeners`` (dispatch): events of those releases reach the listeners;
4. ``webhooks`` (hooks): what the listeners queued for webhooks is posted (2 s in all);
5. ``ioloop`` (the I/O loop): writes still running land, then the loop stops. Last, since
   every step before may write through it.

In a forked child (:data:`FORK_ORDER`), lowest layers first, so each step finds the ones it
builds on already renewed:

1. ``identity``: the child's own pid in the records it writes;
2. ``ioloop``: no loop thread or worker threads survive a fork; new ones start on use;
3. ``file``, ``memory``: the file and memory backends' locks (held by parent threads) are
   made anew;
4. ``listeners``: a new dispatcher queue and thread;
5. ``webhooks``: each webhook's queue is emptied; a new worker thread starts on use;
6. ``io``: the I/O loop's per-store asyncio locks are forgotten;
7. ``stores``: the child holds nothing its parent held, renews none of its records;
8. ``watchers``: stores watched in the parent are watched again, on the child's loop;
9. ``tally``: the metrics tally starts from zero, with a new lock (the counts are the parent's).
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable

__all__ = ["EXIT_ORDER", "FORK_ORDER", "after_fork", "at_exit", "run_at_exit", "run_after_fork"]

logger = logging.getLogger("maintguard")

EXIT_ORDER = ("holds", "presence", "listeners", "webhooks", "ioloop")
FORK_ORDER = (
    "identity",
    "ioloop",
    "file",
    "memory",
    "listeners",
    "webhooks",
    "io",
    "stores",
    "watchers",
    "tally",
)

Callback = Callable[[], None]
_exit: dict[str, list[Callback]] = {step: [] for step in EXIT_ORDER}
_fork: dict[str, list[Callback]] = {step: [] for step in FORK_ORDER}


def at_exit(step: str, callback: Callback) -> None:
    """Run ``callback`` at interpreter exit, in step ``step`` of :data:`EXIT_ORDER`."""
    _register(_exit, step, callback)


def after_fork(step: str, callback: Callback) -> None:
    """Run ``callback`` in a forked child, in step ``step`` of :data:`FORK_ORDER`."""
    _register(_fork, step, callback)


def _register(steps: dict[str, list[Callback]], step: str, callback: Callback) -> None:
    if step not in steps:
        raise ValueError(f"unknown lifecycle step {step!r}: one of {', '.join(steps)}")
    steps[step].append(callback)


def run_at_exit() -> None:
    _run(_exit, "at exit")


def run_after_fork() -> None:
    _run(_fork, "after fork")


def _run(steps: dict[str, list[Callback]], when: str) -> None:
    for step, callbacks in steps.items():
        for callback in list(callbacks):
            try:
                callback()
            except Exception:  # the steps after it still run
                logger.exception("maintguard: %s, step %r failed", when, step)


atexit.register(run_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=run_after_fork)
