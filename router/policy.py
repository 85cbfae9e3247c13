"""The route decision: a pure function of (request model, classification, registry, gate state).

No I/O and no HTTP here, so every branch of the routing contract (DESIGN.md) is unit-tested
directly. The gateway applies a decision and may later degrade it with :func:`fall_back` when
the chosen adapter cannot be loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from router.canary import in_cohort

AUTO_MODEL = "auto"
BASE_MODEL = "base"


class RouteReason(StrEnum):
    CLASSIFIED = "classified"
    EXPLICIT = "explicit"
    LOW_CONFIDENCE = "low_confidence"
    NO_DOMAIN = "no_domain"  # the classifier placed the request outside the taxonomy
    NO_ADAPTER = "no_adapter"
    ADAPTER_UNAVAILABLE = "adapter_unavailable"
    QUALITY_GATE = "quality_gate"
    NO_CLASSIFIER = "no_classifier"


# Reasons meaning "a domain adapter could have served this, the general model did instead".
FALLBACK_REASONS = frozenset(
    {
        RouteReason.LOW_CONFIDENCE,
        RouteReason.NO_DOMAIN,
        RouteReason.NO_ADAPTER,
        RouteReason.ADAPTER_UNAVAILABLE,
        RouteReason.QUALITY_GATE,
    }
)


class UnknownModelError(LookupError):
    """The request names a model that is neither auto, base, a domain nor an adapter."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


@dataclass(frozen=True)
class Classification:
    """What a classifier said about one request. ``domain`` is None outside the taxonomy."""

    domain: str | None
    confidence: float


@dataclass(frozen=True)
class RoutingTable:
    """The registry state routing needs, as an immutable snapshot.

    ``adapters`` maps every servable adapter name to its domain; ``active`` maps a domain to the
    adapter that serves it; ``canary`` a domain to the adapter rolling out there (router.canary);
    ``base_aliases`` are names meaning the general model.
    """

    domains: frozenset[str]
    adapters: Mapping[str, str] = field(default_factory=dict)
    active: Mapping[str, str] = field(default_factory=dict)
    base_aliases: frozenset[str] = frozenset({BASE_MODEL})
    canary: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteDecision:
    domain: str | None
    adapter: str | None  # None: the general (base) model serves it
    reason: RouteReason
    confidence: float
    canary: bool = False  # the adapter is the domain's canary (x-slm-canary)


def decide(
    model: str,
    classification: Classification | None,
    table: RoutingTable,
    *,
    gated: frozenset[str] = frozenset(),
    threshold: float = 0.0,
    canary_shares: Mapping[str, float] | None = None,
    sticky: str | None = None,
) -> RouteDecision:
    """Route one request. ``gated`` holds domains the quality gate sends to the general model;
    ``canary_shares`` the share of each domain's traffic its canary serves, the requests whose
    ``sticky`` key falls in the canary's cohort (None: no canary for this request)."""
    canary = _CanarySplit(canary_shares or {}, sticky)
    if model in table.base_aliases:
        return RouteDecision(None, None, RouteReason.EXPLICIT, 1.0)
    if model in table.adapters:
        # Naming an adapter is an explicit choice: it bypasses the quality gate.
        return RouteDecision(table.adapters[model], model, RouteReason.EXPLICIT, 1.0)
    if model in table.domains:
        return _serve_domain(model, 1.0, RouteReason.EXPLICIT, table, gated, canary)
    if model != AUTO_MODEL:
        raise UnknownModelError(model)

    if classification is None:
        return RouteDecision(None, None, RouteReason.NO_CLASSIFIER, 0.0)
    if classification.domain is None:
        return RouteDecision(None, None, RouteReason.NO_DOMAIN, classification.confidence)
    if classification.confidence < threshold:
        return RouteDecision(
            classification.domain, None, RouteReason.LOW_CONFIDENCE, classification.confidence
        )
    return _serve_domain(
        classification.domain, classification.confidence, RouteReason.CLASSIFIED, table, gated,
        canary,
    )


def _serve_domain(
    domain: str,
    confidence: float,
    reason: RouteReason,
    table: RoutingTable,
    gated: frozenset[str],
    canary: _CanarySplit,
) -> RouteDecision:
    # The canary's cohort comes first: it is served the canary whatever the active version's
    # gate says (the canary is the candidate replacement; its own gate closed gives it share 0).
    candidate = table.canary.get(domain)
    if candidate is not None and canary.chooses(domain, candidate):
        return RouteDecision(domain, candidate, reason, confidence, canary=True)
    adapter = table.active.get(domain)
    if adapter is None:
        return RouteDecision(domain, None, RouteReason.NO_ADAPTER, confidence)
    if domain in gated:
        return RouteDecision(domain, None, RouteReason.QUALITY_GATE, confidence)
    return RouteDecision(domain, adapter, reason, confidence)


@dataclass(frozen=True)
class _CanarySplit:
    shares: Mapping[str, float]
    sticky: str | None

    def chooses(self, domain: str, canary: str) -> bool:
        share = self.shares.get(domain, 0.0)
        return self.sticky is not None and in_cohort(self.sticky, canary, share)


def fall_back(decision: RouteDecision, reason: RouteReason) -> RouteDecision:
    """The same decision served by the general model instead, for ``reason``."""
    return dataclasses.replace(decision, adapter=None, reason=reason, canary=False)
