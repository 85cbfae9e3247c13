"""The console's data: window quantiles from the gateway's own histograms, who may read it, and
what it reports per domain."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from gateway.app import create_app
from gateway.cli import _banner
from gateway.console import histogram_quantile, take_snapshot, window_traffic
from gateway.metrics import Metrics
from gateway.settings import ConsoleSettings, Settings
from tests.unit.fakes import FakeVllm

TOKEN = "console-secret"
STATE = "/ui/api/state"


# ---------------------------------------------------------------------------- quantiles
def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = {0.1: 10.0, 0.5: 20.0, float("inf"): 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 10: top of bucket 1
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.3)  # rank 15: half of bucket 2
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # first bucket starts at 0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound_and_empty_is_none() -> None:
    assert histogram_quantile(0.95, {0.1: 1.0, 1.0: 2.0, float("inf"): 10.0}) == 1.0
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.5, {}) is None


def test_window_quantiles_come_from_the_gateways_own_latency_histogram() -> None:
    metrics = Metrics()
    for i in range(100):  # 0.01 .. 1.00 s, evenly: p50 ~0.5 s, p95 ~0.95 s
        metrics.request_duration.labels("chat", "legal", "law-v1").observe((i + 1) / 100)
        metrics.requests.labels("chat", "legal", "law-v1", "explicit", "2xx").inc()
    traffic = window_traffic(take_snapshot(metrics, 100.0), [take_snapshot(Metrics(), 0.0)], 300)
    legal = traffic["domains"]["legal"]
    # Within the buckets that hold the true quantiles (0.25-0.5 and 0.5-1.0): what a
    # histogram can say.
    assert 0.25 <= legal["latency_s"]["p50"] <= 0.5
    assert 0.5 <= legal["latency_s"]["p95"] <= 1.0
    assert legal["requests"] == 100 and legal["rate_per_s"] == pytest.approx(1.0)


def test_the_window_counts_only_what_happened_inside_it() -> None:
    metrics = Metrics()

    def serve(n: int, seconds: float, domain: str = "legal") -> None:
        for _ in range(n):
            metrics.request_duration.labels("chat", domain, "none").observe(seconds)
            metrics.requests.labels("chat", domain, "none", "quality_gate", "2xx").inc()
            metrics.fallbacks.labels(domain, "quality_gate").inc()

    serve(50, 20.0)  # slow, but long ago
    old = take_snapshot(metrics, 0.0)
    serve(10, 0.04)
    start = take_snapshot(metrics, 200.0)
    serve(30, 0.04)
    traffic = window_traffic(take_snapshot(metrics, 400.0), [old, start], window_s=300)
    legal = traffic["domains"]["legal"]
    assert traffic["window_s"] == 200.0  # from the oldest snapshot inside the window
    assert legal["requests"] == 30 and legal["fallbacks"] == {"quality_gate": 30}
    assert legal["latency_s"]["p95"] <= 0.05  # the slow requests are outside the window
    assert traffic["fallbacks"] == {"quality_gate": 30}
    assert traffic["series"]["requests_per_s"]["legal"] == [pytest.approx(30 / 200)]


# ---------------------------------------------------------------------------- the endpoint
def console_client(settings: Settings, fake: FakeVllm, **update: object) -> TestClient:
    app = create_app(settings.model_copy(update=update), transport=fake.transport(),
                     metrics=Metrics())
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def guarded(settings: Settings, fake: FakeVllm) -> Iterator[TestClient]:
    with console_client(settings, fake, admin_token=SecretStr(TOKEN)) as client:
        yield client


def test_console_is_open_in_local_development_like_the_api(client: TestClient) -> None:
    assert client.get(STATE).status_code == 200
    page = client.get("/ui/")
    assert page.status_code == 200 and "slm-gateway" in page.text


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"authorization": TOKEN}])
def test_with_an_admin_token_the_data_needs_it(guarded: TestClient,
                                               headers: dict[str, str]) -> None:
    response = guarded.get(STATE, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    ok = guarded.get(STATE, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.headers["cache-control"] == "no-store"


def test_the_page_itself_is_public_and_locked_down(guarded: TestClient) -> None:
    page = guarded.get("/ui/")  # holds no data: it asks for the token
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert guarded.get("/ui/vendor/chart.umd.min.js").status_code == 200
    redirect = guarded.get("/ui", follow_redirects=False)
    assert redirect.status_code in (307, 308) and redirect.headers["location"].endswith("/ui/")


def test_with_api_keys_but_no_admin_token_the_console_is_off(settings: Settings,
                                                              fake: FakeVllm) -> None:
    with console_client(settings, fake, api_keys=[SecretStr("user-key")]) as client:
        response = client.get(STATE, headers={"authorization": "Bearer user-key"})
    assert response.status_code == 403
    assert "SLM_GATEWAY_ADMIN_TOKEN" in response.json()["error"]["message"]


def test_a_user_api_key_is_not_the_admin_token(settings: Settings, fake: FakeVllm) -> None:
    with console_client(settings, fake, api_keys=[SecretStr("user-key")],
                        admin_token=SecretStr(TOKEN)) as client:
        response = client.get(STATE, headers={"authorization": "Bearer user-key"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_token_required"


def test_console_can_be_turned_off(settings: Settings, fake: FakeVllm) -> None:
    with console_client(settings, fake, console=ConsoleSettings(enabled=False)) as client:
        assert client.get(STATE).status_code == 404
        assert client.get("/ui/").status_code == 404


def test_state_reports_every_domain_traffic_replicas_and_engine(client: TestClient) -> None:
    chat = {"model": "legal", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/chat/completions", json=chat).status_code == 200
    state = client.get(STATE).json()
    domains = {d["id"]: d for d in state["domains"]}
    assert len(domains) == 14  # the packaged taxonomy
    assert domains["legal"]["gate"] == "open" and domains["legal"]["active"] == "law-v1"
    assert domains["legal"]["versions"] == [
        {"name": "law-v1", "version": 1, "status": "active", "loaded_on": ["r0"]}]
    assert domains["physics"]["gate"] is None and domains["physics"]["versions"] == []
    assert state["traffic"]["domains"]["legal"]["requests"] == 1
    assert state["traffic"]["domains"]["legal"]["latency_s"]["p50"] is not None
    assert state["replicas"] == [{"name": "r0", "url": "http://vllm-a:8000", "healthy": True,
                                  "breaker": "closed", "in_flight": 0,
                                  "resident": {"law-v1": 1}}]
    assert state["engine"]["served_model_name"] == "SmolLM2-135M-Instruct"
    assert state["shadow"] is None  # the evaluator is off in these settings


def test_make_run_prints_the_console_url_next_to_the_curl_example() -> None:
    banner = _banner(Settings())
    assert "curl -s http://127.0.0.1:8000/v1/chat/completions" in banner
    assert "Console: http://127.0.0.1:8000/ui/" in banner
    guarded = _banner(Settings(admin_token=SecretStr(TOKEN)))
    assert "asks for the admin token" in guarded and TOKEN not in guarded
