"""What the CLI's options mean: durations, times and modes, parsed from text. Pure."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime, timedelta, timezone, tzinfo

from .._state import Mode

__all__ = [
    "count",
    "duration",
    "mode",
    "moment",
    "reason",
    "scope",
    "seconds",
    "until_of",
    "when",
    "window_id",
    "zoned",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_LONGEST = 365 * 86400.0  # a year: longer ones are typos (and overflow datetimes)


def duration(text: str) -> float:
    """Seconds from ``90s``, ``30m``, ``2h``, ``1d``, ``1h30m`` or plain seconds (``90``)."""
    value = _checked(text, "a duration: use a number with s, m, h or d, e.g. 90s, 30m, 2h, 1d")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration longer than zero")
    return value


def count(text: str) -> int:
    """A positive whole number (``--limit 20``)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number: give how many to show, e.g. 20"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above zero: e.g. 20")
    return value


def seconds(text: str) -> float:
    """A wait in seconds (``600``) or a duration (``10m``); zero is allowed."""
    return _checked(text, "a number of seconds: use e.g. 600, 90s, 10m or 2h")


def _checked(text: str, what: str) -> float:
    value = _seconds_of(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    if value > _LONGEST:
        raise argparse.ArgumentTypeError(f"{text!r} is longer than a year: check the unit")
    return value


def _seconds_of(text: str) -> float | None:
    try:
        plain = float(text)
    except ValueError:
        pass
    else:
        return plain if math.isfinite(plain) and plain >= 0 else None
    if not text or _PART.sub("", text):
        return None
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))


def when(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is this machine's local time. Must be ahead."""
    parsed = _iso(text, "2026-12-24T18:00 (local time) or 2026-12-24T17:00Z")
    try:
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()  # local time, as the operator's clock shows it
        in_utc = parsed.astimezone(timezone.utc)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range: give a time before the year 9999"
        ) from None
    if in_utc <= datetime.now(timezone.utc):
        raise argparse.ArgumentTypeError(f"{text!r} is not in the future")
    return parsed


def moment(text: str) -> datetime:
    """An ISO 8601 time as given: with its zone, or naive (see :func:`zoned`). It may be
    past (a window that has begun); what it must not be is checked where it is used."""
    parsed = _iso(text, "2027-01-10T03:00Z or 2027-01-10T04:00+01:00")
    if parsed.tzinfo is not None:
        try:
            parsed.astimezone(timezone.utc)
        except OverflowError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is out of range: give a time before the year 9999"
            ) from None
    return parsed


def zoned(value: datetime, option: str, zone: tzinfo | None, zone_name: str | None) -> datetime:
    """``value`` (from :func:`moment`) when it has a zone. A time without one is refused:
    a planned window is stored for every machine that reads the store, where a bare
    02:30 would mean different moments; the message gives the time with its zone to paste
    (in ``zone``, the window's ``--tz``, else this machine's local time)."""
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value
    bare = value.replace(tzinfo=None)
    try:
        if zone is None:
            there = bare.astimezone()  # this machine's local time
            zone_name = f"this machine's local time, {there.tzname()}"
        else:
            there = bare.replace(tzinfo=zone)
        offset = there.utcoffset()
        example = f" or {there.isoformat()} ({zone_name})" if offset else ""
    except (OverflowError, ValueError):
        example = ""
    raise ValueError(
        f"{option} {bare.isoformat()} has no time zone, and a window is read by every machine "
        f"that uses the store: add one, e.g. {bare.isoformat()}Z (UTC){example}"
    )


def _iso(text: str, examples: str) -> datetime:
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):
        raw = raw[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time: use e.g. {examples}"
        ) from None


def until_of(for_: float | None, until: datetime | None) -> timedelta | datetime | None:
    return timedelta(seconds=for_) if for_ is not None else until


def mode(text: str) -> Mode:
    try:
        return Mode(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a mode: use full or read-only") from None


def reason(text: str) -> str:
    """The text as given; a blank one is ``""``: no reason (a page would show nothing)."""
    return text if text.strip() else ""


def window_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "a window id is a name such as 1a2b3c4d (maintguard schedule list shows them)"
        )
    return text


def host(text: str) -> str:
    from .._cordons import check_host
    from ..exceptions import ConfigurationError

    try:
        return check_host(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def scope(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a scope is a non-empty name such as billing")
    return text
