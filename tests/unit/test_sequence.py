"""The betting confidence sequence: it covers the true mean at every look (simulated, fixed seeds),
it narrows as evidence grows, and its state follows the paper's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from router.sequence import BettingSequence, grid


def discrete(rng: np.random.Generator, shape: tuple[int, ...], p_down: float, p_up: float
             ) -> np.ndarray:
    """Deltas in {-1, 0, 1} with P(-1) = p_down, P(1) = p_up."""
    u = rng.random(shape)
    return np.where(u < p_down, -1.0, np.where(u < p_down + p_up, 1.0, 0.0))


def ever_misses(values: np.ndarray, mean: float) -> np.ndarray:
    """Per stream (rows), whether the sequence excluded ``mean`` at any look."""
    sequence = BettingSequence.start(shape=(values.shape[0],))
    missed = np.zeros(values.shape[0], dtype=bool)
    for t in range(values.shape[1]):
        sequence = sequence.update(values[:, t])
        low, high = sequence.bounds()
        missed |= (mean < low) | (mean > high)
    return missed


@pytest.mark.parametrize(("name", "draw", "mean"), [
    ("paired deltas, mean 0", lambda r, s: discrete(r, s, 0.2, 0.2), 0.0),
    ("paired deltas, mean -0.1", lambda r, s: discrete(r, s, 0.25, 0.15), -0.1),
    ("skewed coin, mean 0.6", lambda r, s: np.where(r.random(s) < 0.8, 1.0, -1.0), 0.6),
    ("clipped Gaussian", lambda r, s: np.clip(r.normal(0.3, 0.25, s), -1, 1), None),
])
def test_the_sequence_covers_the_true_mean_at_every_look_in_95_percent_of_streams(
    name: str, draw: object, mean: float | None
) -> None:
    rng = np.random.default_rng(20261124)
    values = draw(rng, (300, 400))  # type: ignore[operator]
    if mean is None:  # the clipped Gaussian's mean, from a large independent sample
        mean = float(np.mean(draw(np.random.default_rng(1), (2_000_000,))))  # type: ignore[operator]
    missed = ever_misses(values, mean)
    # The guarantee is <= 5% over all 400 looks at once; the betting sequence is conservative.
    assert missed.mean() <= 0.05, f"{name}: {missed.mean():.3f} of streams missed the mean"


def test_the_sequence_narrows_as_evidence_grows() -> None:
    values = discrete(np.random.default_rng(7), (5000,), 0.2, 0.2)
    sequence = BettingSequence.start()
    widths = {}
    for t, x in enumerate(values, start=1):
        sequence = sequence.update(x)
        if t in (30, 100, 1000, 5000):
            low, high = sequence.bounds()
            widths[t] = float(high - low)
    assert widths[30] > widths[100] > widths[1000] > widths[5000]
    assert widths[5000] < 0.1  # a useful width in the thousands


def test_bounds_stay_ordered_within_minus_one_and_one_and_follow_the_sign_tests() -> None:
    values = discrete(np.random.default_rng(3), (50, 300), 0.35, 0.05)
    sequence = BettingSequence.start(shape=(50,))
    for t in range(values.shape[1]):
        sequence = sequence.update(values[:, t])
        low, high = sequence.bounds()
        assert np.all((-1 <= low) & (low <= high) & (high <= 1))
        # "Whole sequence below / above zero" is read off m = 0 exactly.
        assert np.array_equal(sequence.below(), high < 0)
        assert np.array_equal(sequence.above(), low > 0)


def test_the_capital_is_the_product_of_the_papers_predictable_bets() -> None:
    """Recomputed from the definitions in Waudby-Smith & Ramdas (hedged capital, eq. 26 bets
    truncated at c): K+_t(m) = prod(1 + lambda_i (y_i - m)), K-_t(m) = prod(1 - lambda_i
    (y_i - m)), lambda_i = min(sqrt(2 log(2/alpha) / (sigma2_{i-1} i log(1+i))), c)."""
    alpha, c = 0.05, 0.75
    xs = [0.5, -1.0, 1.0, 0.0, 0.25, -0.75, 1.0, 1.0]
    ys = [(x + 1) / 2 for x in xs]
    sequence = BettingSequence.start(alpha=alpha, grid_points=21)
    for x in xs:
        sequence = sequence.update(x)
    for j, m_signed in enumerate(grid(21)):
        m = (m_signed + 1) / 2
        up = down = 1.0
        squares, total = 0.0, 0.0
        for i, y in enumerate(ys, start=1):
            sigma2 = (0.25 + squares) / i
            bet = min(math.sqrt(2 * math.log(2 / alpha) / (sigma2 * i * math.log(1 + i))), c)
            up *= 1 + bet * (y - m)
            down *= 1 - bet * (y - m)
            total += y
            squares += (y - (0.5 + total) / (i + 1)) ** 2
        assert sequence.log_up[j] == pytest.approx(math.log(up), abs=1e-12)
        assert sequence.log_down[j] == pytest.approx(math.log(down), abs=1e-12)
    assert float(sequence.mean()) == pytest.approx(sum(xs) / len(xs))


def test_a_sequence_without_values_is_the_whole_range() -> None:
    low, high = BettingSequence.start().bounds()
    assert (float(low), float(high)) == (-1.0, 1.0)
    assert math.isnan(float(BettingSequence.start().mean()))


def test_restarting_resets_only_the_chosen_streams() -> None:
    sequence = BettingSequence.start(shape=(2,))
    for _ in range(50):
        sequence = sequence.update([-1.0, -1.0])
    restarted = sequence.restarted([True, False])
    assert restarted.n.tolist() == [0, 50]
    low, high = restarted.bounds()
    assert (float(low[0]), float(high[0])) == (-1.0, 1.0)
    assert float(high[1]) < 0


@pytest.mark.parametrize("bad", [1.5, -1.01, math.nan, math.inf])
def test_values_outside_minus_one_to_one_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        BettingSequence.start().update(bad)


@pytest.mark.parametrize("points", [2, 4, 1])
def test_the_grid_needs_an_odd_number_of_points_so_zero_is_one(points: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        grid(points)
    assert 0.0 in grid(401).tolist() and grid(401)[200] == 0.0
