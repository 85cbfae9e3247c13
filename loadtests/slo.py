"""The rollout gate's configuration and verdict: pure, so it is tested without running locust.

``loadtests/slo.yaml`` holds both the load (users, duration, domain mix, streaming share) and the
thresholds. ``evaluate`` compares what a run observed against the thresholds and returns the
broken ones; an empty list is a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_CONFIG = Path(__file__).resolve().parent / "slo.yaml"


class LoadShape(BaseModel):
    model_config = ConfigDict(extra="forbid")

    users: int = Field(default=4, ge=1)
    spawn_rate: float = Field(default=2.0, gt=0)
    run_time: str = "60s"  # locust's format: 30s, 2m, 1h30m
    # Stop once this many requests were answered (run_time stays the upper bound): a run whose
    # verdict needs N requests then gets them on a slow machine too.
    max_requests: int | None = Field(default=None, ge=1)
    # Seconds each simulated user waits between requests (uniform in [min, max]).
    wait_min_s: float = Field(default=0.0, ge=0)
    wait_max_s: float = Field(default=1.0, ge=0)
    max_tokens: int = Field(default=32, ge=1)
    stream_share: float = Field(default=0.5, ge=0, le=1)  # streamed requests (TTFT measured)
    auto_share: float = Field(default=0.5, ge=0, le=1)  # model "auto"; the rest name the domain
    # Requests sent to the Responses API (POST /v1/responses, `input` + `max_output_tokens`);
    # the rest are chat completions. Streamed ones use the same stream_share.
    responses_share: float = Field(default=0.0, ge=0, le=1)
    # Relative weight per domain ("out_of_taxonomy": requests no domain covers, always "auto");
    # empty: every domain and out_of_taxonomy equally.
    domain_mix: dict[str, float] = {}

    @field_validator("domain_mix")
    @classmethod
    def _positive(cls, mix: dict[str, float]) -> dict[str, float]:
        if any(w < 0 for w in mix.values()) or (mix and not any(mix.values())):
            raise ValueError("domain_mix weights must be >= 0 and not all zero")
        return mix


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    p95_latency_ms: float | None = Field(default=None, gt=0)  # full answer, every request
    p95_ttft_ms: float | None = Field(default=None, gt=0)  # streams: time to first token
    max_error_rate: float = Field(default=0.0, ge=0, le=1)
    min_requests: int = Field(default=1, ge=0)  # a run that sent fewer proves nothing


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    load: LoadShape = LoadShape()
    slo: Thresholds = Thresholds()


def load_config(path: Path = DEFAULT_CONFIG, overrides: Sequence[str] = ()) -> GateConfig:
    """Read ``path``; ``overrides`` are ``section.key=value`` strings (value parsed as YAML)."""
    data: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        section, dot, field = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"override {override!r}: expected section.key=value")
        data.setdefault(section, {})[field] = yaml.safe_load(raw)
    return GateConfig.model_validate(data)


@dataclass(frozen=True)
class Observed:
    requests: int
    failures: int
    p95_latency_ms: float | None  # None: no request completed
    p95_ttft_ms: float | None  # None: no stream sent a first token

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def evaluate(observed: Observed, slo: Thresholds) -> list[str]:
    """The thresholds ``observed`` breaks, each as a readable line; empty: the gate passes."""
    broken = []
    if observed.requests < slo.min_requests:
        broken.append(f"requests {observed.requests} < min_requests {slo.min_requests}")
    if observed.error_rate > slo.max_error_rate:
        broken.append(f"error rate {observed.error_rate:.4f} > {slo.max_error_rate}")
    for name, value, limit in (
        ("p95 latency", observed.p95_latency_ms, slo.p95_latency_ms),
        ("p95 time to first token", observed.p95_ttft_ms, slo.p95_ttft_ms),
    ):
        if limit is None:
            continue
        if value is None:
            broken.append(f"{name}: nothing measured (limit {limit:.0f} ms)")
        elif value > limit:
            broken.append(f"{name} {value:.0f} ms > {limit:.0f} ms")
    return broken
