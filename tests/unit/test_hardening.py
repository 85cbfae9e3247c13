"""Production hardening over HTTP, against fake vLLM replicas (httpx.MockTransport): keys,
rate limits, overload, hostile input, failover, circuit breaker and upstream deadlines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.unit.fakes import FakeVllm, completion

CHAT = "/v1/chat/completions"
KEY, OTHER_KEY, ADMIN = "sk-test-one", "sk-test-two", "admin-secret"
AUTH = {"authorization": f"Bearer {KEY}"}


def chat(model: str = "base", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Fleet:
    """Several fake replicas behind one transport, told apart by host; each can be slowed."""

    def __init__(self, hosts: list[str]) -> None:
        self.replicas = {host: FakeVllm() for host in hosts}
        self.delay_s: dict[str, float] = {host: 0.0 for host in hosts}
        self.seen_headers: list[httpx.Headers] = []

    def transport(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            host = request.url.host
            if request.url.path.startswith("/v1/") and self.delay_s[host]:
                await asyncio.sleep(self.delay_s[host])
            if request.url.path.endswith("completions"):
                self.seen_headers.append(request.headers)
            return await self.replicas[host].handle(request)

        return httpx.MockTransport(handle)


def build(fleet: Fleet, metrics: Metrics, **overrides: object) -> TestClient:
    settings = Settings(
        upstream={"urls": [f"http://{h}:8000" for h in fleet.replicas], "health_interval_s": 3600,
                  **overrides.pop("upstream", {})},  # type: ignore[dict-item]
        shadow={"enabled": False},
        adapters={"manifest": None, "preload": False},
        api_keys=[SecretStr(KEY), SecretStr(OTHER_KEY)],
        admin_token=SecretStr(ADMIN),
        **overrides,  # type: ignore[arg-type]
    )
    return TestClient(create_app(settings, transport=fleet.transport(), metrics=metrics),
                      raise_server_exceptions=False)


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(["a", "b"])


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(fleet: Fleet, metrics: Metrics) -> Iterator[TestClient]:
    with build(fleet, metrics) as test_client:
        yield test_client


# ------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer sk-wrong"},
                                     {"authorization": KEY}, {"authorization": "Basic eDp5"}])
def test_missing_or_wrong_key_is_a_401_before_the_body_is_read(
    client: TestClient, fleet: Fleet, metrics: Metrics, headers: dict[str, str]
) -> None:
    response = client.post(CHAT, content=b"{not json", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/models", headers=headers).status_code == 401
    assert not fleet.seen_headers
    assert sample(metrics, "slm_requests_rejected_total", reason="unauthorized") == 2


def test_each_configured_key_is_accepted(client: TestClient) -> None:
    for key in (KEY, OTHER_KEY):
        response = client.post(CHAT, json=chat(), headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200


def test_probes_are_open_unless_protected(fleet: Fleet, metrics: Metrics,
                                          client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    with build(fleet, Metrics(), protect_probes=True) as protected:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert protected.get(path).status_code == 401
            assert protected.get(path, headers=AUTH).status_code == 200


def test_admin_routes_refuse_user_keys_with_403_and_unknown_tokens_with_401(
    client: TestClient,
) -> None:
    assert client.get("/admin/adapters", headers=AUTH).status_code == 403
    assert client.get("/admin/adapters", headers=AUTH).json()["error"]["type"] == "permission_error"
    assert client.get("/admin/adapters",
                      headers={"authorization": "Bearer nope"}).status_code == 401
    assert client.get("/admin/adapters",
                      headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200


def test_the_admin_token_is_not_an_api_key(client: TestClient) -> None:
    assert client.post(CHAT, json=chat(),
                       headers={"authorization": f"Bearer {ADMIN}"}).status_code == 401


# ------------------------------------------------------------------------------ rate limits
def test_a_key_over_its_request_rate_gets_429_with_retry_after(
    fleet: Fleet, metrics: Metrics
) -> None:
    with build(fleet, metrics, limits={"requests_per_minute": 2}) as client:
        assert [client.post(CHAT, json=chat(), headers=AUTH).status_code
                for _ in range(2)] == [200, 200]
        refused = client.post(CHAT, json=chat(), headers=AUTH)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) == 30
        # Another key has its own budget.
        other = client.post(CHAT, json=chat(), headers={"authorization": f"Bearer {OTHER_KEY}"})
        assert other.status_code == 200
    assert sample(metrics, "slm_requests_rejected_total", reason="rate_limited") == 1


def test_token_limit_counts_max_tokens_and_refuses_a_request_that_can_never_fit(
    fleet: Fleet,
) -> None:
    with build(fleet, Metrics(), limits={"tokens_per_minute": 1000}) as client:
        assert client.post(CHAT, json=chat(max_tokens=900), headers=AUTH).status_code == 200
        assert client.post(CHAT, json=chat(max_tokens=900), headers=AUTH).status_code == 429
        too_big = client.post(CHAT, json=chat(max_tokens=2000), headers=AUTH)
        assert too_big.status_code == 400
        assert too_big.json()["error"]["code"] == "request_exceeds_token_limit"


# -------------------------------------------------------------------------------- overload
def test_beyond_in_flight_and_queue_requests_get_503_with_retry_after(
    fleet: Fleet, metrics: Metrics
) -> None:
    fleet.delay_s = {"a": 0.5, "b": 0.5}
    limits = {"max_in_flight": 2, "max_queue": 2, "queue_timeout_s": 5, "retry_after_s": 3}
    with build(fleet, metrics, limits=limits) as client, ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: client.post(CHAT, json=chat(), headers=AUTH),
                                  range(10)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses.count(200) >= 4  # 2 in flight + 2 queued are served
        refused = [r for r in responses if r.status_code == 503]
        assert refused and all(r.headers["retry-after"] == "3" for r in refused)
        assert all(r.json()["error"]["code"] == "overloaded" for r in refused)
        # Nothing is left holding a slot once the burst is over.
        assert client.post(CHAT, json=chat(), headers=AUTH).status_code == 200
    assert sample(metrics, "slm_admission_in_flight") == 0
    assert sample(metrics, "slm_requests_rejected_total", reason="overloaded") == len(refused)


# --------------------------------------------------------------------------- hostile input
def test_a_body_over_the_limit_is_a_413_whether_declared_or_streamed(
    fleet: Fleet,
) -> None:
    with build(fleet, Metrics(), limits={"max_body_bytes": 2048}) as client:
        big = json.dumps(chat(padding="x" * 4000)).encode()
        declared = client.post(CHAT, content=big, headers={**AUTH,
                                                           "content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked upload
            yield big[:1500]
            yield big[1500:]

        streamed = client.post(CHAT, content=chunks(), headers={
            **AUTH, "content-type": "application/json"})
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "request_too_large"
    assert not fleet.seen_headers


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "base", "messages": [{"role": "user", "content": "\xff\xfe"}]}', None),
        (b'{"model": "base", "messages": [{"role": "user", "content": "\\ud800"}]}',
         "messages.0.content"),
        (b'{"model": "base", "messages": [{"role": "user", "content": 5}]}',
         "messages.0.content.str"),
        (b'{"model": "base", "messages": [], "max_tokens": 5}', "messages"),
        (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], '
         b'"max_tokens": 100000}', "max_tokens"),
        (b'{"model": "base", "messages": [{"role": "user", "content": "hi"}], '
         b'"max_tokens": -1}', "max_tokens"),
        (b'{"model": ["base"], "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'[1, 2, 3]', None),
    ],
)
def test_malformed_and_hostile_bodies_are_clear_400s_that_reach_no_upstream(
    client: TestClient, fleet: Fleet, body: bytes, param: str | None
) -> None:
    response = client.post(CHAT, content=body, headers={**AUTH,
                                                        "content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text
    assert not fleet.seen_headers


def test_injection_in_model_and_headers_goes_nowhere(client: TestClient, fleet: Fleet) -> None:
    injected = client.post(CHAT, json=chat("base\r\nx-slm-adapter: evil"), headers=AUTH)
    assert injected.status_code == 404
    assert injected.json()["error"]["code"] == "model_not_found"
    assert "x-slm-adapter" not in {k for k in injected.headers if injected.headers[k] == "evil"}
    ok = client.post(CHAT, json=chat(), headers={**AUTH, "x-slm-adapter": "legal-lora",
                                                 "x-request-id": "../../etc", "cookie": "s=1"})
    assert ok.status_code == 200
    sent = fleet.seen_headers[-1]
    # Only what the gateway sets reaches vLLM: no client credentials, cookies or routing hints.
    assert "authorization" not in sent and "cookie" not in sent and "x-slm-adapter" not in sent
    assert sent["x-request-id"].startswith("slm-")


# ------------------------------------------------------------------------ failover, breaker
def test_a_replica_failing_before_the_first_byte_is_retried_on_another(
    client: TestClient, fleet: Fleet, metrics: Metrics
) -> None:
    def refuse(request: httpx.Request, body: dict[str, object]) -> httpx.Response:
        raise httpx.ConnectTimeout("server disconnected", request=request)

    fleet.replicas["a"].on_completion = refuse
    for stream in (False, True):
        response = client.post(CHAT, json=chat(stream=stream), headers=AUTH)
        assert response.status_code == 200
    assert sample(metrics, "slm_upstream_retries_total", replica="r0") >= 1
    assert len(fleet.replicas["b"].requests) == 2


def test_an_upstream_500_is_not_retried_elsewhere(client: TestClient, fleet: Fleet) -> None:
    # A 500 may be the request's own doing (vLLM-CPU crashes on some inputs): no second victim.
    for fake in fleet.replicas.values():
        fake.on_completion = lambda request, body: httpx.Response(500, text="engine died")
    assert client.post(CHAT, json=chat(), headers=AUTH).status_code == 502
    assert sum(len(f.requests) for f in fleet.replicas.values()) == 1


def test_a_failing_replica_is_cut_off_by_its_breaker_then_probed(
    fleet: Fleet, metrics: Metrics
) -> None:
    fleet.replicas["a"].on_completion = lambda request, body: httpx.Response(503, text="busy")
    upstream = {"breaker_failures": 2, "breaker_cooldown_s": 0.2, "retries": 1}
    with build(fleet, metrics, upstream=upstream) as client:
        for _ in range(6):  # balanced placement alternates until a's breaker opens
            assert client.post(CHAT, json=chat(), headers=AUTH).status_code == 200
        assert len(fleet.replicas["a"].requests) == 2
        assert sample(metrics, "slm_replica_breaker_state", replica="r0") == 2
        fleet.replicas["a"].on_completion = None  # a recovers
        time.sleep(0.25)
        for _ in range(4):
            assert client.post(CHAT, json=chat(), headers=AUTH).status_code == 200
        assert len(fleet.replicas["a"].requests) >= 3  # the trial request, then traffic again
        assert sample(metrics, "slm_replica_breaker_state", replica="r0") == 0


def test_with_every_replica_failing_the_client_gets_one_clear_error(
    client: TestClient, fleet: Fleet
) -> None:
    for fake in fleet.replicas.values():
        fake.healthy = False
    response = client.post(CHAT, json=chat(), headers=AUTH)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"


# ------------------------------------------------------------------------------- deadlines
def test_a_stream_without_a_first_token_in_time_ends_with_an_error_event(
    fleet: Fleet, metrics: Metrics
) -> None:
    async def stalled() -> Iterator[bytes]:  # type: ignore[misc]
        await asyncio.sleep(5)
        yield b"data: [DONE]\n\n"

    for fake in fleet.replicas.values():
        fake.on_completion = lambda request, body: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=stalled())
    with build(fleet, metrics, upstream={"first_token_timeout_s": 0.2}) as client, \
            client.stream("POST", CHAT, json=chat(stream=True), headers=AUTH) as response:
        events = [line for line in response.iter_lines() if line]
    assert response.status_code == 200
    assert "first token" in json.loads(events[0].removeprefix("data: "))["error"]["message"]
    assert events[-1] == "data: [DONE]"
    assert sample(metrics, "slm_upstream_errors_total", replica="r0", kind="deadline") + sample(
        metrics, "slm_upstream_errors_total", replica="r1", kind="deadline") == 1


def test_a_non_streaming_answer_past_the_total_deadline_is_a_504(fleet: Fleet) -> None:
    fleet.delay_s = {"a": 1.0, "b": 1.0}
    with build(fleet, Metrics(), upstream={"total_timeout_s": 0.2}) as client:
        response = client.post(CHAT, json=chat(), headers=AUTH)
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout"


def test_usage_answer_passes_through_untouched(client: TestClient, fleet: Fleet) -> None:
    fleet.replicas["a"].answers = {"SmolLM2-135M-Instruct": "exact"}
    fleet.replicas["b"].answers = {"SmolLM2-135M-Instruct": "exact"}
    response = client.post(CHAT, json=chat(), headers=AUTH)
    assert response.json() == completion("SmolLM2-135M-Instruct", "exact")
