"""Summaries of paired scores: means with intervals. Pure functions.

`suite run` analyses each domain once at a fixed n (:func:`paired_delta`, a Student-t interval);
the quality gate, which looks after every sample, uses anytime-valid confidence sequences
instead (:mod:`router.sequence`), reported here as :class:`Estimate` values too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass


def finite(x: float) -> float | None:
    """For JSON, which has no NaN or infinities (those become None); rounded to 4 places."""
    return round(x, 4) if math.isfinite(x) else None


def mean(values: Sequence[float]) -> float:
    """The plain mean (NaN for none). What the shadow evaluator reports as a mean score: no
    interval, so no scipy, whose first import would hold the gateway's event loop for ~1 s."""
    return math.fsum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Estimate:
    """A mean with a two-sided interval: a Student-t confidence interval from :func:`estimate`
    (one analysis at a fixed n, as `suite run` does), or the bounds of the quality gate's
    anytime-valid confidence sequence (:mod:`router.sequence`) in the shadow evaluator's reports."""

    n: int
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | int | None]:
        """For JSON (which has no NaN or infinities: those become None), rounded to 4 places."""
        return {"n": self.n, "mean": finite(self.mean), "low": finite(self.low),
                "high": finite(self.high)}

    @property
    def below_zero(self) -> bool:
        return self.high < 0

    @property
    def above_zero(self) -> bool:
        return self.low > 0


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval. Per-item scores are bounded, so with the sample sizes used here
    (tens of items and more) the t-interval is a fair approximation; n < 2 has no interval."""
    n = len(values)
    if n == 0:
        return Estimate(0, math.nan, -math.inf, math.inf)
    mean = sum(values) / n
    if n == 1:
        return Estimate(1, mean, -math.inf, math.inf)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _t_quantile((1 + confidence) / 2, n - 1) * math.sqrt(variance / n)
    return Estimate(n, mean, mean - half, mean + half)


@functools.lru_cache(maxsize=4096)
def _t_quantile(p: float, df: int) -> float:
    # scipy's t.ppf costs ~0.1 ms a call; the evidence report (admin API, console) asks for the
    # same few (confidence, window size) pairs every time, on the event loop.
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_delta(
    specialized: Sequence[float], general: Sequence[float], confidence: float = 0.95
) -> Estimate:
    """Specialized minus general on the same items: pairing removes item difficulty from the
    noise, so far fewer items show a real difference than two independent means would."""
    if len(specialized) != len(general):
        raise ValueError("paired scores need the same items on both sides")
    return estimate([s - g for s, g in zip(specialized, general, strict=True)], confidence)
