"""Step batching on the caller's side: the step calls of an ingress replica's concurrent requests travel
to a deployment as one call.

The deployments already merge whatever reaches them into one forward (`@serve.batch` and the
replica's coalescer), but each request still pays its own handle call per step: on a small CPU machine
the routing, serialisation and event-loop work of 16 calls per step competes with the forward for the
same cores. Here calls that wait while a merged call is in flight are sent together as the next one, the
way an LLM server's engine loop runs one decode step for every sequence it holds. With one call in
flight, concurrent requests fall into lockstep and each step costs one round trip for all of them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Generic, Optional, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class CallMerger(Generic[Item, Result]):
    """`submit(item)` answers `send([items...])[i]`; items waiting together share one `send`.

    At most `max_in_flight` sends run at once and each carries at most `max_items` items. A failed
    send fails exactly the items it carried; later sends go on.

    When a send could go out, it waits up to `wait_s` for the rest of its cohort: `expected()` says how
    many callers may submit (the requests sampling on this replica). The requests woken by one answer
    reach their next call a few event-loop turns apart; without the wait the first of them would go
    alone and the others would queue behind it, so batches would halve instead of staying whole.

    The callers are split into `cohorts` equal groups, one send each (16 requests, 2 cohorts: sends of
    8). One cohort gives the largest forwards, the cheapest per row on one replica. With several model
    replicas one cohort leaves all but one idle: the requests fall into lockstep in one send, so a
    single forward runs at a time (measured with two 1-thread Fused replicas on 2 cores: a third of
    the machine idle); one cohort per replica keeps them all busy.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        max_items: int = 64,
        max_in_flight: int = 1,
        wait_s: float = 0.002,
        expected: Optional[Callable[[], int]] = None,
        cohorts: int = 1,
    ) -> None:
        if max_items < 1 or max_in_flight < 1 or wait_s < 0 or not 1 <= cohorts <= max_in_flight:
            raise ValueError(
                f"max_items and max_in_flight must be >= 1, wait_s >= 0 and cohorts between 1 and max_in_flight, "
                f"got {max_items}, {max_in_flight}, {wait_s}, {cohorts}"
            )
        self.send = send
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self.wait_s = wait_s
        self.expected = expected
        self.cohorts = cohorts
        self.pending: list[tuple[Item, asyncio.Future]] = []
        self.oldest = 0.0  # when the oldest pending item arrived
        self.freed = 0.0  # when a send last came back (items that waited for it then wait for its cohort)
        self.timer: Optional[asyncio.TimerHandle] = None
        self.in_flight = 0
        self.items_in_flight = 0  # items of the sends in flight
        self.sends = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if not self.pending:
            self.oldest = time.monotonic()
        self.pending.append((item, future))
        self._launch()
        return await future

    def _cohort_size(self) -> int:
        """Items one send carries: an equal share of the expected callers per cohort."""
        if self.expected is None:
            return self.max_items
        share = -(-self.expected() // self.cohorts)
        return max(1, min(self.max_items, share))

    def _cohort_waiting(self) -> float:
        """Seconds still to wait for more items before sending (0: send now)."""
        if self.wait_s <= 0 or self.expected is None or len(self.pending) >= self._cohort_size():
            return 0.0
        if len(self.pending) + self.items_in_flight >= self.expected():  # every caller is waiting or on its way: no one else will come
            return 0.0
        return max(0.0, max(self.oldest, self.freed) + self.wait_s - time.monotonic())

    def _launch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        loop = asyncio.get_running_loop()
        while self.pending and self.in_flight < self.max_in_flight:
            remaining = self._cohort_waiting()
            if remaining > 0:
                self.timer = loop.call_later(remaining, self._launch)
                return
            size = self.max_items if self.cohorts == 1 else self._cohort_size()  # one cohort: whatever waits (composites send 2+ calls per request)
            take, self.pending = self.pending[:size], self.pending[size:]
            self.oldest = time.monotonic()
            self.in_flight += 1
            self.items_in_flight += len(take)
            loop.create_task(self._send(take))

    async def _send(self, take: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            if await _deliver(self.send, take):
                self.sends += 1
                self.items += len(take)
        finally:
            self.in_flight -= 1
            self.items_in_flight -= len(take)
            self.freed = time.monotonic()
            self._launch()


class WindowMerger(Generic[Item, Result]):
    """`submit(item)` answers `send([items...])[i]` for the items submitted within `window_s` of the first
    one that waits: for the calls a request makes once, when its sampling ends (scores, vocoding).

    Requests that sample in one merged call end in the same event-loop turn, so a window of a few
    milliseconds collects the whole cohort: one classifier call and one vocoder pass for all of them
    instead of one each at batch 1 (a neural-vocoder row costs 0.6-0.7x as much in a batch of 16 on one CPU
    thread; scores save handle calls, `bench/finish_batching.py`).
    A failed send fails exactly the items it carried.
    """

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result]]], window_s: float = 0.005, max_items: int = 64) -> None:
        if window_s < 0 or max_items < 1:
            raise ValueError(f"window_s must be >= 0 and max_items >= 1, got {window_s}, {max_items}")
        self.send = send
        self.window_s = window_s
        self.max_items = max_items
        self.pending: list[tuple[Item, asyncio.Future]] = []
        self.timer: Optional[asyncio.TimerHandle] = None
        self.sends = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.max_items:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        take, self.pending = self.pending, []
        take = [(item, f) for item, f in take if not f.done()]  # callers that gave up
        if take:
            asyncio.get_running_loop().create_task(self._send(take))

    async def _send(self, take: list[tuple[Any, asyncio.Future]]) -> None:
        if await _deliver(self.send, take):
            self.sends += 1
            self.items += len(take)


async def _deliver(send: Callable[[list], Awaitable[list]], take: list[tuple[Any, asyncio.Future]]) -> bool:
    """One send of the waiting items, each caller answered its own result; a failure goes to every caller of
    this send (False) and the merger lives on. A cancelled send is re-raised after telling its callers."""
    try:
        results = await send([item for item, _ in take])
        if len(results) != len(take):
            raise RuntimeError(f"a merged call answered {len(results)} results for {len(take)} items")
        for (_, future), result in zip(take, results):
            if not future.done():
                future.set_result(result)
        return True
    except BaseException as exc:
        for _, future in take:
            if not future.done():
                future.set_exception(exc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        return False
