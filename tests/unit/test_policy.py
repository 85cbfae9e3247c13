"""The routing contract of DESIGN.md, branch by branch, without HTTP."""

from __future__ import annotations

import pytest

from router.policy import (
    Classification,
    RouteDecision,
    RouteReason,
    RoutingTable,
    UnknownModelError,
    decide,
    fall_back,
)

TABLE = RoutingTable(
    domains=frozenset({"legal", "finance", "news"}),
    adapters={"law-v1": "legal", "law-v2": "legal", "money-v1": "finance"},
    active={"legal": "law-v1", "finance": "money-v1"},
    base_aliases=frozenset({"base", "SmolLM2-135M-Instruct"}),
)


@pytest.mark.parametrize("model", ["base", "SmolLM2-135M-Instruct"])
def test_base_names_route_to_the_general_model(model: str) -> None:
    assert decide(model, None, TABLE) == RouteDecision(None, None, RouteReason.EXPLICIT, 1.0)


def test_adapter_name_routes_to_that_adapter_even_a_non_active_version() -> None:
    decision = decide("law-v2", None, TABLE)
    assert (decision.domain, decision.adapter, decision.reason) == (
        "legal", "law-v2", RouteReason.EXPLICIT
    )


def test_adapter_name_bypasses_the_quality_gate() -> None:
    assert decide("law-v1", None, TABLE, gated=frozenset({"legal"})).adapter == "law-v1"


def test_domain_id_routes_to_the_active_adapter() -> None:
    decision = decide("finance", None, TABLE)
    assert (decision.adapter, decision.reason) == ("money-v1", RouteReason.EXPLICIT)


def test_domain_without_adapter_goes_to_general_with_no_adapter() -> None:
    decision = decide("news", None, TABLE)
    assert (decision.domain, decision.adapter, decision.reason) == (
        "news", None, RouteReason.NO_ADAPTER
    )


def test_gated_domain_goes_to_general_with_quality_gate() -> None:
    decision = decide("legal", None, TABLE, gated=frozenset({"legal"}))
    assert (decision.adapter, decision.reason) == (None, RouteReason.QUALITY_GATE)


def test_auto_without_classifier_goes_to_general() -> None:
    assert decide("auto", None, TABLE) == RouteDecision(None, None, RouteReason.NO_CLASSIFIER, 0.0)


def test_auto_classified_above_threshold_uses_the_domain_adapter() -> None:
    decision = decide("auto", Classification("legal", 0.9), TABLE, threshold=0.5)
    assert decision == RouteDecision("legal", "law-v1", RouteReason.CLASSIFIED, 0.9)


def test_auto_below_threshold_goes_to_general_with_low_confidence() -> None:
    decision = decide("auto", Classification("legal", 0.4), TABLE, threshold=0.5)
    assert decision == RouteDecision("legal", None, RouteReason.LOW_CONFIDENCE, 0.4)


def test_auto_outside_the_taxonomy_goes_to_general() -> None:
    decision = decide("auto", Classification(None, 0.8), TABLE, threshold=0.5)
    assert (decision.adapter, decision.reason) == (None, RouteReason.NO_DOMAIN)


def test_auto_classified_into_a_gated_domain_is_held_back() -> None:
    decision = decide("auto", Classification("legal", 0.9), TABLE, gated=frozenset({"legal"}))
    assert decision.reason is RouteReason.QUALITY_GATE


@pytest.mark.parametrize("model", ["gpt-4", "AUTO", "legal ", ""])
def test_unknown_model_raises(model: str) -> None:
    with pytest.raises(UnknownModelError):
        decide(model, None, TABLE)


def test_fall_back_keeps_domain_and_drops_adapter() -> None:
    decision = fall_back(decide("finance", None, TABLE), RouteReason.ADAPTER_UNAVAILABLE)
    assert decision == RouteDecision("finance", None, RouteReason.ADAPTER_UNAVAILABLE, 1.0)
