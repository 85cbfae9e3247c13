"""Replica placement: healthy, least loaded, adapter residency preferred."""

from __future__ import annotations

from gateway.upstream import COLD_LOAD_PENALTY, Replica, choose_replica


def resident(pairs: set[tuple[str, str]]):  # type: ignore[no-untyped-def]
    return lambda url, name: (url, name) in pairs


def test_unhealthy_replicas_are_never_chosen() -> None:
    replicas = [Replica("r0", "a", healthy=False), Replica("r1", "b", healthy=True, outstanding=9)]
    assert choose_replica(replicas, None, resident(set())) is replicas[1]
    replicas[1].healthy = False
    assert choose_replica(replicas, None, resident(set())) is None


def test_least_outstanding_wins_for_base_requests() -> None:
    replicas = [Replica("r0", "a", True, outstanding=3), Replica("r1", "b", True, outstanding=1)]
    assert choose_replica(replicas, None, resident(set())) is replicas[1]


def test_adapter_requests_prefer_the_replica_holding_the_adapter() -> None:
    replicas = [Replica("r0", "a", True, outstanding=0), Replica("r1", "b", True, outstanding=1)]
    assert choose_replica(replicas, "law", resident({("b", "law")})) is replicas[1]


def test_residency_does_not_win_against_a_much_longer_queue() -> None:
    replicas = [
        Replica("r0", "a", True, outstanding=0),
        Replica("r1", "b", True, outstanding=COLD_LOAD_PENALTY + 1),
    ]
    assert choose_replica(replicas, "law", resident({("b", "law")})) is replicas[0]
