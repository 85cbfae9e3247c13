"""Keeps this instance on the shared state: polls the stored versions and adopts what changed.

One MGET per ``state.poll_interval_s``: a newer registry is adopted and the replicas converged
(:meth:`gateway.fleet.AdapterFleet.refresh`), a newer gate document (from the leader) is adopted
by routing (:class:`gateway.gates.GateState`). The poll doubles as the backend's health check:
after an outage its first success marks the state reachable again, and an instance that started
while Redis was down seeds or adopts the registry then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.fleet import AdapterFleet
from gateway.gates import GATE, GateState
from gateway.state import StateBackend, StateUnavailable

logger = logging.getLogger(__name__)


class StateSync:
    def __init__(self, state: StateBackend, fleet: AdapterFleet, gate: GateState,
                 interval_s: float, leading: Callable[[], bool] = lambda: False) -> None:
        self.state = state
        self.fleet = fleet
        self.gate = gate
        self.interval_s = interval_s
        self.leading = leading  # the leader writes the gate: it never adopts it

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except StateUnavailable:
                pass  # counted and logged by the backend's health; next poll tries again
            except Exception:  # never let one bad document stop the loop
                logger.exception("shared state sync failed")

    async def poll(self) -> None:
        registry_version, gate_version = await self.state.versions()
        if self.fleet.version == 0:
            await self.fleet.seed(converge=True)  # Redis was down when this instance started
        elif registry_version > self.fleet.version:
            await self.fleet.refresh()
        if gate_version > self.gate.version and not self.leading():
            snapshot = await self.state.read(GATE)
            if snapshot is not None:
                self.gate.adopt(snapshot.version, snapshot.data)
