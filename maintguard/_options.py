"""Keyword options checked by name: a misspelled option says which ones exist."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, cast

from ._errors import ConfigurationError

__all__ = ["UnknownOption", "named_options", "seconds", "seconds_or_none"]

P = ParamSpec("P")
R = TypeVar("R")


class UnknownOption(ConfigurationError, TypeError):
    """An option that does not exist (a ``TypeError`` too, as Python's own would be)."""


def named_options(func: Callable[P, R]) -> Callable[P, R]:
    """Refuse an unknown keyword option of ``func`` with a :class:`ConfigurationError`
    naming the closest option and every one that exists, instead of Python's bare
    ``TypeError``. The check is a set comparison: nothing else changes."""
    parameters = inspect.signature(func).parameters.values()
    names = frozenset(
        p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    name = func.__qualname__.removesuffix(".__init__")

    if inspect.iscoroutinefunction(func):  # stays one (frameworks look)

        @functools.wraps(func)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            if kwargs and not names.issuperset(kwargs):
                raise unknown_option(name, kwargs, names)
            return await func(*args, **kwargs)

        return cast(Callable[P, R], checked_async)

    @functools.wraps(func)
    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if kwargs and not names.issuperset(kwargs):
            raise unknown_option(name, kwargs, names)
        return func(*args, **kwargs)

    return checked


def unknown_option(where: str, given: Iterable[str], names: Iterable[str]) -> UnknownOption:
    known = sorted(n for n in names if n not in ("self", "app", "func", "value"))
    wrong = sorted(set(given) - set(names))
    hints = []
    for option in wrong:
        close = difflib.get_close_matches(option, known, n=1)
        hints.append(f"{option!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return UnknownOption(
        f"{where}() has no option {', '.join(hints)}; its options are: {', '.join(known)}"
    )


def seconds(
    name: str,
    value: object,
    *,
    positive: bool = False,
    infinite: bool = False,
    at_most: float = math.inf,
    limit: str = "",
    spans: bool = False,
    _or_none: bool = False,
) -> float:
    """``value`` checked as a number of seconds (the one rule for every seconds option):
    a real number, not a bool, not NaN, at least 0 (above 0 when ``positive``), finite
    unless ``infinite``, at most ``at_most`` (``limit`` says it in words); with ``spans``
    a :class:`~datetime.timedelta` too, held to the same rule. Otherwise a
    :class:`ConfigurationError` saying what to give."""
    number = value.total_seconds() if spans and isinstance(value, timedelta) else value
    if (
        isinstance(number, bool)
        or not isinstance(number, int | float)
        or math.isnan(number)
        or (number == math.inf and not infinite)
        or number < 0
        or (positive and number == 0)
        or number > at_most
    ):
        what = "a positive number of seconds" if positive else "a number of seconds >= 0"
        raise ConfigurationError(
            f"{name} must be {'None or ' if _or_none else ''}{what}"
            f"{' or a timedelta' if spans else ''}{f' ({limit})' if limit else ''}, "
            f"not {value!r}"
        )
    return float(number)


def seconds_or_none(
    name: str,
    value: object,
    *,
    positive: bool = False,
    at_most: float = math.inf,
    limit: str = "",
    spans: bool = False,
) -> float | None:
    """:func:`seconds`, or None when ``value`` is None."""
    if value is None:
        return None
    return seconds(
        name, value, positive=positive, at_most=at_most, limit=limit, spans=spans, _or_none=True
    )
