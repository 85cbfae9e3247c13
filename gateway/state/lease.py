"""Leader election with a lease: one instance of the fleet runs a role's work (the shadow
evaluator), and another takes over within about a lease's time when it dies.

The holder renews every ``ttl / 3``. While the backend cannot be reached the holder keeps
leading until its lease would have run out (nobody else can take it before then) and then
stops; an instance shut down cleanly gives the lease back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.metrics import Metrics
from gateway.state import StateBackend, StateUnavailable

logger = logging.getLogger(__name__)


class Leadership:
    def __init__(self, state: StateBackend, role: str, holder: str, ttl_s: float,
                 metrics: Metrics, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.role = role
        self.holder = holder
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.clock = clock
        self.leading = False
        self._held_until = 0.0
        metrics.state_leader.labels(role).set(0)

    async def step(self) -> bool:
        """Take or renew the lease once; whether this instance leads now."""
        try:
            if await self.state.hold_lease(self.role, self.holder, self.ttl_s):
                self._held_until = self.clock() + self.ttl_s
                return True
            return False
        except StateUnavailable:
            # Ours until it would have expired in the store; stop a renewal early, to be safe.
            return self.clock() + self.ttl_s / 3 < self._held_until

    async def run(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` while this instance holds the lease; cancel it when the lease is lost,
        start it again when regained."""
        task: asyncio.Task[None] | None = None
        try:
            while True:
                held = await self.step()
                if task is not None and task.done():
                    if not task.cancelled() and task.exception() is not None:
                        logger.error("%s work stopped: %r", self.role, task.exception())
                    task = None
                if held and task is None:
                    self._set(True)
                    task = asyncio.create_task(_awaited(work), name=f"{self.role}-leader")
                elif not held and task is not None:
                    await _cancel(task)
                    task = None
                if not held:
                    self._set(False)
                await asyncio.sleep(self.ttl_s / 3)
        finally:
            if task is not None:
                await _cancel(task)
            if self.leading:
                self._set(False)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.state.release_lease(self.role, self.holder), 1.0)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            logger.info("%s: this instance (%s) %s", self.role, self.holder,
                        "is the leader now" if leading else "is no longer the leader")
        self.leading = leading
        self.metrics.state_leader.labels(self.role).set(1 if leading else 0)


async def _awaited(work: Callable[[], Awaitable[None]]) -> None:
    await work()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
