"""Canary rollout decisions, as pure functions: who a canary serves and how its share moves.

A *canary* is an adapter version (registry status ``canary``) that serves a share of its domain's
live traffic while the shadow evaluator pairs it with the domain's active version (or, in a
domain without one, with the general model: its *baseline*) on the same suite items. The paired
deltas (canary - baseline, in [-1, 1]) feed an anytime-valid confidence sequence
(:mod:`router.sequence`) of the canary version's own; a new version starts a new one.

* :func:`standing`: **better** once the sequence has ``min_samples`` deltas and lies whole above
  ``promote_margin``; **worse** once it lies whole below 0 (the canary is promoted, resp. rolled
  back). In between, undecided. A canary exactly as good as its baseline stays undecided (no
  finite sample proves equality): it stays at ``max_share`` until an operator promotes or
  retires it.
* :func:`step`: the share. It starts at ``initial_share`` and multiplies by ``growth`` every
  ``step_samples`` paired deltas, up to ``max_share``, while the verdict is undecided and the
  canary's latency is within the SLO. Latency over the SLO sends the share back to
  ``initial_share`` at once (phase ``held``) and growth resumes ``step_samples`` deltas after it
  is back within; a canary whose own quality gate (vs the general model) is closed gets no traffic.
* :func:`in_cohort`: whether one request goes to the canary: a hash of a sticky key (the client's
  ``user``, else the request id) salted with the canary's name, below the share. So one user stays
  on one version, and as the share grows the users already on the canary stay on it (the cohort
  at share s is a subset of the cohort at any s' > s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np


class CanaryPhase(StrEnum):
    GROWING = "growing"  # the share grows every step_samples deltas
    CAPPED = "capped"  # at max_share, waiting for a verdict
    HELD = "held"  # latency over the SLO (share back to initial) or own gate closed (share 0)
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"


TERMINAL = frozenset({CanaryPhase.PROMOTED, CanaryPhase.ROLLED_BACK})


class Standing(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class CanaryRule:
    initial_share: float = 0.05
    growth: float = 2.0
    step_samples: int = 10
    max_share: float = 0.5
    min_samples: int = 30  # deltas before a verdict (the quality gate's shadow.min_samples)
    promote_margin: float = 0.0  # promote once the whole sequence is above this
    latency_slo_s: float | None = None  # canary p95 at most this (None: no absolute SLO)
    latency_ratio: float | None = 1.5  # canary p95 at most this x the baseline's p95
    latency_min_samples: int = 20  # requests in the window before a p95 counts

    def __post_init__(self) -> None:
        if not 0 < self.initial_share <= self.max_share <= 1:
            raise ValueError("need 0 < initial_share <= max_share <= 1")
        if self.growth < 1:
            raise ValueError("growth must be at least 1")


def standing(n: int, low: float, high: float, rule: CanaryRule) -> Standing:
    """The canary's standing from its confidence sequence against the baseline (``n`` deltas,
    bounds ``low``/``high``). The sequence's grid puts ``low`` above 0 exactly when m = 0 is
    beaten (:mod:`router.sequence`), so a zero margin has no rounding."""
    if n < rule.min_samples:
        return Standing.UNDECIDED
    if low > rule.promote_margin:
        return Standing.BETTER
    if high < 0:
        return Standing.WORSE
    return Standing.UNDECIDED


def p95(seconds: Sequence[float], min_samples: int) -> float | None:
    """The 95th percentile of recent request durations; None with fewer than ``min_samples``."""
    if len(seconds) < max(1, min_samples):
        return None
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), 95))


def latency_within(canary_p95: float | None, baseline_p95: float | None,
                   rule: CanaryRule) -> bool | None:
    """Whether the canary's p95 is within the SLO: the absolute ``latency_slo_s`` and the ratio
    to the baseline's p95, each where set and measured. None: no measurement to judge by (too few
    canary requests yet). Unknown latency does not stop growth (a canary with no traffic harms no
    one); once measured, a breach brakes it."""
    if canary_p95 is None:
        return None
    if rule.latency_slo_s is not None and canary_p95 > rule.latency_slo_s:
        return False
    if (rule.latency_ratio is not None and baseline_p95 is not None
            and canary_p95 > rule.latency_ratio * baseline_p95):
        return False
    return True


@dataclass(frozen=True)
class CanaryProgress:
    """Where one canary version's rollout stands."""

    share: float
    stepped_at: int  # deltas when the share last changed (or was last held)
    phase: CanaryPhase

    @classmethod
    def start(cls, rule: CanaryRule) -> CanaryProgress:
        return cls(rule.initial_share, 0, CanaryPhase.GROWING)


def step(progress: CanaryProgress, rule: CanaryRule, *, n: int, standing: Standing,
         latency_ok: bool | None, gate_closed: bool = False) -> CanaryProgress:
    """The rollout after the canary's sequence reached ``n`` deltas with ``standing``.
    Terminal phases keep the share the canary had when decided (for the record)."""
    if standing is Standing.BETTER:
        return replace(progress, phase=CanaryPhase.PROMOTED)
    if standing is Standing.WORSE:
        return replace(progress, phase=CanaryPhase.ROLLED_BACK)
    if gate_closed:
        return CanaryProgress(0.0, n, CanaryPhase.HELD)
    if latency_ok is False:
        return CanaryProgress(rule.initial_share, n, CanaryPhase.HELD)
    share, stepped_at = progress.share, progress.stepped_at
    if progress.phase is CanaryPhase.HELD and share < rule.initial_share:
        share = rule.initial_share  # the gate reopened: start over
    if n - stepped_at >= rule.step_samples:
        share, stepped_at = min(rule.max_share, share * rule.growth), n
    phase = CanaryPhase.CAPPED if share >= rule.max_share else CanaryPhase.GROWING
    return CanaryProgress(share, stepped_at, phase)


def in_cohort(sticky: str, salt: str, share: float) -> bool:
    """Whether the request with sticky key ``sticky`` goes to the canary named ``salt`` at
    ``share``: a 64-bit hash of both, as a number in [0, 1), below the share. Deterministic
    across processes (unlike ``hash()``), so every gateway instance sends a user the same way."""
    if share <= 0.0:
        return False
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(f"{salt}\x00{sticky}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share
