"""The shadow evaluator: its budget holds, its evidence closes and reopens the quality gate, and
what it learns shows in routing, headers, metrics and the admin API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.evaluation.items import SuiteItem
from adapters.registry import AdapterEntry, AdapterStatus
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.shadow import ShadowBudget
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm, ScriptedClassifier, wait_for

ADMIN = {"authorization": "Bearer admin-secret"}


def mc_item(i: int, domain: str = "legal") -> SuiteItem:
    return SuiteItem(id=f"t/{i}", domain=domain, source="t", task="multiple_choice",
                     prompt=f"Question {i}?\nOptions: right | wrong\nAnswer with one.",
                     choices=("right", "wrong"), answer="right", metric="accuracy")


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
    """The fake models' answers: the general model picks the right option and `law-v1` the
    wrong one, until `adapter_wins` swaps them."""

    def __init__(self, fake: FakeVllm) -> None:
        self.fake = fake
        self.adapter_wins = False

    @property
    def adapter_wins(self) -> bool:
        return self.fake.answers["law-v1"] == "right"

    @adapter_wins.setter
    def adapter_wins(self, value: bool) -> None:
        self.fake.answers.update({"law-v1": "right" if value else "wrong",
                                  "SmolLM2-135M-Instruct": "wrong" if value else "right"})


@pytest.fixture
def judge(fake: FakeVllm) -> Judge:
    return Judge(fake)


def shadow_app(settings: Settings, fake: FakeVllm, metrics: Metrics, store: Path,
               **shadow: object) -> TestClient:
    settings = settings.model_copy(update={
        "admin_token": SecretStr("admin-secret"),
        "shadow": settings.shadow.model_copy(update={
            "enabled": True, "calls_per_second": 1000, "yield_above": 100, "min_samples": 6,
            "window": 12, "store": store, **shadow}),
    })
    app = create_app(settings, transport=fake.transport(), metrics=metrics,
                     classifier=ScriptedClassifier(),
                     shadow_items=[mc_item(i) for i in range(30)])
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def shadow_client(settings: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge,
                  tmp_path: Path) -> Iterator[TestClient]:
    with shadow_app(settings, fake, metrics, tmp_path / "pairs.jsonl") as client:
        yield client


def quality(client: TestClient) -> dict[str, object]:
    response = client.get("/admin/quality", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["domains"]["legal"]  # type: ignore[no-any-return]


def ask_legal(client: TestClient) -> dict[str, str]:
    response = client.post("/v1/chat/completions", json={
        "model": "legal", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    return dict(response.headers)


def test_a_worse_adapter_is_gated_and_served_again_once_it_shows_a_gain(
    shadow_client: TestClient, judge: Judge, metrics: Metrics, tmp_path: Path
) -> None:
    wait_for(lambda: quality(shadow_client)["gate"] == "closed", "the gate to close")
    state = quality(shadow_client)
    assert state["verdict"] == "closed" and state["samples"] >= 6
    assert state["delta"]["high"] < 0 and state["recovery"] is not None  # type: ignore[index]
    headers = ask_legal(shadow_client)
    assert headers["x-slm-route-reason"] == "quality_gate"
    assert headers["x-slm-adapter"] == "none" and headers["x-slm-quality-gate"] == "closed"
    assert metrics.quality_gate_closed.labels("legal")._value.get() == 1
    assert metrics.quality_gate_changes.labels("legal", "closed")._value.get() == 1

    # The scores swap (in production: the general model or the suite changed): the recovery
    # sequence, fed only since the closure, lies above zero and reopens the gate.
    judge.adapter_wins = True
    wait_for(lambda: quality(shadow_client)["gate"] == "open", "the gate to reopen")
    state = quality(shadow_client)
    assert state["delta"]["low"] > 0 and state["gate_changes"] == 2  # type: ignore[index]
    headers = ask_legal(shadow_client)
    assert headers["x-slm-route-reason"] == "explicit" and headers["x-slm-adapter"] == "law-v1"
    assert headers["x-slm-quality-gate"] == "open"
    assert metrics.quality_gate_changes.labels("legal", "open")._value.get() == 1

    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert {p["source"] for p in pairs} == {"suite"}
    assert set(pairs[0]["variants"]) == {"SmolLM2-135M-Instruct", "law-v1"}
    assert len({p["pair_id"] for p in pairs}) == len(pairs)


def test_a_new_version_of_a_gated_adapter_is_served_at_once_with_a_record_of_its_own(
    shadow_client: TestClient, fake: FakeVllm, judge: Judge, adapter_root: Path
) -> None:
    wait_for(lambda: quality(shadow_client)["gate"] == "closed", "the gate to close")
    fake.answers["law-v1"] = "right"  # the new weights answer as well as the general model
    response = shadow_client.post("/admin/adapters", headers=ADMIN, json={
        "name": "law-v1", "domain": "legal", "path": str(make_adapter_dir(adapter_root, "new")),
        "status": "active"})
    assert response.status_code == 200, response.text
    state = quality(shadow_client)
    assert state["version"] == 2 and state["gate"] == "open"
    assert ask_legal(shadow_client)["x-slm-adapter"] == "law-v1"
    # Its own record grows from zero; equal answers never close it (nor would they have
    # reopened version 1: only a proven gain does).
    wait_for(lambda: quality(shadow_client)["samples"] >= 20, "evidence on version 2")
    state = quality(shadow_client)
    assert state["gate"] == "open" and state["gate_changes"] == 0
    assert state["delta"]["mean"] == 0.0  # type: ignore[index]


@pytest.fixture
def with_v2(settings: Settings, fake: FakeVllm, adapter_root: Path) -> Settings:
    """law-v2, a shadow version of the legal adapter that answers right (law-v1 does not)."""
    v2 = AdapterEntry(name="law-v2", domain="legal", status=AdapterStatus.SHADOW,
                      path=make_adapter_dir(adapter_root, "law2"))
    fake.answers["law-v2"] = "right"
    return settings.model_copy(update={"adapters": settings.adapters.model_copy(
        update={"entries": [*settings.adapters.entries, v2]})})


def test_a_shadow_version_that_beats_the_active_one_is_promoted_when_configured(
    with_v2: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge, tmp_path: Path
) -> None:
    with shadow_app(with_v2, fake, metrics, tmp_path / "pairs.jsonl",
                    auto_promote=True, gate=False) as client:
        def promoted() -> bool:
            listing = client.get("/admin/adapters", headers=ADMIN).json()["adapters"]
            return {a["name"]: a["status"] for a in listing}["law-v2"] == "active"

        wait_for(promoted, "law-v2 to be promoted")
        listing = client.get("/admin/adapters", headers=ADMIN).json()["adapters"]
        assert {a["name"]: a["status"] for a in listing}["law-v1"] == "retired"
        assert ask_legal(client)["x-slm-adapter"] == "law-v2"


def test_without_auto_promote_a_better_shadow_version_only_shows_in_the_evidence(
    with_v2: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge, tmp_path: Path
) -> None:
    with shadow_app(with_v2, fake, metrics, tmp_path / "pairs.jsonl", gate=False) as client:
        def evidence() -> dict[str, object]:
            return quality(client)["shadow"]["law-v2"]  # type: ignore[index,no-any-return]

        # Twelve straight wins are the fewest that put a 95% sequence above zero: each stakes at
        # most 3/4 of the capital at risk, 1.375^12 > 2 / 0.05 > 1.375^11.
        wait_for(lambda: (evidence()["vs_active"]["n"] or 0) >= 12, "shadow evidence")
        assert evidence()["vs_active"]["low"] > 0  # type: ignore[index]
        assert ask_legal(client)["x-slm-adapter"] == "law-v1"  # still the active one
        assert quality(client)["gate"] == "open"  # gate: false never changes routing


def test_sampled_live_requests_are_answered_by_both_variants_and_stored(
    settings: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge, tmp_path: Path
) -> None:
    store = tmp_path / "pairs.jsonl"
    with shadow_app(settings, fake, metrics, store, live_sample_rate=1.0) as client:
        response = client.post("/v1/chat/completions", json={
            "model": "auto", "max_tokens": 500,
            "messages": [{"role": "user", "content": "legal 0.9 can my landlord do this"}]})
        assert response.status_code == 200

        def live() -> list[dict[str, object]]:
            if not store.exists():
                return []
            records = [json.loads(line) for line in store.read_text().splitlines()]
            return [r for r in records if r["source"] == "live"]

        wait_for(lambda: bool(live()), "a live pair")
        pair = live()[0]
        assert pair["domain"] == "legal"
        assert set(pair["variants"]) == {"SmolLM2-135M-Instruct", "law-v1"}  # type: ignore[arg-type]
        assert 0.0 <= pair["agreement"] <= 1.0  # type: ignore[operator]
        sent = [r for r in fake.requests  # (suite items are scored by /v1/completions)
                if "messages" in r and r["messages"][0]["content"].startswith("legal 0.9")]
        assert len(sent) == 3  # the user's request, then one per variant
        assert all(r["max_tokens"] <= 128 for r in sent[1:])  # capped in the shadow budget


def test_the_evaluator_loop_stays_within_its_calls_per_second(
    settings: Settings, fake: FakeVllm, metrics: Metrics, judge: Judge, tmp_path: Path
) -> None:
    with shadow_app(settings, fake, metrics, tmp_path / "pairs.jsonl", calls_per_second=20):
        started = time.monotonic()
        time.sleep(1.0)
        calls = metrics.shadow_calls._value.get()
        elapsed = time.monotonic() - started
    # Starts are spaced 1/20 s apart from the loop's first call on: at most one per 50 ms.
    assert 0 < calls <= 20 * elapsed + 1
