"""Every gateway metric, in one place, on a registry owned by one app instance.

Naming follows Prometheus practice: prefix ``slm_``, base units, ``_total`` for counters.
Labels come from bounded sets only: domain ids, registered adapter names (or ``none``), route
reasons, status classes, replica names. Never a request id, prompt or client-supplied string.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NONE = "none"
# API path -> the bounded `endpoint` label.
ENDPOINT_LABELS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                   "/v1/responses": "responses"}

# Latency buckets fitted to a CPU-served small model: from sub-second chat turns to long streams.
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Classification: cache hits take microseconds, the fast stage ~0.2-1 ms, MiniLM 5-15 ms.
_CLASSIFY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def status_class(status_code: int) -> str:
    return f"{status_code // 100}xx"


REJECT_REASONS = ("unauthorized", "rate_limited", "overloaded", "too_large")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slm_requests",
            "Requests answered, by route and HTTP status class.",
            ["endpoint", "domain", "adapter", "route_reason", "status_class"],
            registry=r,
        )
        self.request_duration = Histogram(
            "slm_request_duration_seconds",
            "End-to-end request latency seen by the gateway (to the last byte).",
            ["endpoint", "domain", "adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "slm_time_to_first_token_seconds",
            "Time from request arrival to the first streamed chunk.",
            ["endpoint", "domain", "adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "slm_fallbacks",
            "Requests served by the general model instead of a domain adapter, by reason.",
            ["domain", "reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "slm_upstream_errors",
            "Upstream failures, by replica and kind (connect, timeout, http_5xx, stream...).",
            ["replica", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "slm_requests_in_flight",
            "Requests currently being served, by replica.",
            ["replica"],
            registry=r,
        )
        self.replica_requests = Counter(
            "slm_replica_requests",
            "Requests finished by each replica (any status): how traffic is balanced.",
            ["replica"],
            registry=r,
        )
        self.retries = Counter(
            "slm_upstream_retries",
            "Requests sent again to another replica after this one failed before the first "
            "byte (failover).",
            ["replica"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "slm_replica_breaker_state",
            "The replica's circuit breaker: 0 closed, 1 half-open (one trial), 2 open.",
            ["replica"],
            registry=r,
        )
        self.rejected = Counter(
            "slm_requests_rejected",
            "Requests refused before any upstream work, by reason (unauthorized, rate_limited, "
            "overloaded, too_large).",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # exported at 0 from the start: alerts watch them
            self.rejected.labels(reason)
        self.admission_in_flight = Gauge(
            "slm_admission_in_flight",
            "Requests holding one of the gateway's limits.max_in_flight slots.",
            registry=r,
        )
        self.admission_queued = Gauge(
            "slm_admission_queued",
            "Requests waiting for a slot (at most limits.max_queue).",
            registry=r,
        )
        self.replica_up = Gauge(
            "slm_replica_up",
            "1 when the replica's health check passes, else 0.",
            ["replica"],
            registry=r,
        )
        # The embedded engine (`slm-gateway run` only): its configuration and restarts.
        self.engine_info = Gauge(
            "slm_engine_info",
            "1 for the embedded vLLM's configuration: ISA level of its kernels, base "
            "quantization, dtype and how the 4-bit GEMM runs (native, fallback, none).",
            ["isa", "quantization", "dtype", "gemm"],
            registry=r,
        )
        self.engine_restarts = Counter(
            "slm_engine_restarts",
            "Restarts of the embedded vLLM by the supervisor, by cause (exited, unhealthy).",
            ["reason"],
            registry=r,
        )
        self.adapter_loads = Counter(
            "slm_adapter_loads",
            "Runtime LoRA loads requested from vLLM, by result (loaded, failed).",
            ["replica", "adapter", "result"],
            registry=r,
        )
        self.adapter_load_duration = Histogram(
            "slm_adapter_load_duration_seconds",
            "Time for vLLM to load an adapter at runtime.",
            ["replica"],
            buckets=_LOAD_BUCKETS,
            registry=r,
        )
        self.classification_duration = Histogram(
            "slm_classification_duration_seconds",
            "Time to classify an `auto` request, queueing for a batch included, by the stage "
            "that answered (cache, fast, full).",
            ["stage"],
            buckets=_CLASSIFY_BUCKETS,
            registry=r,
        )
        self.classification_confidence = Histogram(
            "slm_classification_confidence",
            "Calibrated confidence of `auto` classifications, by predicted domain.",
            ["domain"],
            buckets=_CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.classifier_budget_exhausted = Counter(
            "slm_classifier_budget_exhausted",
            "Unsure requests answered by the fast stage because the MiniLM stage's CPU budget "
            "was spent.",
            registry=r,
        )
        self.adapters_resident = Gauge(
            "slm_adapters_resident",
            "Adapters the gateway has loaded on each replica.",
            ["replica"],
            registry=r,
        )
        # ---------------------------------------------------------------- shadow evaluation
        # `adapter` is a registered adapter name, or `none` for the general model's own score.
        self.shadow_score = Gauge(
            "slm_shadow_score",
            "Mean suite score over the evidence window, by domain and adapter (none = general).",
            ["domain", "adapter"],
            registry=r,
        )
        self.shadow_delta = Gauge(
            "slm_shadow_delta",
            "Mean paired score delta, adapter minus general, over the gate's current confidence "
            "sequence (every item since the version started or its gate last reopened).",
            ["domain", "adapter"],
            registry=r,
        )
        self.shadow_delta_low = Gauge(
            "slm_shadow_delta_low",
            "Lower bound of the delta's anytime-valid confidence sequence (-1 with no evidence).",
            ["domain", "adapter"],
            registry=r,
        )
        self.shadow_delta_high = Gauge(
            "slm_shadow_delta_high",
            "Upper bound of the delta's anytime-valid confidence sequence (1 with no evidence).",
            ["domain", "adapter"],
            registry=r,
        )
        self.shadow_evidence = Gauge(
            "slm_shadow_evidence_samples",
            "Paired samples in the confidence sequence the delta and its bounds come from.",
            ["domain", "adapter"],
            registry=r,
        )
        self.shadow_samples = Counter(
            "slm_shadow_samples",
            "Items answered by both variants, by domain and source (suite, live).",
            ["domain", "source"],
            registry=r,
        )
        self.shadow_calls = Counter(
            "slm_shadow_calls",
            "Model calls made by the shadow evaluator (its budget is in these).",
            registry=r,
        )
        self.shadow_calls_in_flight = Gauge(
            "slm_shadow_calls_in_flight",
            "Shadow model calls in flight.",
            registry=r,
        )
        self.shadow_budget = Gauge(
            "slm_shadow_budget_calls_per_second",
            "The configured shadow budget (shadow.calls_per_second).",
            registry=r,
        )
        self.shadow_preempted = Counter(
            "slm_shadow_preempted",
            "Shadow calls abandoned because user requests arrived (the item is retried later).",
            registry=r,
        )
        self.shadow_errors = Counter(
            "slm_shadow_errors",
            "Shadow evaluations that failed (the item is skipped).",
            registry=r,
        )
        self.shadow_live_dropped = Counter(
            "slm_shadow_live_dropped",
            "Sampled live requests dropped because the shadow queue was full.",
            registry=r,
        )
        self.quality_gate_closed = Gauge(
            "slm_quality_gate_closed",
            "1 when the quality gate sends the domain to the general model, else 0.",
            ["domain"],
            registry=r,
        )
        self.quality_gate_changes = Counter(
            "slm_quality_gate_changes",
            "Times the quality gate closed or reopened a domain (state: the new state).",
            ["domain", "state"],
            registry=r,
        )
        # ---------------------------------------------------------------- canary rollouts
        # Per domain (one canary at most each); the canary's name is in /admin/quality and in
        # the `adapter` label of the request metrics.
        self.canary_share = Gauge(
            "slm_canary_share",
            "Share of the domain's routed traffic (auto or domain id) its canary is sent, 0-1 "
            "(0: no canary). Set on every instance from the evaluator's state.",
            ["domain"],
            registry=r,
        )
        self.canary_decisions = Counter(
            "slm_canary_decisions",
            "Canary rollouts ended by the evidence (decision: promoted, rolled_back); counted "
            "by the instance running the evaluator.",
            ["domain", "decision"],
            registry=r,
        )
        self.canary_delta = Gauge(
            "slm_canary_delta",
            "Mean paired score delta, canary minus active version (or general model where the "
            "domain has none), over the canary's confidence sequence.",
            ["domain"],
            registry=r,
        )
        self.canary_delta_low = Gauge(
            "slm_canary_delta_low",
            "Lower bound of the canary delta's anytime-valid confidence sequence.",
            ["domain"],
            registry=r,
        )
        self.canary_delta_high = Gauge(
            "slm_canary_delta_high",
            "Upper bound of the canary delta's anytime-valid confidence sequence.",
            ["domain"],
            registry=r,
        )
        self.canary_evidence = Gauge(
            "slm_canary_evidence_samples",
            "Paired samples in the canary's confidence sequence.",
            ["domain"],
            registry=r,
        )
        self.state_up = Gauge(
            "slm_state_up",
            "1 when the state backend (Redis) answered its last call, else 0 (serving goes on "
            "from the last known state).",
            registry=r,
        )
        self.state_errors = Counter(
            "slm_state_errors",
            "Failed calls to the state backend, by operation.",
            ["operation"],
            registry=r,
        )
        self.state_leader = Gauge(
            "slm_state_leader",
            "1 on the instance that holds the role's lease (role shadow: runs the fleet's "
            "shadow evaluator), else 0.",
            ["role"],
            registry=r,
        )
        self.state_registry_version = Gauge(
            "slm_state_registry_version",
            "Version of the adapter registry this instance serves (equal on every instance "
            "once the fleet has converged).",
            registry=r,
        )
