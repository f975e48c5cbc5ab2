"""The user's ``response_handler`` and ``exempt_handler``: checked when built, called safely."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from .._state import MaintenanceState
from ..exceptions import ConfigurationError

__all__ = [
    "AsyncExemptHandler",
    "AsyncResponseHandler",
    "ExemptHandler",
    "ResponseHandler",
    "check_exempt_handler",
    "check_response_handler",
    "exempt_by",
    "respond_with",
]

logger = logging.getLogger("maintguard")

ResponseHandler = (
    Callable[[Request, MaintenanceState], Awaitable[Response] | Response]
    | Callable[[Request], Awaitable[Response] | Response]
)
"""What ``response_handler=`` takes: ``(request, state)`` or ``(request)``, sync or async."""
ExemptHandler = Callable[[Request], Awaitable[bool] | bool]
"""What ``exempt_handler=`` takes: ``(request)``, sync or async; true lets the request through."""
AsyncResponseHandler = Callable[[Request, MaintenanceState], Awaitable[Any]]
AsyncExemptHandler = Callable[[Request], Awaitable[Any]]


def check_response_handler(handler: object) -> AsyncResponseHandler | None:
    """``handler`` as ``async (request, state)``, or :class:`ConfigurationError` with the fix.

    It is called with ``(request, state)`` when it can take two positional arguments
    (``*args`` can), else with ``(request)`` as fastapi-maintenance's handlers are; one whose
    signature cannot be inspected gets both. Sync and async functions, callable objects,
    ``functools.partial`` and bound methods all work; what it returns is awaited if it can be.
    """
    if handler is None:
        return None
    fix = "write def handler(request, state): ..."
    call, signature = _callable("response_handler", handler, fix)
    if _fits(signature, 2):

        async def both(request: Request, state: MaintenanceState) -> Any:
            return await _settled(call(request, state))

        return both
    if _fits(signature, 1):

        async def request_only(request: Request, state: MaintenanceState) -> Any:
            return await _settled(call(request))

        return request_only
    raise ConfigurationError(
        "response_handler cannot be called as handler(request, state) or handler(request): "
        f"its signature is {signature}: {fix}"
    )


def check_exempt_handler(handler: object) -> AsyncExemptHandler | None:
    """``handler`` as ``async (request)``, or :class:`ConfigurationError` with the fix.

    It must take the request as its one positional argument; sync and async both work.
    """
    if handler is None:
        return None
    fix = "write def handler(request): ... returning True to let the request through"
    call, signature = _callable("exempt_handler", handler, fix)
    if not _fits(signature, 1):
        raise ConfigurationError(
            f"exempt_handler cannot be called as handler(request): its signature is {signature}: "
            f"{fix}"
        )

    async def exempt(request: Request) -> Any:
        return await _settled(call(request))

    return exempt


def _callable(
    option: str, handler: object, fix: str
) -> tuple[Callable[..., Any], inspect.Signature | None]:
    # The handler and its signature (None: it cannot be inspected), or the error with the fix.
    if not callable(handler):
        raise ConfigurationError(f"{option} must be callable, not {handler!r}: {fix}")
    return handler, _signature(handler)


async def respond_with(
    handler: AsyncResponseHandler, request: Request, state: MaintenanceState
) -> ASGIApp | None:
    """The handler's response, or ``None`` (logged) if it raised or returned no response.

    ``None`` means: send the default maintenance response. Only building the response is
    covered here; a response that fails while it is being sent (a streaming body raising
    midway) cannot be replaced once its start has gone out, and is the caller's to handle.
    """
    try:
        response = await handler(request, state)
    except Exception:
        logger.exception("maintguard: response_handler failed; sending the default page")
        return None
    if isinstance(response, Response) or (callable(response) and not isinstance(response, type)):
        return cast(ASGIApp, response)
    logger.error(
        "maintguard: response_handler returned %s, not a Response; sending the default page",
        type(response).__name__,
    )
    return None


async def exempt_by(handler: AsyncExemptHandler, request: Request) -> bool:
    """Whether ``handler`` lets ``request`` through; ``False`` (logged) if it raised."""
    try:
        return bool(await handler(request))
    except Exception:
        logger.exception("maintguard: exempt_handler failed; the request is refused")
        return False


def _signature(handler: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin or extension callable
        return None


def _fits(signature: inspect.Signature | None, count: int) -> bool:
    """Whether ``count`` positional arguments can be passed; assumed so if unknown."""
    if signature is None:
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


async def _settled(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
