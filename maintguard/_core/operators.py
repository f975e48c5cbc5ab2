"""Operators' writes: the explicit state, and removing other processes' hold records.

They go through the same ordered writes as this process's own record (:mod:`.persist`),
so a result that lands late never undoes a newer one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection
from typing import Any

from .._state import ExplicitState, WindowRecord
from .._windows import LIMIT
from ..backends._writes import PutHold, PutWindow, SetExplicit, Write
from ..exceptions import MaintGuardError, ReadOnlyBackendError
from . import io
from .drive import ASYNC
from .persist import Persisting
from .reading import as_backend_error
from .stack import to_datetime

__all__ = ["Operators", "read_only_error"]


class Operators(Persisting):
    """The operators' writes of a scope controller."""

    async def set_explicit(self, explicit: ExplicitState) -> None:
        """Set the explicit (operator) state; holds are not touched. ``since`` is kept
        when the state is in force already."""
        await self._operator_write(
            lambda: SetExplicit(explicit, to_datetime(self.store.clock())), "writing the state"
        )

    async def remove_holds(self, hold_ids: Collection[str]) -> None:
        """Remove other processes' hold records from this scope (an operator's forced off).

        A holder that still runs writes its record again as soon as it sees it gone (a live
        holder never loses its hold to a lost record); this is for holders that died or
        hang. This process's own record is left to its frames.
        """
        for hold_id in hold_ids:
            if hold_id != self.hold_id:
                await self._operator_write(
                    functools.partial(self._removal, hold_id), f"removing hold {hold_id}"
                )

    async def put_window(self, window_id: str, record: WindowRecord | None) -> bool:
        """Store window ``record`` (``None``: remove window ``window_id``); whether the
        window was there before."""
        write = PutWindow(window_id, record, LIMIT)
        await self._operator_write(
            lambda: write, f"{'removing' if record is None else 'storing'} window {window_id}"
        )
        return write.found

    def _removal(self, hold_id: str) -> PutHold:
        return PutHold(hold_id, None, to_datetime(self.store.clock()), self.backend.lease_ttl)

    async def _operator_write(self, make: Callable[[], Write], doing: str) -> None:
        if self.backend.read_only:
            raise read_only_error(self.backend, self.scope)
        turn, build = self._numbered(make)
        try:
            new = await io.update(ASYNC, self.backend, self.scope, build, self.store)
        except MaintGuardError:
            raise
        except Exception as exc:
            raise as_backend_error(exc, f"{self.label}: {doing} failed") from exc
        self.store.used = True
        with self._lock:
            change = self._apply_write(new, turn)
        self._announce(change, None)
        wake = self.store.wake_watcher
        if wake is not None:  # its next wake-up may now come too late (a window, an until)
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                wake()


def read_only_error(backend: Any, scope: str | None) -> ReadOnlyBackendError:
    make = getattr(backend, "_read_only_error", None)
    if make is not None:
        return make(scope)  # type: ignore[no-any-return]
    return ReadOnlyBackendError(f"{backend.describe()} cannot be written")
