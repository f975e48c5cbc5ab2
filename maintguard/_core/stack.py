"""The hold stack of one (store, scope) in this process: pure, O(1), the clock passed in.

Frames are pushed on entry and removed on exit wherever they stand (concurrent holders
leave in any order). What the stack presents follows it: each detail comes from the newest
frame that sets it, so when the top frame leaves, the one below shows again
(snapshot/restore). Push, remove and every question asked here cost O(1) whatever the
number of frames and the order of exits: each detail keeps its own insertion-ordered index
(an ``OrderedDict``, whose ends and deletions are O(1)).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
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
Frame = list[Any]
"""``[presents, started, count]``: what a frame presents, when it began (wall seconds), and
how many entries of one hold object it stands for (entered again while on top: counted)."""


class HoldStack:
    """Frames of one (store, scope) in this process, by key."""

    __slots__ = ("_frames", "_full", "_reasons", "_retries", "_top")

    def __init__(self) -> None:
        self._top = 0  # the newest frame's key (0: none)
        self._frames: OrderedDict[int, Frame] = OrderedDict()
        self._reasons: OrderedDict[int, None] = OrderedDict()
        self._retries: OrderedDict[int, None] = OrderedDict()
        self._full = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, key: int) -> bool:
        return key in self._frames

    def push(self, key: int, presents: Presents, started: float) -> bool:
        """Put frame ``key`` on top; True when it is the first frame."""
        frames = self._frames
        first = not frames
        frames[key] = [presents, started, 1]
        self._top = key
        _, reason, retry_after, mode = presents
        if reason is not None:
            self._reasons[key] = None
        if retry_after is not None:
            self._retries[key] = None
        if mode is _FULL:
            self._full += 1
        return first

    def counts(self) -> dict[int, tuple[int, Presents]]:
        """Each frame's entry count and what it presents, by key."""
        return {key: (frame[2], frame[0]) for key, frame in self._frames.items()}

    def again(self, key: int) -> bool:
        """Count one more entry on frame ``key`` if it is the top; what the stack presents
        does not change. False (nothing done) when another frame is above it."""
        if key == self._top:
            self._frames[key][2] += 1
            return True
        return False

    def remove(self, key: int) -> Frame | None:
        """Count one entry of frame ``key`` out; at zero the frame leaves, wherever it stands.

        Returns the frame (its count tells whether it left), or ``None`` when it is not here
        (left already, or entered before a fork).
        """
        frames = self._frames
        frame = frames.get(key)
        if frame is None:
            return None
        frame[2] -= 1
        if frame[2] > 0:
            return frame
        del frames[key]
        if key == self._top:
            self._top = next(reversed(frames)) if frames else 0
        _, reason, retry_after, mode = frame[0]
        if reason is not None:
            del self._reasons[key]
        if retry_after is not None:
            del self._retries[key]
        if mode is _FULL:
            self._full -= 1
        return frame

    def clear(self) -> None:
        self._top = 0
        self._frames.clear()
        self._reasons.clear()
        self._retries.clear()
        self._full = 0


def details_of(*stacks: HoldStack) -> Details | None:
    """What the frames of ``stacks`` together present (the newest frame of any wins)."""
    frames = [s._frames for s in stacks if s._frames]
    if not frames:
        return None
    top_key = max(next(reversed(f)) for f in frames)
    oldest_key = min(next(iter(f)) for f in frames)
    reason_keys = [next(reversed(s._reasons)) for s in stacks if s._reasons]
    retry_keys = [next(reversed(s._retries)) for s in stacks if s._retries]
    top = _find(frames, top_key)
    return Details(
        owner=top[0].owner,
        reason=_find(frames, max(reason_keys))[0].reason if reason_keys else None,
        retry_after=_find(frames, max(retry_keys))[0].retry_after if retry_keys else None,
        mode=Mode.FULL if any(s._full for s in stacks) else Mode.READ_ONLY,
        started=top[1],
        acquired=_find(frames, oldest_key)[1],
    )


def _find(frames: list[OrderedDict[int, Frame]], key: int) -> Frame:
    for f in frames:
        found = f.get(key)
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
