"""Fixed-n summaries of paired suite scores, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from adapters.evaluation.statistics import estimate, paired_delta


def test_estimate_matches_a_t_interval_computed_by_hand() -> None:
    result = estimate([1.0, 0.0, 1.0, 1.0])  # mean .75, sd .5, se .25, t(.975, 3) = 3.182
    assert result.mean == 0.75
    assert result.low == pytest.approx(0.75 - 3.1824 * 0.25, abs=1e-3)
    assert result.high == pytest.approx(0.75 + 3.1824 * 0.25, abs=1e-3)
    assert estimate([0.5]).low == -math.inf and estimate([]).n == 0


def test_paired_delta_sees_a_consistent_small_gain_that_unpaired_means_would_not() -> None:
    general = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4]
    specialized = [g + 0.05 for g in general]
    delta = paired_delta(specialized, general)
    assert delta.mean == pytest.approx(0.05) and delta.above_zero
    assert not estimate(specialized).low > estimate(general).high
    with pytest.raises(ValueError):
        paired_delta([1.0], [1.0, 0.0])
