"""Futures for the waits of the upstream client: a deadline that fails a wait, and a
future that resumes its waiter inside the callback that completes it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

__all__ = ["PromptFuture", "expire"]


def expire(waiter: asyncio.Future[Any]) -> None:
    """A deadline's timer callback: the wait fails with TimeoutError."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class PromptFuture(asyncio.Future[Any]):
    """A future whose result wakes its waiter at once, inside the `set_result` call.

    An answer's head arrives in a connection callback; with a plain future the request's
    task would resume only on the loop's next turn, after every other callback of this
    one: under streaming load (a burst of relayed events per turn) that wait was a
    noticeable part of a stream's time to first byte. Only results are prompt; exceptions
    and cancellation wake the waiter the usual way, on the next turn. (It keeps its own
    callbacks: the C future schedules the ones it holds, and cannot be asked not to.)

    Used for streams only: for JSON answers it bought no latency and cost CPU.
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._prompt: list[tuple[Callable[[Any], object], contextvars.Context]] = []

    def add_done_callback(
        self, fn: Callable[[Any], object], *, context: contextvars.Context | None = None
    ) -> None:
        if context is None:
            context = contextvars.copy_context()
        if self.done():
            self.get_loop().call_soon(fn, self, context=context)
        else:
            self._prompt.append((fn, context))

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        kept = [(f, c) for f, c in self._prompt if f != fn]
        removed = len(self._prompt) - len(kept)
        self._prompt = kept
        return removed

    def set_result(self, result: Any) -> None:
        super().set_result(result)
        callbacks, self._prompt = self._prompt, []
        for fn, context in callbacks:
            try:
                context.run(fn, self)
            except Exception as exc:  # a callback's bug must not break the connection's
                self.get_loop().call_exception_handler(
                    {"message": "error in a future's done callback", "exception": exc}
                )

    def set_exception(self, exception: type | BaseException) -> None:
        super().set_exception(exception)
        self._schedule()

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self._schedule()
        return True

    def _schedule(self) -> None:
        callbacks, self._prompt = self._prompt, []
        loop = self.get_loop()
        for fn, context in callbacks:
            loop.call_soon(fn, self, context=context)
