"""The quality gate: which domains the general model serves because their adapter is worse.

A pure function of the evidence (per domain, the paired delta specialized - general with its
confidence interval) and the current state, so flips and restores are tested on synthetic
evidence. The gate

* closes a domain (routes it to the general model, reason ``quality_gate``) once it has at least
  ``min_samples`` paired scores and the whole interval of the delta is below zero;
* opens it again when the mean delta is back at or above zero. Between the two (the interval
  reaches zero but the mean is still negative) the state stays as it is, so a domain on the
  edge does not flap with every new sample;
* leaves a domain with too little evidence open: a new adapter version starts with a clean
  record and gets served until the evidence says otherwise (its shadow scores decide first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from adapters.scoring import Estimate


@dataclass(frozen=True)
class GateRule:
    min_samples: int = 30


def gated_domains(
    evidence: Mapping[str, Estimate], gated: frozenset[str], rule: GateRule
) -> frozenset[str]:
    """The domains to send to the general model, given the evidence and the current state."""
    closed = set()
    for domain, delta in evidence.items():
        if delta.n < rule.min_samples:
            continue
        if delta.below_zero or (domain in gated and delta.mean < 0):
            closed.add(domain)
    return frozenset(closed)
