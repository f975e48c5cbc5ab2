"""The hold stack of one (store, scope) in this process: pure, O(1), the clock passed in.

Frames are pushed on entry and removed on exit wherever they stand (concurrent holders
leave in any order). What the stack presents follows it: each detail comes from the newest
frame that sets it, so when the top frame leaves, the one below shows again
(snapshot/restore). Push, remove and every question asked here cost O(1) amortised
whatever the number of frames and the order of exits.

How: frames live in a dict by key. Beside it, lists of keys in push order (all frames;
those that set a reason; those that set a retry-after) are cleaned lazily: a frame that
leaves from the middle stays in them as a dead key; one that leaves from an end takes the
dead keys next to it along. So the last key of each list, and the first live key of the
push order (a head index), are always live: the top, the newest reason and retry-after,
the oldest frame. A list that holds more than twice as many keys as there are frames
(plus some slack) is rebuilt from its live keys, which the removals since the last rebuild
paid for. No ordered dict is needed: a plain dict iterated from an end skips the slots of
deleted keys one by one, which is not O(1).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from .._state import HoldRecord, Mode, RetryAfter

__all__ = [
    "Details",
    "Frame",
    "HoldStack",
    "Presents",
    "details_of",
    "new_key",
    "record",
    "to_datetime",
]

_keys = itertools.count(1)
new_key = _keys.__next__
"""A new frame key: frames are named by increasing integers, so newer frames sort higher."""


class Presents(NamedTuple):
    """What the frames of one hold object present (built once per hold object)."""

    owner: str
    reason: str | None
    retry_after: RetryAfter | None
    mode: Mode


class Details(NamedTuple):
    """What a stack presents; a stored hold record is rewritten only when these change."""

    owner: str
    reason: str | None
    retry_after: RetryAfter | None
    mode: Mode
    started: float  # the top frame's start: orders this process's record among others
    acquired: float  # when the oldest frame began

    def presented(self) -> tuple[object, ...]:
        """What readers see of it; times alone changing do not call for a write."""
        return (self.owner, self.reason, self.retry_after, self.mode)


_FULL = Mode.FULL
_SLACK = 16  # dead keys a list may hold beyond twice the frames before it is rebuilt
Frame = list[Any]
"""``[presents, started, count]``: what a frame presents, when it began (wall seconds), and
how many entries of one hold object it stands for (entered again while on top: counted)."""


class HoldStack:
    """Frames of one (store, scope) in this process, by key.

    ``frames`` is one dict for the stack's whole life (a context's mark of the holds it
    runs inside keeps it, to ask whether a frame is still there).
    """

    __slots__ = ("_head", "_order", "_read_only", "_reasons", "_retries", "frames", "top")

    def __init__(self) -> None:
        self.frames: dict[int, Frame] = {}
        self._order: list[int] = []  # keys in push order; dead keys cleaned lazily
        self._head = 0  # the index in _order of the oldest frame (when any)
        self.top = 0  # the newest frame's key (0: none); _order[-1] when any
        self._reasons: list[int] = []  # keys of frames that set a reason, push order
        self._retries: list[int] = []  # keys of frames that set a retry-after, push order
        self._read_only = 0  # frames in READ_ONLY mode (FULL, the usual one, costs nothing)

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, key: int) -> bool:
        return key in self.frames

    def push(self, key: int, presents: Presents, started: float) -> bool:
        """Put frame ``key`` on top; True when it is the first frame."""
        frames = self.frames
        first = not frames
        frames[key] = [presents, started, 1]
        self._order.append(key)
        self.top = key
        if presents[1] is not None:  # (indexing: cheaper than unpacking all four)
            self._reasons.append(key)
        if presents[2] is not None:
            self._retries.append(key)
        if presents[3] is not _FULL:
            self._read_only += 1
        return first

    def counts(self) -> dict[int, tuple[int, Presents]]:
        """Each frame's entry count and what it presents, by key."""
        return {key: (frame[2], frame[0]) for key, frame in self.frames.items()}

    def again(self, key: int) -> bool:
        """Count one more entry on frame ``key`` if it is the top; what the stack presents
        does not change. False (nothing done) when another frame is above it."""
        if key == self.top:
            self.frames[key][2] += 1
            return True
        return False

    def remove(self, key: int) -> Frame | None:
        """Count one entry of frame ``key`` out; at zero the frame leaves, wherever it stands.

        Returns the frame (its count tells whether it left), or ``None`` when it is not here
        (left already, or entered before a fork).
        """
        frames = self.frames
        frame = frames.get(key)
        if frame is None:
            return None
        frame[2] -= 1
        if frame[2] > 0:
            return frame
        del frames[key]
        if not frames:  # the last frame: every list is empty again
            self.top = self._head = self._read_only = 0
            self._order.clear()
            if self._reasons:
                self._reasons.clear()
            if self._retries:
                self._retries.clear()
            return frame
        _, reason, retry_after, mode = frame[0]
        if mode is not _FULL:
            self._read_only -= 1
        order = self._order
        if key == self.top:  # the top left: the newest live key below shows
            order.pop()
            while order[-1] not in frames:
                order.pop()
            self.top = order[-1]
        else:
            if order[self._head] == key:  # the oldest left: on to the next live one
                head = self._head + 1
                while order[head] not in frames:
                    head += 1
                self._head = head
            if len(order) > 2 * len(frames) + _SLACK:
                order[:] = [k for k in order[self._head :] if k in frames]
                self._head = 0
        if reason is not None:
            _left(self._reasons, key, frames)
        if retry_after is not None:
            _left(self._retries, key, frames)
        return frame

    def clear(self) -> None:
        self.top = self._head = 0
        self.frames.clear()
        self._order.clear()
        self._reasons.clear()
        self._retries.clear()
        self._read_only = 0


def _left(keys: list[int], key: int, frames: dict[int, Frame]) -> None:
    # Frame `key`, one of `keys` (push order), has left and `frames` is not empty: keep
    # the last key live, and the list at most twice as long as the frames (plus slack).
    if keys[-1] == key:
        keys.pop()
        while keys and keys[-1] not in frames:
            keys.pop()
    elif len(keys) > 2 * len(frames) + _SLACK:
        keys[:] = [k for k in keys if k in frames]


def details_of(*stacks: HoldStack) -> Details | None:
    """What the frames of ``stacks`` together present (the newest frame of any wins)."""
    live = [s for s in stacks if s.frames]
    if not live:
        return None
    if len(live) == 1:
        (s,) = live
        frames = s.frames
        top = frames[s.top]
        reason = frames[s._reasons[-1]][0].reason if s._reasons else None
        retry = frames[s._retries[-1]][0].retry_after if s._retries else None
        return Details(
            owner=top[0].owner,
            reason=reason,
            retry_after=retry,
            mode=_FULL if len(frames) > s._read_only else Mode.READ_ONLY,
            started=top[1],
            acquired=frames[s._order[s._head]][1],
        )
    reason_keys = [s._reasons[-1] for s in live if s._reasons]
    retry_keys = [s._retries[-1] for s in live if s._retries]
    top = _find(live, max(s.top for s in live))
    return Details(
        owner=top[0].owner,
        reason=_find(live, max(reason_keys))[0].reason if reason_keys else None,
        retry_after=_find(live, max(retry_keys))[0].retry_after if retry_keys else None,
        mode=_FULL if any(len(s.frames) > s._read_only for s in live) else Mode.READ_ONLY,
        started=top[1],
        acquired=_find(live, min(s._order[s._head] for s in live))[1],
    )


def _find(stacks: list[HoldStack], key: int) -> Frame:
    for s in stacks:
        found = s.frames.get(key)
        if found is not None:
            return found
    raise KeyError(key)  # pragma: no cover - keys come from the stacks themselves


def to_datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def record(
    details: Details,
    *,
    hold_id: str,
    host: str,
    pid: int,
    now: float,
    lease_ttl: float | None,
    drain: str | None = None,
    running: bool = False,
) -> HoldRecord:
    """The hold record of a process whose frames present ``details`` at time ``now``."""
    return HoldRecord(
        id=hold_id,
        owner=details.owner,
        host=host,
        pid=pid,
        acquired=to_datetime(details.acquired),
        started=to_datetime(details.started),
        expires=None if lease_ttl is None else to_datetime(now) + timedelta(seconds=lease_ttl),
        reason=details.reason,
        retry_after=details.retry_after,
        mode=details.mode,
        drain=drain,
        running=drain is not None and running,
    )
