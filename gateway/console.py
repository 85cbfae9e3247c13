"""What the operator console shows, computed from the gateway's own state and metrics.

Traffic and latency over a recent window come from the gateway's Prometheus histograms and
counters (:mod:`gateway.metrics`), which only ever grow: :class:`TrafficWindow` keeps a short
ring of snapshots of them, and a window's numbers are the difference between a snapshot taken
now and the ring's oldest one inside the window -- what Prometheus' ``increase()`` and
``histogram_quantile()`` would give over the same range, without a Prometheus. Taking a
snapshot walks every series of those metrics, so it runs in a worker thread, never on the
event loop (prometheus_client's metrics are thread-safe).

Everything else (evidence, gate, versions, replicas) is read from the live objects on the event
loop that owns them; it is the same data ``/admin/quality`` and ``/admin/adapters`` expose.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from adapters.registry import AdapterStatus
from gateway.metrics import Metrics
from gateway.settings import ConsoleSettings, Settings

if TYPE_CHECKING:
    from prometheus_client.metrics import MetricWrapperBase

    from gateway.proxy import Gateway

# domain -> upper bound (le) -> cumulative count, as in a Prometheus histogram.
Buckets = dict[str, dict[float, float]]


@dataclass(frozen=True)
class Snapshot:
    """The cumulative counts of the console's metrics at ``time`` (wall clock, seconds)."""

    time: float
    latency: Buckets = field(default_factory=dict)  # slm_request_duration_seconds, by domain
    ttft: Buckets = field(default_factory=dict)  # slm_time_to_first_token_seconds, by domain
    requests: dict[str, dict[str, float]] = field(default_factory=dict)  # domain -> status class
    fallbacks: dict[str, dict[str, float]] = field(default_factory=dict)  # domain -> reason


def _buckets(metric: MetricWrapperBase) -> Buckets:
    """A histogram's buckets summed over every label but ``domain``."""
    out: Buckets = defaultdict(lambda: defaultdict(float))
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out[sample.labels["domain"]][le] += sample.value
    return {domain: dict(b) for domain, b in out.items()}


def _counts(metric: MetricWrapperBase, label: str) -> dict[str, dict[str, float]]:
    """A counter's totals by domain and ``label``."""
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["domain"]][sample.labels[label]] += sample.value
    return {domain: dict(c) for domain, c in out.items()}


def take_snapshot(metrics: Metrics, now: float) -> Snapshot:
    """Read the metrics (walks every series: call it in a worker thread)."""
    return Snapshot(
        time=now,
        latency=_buckets(metrics.request_duration),
        ttft=_buckets(metrics.time_to_first_token),
        requests=_counts(metrics.requests, "status_class"),
        fallbacks=_counts(metrics.fallbacks, "reason"),
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q``-quantile of a histogram given as cumulative counts per upper bound, by
    Prometheus' rule: linear interpolation inside the bucket the rank falls in (the first
    bucket starts at 0), and the highest finite bound when it falls in the +Inf bucket.
    None when the histogram is empty."""
    if not 0 < q <= 1:
        raise ValueError("q must be in (0, 1]")
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower  # not reached: the last bucket holds every observation


def _minus(new: Mapping[str, Mapping[Any, float]], old: Mapping[str, Mapping[Any, float]]
           ) -> dict[str, dict[Any, float]]:
    return {outer: {k: v - old.get(outer, {}).get(k, 0.0) for k, v in inner.items()}
            for outer, inner in new.items()}


def _rounded(x: float | None, places: int = 4) -> float | None:
    return None if x is None else round(x, places)


def window_traffic(current: Snapshot, history: Sequence[Snapshot], window_s: float
                   ) -> dict[str, Any]:
    """Per domain over the window ending at ``current``: requests, rate, errors (5xx),
    p50/p95 of latency and time to first token, fallbacks by reason; and a requests/s series
    per domain between consecutive snapshots (the traffic charts).

    ``history`` is the ring, oldest first. The window starts at its oldest snapshot no older
    than ``window_s``; with no history, at zero (everything since start)."""
    inside = [s for s in history if s.time >= current.time - window_s and s.time < current.time]
    baseline = inside[0] if inside else Snapshot(time=current.time)
    span = current.time - baseline.time
    requests = _minus(current.requests, baseline.requests)
    latency = _minus(current.latency, baseline.latency)
    ttft = _minus(current.ttft, baseline.ttft)
    fallbacks = _minus(current.fallbacks, baseline.fallbacks)
    domains: dict[str, Any] = {}
    for domain in sorted({*requests, *latency, *fallbacks}):
        total = sum(requests.get(domain, {}).values())
        lat, first = latency.get(domain, {}), ttft.get(domain, {})
        domains[domain] = {
            "requests": round(total),
            "rate_per_s": _rounded(total / span if span > 0 else None),
            "errors_5xx": round(requests.get(domain, {}).get("5xx", 0.0)),
            "latency_s": {"p50": _rounded(histogram_quantile(0.5, lat)),
                          "p95": _rounded(histogram_quantile(0.95, lat))},
            "ttft_s": {"p50": _rounded(histogram_quantile(0.5, first)),
                       "p95": _rounded(histogram_quantile(0.95, first))},
            "fallbacks": {r: round(n) for r, n in sorted(fallbacks.get(domain, {}).items()) if n},
        }
    points = [*inside, current] if inside else [current]
    series_t: list[float] = []
    series: dict[str, list[float]] = {d: [] for d in domains}
    for before, after in pairwise(points):
        dt = after.time - before.time
        series_t.append(round(after.time, 3))
        for domain in series:
            done = sum(after.requests.get(domain, {}).values()) - sum(
                before.requests.get(domain, {}).values())
            series[domain].append(round(done / dt, 4) if dt > 0 else 0.0)
    by_reason: dict[str, int] = defaultdict(int)
    for per_reason in fallbacks.values():
        for reason, n in per_reason.items():
            by_reason[reason] += round(n)
    return {
        "window_s": round(span, 3),
        "domains": domains,
        "fallbacks": {r: n for r, n in sorted(by_reason.items()) if n},
        "series": {"t": series_t, "requests_per_s": series},
    }


class TrafficWindow:
    """A ring of metric snapshots, one every ``snapshot_interval_s``, covering ``window_s``."""

    def __init__(self, metrics: Metrics, settings: ConsoleSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        size = math.ceil(settings.window_s / settings.snapshot_interval_s) + 1
        self.ring: deque[Snapshot] = deque(maxlen=size)

    async def snapshot(self) -> Snapshot:
        return await asyncio.to_thread(take_snapshot, self.metrics, self.clock())

    async def run(self) -> None:
        """The lifespan's background task: one snapshot now, then one per interval."""
        while True:
            self.ring.append(await self.snapshot())
            await asyncio.sleep(self.settings.snapshot_interval_s)

    async def traffic(self) -> dict[str, Any]:
        history = list(self.ring)  # copied on the loop: the task appends to it
        now = self.clock()

        def compute() -> dict[str, Any]:
            current = take_snapshot(self.metrics, now)
            return window_traffic(current, history, self.settings.window_s)

        return await asyncio.to_thread(compute)


def engine_info(settings: Settings, gateway: Gateway | None = None) -> dict[str, Any]:
    """The engine configuration as the settings say, and, under `slm-gateway run`, what the
    supervised vLLM runs with (ISA, quantization, dtype, restarts); rendered generically."""
    running = gateway.engine.info() if gateway is not None and gateway.engine else None
    return {
        **({"running": running} if running else {}),
        "served_model_name": settings.upstream.served_model_name,
        "replicas": len(settings.upstream.urls),
        # Used by `slm-gateway run` (the embedded vLLM); `serve` talks to servers started
        # elsewhere, whose own flags may differ.
        "embedded": settings.engine.model_dump(
            mode="json", include={"quantization", "max_loras", "max_cpu_loras", "max_lora_rank",
                                  "max_model_len", "kv_cache_space_gib"}),
        "adapters_per_replica": settings.adapters.max_per_replica,
    }


def _versions(gateway: Gateway, domain: str) -> list[dict[str, Any]]:
    """The domain's adapters that are not retired: active first, then by version."""
    entries = [e for e in gateway.fleet.registry
               if e.domain == domain and e.status is not AdapterStatus.RETIRED]
    entries.sort(key=lambda e: (e.status is not AdapterStatus.ACTIVE, e.status.value, e.version))
    return [{"name": e.name, "version": e.version, "status": e.status.value,
             "loaded_on": gateway.fleet.where_loaded(e.name)} for e in entries]


def domain_states(gateway: Gateway, domains: Iterable[str], evidence: Mapping[str, Any],
                  canaries: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Per domain: gate, versions, the shadow evaluator's ``evidence`` (``/admin/quality``'s
    ``domains``) and its canary rollout (``canaries``)."""
    canaries = canaries or {}
    return [{"id": domain, "gate": gateway.gate_state(domain),
             "active": gateway.fleet.table.active.get(domain),
             "versions": _versions(gateway, domain), "evidence": evidence.get(domain),
             "canary": canaries.get(domain)}
            for domain in domains]


def replica_states(gateway: Gateway) -> list[dict[str, Any]]:
    return [{"name": r.name, "url": r.url, "healthy": r.healthy,
             "breaker": r.breaker.state.name.lower(), "in_flight": r.outstanding,
             "resident": gateway.fleet.loader.resident(r.url)}
            for r in gateway.pool.replicas]


async def console_state(gateway: Gateway, window: TrafficWindow) -> dict[str, Any]:
    """The whole page's data (``GET /ui/api/state``)."""
    settings = gateway.settings
    shadow, evidence, canaries = None, {}, {}
    if gateway.shadow is not None:
        report = gateway.shadow.report()
        evidence = report["domains"]
        canaries = report.get("canaries", {})
        shadow = {k: report[k] for k in ("gate_enabled", "min_samples", "confidence",
                                         "items_scored")}
    return {
        "generated_at": round(window.clock(), 3),
        "refresh_s": settings.console.refresh_s,
        "ready": gateway.pool.ready(),
        "shadow": shadow,
        "gated": sorted(gateway.gate.gated),
        "domains": domain_states(gateway, sorted(gateway.fleet.table.domains), evidence,
                                 canaries),
        "traffic": await window.traffic(),
        "replicas": replica_states(gateway),
        "engine": engine_info(settings, gateway),
    }
