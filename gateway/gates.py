"""What routing knows of the quality gate: which domains the general model serves for now.

The shadow evaluator (on one instance: the leader) decides per adapter *version* whether its gate
is closed and hands the set of closed versions to :class:`GateState`; every other instance
adopts the same set from the shared state. Routing reads :attr:`GateState.gated`, the domains
whose *current* active version is closed. Verdicts are kept by version, so a new active version
(a rollout, on any instance) is served at once: no verdict about it exists yet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from adapters.registry import Registry
from gateway.metrics import Metrics
from router.policy import RoutingTable

logger = logging.getLogger(__name__)

Key = tuple[str, int]  # (adapter name, version)
GATE = "gate"  # the shared-state document: {"closed": [[name, version], ...], "report": {...}}


class GateState:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.closed: frozenset[Key] = frozenset()  # versions whose gate is closed
        self.gated: frozenset[str] = frozenset()  # what routing does: domains sent to general
        self.report: dict[str, Any] | None = None  # the leader's evidence report, shared
        self.version = 0  # of the shared document adopted (0: none)
        self._active: dict[str, Key] = {}
        self._domains: frozenset[str] = frozenset()

    def follow(self, registry: Registry, table: RoutingTable) -> None:
        """The registry changed: the gate applies to the new active versions."""
        active = {}
        for domain, name in table.active.items():
            entry = registry.get(name)
            if entry is not None:
                active[domain] = (entry.name, entry.version)
        self._active = active
        self._domains = table.domains
        self._recompute()

    def set_closed(self, closed: Iterable[Key]) -> None:
        """The evaluator's verdicts (every version it has evidence on)."""
        self.closed = frozenset(closed)
        self._recompute()

    def state(self, domain: str | None) -> str | None:
        """"closed"/"open" for a domain that has an adapter the gate can act on, else None."""
        if domain is None or domain not in self._active:
            return None
        return "closed" if domain in self.gated else "open"

    def document(self, report: dict[str, Any] | None, leader: str) -> dict[str, Any]:
        return {"closed": sorted([name, version] for name, version in self.closed),
                "report": report, "leader": leader}

    def adopt(self, version: int, data: dict[str, Any]) -> None:
        """The leader's document from the shared state."""
        self.version = version
        self.report = data.get("report")
        self.set_closed((str(name), int(v)) for name, v in data.get("closed", []))

    def _recompute(self) -> None:
        gated = frozenset(d for d, key in self._active.items() if key in self.closed)
        for domain in sorted(gated - self.gated):
            name, version = self._active[domain]
            logger.warning("quality gate closed for %s: %s v%d worse than the general model",
                           domain, name, version)
            self.metrics.quality_gate_changes.labels(domain, "closed").inc()
        for domain in sorted(self.gated - gated):
            logger.info("quality gate open again for %s", domain)
            self.metrics.quality_gate_changes.labels(domain, "open").inc()
        self.gated = gated
        for domain in self._domains:
            self.metrics.quality_gate_closed.labels(domain).set(1 if domain in gated else 0)
