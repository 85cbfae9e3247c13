"""Scale-out: two `slm-gateway serve` processes share one real Redis (Debian's redis-server)
in front of one fake upstream. What an operator does through one instance holds on the other;
one shadow evaluator runs for both; rate limits are the fleet's; Redis dying stops nothing."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.system.conftest import fake_upstream, gateway_process, redis_server

ADMIN = {"authorization": "Bearer admin-secret"}
USER = {"authorization": "Bearer user-key"}
LIMITED = {"authorization": "Bearer limited-key"}
RPM = 12


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text("{}")
    return path


@dataclass
class Fleet:
    root: Path
    redis: str
    redis_proc: subprocess.Popen[bytes]
    upstream: str
    gateways: dict[str, tuple[str, Any]] = field(default_factory=dict)
    stacks: dict[str, ExitStack] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        manifest = self.root / "manifest.yaml"
        return {
            "STATE__REDIS_URL": self.redis,
            "STATE__POLL_INTERVAL_S": "0.2",
            "STATE__LEASE_TTL_S": "2",
            "ADMIN_TOKEN": "admin-secret",
            "API_KEYS": "user-key,limited-key",
            "LIMITS__REQUESTS_PER_MINUTE": str(RPM),
            "ADAPTERS__MANIFEST": str(manifest),
            "ADAPTERS__ALLOWED_DIRS": json.dumps([str(self.root)]),
            "ADAPTERS__PRELOAD": "false",
            "SHADOW__ENABLED": "true",
            "SHADOW__ITEMS_PER_DOMAIN": "1",
            "SHADOW__STORE": str(self.root / "pairs.jsonl"),
            "CONSOLE__ENABLED": "false",
        }

    def start(self, name: str) -> str:
        stack = ExitStack()
        url, proc = stack.enter_context(gateway_process(self.upstream, **self.env()))
        self.gateways[name] = (url, proc)
        self.stacks[name] = stack
        return url

    def url(self, name: str) -> str:
        return self.gateways[name][0]

    def kill(self, name: str) -> None:
        """SIGKILL: no clean shutdown, so the lease is not given back."""
        self.gateways[name][1].kill()
        self.gateways[name][1].wait()
        self.stacks.pop(name).close()
        del self.gateways[name]

    def close(self) -> None:
        for stack in self.stacks.values():
            stack.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("adapters")
    law = adapter_dir(root, "law1")
    (root / "manifest.yaml").write_text(
        f"adapters:\n  - name: law-v1\n    domain: legal\n    path: {law}\n")
    with ExitStack() as stack:
        redis, redis_proc = stack.enter_context(redis_server())
        upstream = stack.enter_context(fake_upstream())
        f = Fleet(root, redis, redis_proc, upstream)
        stack.callback(f.close)
        f.start("a")
        f.start("b")
        yield f


def adapters(url: str) -> dict[str, dict[str, Any]]:
    listing = httpx.get(f"{url}/admin/adapters", headers=ADMIN, timeout=5).json()
    return {a["name"]: a for a in listing["adapters"]}


def routed_adapter(url: str, model: str = "legal") -> str:
    response = httpx.post(f"{url}/v1/chat/completions", headers=USER, timeout=10, json={
        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    return response.headers["x-slm-adapter"]


def leader_gauge(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    match = re.search(r'^slm_state_leader\{role="shadow"\} (\S+)$', text, re.M)
    assert match is not None
    return float(match.group(1))


def register(url: str, name: str, path: Path, **extra: str) -> httpx.Response:
    return httpx.post(f"{url}/admin/adapters", headers=ADMIN, timeout=10, json={
        "name": name, "domain": "legal", "path": str(path), **extra})


def test_a_registration_on_one_instance_is_seen_by_the_other_and_loaded_there(
    fleet: Fleet
) -> None:
    response = register(fleet.url("a"), "law-v2", adapter_dir(fleet.root, "law2"))
    assert response.status_code == 200, response.text
    wait_for(lambda: "law-v2" in adapters(fleet.url("b")), "b to see law-v2", 5)
    seen = adapters(fleet.url("b"))["law-v2"]
    assert seen["status"] == "shadow" and seen["version"] == 1
    # b converged by loading it on its replica, not only by listing it.
    wait_for(lambda: adapters(fleet.url("b"))["law-v2"]["loaded_on"] == ["r0"], "b to load it")
    assert routed_adapter(fleet.url("b"), "law-v2") == "law-v2"


def test_a_promotion_on_one_instance_is_routed_to_by_the_other(fleet: Fleet) -> None:
    register(fleet.url("a"), "law-v3", adapter_dir(fleet.root, "law3"))
    response = httpx.post(f"{fleet.url('a')}/admin/adapters/law-v3/promote", headers=ADMIN,
                          timeout=10)
    assert response.status_code == 200, response.text
    assert routed_adapter(fleet.url("a")) == "law-v3"
    wait_for(lambda: routed_adapter(fleet.url("b")) == "law-v3", "b to route legal to law-v3", 5)
    assert adapters(fleet.url("b"))["law-v1"]["status"] == "retired"


def test_one_keys_requests_per_minute_hold_across_both_instances(fleet: Fleet) -> None:
    statuses = []
    for i in range(2 * RPM):
        url = fleet.url("a" if i % 2 else "b")
        response = httpx.post(f"{url}/v1/chat/completions", headers=LIMITED, timeout=10, json={
            "model": "base", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_error"
    # Per instance each would have admitted RPM; the fleet admits RPM in all.
    assert statuses.count(200) == RPM and statuses.count(429) == RPM
    assert statuses[:RPM] == [200] * RPM


def test_exactly_one_instance_runs_the_shadow_evaluator_and_another_takes_over_when_it_dies(
    fleet: Fleet
) -> None:
    def leaders() -> dict[str, float]:
        return {name: leader_gauge(url) for name, (url, _) in fleet.gateways.items()}

    wait_for(lambda: sum(leaders().values()) == 1, "one shadow leader")
    time.sleep(1.5)  # a few renewals later: still exactly one
    gauges = leaders()
    assert sorted(gauges.values()) == [0.0, 1.0]
    leader = next(name for name, value in gauges.items() if value == 1)
    follower = next(name for name in gauges if name != leader)
    readyz = httpx.get(f"{fleet.url(leader)}/readyz", timeout=5).json()
    assert readyz["state"]["backend"] == "redis" and readyz["state"]["shadow_leader"] is True

    fleet.kill(leader)  # SIGKILL: its lease is not given back, it has to expire
    killed_at = time.monotonic()
    wait_for(lambda: leader_gauge(fleet.url(follower)) == 1, "the follower to take over", 10)
    # The lease lives 2 s and is tried every 2/3 s: failover within a few seconds.
    assert time.monotonic() - killed_at < 6
    fleet.start(leader)  # back as a follower: the lease is held
    time.sleep(1.5)
    assert leader_gauge(fleet.url(leader)) == 0 and leader_gauge(fleet.url(follower)) == 1


def test_the_registry_survives_an_instance_restart(fleet: Fleet) -> None:
    assert register(fleet.url("b"), "law-v4", adapter_dir(fleet.root, "law4")).status_code == 200
    promoted = httpx.post(f"{fleet.url('b')}/admin/adapters/law-v4/promote", headers=ADMIN,
                          timeout=10)
    assert promoted.status_code == 200, promoted.text
    fleet.kill("b")
    url = fleet.start("b")
    # The manifest says law-v1 is legal's adapter; the stored registry says law-v4.
    listing = adapters(url)
    assert listing["law-v4"]["status"] == "active" and listing["law-v1"]["status"] == "retired"
    assert listing["law-v2"]["status"] == "shadow"
    assert routed_adapter(url) == "law-v4"


def test_serving_goes_on_from_the_last_known_state_when_redis_dies(fleet: Fleet) -> None:
    wait_for(lambda: all(routed_adapter(url) == "law-v4" for url, _ in fleet.gateways.values()),
             "both instances on the latest registry")
    fleet.redis_proc.kill()
    fleet.redis_proc.wait()
    for url, _ in fleet.gateways.values():
        wait_for(lambda url=url: httpx.get(f"{url}/readyz", timeout=5).json()["state"]
                 ["reachable"] is False, "the outage to show in /readyz", 5)
        for _ in range(5):
            assert routed_adapter(url) == "law-v4"
        refused = register(url, "law-v9", adapter_dir(fleet.root, "law9"))
        assert refused.status_code == 503
        error = refused.json()["error"]
        assert error["code"] == "state_unavailable" and "Redis" in error["message"]
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert re.search(r"^slm_state_up 0\.0$", metrics, re.M)
        assert re.search(r'^slm_state_errors_total\{operation="\w+"\} [1-9]', metrics, re.M)
        assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200

