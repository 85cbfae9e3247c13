"""Every way a request ends gives back what it held, once: its admission slot, its replica's
in-flight count and the adapter pinned there; and it is counted once (gateway/proxy.py,
``_Attempt``)."""

from __future__ import annotations

import httpx
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.unit.fakes import FakeVllm


def chat(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_answered_refused_failed_over_and_streamed_requests_leave_nothing_held(
    settings: Settings, fake: FakeVllm
) -> None:
    metrics = Metrics()
    app = create_app(settings, transport=fake.transport(), metrics=metrics)
    # A 503 is retryable: with one replica there is nowhere to fail over, so the request ends
    # after letting its replica go; a 400 is vLLM refusing the request.
    outcomes = iter([httpx.Response(503, json={"error": {"message": "busy"}}),
                     httpx.Response(400, json={"error": {"message": "bad"}})])

    def scripted(request: httpx.Request, body: dict[str, object]) -> httpx.Response:
        return next(outcomes)

    with TestClient(app, raise_server_exceptions=False) as client:
        gateway = app.state.gateway
        assert client.post("/v1/chat/completions", json=chat("legal")).status_code == 200
        with client.stream("POST", "/v1/chat/completions",
                           json=chat("legal", stream=True)) as stream:
            assert stream.status_code == 200 and b"[DONE]" in stream.read()
        assert client.post("/v1/chat/completions", json=chat("nope")).status_code == 404
        fake.on_completion = scripted
        assert client.post("/v1/chat/completions", json=chat("legal")).status_code == 503
        assert client.post("/v1/chat/completions", json=chat("legal")).status_code == 400
        fake.on_completion = None

        (replica,) = gateway.pool.replicas
        assert gateway.admission.in_flight == 0
        assert replica.outstanding == 0
        assert metrics.in_flight.labels(replica.name)._value.get() == 0
        # No adapter left pinned: law-v1 may be evicted again.
        assert gateway.fleet.loader._busy(replica.url) == set()

    def count(reason: str, status_class: str, adapter: str = "law-v1",
              domain: str = "legal") -> float:
        return metrics.requests.labels("chat", domain, adapter, reason,
                                       status_class)._value.get()

    assert count("explicit", "2xx") == 2  # the answer and the stream, once each
    assert count("explicit", "5xx") == 1
    assert count("explicit", "4xx") == 1
    assert metrics.requests.labels("chat", "none", "none", "none", "4xx")._value.get() == 1
    assert metrics.retries.labels("r0")._value.get() == 0  # one replica: nowhere to fail over
