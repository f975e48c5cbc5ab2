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
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

from ..state import HoldRecord, Mode, RetryAfter

__all__ = ["Details", "Frame", "HoldStack", "details_of", "record", "to_datetime"]

_order = itertools.count()


@dataclass(eq=False, slots=True)
class Frame:
    """One entry of a hold: what it presents, and when (wall-clock seconds) it began."""

    owner: str
    reason: str | None
    retry_after: RetryAfter | None
    mode: Mode
    started: float
    seq: int = field(default_factory=_order.__next__)  # entry order, newest highest


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


class HoldStack:
    """Frames of one (store, scope) in this process."""

    __slots__ = ("_frames", "_full", "_reasons", "_retries")

    def __init__(self) -> None:
        self._frames: OrderedDict[Frame, None] = OrderedDict()
        self._reasons: OrderedDict[Frame, None] = OrderedDict()
        self._retries: OrderedDict[Frame, None] = OrderedDict()
        self._full = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, frame: Frame) -> bool:
        return frame in self._frames

    def push(self, frame: Frame) -> bool:
        """Put ``frame`` on top; True when it is the first frame."""
        self._frames[frame] = None
        if frame.reason is not None:
            self._reasons[frame] = None
        if frame.retry_after is not None:
            self._retries[frame] = None
        if frame.mode is Mode.FULL:
            self._full += 1
        return len(self._frames) == 1

    def remove(self, frame: Frame) -> bool | None:
        """Take ``frame`` out wherever it stands; True when the stack is now empty.

        ``None`` when the frame is not here (left already, or entered before a fork).
        """
        if self._frames.pop(frame, _MISSING) is _MISSING:
            return None
        self._reasons.pop(frame, None)
        self._retries.pop(frame, None)
        if frame.mode is Mode.FULL:
            self._full -= 1
        return not self._frames

    def clear(self) -> None:
        self._frames.clear()
        self._reasons.clear()
        self._retries.clear()
        self._full = 0

    def _top(self, index: OrderedDict[Frame, None]) -> Frame | None:
        return next(reversed(index)) if index else None

    def _oldest(self) -> Frame | None:
        return next(iter(self._frames)) if self._frames else None


_MISSING = object()


def details_of(*stacks: HoldStack) -> Details | None:
    """What the frames of ``stacks`` together present (the newest frame of any wins)."""
    tops = [t for s in stacks if (t := s._top(s._frames)) is not None]
    if not tops:
        return None
    top = max(tops, key=_seq)
    reason = _newest(s._top(s._reasons) for s in stacks)
    retry = _newest(s._top(s._retries) for s in stacks)
    oldest = min((o for s in stacks if (o := s._oldest()) is not None), key=_seq)
    return Details(
        owner=top.owner,
        reason=None if reason is None else reason.reason,
        retry_after=None if retry is None else retry.retry_after,
        mode=Mode.FULL if any(s._full for s in stacks) else Mode.READ_ONLY,
        started=top.started,
        acquired=oldest.started,
    )


def _seq(frame: Frame) -> int:
    return frame.seq


def _newest(frames: object) -> Frame | None:
    found = [f for f in frames if f is not None]  # type: ignore[attr-defined]
    return max(found, key=_seq) if found else None


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
    )
