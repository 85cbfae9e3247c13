"""Canary rollouts end to end: registered through the admin API, split by user, and promoted or
rolled back by the real shadow evaluator loop against a fake upstream whose canary answers
better, worse or the same as the active version."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.evaluation.items import SuiteItem
from adapters.registry import AdapterEntry, AdapterStatus
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.state.memory import MemoryState
from router.canary import in_cohort
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm, ScriptedClassifier, wait_for

ADMIN = {"authorization": "Bearer admin-secret"}
GENERAL = "SmolLM2-135M-Instruct"
MAX_SHARE = 0.4


def mc_item(i: int) -> SuiteItem:
    return SuiteItem(id=f"t/{i}", domain="legal", source="t", task="multiple_choice",
                     prompt=f"Question {i}?\nOptions: right | wrong\nAnswer with one.",
                     choices=("right", "wrong"), answer="right", metric="accuracy")


def user_at(share: float, inside: bool) -> str:
    """A user the canary law-v2 serves at ``share`` (inside) or does not."""
    return next(u for u in (f"user-{i}" for i in range(1000))
                if in_cohort(u, "law-v2", share) is inside)


def ask(client: TestClient, user: str, model: str = "legal") -> dict[str, str]:
    response = client.post("/v1/chat/completions", json={
        "model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    return dict(response.headers)


def statuses(client: TestClient) -> dict[str, str]:
    listing = client.get("/admin/adapters", headers=ADMIN).json()["adapters"]
    return {a["name"]: a["status"] for a in listing}


def rollout(client: TestClient) -> dict[str, Any]:
    response = client.get("/admin/quality", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["canaries"].get("legal") or {}  # type: ignore[no-any-return]


@pytest.fixture
def canary_settings(settings: Settings, adapter_root: Path, tmp_path: Path) -> Settings:
    """law-v1 active and law-v2 its canary; an evaluator that scores as fast as it can and
    decides after few samples; a canary share that starts at 0.1 and doubles every 2 items."""
    v2 = AdapterEntry(name="law-v2", domain="legal", status=AdapterStatus.CANARY,
                      path=make_adapter_dir(adapter_root, "law2"))
    return settings.model_copy(update={
        "admin_token": SecretStr("admin-secret"),
        "adapters": settings.adapters.model_copy(
            update={"entries": [*settings.adapters.entries, v2]}),
        "shadow": settings.shadow.model_copy(update={
            "enabled": True, "calls_per_second": 1000, "yield_above": 100, "min_samples": 6,
            "window": 12, "store": tmp_path / "pairs.jsonl"}),
        "canary": settings.canary.model_copy(update={
            "initial_share": 0.1, "growth": 2.0, "step_samples": 2, "max_share": MAX_SHARE}),
    })


def start(settings: Settings, fake: FakeVllm, metrics: Metrics, answers: dict[str, str],
          state: MemoryState | None = None) -> TestClient:
    fake.answers.update(answers)
    app = create_app(settings, transport=fake.transport(), metrics=metrics, state=state,
                     classifier=ScriptedClassifier(),
                     shadow_items=[mc_item(i) for i in range(30)])
    return TestClient(app, raise_server_exceptions=False)


def test_a_canary_that_beats_the_active_version_grows_and_is_promoted(
    canary_settings: Settings, fake: FakeVllm, metrics: Metrics
) -> None:
    answers = {GENERAL: "wrong", "law-v1": "wrong", "law-v2": "right"}
    with start(canary_settings, fake, metrics, answers) as client:
        wait_for(lambda: statuses(client).get("law-v2") == "active", "law-v2 to be promoted")
        assert statuses(client)["law-v1"] == "retired"  # what a promotion does
        record = rollout(client)
        assert record["state"] == "promoted" and record["adapter"] == "law-v2"
        assert record["baseline"] == {"adapter": "law-v1", "version": 1}
        # Twelve straight wins are the fewest that put a 95% sequence above zero; by then the
        # share had doubled from 0.1 (2 items) and again (4 items) to the cap.
        assert record["delta"]["n"] >= 12 and record["delta"]["low"] > 0
        assert record["share"] == MAX_SHARE
        assert metrics.canary_decisions.labels("legal", "promoted")._value.get() == 1
        assert metrics.canary_share.labels("legal")._value.get() == 0  # no canary any more
        assert metrics.canary_delta_low.labels("legal")._value.get() > 0
        headers = ask(client, user_at(MAX_SHARE, inside=False))
        assert headers["x-slm-adapter"] == "law-v2" and "x-slm-canary" not in headers


def test_a_canary_worse_than_the_active_version_is_rolled_back_to_shadow(
    canary_settings: Settings, fake: FakeVllm, metrics: Metrics, tmp_path: Path
) -> None:
    answers = {GENERAL: "right", "law-v1": "right", "law-v2": "wrong"}
    with start(canary_settings, fake, metrics, answers) as client:
        wait_for(lambda: statuses(client).get("law-v2") == "shadow", "law-v2 to be rolled back")
        assert statuses(client)["law-v1"] == "active"
        record = rollout(client)
        assert record["state"] == "rolled_back" and record["delta"]["high"] < 0
        assert metrics.canary_decisions.labels("legal", "rolled_back")._value.get() == 1
        assert metrics.canary_decisions.labels("legal", "promoted")._value.get() == 0
        # Its former cohort is served by the active version again.
        headers = ask(client, user_at(MAX_SHARE, inside=True))
        assert headers["x-slm-adapter"] == "law-v1" and "x-slm-canary" not in headers
        # Back in shadow it is still evaluated against the active version, on show.
        shadow = client.get("/admin/quality", headers=ADMIN).json()["domains"]["legal"]
        assert shadow["shadow"]["law-v2"]["vs_active"]["high"] < 0
    assert "law-v2" in (tmp_path / "pairs.jsonl").read_text()  # scored like every variant


def test_an_undecided_canary_grows_to_its_cap_and_serves_its_cohort_of_users(
    canary_settings: Settings, fake: FakeVllm, metrics: Metrics
) -> None:
    answers = {GENERAL: "right", "law-v1": "right", "law-v2": "right"}
    with start(canary_settings, fake, metrics, answers) as client:
        wait_for(lambda: rollout(client).get("state") == "capped", "the share to reach its cap")
        record = rollout(client)
        assert record["share"] == MAX_SHARE and record["delta"]["mean"] == 0.0
        assert metrics.canary_share.labels("legal")._value.get() == MAX_SHARE
        inside, outside = user_at(MAX_SHARE, inside=True), user_at(MAX_SHARE, inside=False)
        for _ in range(3):  # sticky: the same user, the same version
            headers = ask(client, inside)
            assert headers["x-slm-adapter"] == "law-v2" and headers["x-slm-canary"] == "true"
            headers = ask(client, outside)
            assert headers["x-slm-adapter"] == "law-v1" and headers["x-slm-canary"] == "false"
        auto = client.post("/v1/chat/completions", json={
            "model": "auto", "user": inside,
            "messages": [{"role": "user", "content": "legal 0.9 a question"}]})
        assert auto.headers["x-slm-adapter"] == "law-v2"
        assert auto.headers["x-slm-route-reason"] == "classified"
        # Naming a version is an explicit choice: no split.
        assert ask(client, inside, model="law-v1")["x-slm-adapter"] == "law-v1"
        assert statuses(client)["law-v2"] == "canary"  # equality proves nothing: no decision
        console = client.get("/ui/api/state", headers=ADMIN).json()
        legal = next(d for d in console["domains"] if d["id"] == "legal")
        assert legal["canary"]["adapter"] == "law-v2" and legal["canary"]["state"] == "capped"


def test_canary_latency_over_the_slo_holds_its_share_at_the_start(
    canary_settings: Settings, fake: FakeVllm, metrics: Metrics
) -> None:
    settings = canary_settings.model_copy(update={"canary": canary_settings.canary.model_copy(
        update={"latency_slo_s": 1e-9, "latency_min_samples": 1})})
    answers = {GENERAL: "right", "law-v1": "right", "law-v2": "right"}
    with start(settings, fake, metrics, answers) as client:
        headers = ask(client, user_at(0.1, inside=True))  # any answer is slower than 1 ns
        assert headers["x-slm-adapter"] == "law-v2"
        wait_for(lambda: rollout(client).get("state") == "held", "the latency brake")
        record = rollout(client)
        assert record["share"] == 0.1 and record["latency_p95_s"] > 1e-9


def test_registering_canaries_through_the_admin_api(
    settings: Settings, fake: FakeVllm, adapter_root: Path
) -> None:
    settings = settings.model_copy(update={
        "admin_token": SecretStr("admin-secret"),
        "canary": settings.canary.model_copy(update={"initial_share": 0.5, "max_share": 0.5})})
    with TestClient(create_app(settings, transport=fake.transport(), metrics=Metrics()),
                    raise_server_exceptions=False) as client:
        response = client.post("/admin/adapters", headers=ADMIN, json={
            "name": "law-v2", "domain": "legal", "status": "canary",
            "path": str(make_adapter_dir(adapter_root, "law2"))})
        assert response.status_code == 200, response.text
        assert response.json()["adapter"]["status"] == "canary" and "law-v2" in fake.loaded
        # No evaluator here (shadow off): the canary serves its initial share of users.
        assert ask(client, user_at(0.5, inside=True))["x-slm-adapter"] == "law-v2"
        assert ask(client, user_at(0.5, inside=False))["x-slm-adapter"] == "law-v1"

        second = client.post("/admin/adapters", headers=ADMIN, json={
            "name": "law-v3", "domain": "legal", "status": "canary",
            "path": str(make_adapter_dir(adapter_root, "law3"))})
        assert second.status_code == 409
        error = second.json()["error"]
        assert "already has a canary" in error["message"] and error["code"] == "conflict"
        assert client.post("/admin/adapters/law-v1/canary", headers=ADMIN).status_code == 409

        # A shadow version moved to canary, in a domain that had none.
        assert client.post("/admin/adapters", headers=ADMIN, json={
            "name": "money-v2", "domain": "finance", "status": "shadow",
            "path": str(make_adapter_dir(adapter_root, "money2"))}).status_code == 200
        moved = client.post("/admin/adapters/money-v2/canary", headers=ADMIN)
        assert moved.status_code == 200 and moved.json()["adapter"]["status"] == "canary"
        assert statuses(client) == {"law-v1": "active", "money-v1": "active",
                                    "law-v2": "canary", "money-v2": "canary"}


def test_every_instance_routes_by_the_leaders_canary_share(
    canary_settings: Settings, fake: FakeVllm
) -> None:
    settings = canary_settings.model_copy(update={
        "state": canary_settings.state.model_copy(update={"poll_interval_s": 0.02})})
    state = MemoryState(Metrics(), shared=True)
    answers = {GENERAL: "right", "law-v1": "right", "law-v2": "right"}
    metrics = [Metrics(), Metrics()]
    with ExitStack() as stack:
        clients = [stack.enter_context(start(settings, fake, m, answers, state=state))
                   for m in metrics]
        for client, m in zip(clients, metrics, strict=True):  # the leader, and the other
            wait_for(lambda c=client: rollout(c).get("state") == "capped", "the report")
            wait_for(lambda m=m: m.canary_share.labels("legal")._value.get() == MAX_SHARE,
                     "the share")
            assert ask(client, user_at(MAX_SHARE, inside=True))["x-slm-adapter"] == "law-v2"
            assert ask(client, user_at(MAX_SHARE, inside=False))["x-slm-adapter"] == "law-v1"


def test_a_first_adapter_rolled_out_as_a_canary_is_judged_against_the_general_model(
    canary_settings: Settings, fake: FakeVllm, metrics: Metrics
) -> None:
    law, money, _ = canary_settings.adapters.entries
    settings = canary_settings.model_copy(update={"adapters": canary_settings.adapters.model_copy(
        update={"entries": [law.model_copy(update={"status": AdapterStatus.CANARY}), money]})})
    answers = {GENERAL: "wrong", "law-v1": "right"}
    with start(settings, fake, metrics, answers) as client:
        # (Until then users outside its cohort get the general model: test_canary.py.)
        wait_for(lambda: statuses(client).get("law-v1") == "active", "law-v1 to be promoted")
        record = rollout(client)
        assert record["state"] == "promoted" and record["baseline"] is None  # vs general
        assert record["delta"]["low"] > 0
        assert ask(client, "anyone")["x-slm-adapter"] == "law-v1"
