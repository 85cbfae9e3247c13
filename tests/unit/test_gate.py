"""The quality gate flips and restores a domain on synthetic evidence."""

from __future__ import annotations

from adapters.scoring import Estimate, paired_delta
from router.gate import GateRule, gated_domains

RULE = GateRule(min_samples=30)


def evidence(delta: float, n: int = 40, noise: float = 0.1) -> Estimate:
    general = [0.5 + (noise if i % 2 else -noise) for i in range(n)]
    return paired_delta([g + delta for g in general], general)


def test_a_domain_whose_adapter_is_clearly_worse_is_gated() -> None:
    assert gated_domains({"legal": evidence(-0.2)}, frozenset(), RULE) == {"legal"}


def test_too_few_samples_never_gate_however_bad_they_look() -> None:
    assert gated_domains({"legal": evidence(-0.5, n=29)}, frozenset(), RULE) == frozenset()


def test_a_better_or_undecided_adapter_stays_in_service() -> None:
    undecided = Estimate(n=40, mean=-0.01, low=-0.05, high=0.03)
    result = gated_domains({"news": evidence(0.1), "legal": undecided}, frozenset(), RULE)
    assert result == frozenset()


def test_a_gated_domain_stays_gated_while_the_mean_is_below_zero_and_reopens_at_zero() -> None:
    edge = Estimate(n=40, mean=-0.01, low=-0.05, high=0.03)  # interval no longer below zero
    assert gated_domains({"legal": edge}, frozenset({"legal"}), RULE) == {"legal"}
    recovered = Estimate(n=40, mean=0.0, low=-0.04, high=0.04)
    assert gated_domains({"legal": recovered}, frozenset({"legal"}), RULE) == frozenset()


def test_domains_without_evidence_are_not_gated() -> None:
    assert gated_domains({}, frozenset({"legal"}), RULE) == frozenset()
