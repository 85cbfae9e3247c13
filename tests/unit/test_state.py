"""Shared state without Redis: leases with a passed-in clock, the evaluator's evidence handed to
a successor, gate verdicts by version, and two apps converging through one in-process store
(the Redis backend itself runs in tests/system/test_scale_out.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from adapters.registry import AdapterEntry, AdapterStatus, Registry
from gateway.app import create_app
from gateway.gates import GateState
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.shadow import Evidence, Observation, gate_rule
from gateway.state import StateUnavailable
from gateway.state.lease import Leadership
from gateway.state.memory import MemoryState
from router.policy import RoutingTable
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm, wait_for

ADMIN = {"authorization": "Bearer admin-secret"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FlakyState(MemoryState):
    """An in-process store that can be made unreachable, like a Redis that went away."""

    down = False

    async def _check(self) -> None:
        if self.down:
            self.health.failed("read", ConnectionError("down"))
            raise StateUnavailable("down")

    async def versions(self) -> tuple[int, int]:
        await self._check()
        return await super().versions()

    async def write(self, document: str, data: dict[str, Any], *,
                    expect: int | None = None) -> int:
        await self._check()
        return await super().write(document, data, expect=expect)

    async def hold_lease(self, role: str, holder: str, ttl_s: float) -> bool:
        await self._check()
        return await super().hold_lease(role, holder, ttl_s)


async def test_one_instance_holds_the_lease_until_it_stops_renewing_then_another_takes_it(
) -> None:
    clock, metrics = Clock(), Metrics()
    state = MemoryState(metrics, clock, shared=True)
    a = Leadership(state, "shadow", "a", 10.0, metrics, clock=clock)
    b = Leadership(state, "shadow", "b", 10.0, metrics, clock=clock)
    assert await a.step() and not await b.step()
    clock.now += 9
    assert await a.step()  # renewed: good for 10 s from now
    clock.now += 9
    assert not await b.step()
    clock.now += 2  # a stopped renewing 11 s ago: its lease has run out
    assert await b.step() and not await a.step()
    assert await state.lease_holder("shadow") == "b"


async def test_a_leader_cut_off_from_the_state_stops_before_its_lease_could_have_expired(
) -> None:
    clock, metrics = Clock(), Metrics()
    state = FlakyState(metrics, clock, shared=True)
    a = Leadership(state, "shadow", "a", 9.0, metrics, clock=clock)
    assert await a.step()
    state.down = True
    clock.now += 5
    assert await a.step()  # nobody can have taken it yet
    clock.now += 1.5  # within a renewal (3 s) of the lease's end: step down first
    assert not await a.step()


def test_a_successor_resumes_the_gates_and_sequences_where_the_leader_left_them() -> None:
    rule = gate_rule(Settings().shadow.model_copy(update={"min_samples": 5}))
    rng = random.Random(7)
    leader = Evidence(window=10, rule=rule)
    observations = [Observation(("law-v1", 1), rng.random() * 0.3, 0.5 + rng.random() * 0.5,
                                active=None) for _ in range(40)]
    observations += [Observation(("law-v2", 1), 0.9, 0.4, (("law-v1", 1), 0.2))
                     for _ in range(20)]
    leader.commit(observations, leader.advance(observations))
    successor = Evidence(window=10, rule=rule)
    assert successor.restore(leader.dump()) == 2
    for key in (("law-v1", 1), ("law-v2", 1)):
        assert successor.gates[key].state == leader.gates[key].state
        assert successor.gates[key].n == leader.gates[key].n
        assert successor.gates[key].evidence() == leader.gates[key].evidence()
    assert leader.gates[("law-v1", 1)].state.value == "closed"  # the evidence said so
    # The next delta moves both alike.
    more = [Observation(("law-v1", 1), 0.1, 0.9)]
    assert (successor.advance(more).gates[("law-v1", 1)].evidence()
            == leader.advance(more).gates[("law-v1", 1)].evidence())
    other_rule = Evidence(window=10, rule=gate_rule(Settings().shadow))
    assert other_rule.restore(leader.dump()) == 0  # another rule: start afresh


def test_a_closed_verdict_holds_for_its_version_only() -> None:
    metrics = Metrics()
    gate = GateState(metrics)
    table = RoutingTable(domains=frozenset({"legal", "finance"}), adapters={"law": "legal"},
                         active={"legal": "law"}, base_aliases=frozenset({"base"}))

    def registry(version: int) -> Registry:
        return Registry([AdapterEntry(name="law", domain="legal", path="/x", version=version)],
                        domains=["legal", "finance"], check_files=False)

    gate.follow(registry(1), table)
    gate.set_closed([("law", 1)])
    assert gate.gated == {"legal"} and gate.state("legal") == "closed"
    assert gate.state("finance") is None  # no adapter: nothing for the gate to act on
    gate.follow(registry(2), table)  # a new version, from any instance: served at once
    assert gate.gated == frozenset() and gate.state("legal") == "open"
    assert metrics.quality_gate_changes.labels("legal", "open")._value.get() == 1


@pytest.fixture
def two_instances(settings: Settings, fake: FakeVllm) -> Iterator[tuple[TestClient, TestClient,
                                                                       FlakyState]]:
    """Two apps on one in-process store, polling it as instances poll Redis."""
    settings = settings.model_copy(update={
        "admin_token": SecretStr("admin-secret"),
        "state": settings.state.model_copy(update={"poll_interval_s": 0.02})})
    state = FlakyState(Metrics(), shared=True)
    with ExitStack() as stack:
        clients = [stack.enter_context(TestClient(
            create_app(settings, transport=fake.transport(), metrics=Metrics(), state=state),
            raise_server_exceptions=False)) for _ in range(2)]
        yield clients[0], clients[1], state


def statuses(client: TestClient) -> dict[str, str]:
    listing = client.get("/admin/adapters", headers=ADMIN).json()["adapters"]
    return {a["name"]: a["status"] for a in listing}


def test_a_promotion_through_one_instance_is_served_by_the_other(
    two_instances: tuple[TestClient, TestClient, FlakyState], adapter_root: Any
) -> None:
    a, b, _ = two_instances
    path = make_adapter_dir(adapter_root, "law2")
    assert a.post("/admin/adapters", headers=ADMIN, json={
        "name": "law-v2", "domain": "legal", "path": str(path)}).status_code == 200
    assert a.post("/admin/adapters/law-v2/promote", headers=ADMIN).status_code == 200
    wait_for(lambda: statuses(b).get("law-v2") == AdapterStatus.ACTIVE, "b to adopt it")
    assert statuses(b)["law-v1"] == "retired"
    answer = b.post("/v1/chat/completions", json={
        "model": "legal", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.headers["x-slm-adapter"] == "law-v2"
    assert b.get("/admin/adapters", headers=ADMIN).json()["registry_version"] == 3


def test_admin_changes_are_refused_with_503_while_the_state_is_down_and_serving_goes_on(
    two_instances: tuple[TestClient, TestClient, FlakyState], adapter_root: Any
) -> None:
    a, _, state = two_instances
    state.down = True
    response = a.post("/admin/adapters/money-v1/retire", headers=ADMIN)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and error["code"] == "state_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert statuses(a)["money-v1"] == "active"  # nothing changed
    answer = a.post("/v1/chat/completions", json={
        "model": "finance", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200 and answer.headers["x-slm-adapter"] == "money-v1"
    ready = a.get("/readyz").json()
    assert ready["state"]["reachable"] is False and ready["state"]["last_error"]
    state.down = False
    assert a.post("/admin/adapters/money-v1/retire", headers=ADMIN).status_code == 200
