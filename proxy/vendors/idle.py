"""Idle budgets of relayed streams, kept by one wheel per event loop instead of a timer per
stream.

A stream's budget (`timeouts.stream_idle_s`) is the longest silence allowed between its
events. The relay only stores the time of each event; the wheel files each stream under the
moment its budget would run out as of when it was filed (slots `SLOT_S` wide), and one loop
timer, armed for the earliest occupied slot, looks at that slot's streams: one that had an
event since is filed again under its new deadline, one that stayed silent is told so. An
active stream costs nothing beyond the stored time, a quiet one a dict entry and one look
per budget, and however many streams are open the loop holds one timer for all of them.
A budget runs out at most `SLOT_S` late.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import weakref
from typing import Final, Protocol

__all__ = ["SLOT_S", "IdleWheel", "Watched", "idle_wheel"]

SLOT_S: Final = 0.1


class Watched(Protocol):
    """A stream under an idle budget."""

    idle_slot: int  # where the wheel filed it (the wheel's own bookkeeping)

    def idle_deadline(self, now: float) -> float | None:
        """When its budget runs out (loop time), given that the wheel looked at `now`; None
        once it has run out (the stream has been failed) or no longer applies."""
        ...


class IdleWheel:
    """The streams of one event loop that are under an idle budget (see the module's doc)."""

    __slots__ = ("__weakref__", "_armed", "_due", "_firing", "_loop", "_slots", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # A weak reference: the loop owns the wheel (through `idle_wheel`), not the reverse.
        self._loop = weakref.ref(loop)
        self._slots: dict[int, dict[Watched, None]] = {}
        self._due: list[int] = []  # a heap of the keys of _slots
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the slot the timer is set for
        self._firing = False

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._slots.values())

    def watch(self, item: Watched, deadline: float) -> None:
        """File `item` under `deadline` (loop time); it stays filed until `unwatch`."""
        slot = math.ceil(deadline / SLOT_S)  # never early
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = {}
            heapq.heappush(self._due, slot)
            if not self._firing and (self._timer is None or slot < self._armed):
                self._arm(slot)
        bucket[item] = None
        item.idle_slot = slot

    def unwatch(self, item: Watched) -> None:
        bucket = self._slots.get(item.idle_slot)
        if bucket is not None:
            bucket.pop(item, None)

    def _arm(self, slot: int) -> None:
        loop = self._loop()
        if loop is None or loop.is_closed():
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = loop.call_at(slot * SLOT_S, self._fire)

    def _fire(self) -> None:
        loop = self._loop()
        self._timer = None
        if loop is None:
            return
        now = loop.time()
        due = self._due
        self._firing = True
        try:
            while due and due[0] * SLOT_S <= now:
                bucket = self._slots.pop(heapq.heappop(due))
                for item in bucket:
                    deadline = item.idle_deadline(now)
                    if deadline is not None:
                        self.watch(item, max(deadline, now + SLOT_S))
        finally:
            self._firing = False
        if due:
            self._arm(due[0])


_WHEELS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, IdleWheel] = (
    weakref.WeakKeyDictionary()
)


def idle_wheel(loop: asyncio.AbstractEventLoop) -> IdleWheel:
    """The wheel of `loop` (made on first use)."""
    wheel = _WHEELS.get(loop)
    if wheel is None:
        wheel = _WHEELS[loop] = IdleWheel(loop)
    return wheel
