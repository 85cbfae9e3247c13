"""What routing knows of the evaluator's verdicts: which domains the general model serves for
now, and which share of a domain's traffic its canary gets.

The shadow evaluator (on one instance: the leader) decides per adapter *version* whether its gate
is closed and hands the set of closed versions to :class:`GateState`; every other instance
adopts the same set from the shared state. Routing reads :attr:`GateState.gated`, the domains
whose *current* active version is closed. Verdicts are kept by version, so a new active version
(a rollout, on any instance) is served at once: no verdict about it exists yet.

Canary rollouts travel the same way: the leader hands over each canary version's share
(:meth:`GateState.set_canaries`), the others adopt it with the gate document, and routing reads
:attr:`GateState.canary_shares` for the domains' *current* canary versions. A canary version the
leader has not judged yet (just registered, on any instance) gets ``canary.initial_share``.
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
# The shared-state document: {"closed": [[name, version], ...], "canary": [[name, version,
# share, phase], ...], "report": {...}, "leader": str}
GATE = "gate"


class GateState:
    def __init__(self, metrics: Metrics, initial_share: float = 0.05) -> None:
        self.metrics = metrics
        self.initial_share = initial_share
        self.closed: frozenset[Key] = frozenset()  # versions whose gate is closed
        self.gated: frozenset[str] = frozenset()  # what routing does: domains sent to general
        # The leader's word on each canary version: (share, phase).
        self.canaries: dict[Key, tuple[float, str]] = {}
        self.canary_shares: dict[str, float] = {}  # what routing does: domain -> canary share
        self.report: dict[str, Any] | None = None  # the leader's evidence report, shared
        self.version = 0  # of the shared document adopted (0: none)
        self._active: dict[str, Key] = {}
        self._canary: dict[str, Key] = {}
        self._domains: frozenset[str] = frozenset()

    def follow(self, registry: Registry, table: RoutingTable) -> None:
        """The registry changed: the gate applies to the new active versions."""
        active = {}
        for domain, name in table.active.items():
            entry = registry.get(name)
            if entry is not None:
                active[domain] = (entry.name, entry.version)
        canary = {}
        for domain, name in table.canary.items():
            entry = registry.get(name)
            if entry is not None:
                canary[domain] = (entry.name, entry.version)
        self._active = active
        self._canary = canary
        self._domains = table.domains
        self._recompute()

    def set_closed(self, closed: Iterable[Key]) -> None:
        """The evaluator's verdicts (every version it has evidence on)."""
        self.closed = frozenset(closed)
        self._recompute()

    def set_canaries(self, canaries: dict[Key, tuple[float, str]]) -> None:
        """The evaluator's canary rollouts: (share, phase) per canary version it has judged."""
        self.canaries = dict(canaries)
        self._recompute_canaries()

    def state(self, domain: str | None) -> str | None:
        """"closed"/"open" for a domain that has an adapter the gate can act on, else None."""
        if domain is None or domain not in self._active:
            return None
        return "closed" if domain in self.gated else "open"

    def document(self, report: dict[str, Any] | None, leader: str) -> dict[str, Any]:
        return {"closed": sorted([name, version] for name, version in self.closed),
                "canary": sorted([name, version, share, phase]
                                 for (name, version), (share, phase) in self.canaries.items()),
                "report": report, "leader": leader}

    def adopt(self, version: int, data: dict[str, Any]) -> None:
        """The leader's document from the shared state."""
        self.version = version
        self.report = data.get("report")
        self.canaries = {(str(name), int(v)): (float(share), str(phase))
                         for name, v, share, phase in data.get("canary", [])}
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
        self._recompute_canaries()

    def _recompute_canaries(self) -> None:
        shares = {}
        for domain, key in self._canary.items():
            judged = self.canaries.get(key)
            if judged is None:
                shares[domain] = self.initial_share
            else:  # rolled back: no more traffic, even before the registry says so
                shares[domain] = 0.0 if judged[1] == "rolled_back" else judged[0]
        self.canary_shares = shares
        for domain in self._domains:
            self.metrics.canary_share.labels(domain).set(shares.get(domain, 0.0))
