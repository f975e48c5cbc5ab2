"""Decisions of one (store, scope) in this process: plain methods over values, no I/O.

A :class:`Book` keeps what this process knows of one scope (its hold stack, the frames
being written, the stored state last read, the phase) and decides: entering, committing,
aborting and leaving a frame, starting and ending a drain, taking a read. Each method is
given the clock (a value, or the function to read it when only some outcomes need it) and
returns what to do: the frame key whose record must be written first, whether a write
must follow, the transition to tell. It never locks, writes, logs or calls a listener: the
controller serialises the calls (its thread lock) and applies what they return
(:mod:`.persist` writes and renews leases, :mod:`.reading` follows ``on_error``, the
controller tells listeners).

The phase rule itself is :func:`maintguard._state.phase_of`, stated once; here it is
applied to what this process knows (its frames, the records read, the global scope's
phase for a named one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from .._state import HoldRecord, Phase, StoredState, phase_of, windows_in_force
from .._windows import planned
from .stack import Details, Frame, HoldStack, Presents, details_of, new_key, record, to_datetime
from .stored import judged, lease_due, sane

__all__ = ["NO_CHANGE", "UNKNOWN", "Book", "Change", "Transition", "first_phase"]

Transition = tuple[Phase, Phase] | None
Change = tuple[Transition, bool]
"""``(transition or None, whether this scope's own activity changed)``: what to tell."""
NO_CHANGE: Change = (None, False)
UNKNOWN = ("unknown",)
"""``Book.written`` when the record as stored is not known: the next change writes it."""
_ON, _OFF, _DRAINING = Phase.ON, Phase.OFF, Phase.DRAINING
_FIRST_PHASE = {drain: phase_of(False, (drain,)) for drain in (False, True)}
"""The phase a first frame brings when nothing else keeps the scope on: the phase rule
with that frame as the only source (it drains or its body runs)."""
_FIRST_CHANGE: dict[tuple[Phase, bool], Change] = {
    (previous, drain): ((previous, phase), True)
    for previous in Phase
    for drain, phase in _FIRST_PHASE.items()
}
"""What a first frame tells, by the phase before and whether it drains (built once)."""
_TO_OFF: dict[Phase, tuple[Transition, bool]] = {
    previous: ((previous, _OFF), True) for previous in Phase
}
"""What the last frame of the global scope tells, by the phase before (built once)."""
_NOT_HERE: tuple[None, bool, Change] = (None, False, NO_CHANGE)


def first_phase(drain: bool) -> Phase:
    return _FIRST_PHASE[drain]


class Book:
    """What this process knows and decides about one (store, scope).

    ``stack``: entered frames (readers see them); ``entering``: frames whose record is
    being written (nobody sees them yet). ``version`` bumps on every change a reader
    could see. ``written`` is what the stored record presents as last written
    (:data:`UNKNOWN` after a failed write); ``inflight`` counts writes claimed and not
    finished.
    """

    label = "a stored maintenance state"  # what warnings about the stored copy name

    def __init__(self, stores_holds: bool, hold_id: str) -> None:
        self._stores_holds = stores_holds
        self.hold_id = hold_id
        self.stack = HoldStack()
        self.entering = HoldStack()
        self.stored: StoredState | None = None  # None: never read
        self.quiet_until = -math.inf  # clock time before which no window of `stored` is on
        self.lease_due = math.inf  # clock time when a lease in the copy runs out: read then
        self.read_at = -math.inf  # monotonic time of the last read (or write) taken
        self.version = 0
        self.writes = 0  # completed writes: a read that started before one is dropped
        self.active = False
        self.own_active = False  # active through this scope's own state (not the parent's)
        self.phase = Phase.OFF
        self._written: tuple[object, ...] | None = None  # presented details last stored
        self._inflight = 0
        self._applied = 0  # the newest write whose result this book holds
        self.drain_token: str | None = None  # while drains wait here: what others report for
        self._drains = 0  # drains waiting for in-flight work before their bodies run
        self._draining: set[int] = set()  # the entered frames of those drains
        self._drain_seq = 0

    def forget_holds(self, hold_id: str) -> None:
        """A forked child: none of the parent's frames, drains or writes are this
        process's; the stored state read stays (the parent's record in it is now another
        process's hold)."""
        self.stack.clear()
        self.entering.clear()
        self.hold_id = hold_id
        self._written = None
        self._inflight = 0
        self.drain_token = None
        self._drains = 0
        self._draining = set()
        self.version += 1

    # -- the hold path -----------------------------------------------------------------

    def decide_enter(
        self,
        presents: Presents,
        keys: list[int],
        drain: bool,
        clock: Callable[[], float],
        parent: Phase = _OFF,
    ) -> int | Change:
        """One more entry of the hold object whose frames here are ``keys`` (oldest first).

        Returns a frame key (``int``) when that frame's record must be written first (then
        :meth:`decide_commit`, or :meth:`decide_abort` on any failure): nobody sees it
        until then. Else the frame is entered (its key appended to ``keys``, or one more
        entry counted on the object's top frame) and the :data:`Change` says what to tell.
        ``parent``: the global scope's phase, for a named scope.
        """
        stack = self.stack
        if keys and keys[-1] == stack.top:
            # The object entered again while its own frame is the top: count on that frame
            # (what the stack presents does not change).
            stack.frames[keys[-1]][2] += 1
            if drain:
                self._draining.add(keys[-1])
            return NO_CHANGE
        started = clock()
        key = new_key()
        if drain:
            self._draining.add(key)
        if self._stores_holds:
            self.entering.push(key, presents, started)
            if self._inflight or self._presented() != self._written:
                self._inflight += 1
                return key
            self.entering.remove(key)
        keys.append(key)
        self.version += 1
        if not stack.push(key, presents, started):
            if self.phase is _DRAINING and not drain:  # a body runs now: ON, by the rule
                return self.recompute(started, parent)
            return NO_CHANGE
        if not self.active:  # the first frame, and nothing else keeps the scope on
            self.active = self.own_active = True
            previous = self.phase
            self.phase = _FIRST_PHASE[drain]
            return _FIRST_CHANGE[previous, drain]
        return self.recompute(started, parent)  # on through something else: the rule

    def decide_commit(self, key: int, keys: list[int], now: float, parent: Phase) -> Change | None:
        """The record of entering frame ``key`` is stored: readers see it from now on.
        ``None`` when the frame is not here (a fork came between); else what to tell
        (:data:`NO_CHANGE` unless it is the first frame)."""
        frame = self.entering.remove(key)
        if frame is None:
            return None
        keys.append(key)
        self.version += 1
        if self.stack.push(key, frame[0], frame[1]):
            return self.recompute(now, parent)
        return NO_CHANGE

    def decide_abort(self, key: int) -> None:
        """An entry failed: forget the frame (nobody saw it); a write must follow (counted)."""
        self.entering.remove(key)
        self._draining.discard(key)
        self._inflight += 1

    def decide_leave(
        self,
        keys: list[int],
        clock: Callable[[], float],
        parent: Phase | None,
        frame_key: int = 0,
    ) -> tuple[Frame | None, bool, Change] | None:
        """Count the newest entry of ``keys`` out (of frame ``frame_key`` when given and
        among ``keys``: the exiting task's own, for an object entered by several tasks).
        ``parent``: the global scope's phase for a named scope, ``None`` for the global
        scope itself.

        ``None`` when ``keys`` is empty (exited more often than entered). Else
        ``(frame, write, change)``: the frame counted (``None`` when it is not here,
        entered before this process forked), whether the stored record must follow, what
        to tell. A frame still counted (``frame[2] > 0``) stays and changes nothing.
        """
        if not keys:
            return None
        key = keys[-1]
        if frame_key and frame_key != key and frame_key in keys:  # (rare: shared objects)
            keys.reverse()
            keys.remove(frame_key)  # its newest entry
            keys.reverse()
            keys.append(key := frame_key)
        stack = self.stack
        frame = stack.remove(key)
        if frame is None:
            keys.pop()
            return _NOT_HERE
        if frame[2] > 0:  # counted down: the frame stays
            return frame, False, NO_CHANGE
        keys.pop()
        if self._draining:  # (left while draining: a timed-out drain)
            self._draining.discard(key)
        self.version += 1
        write = self._stores_holds and self.claim_write()
        if stack.frames:
            if self._draining and self.phase is _ON:  # the body that ran has left: the rule
                return frame, write, self.recompute(clock(), _OFF if parent is None else parent)
            return frame, write, NO_CHANGE
        stored = self.stored
        if parent is None and (
            stored is None
            or not (
                stored.holds
                or stored.explicit.active
                or (
                    stored.windows
                    and (now := clock()) >= self.quiet_until  # (inline: O(1) when quiet)
                    and self.window_on(now)
                )
            )
        ):
            # The global scope, and nothing else can hold it: off (the rule, no source).
            self.own_active = False
            if self.active:
                self.active = False
                previous = self.phase
                self.phase = _OFF
                return frame, write, _TO_OFF[previous]
            self.phase = _OFF
            return frame, write, (None, True)
        return frame, write, self.recompute(clock(), _OFF if parent is None else parent)

    def window_on(self, now: float) -> bool:
        """Whether a window of the stored copy is in force at ``now`` (clock seconds), as
        planned. Remembers until when none can be (the next start), so that a hold's last
        exit asks this in O(1) while no window is near."""
        if now < self.quiet_until or self.stored is None:
            return False
        at = to_datetime(now)
        quiet = math.inf
        for window in self.stored.windows:
            occurrence = window.current(at)
            if occurrence is not None:
                if occurrence[0] <= at:
                    self.quiet_until = -math.inf  # on: ask again at every exit meanwhile
                    return True
                quiet = min(quiet, occurrence[0].timestamp())
        self.quiet_until = quiet
        return False

    def holding(self) -> bool:
        return bool(self.stack) or bool(self.entering)

    def _presented(self) -> tuple[object, ...] | None:
        details = details_of(self.stack, self.entering)
        if details is None:
            return None
        token = self.drain_token
        return (*details.presented(), token, token is not None and self._body_runs())

    def _body_runs(self) -> bool:
        # A frame of ours runs its body (it is not one waiting in a drain).
        frames = self.stack.frames
        return len(frames) > sum(1 for key in self._draining if key in frames)

    # -- drains --------------------------------------------------------------------------

    def decide_begin_drain(self, now: float, parent: Phase) -> tuple[str, Change]:
        """A hold about to be entered waits for in-flight work first: until
        :meth:`decide_end_drain`, this process's record asks others to report. Returns
        the drain's token and what to tell."""
        self._drains += 1
        if self.drain_token is None:
            self._drain_seq += 1
            self.drain_token = f"{self.hold_id}:{self._drain_seq}"
        self.version += 1
        return self.drain_token, self.recompute(now, parent)

    def decide_end_drain(self, key: int | None, now: float, parent: Phase) -> tuple[bool, Change]:
        """A drain is over: whether the stored record must follow, and what to tell."""
        self._drains -= 1
        if key is not None:
            self._draining.discard(key)
        self.version += 1
        write = False
        if self._drains == 0 and self.drain_token is not None:
            self.drain_token = None
            write = self.claim_write()
        return write, self.recompute(now, parent)

    # -- writes to claim -------------------------------------------------------------------

    def claim_write(self) -> bool:
        """True (and one more write counted) when this process's stored record must be
        written to match the stack, or a write is already under way."""
        write = self._stores_holds and (self._inflight > 0 or self._presented() != self._written)
        if write:
            self._inflight += 1
        return write

    def claim_sync(self) -> bool:
        """Holding, and the stored record no longer matches the stack (a write counted)."""
        return self.holding() and self.claim_write()

    def release_unwritten(self) -> bool:
        """Nothing is held, but the last release could not be written: the stored record
        may still be there."""
        return self._written is UNKNOWN and not self.holding()

    def claim_release_unwritten(self) -> bool:
        """A release failed and no write runs: True (one more write counted) to retry it."""
        claim = self.release_unwritten() and self._inflight == 0
        if claim:
            self._inflight += 1
        return claim

    def claim_lost_record(self) -> bool:
        """Holding, but the copy just read lacks this process's record: True (one more
        write counted) to write it again now."""
        stored = self.stored
        lost = (
            self._stores_holds
            and bool(self.stack.frames)
            and self._inflight == 0
            and stored is not None
            and all(h.id != self.hold_id for h in stored.holds)
        )
        if lost:
            self._inflight += 1
        return lost

    def claim_renewal(self) -> bool | None:
        """A renewal's tick: ``None`` when nothing is held nor left to retry (the renewal
        ends); else True, one more write counted."""
        if not self.holding() and not self.release_unwritten():
            return None
        self._inflight += 1
        return True

    def claim_release_all(self) -> bool:
        """At exit: forget every frame still entered; True (a write counted) when any was."""
        if not self.holding():
            return False
        self.stack.clear()
        self.entering.clear()
        self._draining.clear()
        self._inflight += 1
        return True

    def hold_record(self, now: float, lease_ttl: float, host: str, pid: int) -> HoldRecord | None:
        """The record to store now, as the stack is at this write's turn (writes landing in
        any order still leave the store matching the stack); None when nothing is held.
        Notes it as written."""
        details = details_of(self.stack, self.entering)
        drain = self.drain_token
        running = drain is not None and self._body_runs()
        self._written = None if details is None else (*details.presented(), drain, running)
        if details is None:
            return None
        return record(
            details,
            hold_id=self.hold_id,
            host=host,
            pid=pid,
            now=now,
            lease_ttl=lease_ttl,
            drain=drain,
            running=running,
        )

    def write_failed(self) -> None:
        self._inflight -= 1
        self._written = UNKNOWN

    def decide_written(
        self,
        turn: int,
        new: StoredState,
        began: float,
        worker: str,
        now: float,
        parent: Phase,
        mono: float,
    ) -> Change:
        """Take what write number ``turn`` (begun at ``began``) stored, unless a newer
        write's result is already here (writes' callers resume in any order)."""
        self.writes += 1
        if turn <= self._applied:
            return NO_CHANGE
        self._applied = turn
        return self.decide_read(new, began, worker, now, parent, mono)

    def writing(self) -> bool:
        return self._inflight > 0

    # -- reads -----------------------------------------------------------------------------

    def decide_read(
        self,
        stored: StoredState,
        at: float | None,
        worker: str,
        now: float,
        parent: Phase,
        mono: float,
    ) -> Change:
        """Take ``stored`` as what the store holds. ``at``: when the read (or write) that
        found it began, which judges other processes' leases in it; ``None``: not found in
        the store (``on_error``'s stand-in), no lease judged. ``mono``: monotonic now."""
        stored = planned(sane(stored), to_datetime(now), self.label, self.stored)  # windows
        if at is None:
            self.lease_due = math.inf
        else:
            stored = judged(stored, self.hold_id, worker, to_datetime(at))
            self.lease_due = lease_due(stored, self.hold_id, worker)
        self.stored = stored
        self.quiet_until = -math.inf
        self.read_at = mono
        self.version += 1
        return self.recompute(now, parent)

    # -- the phase -------------------------------------------------------------------------

    def recompute(self, now: float, parent: Phase) -> Change:
        """Is this scope on, through itself or (``parent``: the global scope's phase for
        a named scope, OFF for the global one) the scope it follows? The phase rule."""
        stored = self.stored
        explicit = False
        others: tuple[HoldRecord, ...] = ()
        if stored is not None and (stored.explicit.active or stored.holds or stored.windows):
            at = to_datetime(now)
            explicit = stored.explicit.in_force(at) or bool(windows_in_force((stored,), at))
            others = stored.holds
        own_phase = phase_of(explicit, self._sources(others))
        own = own_phase is not _OFF
        if parent is _OFF:
            phase = own_phase
        else:
            phase = phase_of(explicit, self._sources(others, parent is _DRAINING))
        own_changed = own is not self.own_active
        self.own_active = own
        self.active = phase is not _OFF
        if phase is self.phase:
            return (None, True) if own_changed else NO_CHANGE
        previous, self.phase = self.phase, phase
        return (previous, phase), own_changed

    def _sources(self, others: tuple[HoldRecord, ...], *parent: bool) -> Iterator[bool]:
        # Every hold known here, as the phase rule takes it: whether it still drains.
        # Another process's record in the copy counts: the read that brought it found it
        # live. This process's own record is its frames.
        if self.stack.frames:
            yield not self._body_runs()
        own = self.hold_id
        for h in others:
            if h.id != own:
                yield h.draining
        yield from parent

    # -- what readers see ------------------------------------------------------------------

    def level(self, now: float, host: str, pid: int) -> StoredState:
        """This scope's stored state with this process's own record as the stack has it."""
        stored = self.stored or _EMPTY
        details: Details | None = details_of(self.stack)
        holds = tuple(h for h in stored.holds if h.id != self.hold_id)
        if details is not None:
            # Draining as this process sees it: while every frame of ours still drains
            # (the stored record asks others to report while any does).
            drain = None if self._body_runs() else self.drain_token
            holds += (
                record(
                    details,
                    hold_id=self.hold_id,
                    host=host,
                    pid=pid,
                    now=now,
                    lease_ttl=None,
                    drain=drain,
                ),
            )
        return StoredState(stored.explicit, holds, stored.workers, stored.windows)


_EMPTY = StoredState()
