"""Writing this process's hold record, in order, and renewing its lease.

Writes *reconcile*: a write stores this process's record as the stack is when the write's
turn comes (under the store's write lock), so writes that land in any order still leave
the store matching the stack; they are numbered as they run, so a result applied late
never undoes a newer one, and a read that started before a write landed never replaces
what the write stored. While a record is stored, its lease is renewed every
``lease_ttl / 3`` seconds on the I/O loop and the store is watched (a record that vanished
is written again as soon as a read sees it gone).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._state import EventKind, StoredState
from ..backends._writes import PutHold, Write
from . import dispatch, io
from .decide import Change
from .drive import ASYNC, BLOCKING, Runtime, drive
from .identity import HOST, pid
from .reading import as_backend_error
from .shared import Scope
from .stack import to_datetime

__all__ = ["Persisting"]

logger = logging.getLogger("maintguard")
Turn = list[Any]  # [number, the write made, when it began (store clock)]


class Persisting(Scope):
    """The writes and lease renewals of a scope controller."""

    _renewal: object | None = None  # the running renewal's token
    _unwatch: Callable[[], None] | None = None  # the store is watched while held

    def _hold_write(self, renewal: bool) -> PutHold:
        # Under the store's write lock, once this write's turn has come: store the stack as
        # it is now (this is what makes writes reconcile).
        now = self.store.clock()
        ttl = self.backend.lease_ttl
        with self._lock:
            held = self.hold_record(now, ttl, HOST, pid())
        return PutHold(self.hold_id, held, to_datetime(now), ttl, renewal and held is not None)

    async def write(self, rt: Runtime, *, renewal: bool = False) -> None:
        """Write this process's record as the stack has it (one counted write), waiting
        as ``rt`` does."""
        try:
            turn, build = self._numbered(functools.partial(self._hold_write, renewal))
            new = await io.update(rt, self.backend, self.scope, build, self.store)
        except BaseException as exc:
            self._write_failed()
            if isinstance(exc, Exception):
                raise as_backend_error(exc, f"{self.label}: writing the hold failed") from exc
            raise
        self._write_done(new, turn)

    def write_blocking(self) -> None:
        """The same from a thread that may block (sync faces)."""
        drive(self.write(BLOCKING))

    def _write_failed(self) -> None:
        with self._lock:
            self.write_failed()

    def _numbered(self, make: Callable[[], Write]) -> tuple[Turn, io.Build]:
        # Writes of a store run one at a time; number them as they run, so that results
        # applied out of order (their callers resume in any order) never undo a newer one.
        turn: Turn = [0, None, 0.0]

        def build() -> Write:
            turn[0] = next(self.store.sequence)
            turn[2] = self.store.clock()
            turn[1] = write = make()
            return write

        return turn, build

    def _apply_write(self, new: StoredState, turn: Turn) -> Change:
        # Under the lock.
        store = self.store
        return self.decide_written(
            turn[0],
            new,
            turn[2],
            store.worker_id,
            store.clock(),
            self.parent_phase(),
            time.monotonic(),
        )

    def _write_done(self, new: StoredState, turn: Turn) -> None:
        self.store.used = True
        if turn[1].lost:
            logger.warning(
                "%s: this process's hold record had gone from the store (its lease ran out "
                "while renewals failed, the store was flushed or restarted, or an operator "
                "removed it with `maintguard off --force`); written again: this process "
                "still holds maintenance",
                self.label,
            )
        with self._lock:
            self._inflight -= 1
            change = self._apply_write(new, turn)
            renewal = None
            holding = self.holding()
            if self._renewal is None and holding:
                renewal = self._renewal = object()
            # While this process holds here the store is watched, so a record that vanished
            # (a restarted or flushed store, `off --force`) is written again as soon as a
            # read sees it gone, not only at the next renewal.
            watched = self._unwatch is not None
            unwatch = None
            if watched and not holding and not self.writing():
                unwatch, self._unwatch = self._unwatch, None
        if renewal is not None:
            io.background(_renew(weakref.ref(self), renewal, self.backend.lease_ttl / 3))
        if holding and not watched:
            self._watch()
        if unwatch is not None:
            unwatch()
        self._announce(change, None)

    def _watch(self) -> None:
        stop = self.store.watch()
        with self._lock:
            if self._unwatch is None and self.holding():
                self._unwatch = stop
                weakref.finalize(self, stop)  # (stop is idempotent)
                return
        stop()  # another write started it first, or the hold ended meanwhile

    def forget_writes(self) -> None:
        """A forked child: renew nothing of the parent's, stop watching for its holds."""
        self._renewal = None
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:  # the parent's holds kept the store watched, not ours
            unwatch()

    def release_failed(self, exc: BaseException, entering: bool = False) -> None:
        if entering:
            # The entry's own error reached the holder; its write most likely never landed.
            logger.info(
                "%s: after a failed entry, could not check that no hold record was left "
                "(%s); if one was, it stops counting when its lease runs out in %.0fs",
                self.label,
                exc,
                self.backend.lease_ttl,
            )
            return
        logger.warning(
            "%s: could not remove this process's hold record (%s); other processes stop "
            "counting it when its lease runs out in %.0fs",
            self.label,
            exc,
            self.backend.lease_ttl,
        )

    def release_all(self) -> None:
        """At interpreter exit: end every frame still entered here and remove the record."""
        with self._lock:
            if not self.claim_release_all():
                return
            self.store.held.discard(self)
        self._release_quietly()

    def _release_quietly(self) -> None:
        try:
            self.write_blocking()
        except BaseException as exc:  # on a way out already: say so; the lease ends it
            self.release_failed(exc)


async def _renew(ref: weakref.ref[Persisting], renewal: object, period: float) -> None:
    """On the I/O loop: renew a controller's lease every ``period`` while it holds frames.

    A tick that finds nothing held ends the renewal, so a hold entered soon after a release
    (a job in a loop) starts nothing new. Between ticks the controller is held only weakly:
    an idle one is freed, and the next tick ends.
    """
    try:
        while True:
            await asyncio.sleep(period)
            ctrl = ref()
            if ctrl is None:
                return
            with ctrl._lock:
                if ctrl._renewal is not renewal:
                    return
                if ctrl.claim_renewal() is None:
                    ctrl._renewal = None  # decided with the lock: a new hold starts anew
                    return
            try:
                await ctrl.write(ASYNC, renewal=True)
            except Exception as exc:
                logger.warning("%s; retrying in %.1fs", exc, period)
                dispatch.emit(
                    [ctrl._event(EventKind.BACKEND_ERROR, error=as_backend_error(exc, ""))]
                )
            del ctrl
    finally:  # cancelled (interpreter exit): a later hold starts a renewal of its own
        ctrl = ref()
        if ctrl is not None:
            with ctrl._lock:
                if ctrl._renewal is renewal:
                    ctrl._renewal = None
