"""The shadow evaluator: its budget holds, its evidence closes and reopens the quality gate, and
what it learns shows in routing, headers, metrics and the admin API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.corpus import TEST, DomainItem
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.shadow import ShadowBudget
from tests.unit.fakes import FakeVllm

ADMIN = {"authorization": "Bearer admin-secret"}


def mc_item(i: int, domain: str = "legal") -> DomainItem:
    return DomainItem(id=f"t/{i}", domain=domain, source="t", task="multiple_choice",
                      prompt=f"Question {i}?\nOptions: right | wrong\nAnswer with one.",
                      choices=("right", "wrong"), answer="right", metric="accuracy", split=TEST)


async def test_budget_never_exceeds_its_concurrency_or_its_rate() -> None:
    budget = ShadowBudget(max_concurrency=2, calls_per_second=50)
    running, peak = 0, 0

    async def call() -> None:
        nonlocal running, peak
        async with budget.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.02)
            running -= 1

    started = time.monotonic()
    await asyncio.gather(*(call() for _ in range(20)))
    assert peak <= 2
    # 20 starts spaced by 1/50 s cannot take less than 19/50 s, however fast the machine.
    assert time.monotonic() - started >= 19 / 50 and budget.started == 20


async def test_budget_waits_while_user_traffic_is_busy() -> None:
    busy = True
    budget = ShadowBudget(max_concurrency=1, calls_per_second=1000, busy=lambda: busy, poll_s=0.01)
    entered = asyncio.Event()

    async def call() -> None:
        async with budget.slot():
            entered.set()

    task = asyncio.create_task(call())
    await asyncio.sleep(0.1)
    assert not entered.is_set()  # held back as long as users need the replicas
    busy = False
    await asyncio.wait_for(entered.wait(), 1.0)
    await task


class Judge:
    """The fake models' answers: `law-v1` picks the right option only once `good` is set; the
    general model always does."""

    def __init__(self, fake: FakeVllm) -> None:
        self.fake = fake
        self.good = False

    @property
    def good(self) -> bool:
        return self.fake.answers["law-v1"] == "right"

    @good.setter
    def good(self, value: bool) -> None:
        self.fake.answers.update({"law-v1": "right" if value else "wrong",
                                  "SmolLM2-135M-Instruct": "right"})


@pytest.fixture
def judge(fake: FakeVllm) -> Judge:
    return Judge(fake)


@pytest.fixture
def shadow_client(settings: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge,
                  tmp_path: Path) -> Iterator[TestClient]:
    settings = settings.model_copy(update={
        "admin_token": SecretStr("admin-secret"),
        "shadow": settings.shadow.model_copy(update={
            "enabled": True, "calls_per_second": 1000, "yield_above": 100, "min_samples": 6,
            "window": 12, "store": tmp_path / "pairs.jsonl"}),
    })
    app = create_app(settings, transport=fake.transport(), metrics=metrics,
                     shadow_items=[mc_item(i) for i in range(30)])
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def quality(client: TestClient) -> dict[str, object]:
    response = client.get("/admin/quality", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["domains"]["legal"]  # type: ignore[no-any-return]


def ask_legal(client: TestClient) -> dict[str, str]:
    response = client.post("/v1/chat/completions", json={
        "model": "legal", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    return dict(response.headers)


def test_a_worse_adapter_is_gated_and_served_again_once_it_recovers(
    shadow_client: TestClient, judge: Judge, metrics: Metrics, tmp_path: Path
) -> None:
    wait_for(lambda: quality(shadow_client)["gate"] == "closed", "the gate to close")
    state = quality(shadow_client)
    assert state["samples"] >= 6 and state["delta"]["high"] < 0  # type: ignore[index]
    headers = ask_legal(shadow_client)
    assert headers["x-slm-route-reason"] == "quality_gate"
    assert headers["x-slm-adapter"] == "none" and headers["x-slm-quality-gate"] == "closed"
    assert metrics.quality_gate_closed.labels("legal")._value.get() == 1

    judge.good = True  # a fixed adapter: its new scores pull the window's mean back up
    wait_for(lambda: quality(shadow_client)["gate"] == "open", "the gate to reopen")
    headers = ask_legal(shadow_client)
    assert headers["x-slm-route-reason"] == "explicit" and headers["x-slm-adapter"] == "law-v1"
    assert headers["x-slm-quality-gate"] == "open"

    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert {p["source"] for p in pairs} == {"suite"}
    assert set(pairs[0]["variants"]) == {"SmolLM2-135M-Instruct", "law-v1"}
    assert len({p["pair_id"] for p in pairs}) == len(pairs)
