"""Betting confidence sequences for the mean of bounded values: valid at every look.

Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 86(1)
2024 (arXiv:2010.09686), the *hedged capital* confidence sequence (their Theorem 3 with the
predictable plug-in bets of their eq. (26), truncated at c = 3/4, theta = 1/2).

For each candidate mean ``m`` two gamblers bet against it with predictable stakes: one wins when
the values run above ``m``, one when they run below. Each one's capital is a nonnegative
martingale when the true mean is ``m``, so by Ville's inequality it reaches ``2 / alpha`` with
probability at most ``alpha / 2`` *ever*. The sequence is the set of ``m`` neither gambler has
beaten yet: it covers the true mean at every sample size simultaneously, with probability at
least ``1 - alpha``, however often it is looked at and whenever one stops. (The Student-t
interval it replaces holds at one fixed sample size only: checked after every sample it excludes
the truth far more often than 5%.)

Values are paired score deltas in [-1, 1]; internally they are mapped to [0, 1]. The capitals are
kept on a fixed grid of candidate means (``grid_points``, the ends and 0 included), updated in
O(grid) per value, vectorised. Every array carries any leading batch shape, so the benchmark runs
thousands of streams through this same code at once.

The stake of a step is the same for every candidate ``m`` (it depends on past values only), so
the upward gambler's capital is nonincreasing in ``m`` and the downward one's nondecreasing, and
the set is an interval: ``low`` is the smallest grid point the upward gambler has not beaten,
``high`` the largest one the downward gambler has not beaten. They are read off the grid (resolution
``2 / (grid_points - 1)``, 0.005 by default), while "the whole sequence is below 0" is exactly
"m = 0 is beaten from below", a grid point, so a gate on the sign of the mean has no rounding
(and its decisions do not depend on the grid at all: only the capitals at m = 0 matter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

TRUNCATION = 0.75  # c in the paper: a bet never stakes more than 3/4 of what it can lose


@lru_cache(maxsize=8)
def grid(points: int) -> Floats:
    """Candidate means in [-1, 1], ``points`` of them (odd: 0 is one of them, exactly)."""
    if points < 3 or points % 2 == 0:
        raise ValueError("grid_points must be odd and at least 3")
    half = (points - 1) // 2
    values = np.arange(-half, half + 1, dtype=np.float64) / half
    values.setflags(write=False)
    return values


@dataclass(frozen=True)
class BettingSequence:
    """The state of one confidence sequence (or of a batch of them: every field has the batch's
    leading shape; ``log_up`` and ``log_down`` one more axis, the grid). Immutable: ``update``
    returns a new state, so a reader never sees one half-updated."""

    alpha: float
    n: Ints
    total: Floats  # sum of the values, in [0, 1] units
    squares: Floats  # sum of (y_i - mu_hat_i)^2, the variance estimate's numerator
    log_up: Floats  # log capital of the gambler betting the mean is above m
    log_down: Floats  # log capital of the gambler betting the mean is below m
    truncation: float = TRUNCATION

    @classmethod
    def start(cls, alpha: float = 0.05, grid_points: int = 401, shape: tuple[int, ...] = (),
              truncation: float = TRUNCATION) -> BettingSequence:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not 0 < truncation < 1:
            raise ValueError("truncation must be in (0, 1)")
        size = len(grid(grid_points))
        return cls(alpha, np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape),
                   np.zeros((*shape, size)), np.zeros((*shape, size)), truncation)

    @property
    def grid(self) -> Floats:
        return grid(self.log_up.shape[-1])

    @property
    def threshold(self) -> float:
        """log(2 / alpha): a gambler holding that much has beaten its candidate mean."""
        return math.log(2.0 / self.alpha)

    def update(self, x: npt.ArrayLike) -> BettingSequence:
        """The sequence after one more value per stream (``x`` in [-1, 1], the batch's shape)."""
        values = np.asarray(x, dtype=np.float64)
        if values.shape != self.n.shape:
            raise ValueError(f"expected values of shape {self.n.shape}, got {values.shape}")
        if not np.all((values >= -1.0) & (values <= 1.0)):  # NaN fails this too
            raise ValueError("values must lie in [-1, 1]")
        y = (values + 1.0) / 2.0
        t = self.n + 1
        # Predictable plug-in stake from the values before this one (eq. 26): the estimates
        # start from a fake observation (mean 1/2, variance 1/4) so they exist from t = 1 on.
        # Truncated at c: then it is also below the paper's c / m and c / (1 - m) for every
        # candidate m in [0, 1], so one stake serves the whole grid and no factor 1 + bet * gap
        # can fall below 1 - c > 0.
        variance = (0.25 + self.squares) / t
        stake = np.minimum(
            np.sqrt(2.0 * math.log(2.0 / self.alpha) / (variance * t * np.log1p(t))),
            self.truncation)[..., None]
        gap = y[..., None] - (self.grid + 1.0) / 2.0
        total = self.total + y
        mean = (0.5 + total) / (t + 1)
        return replace(
            self,
            n=t,
            total=total,
            squares=self.squares + (y - mean) ** 2,
            log_up=self.log_up + np.log1p(stake * gap),
            log_down=self.log_down + np.log1p(-stake * gap),
        )

    def restarted(self, where: npt.ArrayLike) -> BettingSequence:
        """Streams where ``where`` is true start afresh (no values yet); the others are kept."""
        mask = np.asarray(where, dtype=np.bool_)
        if not mask.any():
            return self
        keep = ~mask
        return replace(
            self,
            n=np.where(keep, self.n, 0),
            total=np.where(keep, self.total, 0.0),
            squares=np.where(keep, self.squares, 0.0),
            log_up=np.where(keep[..., None], self.log_up, 0.0),
            log_down=np.where(keep[..., None], self.log_down, 0.0),
        )

    def mean(self) -> Floats:
        """The mean of the values so far, in [-1, 1] (NaN before the first one)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n > 0, 2.0 * self.total / self.n - 1.0, np.nan)

    def bounds(self) -> tuple[Floats, Floats]:
        """(low, high) of the confidence sequence now: the smallest grid point the upward
        gambler has not beaten and the largest the downward one has not. -1 and 1 are never
        beaten (no bet can win there), so both always exist. If the two cross (the set is empty:
        the values are not consistent with one fixed mean, or the 1 - alpha event failed), both
        become the point where they cross."""
        points = self.grid
        thr = self.threshold
        low = points[np.argmax(self.log_up < thr, axis=-1)]
        last = np.argmax((self.log_down < thr)[..., ::-1], axis=-1)
        high = points[len(points) - 1 - last]
        crossed = low > high
        middle = (low + high) / 2.0
        return np.where(crossed, middle, low), np.where(crossed, middle, high)

    def below(self) -> Bools:
        """The whole sequence below 0: the downward gambler has beaten m = 0 (hence, by
        monotonicity, every m >= 0)."""
        return self.log_down[..., self.log_down.shape[-1] // 2] >= self.threshold

    def above(self) -> Bools:
        """The whole sequence above 0: the upward gambler has beaten m = 0 (and every m <= 0)."""
        return self.log_up[..., self.log_up.shape[-1] // 2] >= self.threshold
