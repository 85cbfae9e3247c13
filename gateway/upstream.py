"""The replica pool: which vLLM servers exist, which are healthy, and which one gets a request.

``choose_replica`` is the pure placement decision; ``ReplicaPool`` owns the live state and the
background health loop that feeds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

# A cold adapter load costs about as much as a few queued requests on vLLM-CPU (DESIGN.md:
# 30-80 ms load vs 50+ ms per short answer), so residency wins unless it means a longer queue.
COLD_LOAD_PENALTY = 2


@dataclass
class Replica:
    name: str  # bounded metric label: r0, r1, ...
    url: str
    healthy: bool = False
    outstanding: int = 0


def choose_replica(
    replicas: Sequence[Replica],
    adapter: str | None,
    is_resident: Callable[[str, str], bool],
) -> Replica | None:
    """Least-loaded healthy replica, preferring those where ``adapter`` is already resident."""
    best: Replica | None = None
    best_score = 0
    for replica in replicas:
        if not replica.healthy:
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
    ) -> None:
        self.replicas = [Replica(name=f"r{i}", url=url) for i, url in enumerate(urls)]
        self._client = client
        self._metrics = metrics
        self.on_restart = on_restart
        self._interval = health_interval_s

    def ready(self) -> bool:
        return any(r.healthy for r in self.replicas)

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
