"""The quality gate: which domains the general model serves because their adapter is worse.

Evidence is the stream of paired deltas (adapter score - general score, in [-1, 1]) of one
adapter version, in arrival order. The gate watches it with anytime-valid confidence sequences
(:mod:`router.sequence`), so looking after every sample costs nothing in error rate:

* **open -> closed** once the version has ``min_samples`` deltas in its current sequence and the
  whole sequence is below zero. If the adapter is in truth as good as the general model, this
  happens in at most ``(1 - confidence) / 2`` of all versions, ever (not per look: the t-interval
  rule this replaces closed ~70% of such streams at least once within 2,000 samples).
* **closed -> open** once a *recovery* sequence, started at the closure and fed only later
  deltas, has ``min_samples`` deltas and lies whole above zero: the adapter has since shown to
  be *better* than the general model, not merely not-worse. Equality cannot be shown confidently
  (no finite sample excludes deltas just below zero), and while the two are equal the general
  model loses nothing, so a closed domain stays closed until its adapter proves a gain or a new
  version replaces it. This is what stops flapping: each change needs a whole sequence on the
  other side of zero, which for a fixed adapter happens with probability at most
  ``(1 - confidence) / 2``.
* After reopening, the recovery sequence becomes the one watched for closing (it covers the
  mean since the closure); the pre-closure evidence is not used again.
* A new adapter version starts with a clean record (a new :class:`GateTrack`): it is served
  until its own evidence says otherwise.

:class:`GateTrack` holds arrays with any batch shape, so ``loadtests/bench_gate.py`` simulates
thousands of streams through exactly this code; the gateway and ``slm-gateway gate replay`` use
batch shape ``()`` through :class:`VersionGate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from router.sequence import TRUNCATION, BettingSequence, Bools, Ints


class GateState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True)
class GateRule:
    confidence: float = 0.95  # of each confidence sequence
    min_samples: int = 30  # deltas in the current sequence before it may change the state
    grid_points: int = 401  # resolution of the reported bounds: 2 / (grid_points - 1)
    truncation: float = TRUNCATION

    def sequence(self, shape: tuple[int, ...] = ()) -> BettingSequence:
        return BettingSequence.start(1.0 - self.confidence, self.grid_points, shape,
                                     self.truncation)


@dataclass(frozen=True)
class GateTrack:
    """The gate of one adapter version (or of a batch of them)."""

    closed: Bools
    n: Ints  # every delta of the version
    changes: Ints  # how often the state changed
    sequence: BettingSequence  # since the version started or the gate last reopened
    recovery: BettingSequence  # since the gate last closed (meaningless while open)

    @classmethod
    def start(cls, rule: GateRule, shape: tuple[int, ...] = ()) -> GateTrack:
        return cls(np.zeros(shape, np.bool_), np.zeros(shape, np.int64),
                   np.zeros(shape, np.int64), rule.sequence(shape), rule.sequence(shape))

    def observe(self, delta: npt.ArrayLike, rule: GateRule) -> GateTrack:
        """The gate after one more delta per stream."""
        sequence = self.sequence.update(delta)
        recovery = self.recovery.update(delta)
        close = ~self.closed & (sequence.n >= rule.min_samples) & sequence.below()
        reopen = (self.closed & (recovery.n >= rule.min_samples) & recovery.above()
                  & ~recovery.below())
        # Closing starts the recovery sequence afresh; reopening makes it the watched one.
        if reopen.any():
            sequence = _choose(reopen, recovery, sequence)
        recovery = recovery.restarted(close)
        return replace(self, closed=(self.closed | close) & ~reopen, n=self.n + 1,
                       changes=self.changes + (close | reopen), sequence=sequence,
                       recovery=recovery)


def _choose(where: Bools, a: BettingSequence, b: BettingSequence) -> BettingSequence:
    """``a`` where ``where`` holds, else ``b`` (same shapes)."""
    grid_mask = where[..., None]
    return replace(b, n=np.where(where, a.n, b.n), total=np.where(where, a.total, b.total),
                   squares=np.where(where, a.squares, b.squares),
                   log_up=np.where(grid_mask, a.log_up, b.log_up),
                   log_down=np.where(grid_mask, a.log_down, b.log_down))


@dataclass(frozen=True)
class Bounds:
    """One sequence, read out: its sample count, mean and bounds."""

    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, sequence: BettingSequence) -> Bounds:
        low, high = sequence.bounds()
        return cls(int(sequence.n), float(sequence.mean()), float(low), float(high))


@dataclass(frozen=True)
class VersionGate:
    """One adapter version's gate (batch shape ``()``), with plain-Python read-outs. Immutable:
    ``observe`` returns the next one (cheap to compute off the event loop and swap in)."""

    rule: GateRule
    track: GateTrack

    @classmethod
    def start(cls, rule: GateRule) -> VersionGate:
        return cls(rule, GateTrack.start(rule))

    def observe(self, delta: float) -> VersionGate:
        return VersionGate(self.rule, self.track.observe(delta, self.rule))

    @property
    def state(self) -> GateState:
        return GateState.CLOSED if bool(self.track.closed) else GateState.OPEN

    @property
    def n(self) -> int:
        return int(self.track.n)

    @property
    def changes(self) -> int:
        return int(self.track.changes)

    def evidence(self) -> Bounds:
        """The sequence watched for closing (while closed: the one that closed the gate, still
        growing), for reports and metrics."""
        return Bounds.of(self.track.sequence)

    def recovery(self) -> Bounds | None:
        """While closed, the sequence watched for reopening."""
        return Bounds.of(self.track.recovery) if self.state is GateState.CLOSED else None


def gated_domains(gates: Mapping[str, VersionGate]) -> frozenset[str]:
    """The domains to send to the general model: those whose active version's gate is closed."""
    return frozenset(domain for domain, gate in gates.items()
                     if gate.state is GateState.CLOSED)
