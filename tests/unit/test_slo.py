"""The rollout gate's verdict and config, without locust."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.slo import DEFAULT_CONFIG, Observed, Thresholds, evaluate, load_config


def test_a_run_within_every_threshold_passes() -> None:
    seen = Observed(requests=100, failures=0, p95_latency_ms=900, p95_ttft_ms=200)
    assert evaluate(seen, Thresholds(p95_latency_ms=1000, p95_ttft_ms=300)) == []


@pytest.mark.parametrize(
    ("seen", "broken"),
    [
        (Observed(100, 2, 500, 100), "error rate 0.0200 > 0.01"),
        (Observed(100, 0, 1500, 100), "p95 latency 1500 ms > 1000 ms"),
        (Observed(100, 0, 500, 400), "p95 time to first token 400 ms > 300 ms"),
        (Observed(100, 0, 500, None), "p95 time to first token: nothing measured"),
        (Observed(5, 0, 500, 100), "requests 5 < min_requests 10"),
    ],
)
def test_each_broken_threshold_is_reported(seen: Observed, broken: str) -> None:
    slo = Thresholds(p95_latency_ms=1000, p95_ttft_ms=300, max_error_rate=0.01, min_requests=10)
    assert any(line.startswith(broken) for line in evaluate(seen, slo))


def test_the_shipped_config_loads_and_overrides_apply() -> None:
    config = load_config(DEFAULT_CONFIG, ["slo.p95_latency_ms=1", "load.domain_mix={legal: 2}"])
    assert config.slo.p95_latency_ms == 1
    assert config.load.domain_mix == {"legal": 2}


def test_a_config_with_unknown_keys_or_bad_overrides_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "slo.yaml"
    bad.write_text("slo:\n  p95_latncy_ms: 5\n")
    with pytest.raises(ValueError):
        load_config(bad)
    with pytest.raises(ValueError):
        load_config(DEFAULT_CONFIG, ["p95_latency_ms=5"])
