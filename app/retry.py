"""Backoff, written once: retry a call while it fails with a transient error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("viewsync.retry")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def retry(
    call: Callable[[], Awaitable[T]],
    transient: type[Exception] | tuple[type[Exception], ...],
    what: str,
) -> T:
    """Await ``call()`` until it returns; after a ``transient`` error wait (0.5 s doubling to
    30 s) and try again, logging each failure with ``what``. Other errors propagate."""
    delay = FIRST_DELAY
    while True:
        try:
            return await call()
        except transient as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, _first_line(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)


def calling(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Callable[[], Awaitable[T]]:
    """``fn(*args, **kwargs)`` as the awaitable call :func:`retry` takes (run in place)."""
    async def call() -> T:
        return fn(*args, **kwargs)
    return call
