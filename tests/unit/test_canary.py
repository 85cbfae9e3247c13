"""Canary rollouts as pure decisions: the share schedule, the latency brake, the evidence's
standing, the sticky split, the registry's one-canary rule, routing, and the shares that travel
with the gate document."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.registry import AdapterEntry, AdapterStatus, Registry, RegistryError
from gateway.gates import GateState
from gateway.metrics import Metrics
from gateway.protocol import ChatCompletionRequest
from gateway.proxy import sticky_key
from gateway.settings import CanarySettings, ShadowSettings
from gateway.shadow import GENERAL_KEY, Evidence, Observation, canary_rule, check_canary, gate_rule
from router.canary import (
    CanaryPhase,
    CanaryProgress,
    CanaryRule,
    Standing,
    in_cohort,
    latency_within,
    p95,
    standing,
    step,
)
from router.policy import Classification, RouteReason, RoutingTable, decide, fall_back
from router.sequence import BettingSequence

RULE = CanaryRule(initial_share=0.05, growth=2.0, step_samples=10, max_share=0.5,
                  min_samples=30, latency_slo_s=2.0, latency_ratio=1.5, latency_min_samples=5)


def run(deltas: int, rule: CanaryRule = RULE, latency_ok: bool | None = True,
        progress: CanaryProgress | None = None, start: int = 0) -> list[CanaryProgress]:
    """The rollout after each of ``deltas`` undecided items."""
    progress = progress or CanaryProgress.start(rule)
    out = []
    for n in range(start + 1, start + deltas + 1):
        progress = step(progress, rule, n=n, standing=Standing.UNDECIDED, latency_ok=latency_ok)
        out.append(progress)
    return out


def test_the_share_doubles_every_step_samples_until_the_cap() -> None:
    trail = run(60)
    assert [p.share for p in trail[9::10]] == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]
    assert all(p.share == 0.05 for p in trail[:9])  # nothing before the first step
    assert trail[29].phase is CanaryPhase.GROWING and trail[39].phase is CanaryPhase.CAPPED


def test_unknown_latency_does_not_stop_growth_but_a_breach_sends_the_share_back() -> None:
    grown = run(30, latency_ok=None)[-1]
    assert grown.share == 0.4
    held = step(grown, RULE, n=31, standing=Standing.UNDECIDED, latency_ok=False)
    assert held == CanaryProgress(0.05, 31, CanaryPhase.HELD)
    # Growth resumes step_samples deltas after the latency is back within the SLO.
    after = run(20, progress=held, start=31)
    assert after[0].phase is CanaryPhase.GROWING and after[0].share == 0.05
    assert [p.share for p in after[9::10]] == [0.1, 0.2]


def test_a_canary_whose_own_gate_is_closed_gets_no_traffic_until_it_reopens() -> None:
    shut = step(CanaryProgress(0.4, 30, CanaryPhase.CAPPED), RULE, n=31,
                standing=Standing.UNDECIDED, latency_ok=True, gate_closed=True)
    assert shut.share == 0.0 and shut.phase is CanaryPhase.HELD
    reopened = step(shut, RULE, n=32, standing=Standing.UNDECIDED, latency_ok=True)
    assert reopened.share == RULE.initial_share


def test_a_decision_ends_the_rollout_and_keeps_the_share_it_had() -> None:
    now = CanaryProgress(0.2, 20, CanaryPhase.GROWING)
    better = step(now, RULE, n=40, standing=Standing.BETTER, latency_ok=False)
    worse = step(now, RULE, n=40, standing=Standing.WORSE, latency_ok=True)
    assert (better.phase, better.share) == (CanaryPhase.PROMOTED, 0.2)
    assert (worse.phase, worse.share) == (CanaryPhase.ROLLED_BACK, 0.2)


def test_standing_needs_min_samples_and_a_whole_sequence_on_one_side() -> None:
    assert standing(29, 0.3, 0.6, RULE) is Standing.UNDECIDED
    assert standing(30, 0.005, 0.6, RULE) is Standing.BETTER
    assert standing(30, -0.6, -0.005, RULE) is Standing.WORSE
    assert standing(30, -0.1, 0.1, RULE) is Standing.UNDECIDED
    assert standing(30, -0.2, -0.2, RULE) is Standing.WORSE  # a crossed (empty) sequence
    margin = CanaryRule(promote_margin=0.05)
    assert standing(30, 0.04, 0.3, margin) is Standing.UNDECIDED
    assert standing(30, 0.06, 0.3, margin) is Standing.BETTER


def test_latency_is_judged_by_p95_against_the_slo_and_the_baseline() -> None:
    assert p95([1.0] * 4, 5) is None  # too few requests to judge
    seconds = [float(i) for i in range(1, 101)]
    assert p95(seconds, 5) == pytest.approx(float(np.percentile(seconds, 95)))
    assert latency_within(None, 1.0, RULE) is None
    assert latency_within(2.5, None, RULE) is False  # over the absolute SLO
    assert latency_within(1.6, 1.0, RULE) is False  # over 1.5 x the active version's
    assert latency_within(1.4, 1.0, RULE) is True
    assert latency_within(1.9, None, RULE) is True  # no baseline measured: the SLO alone


def test_the_split_is_sticky_nested_as_the_share_grows_and_close_to_the_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    at = {share: {u for u in users if in_cohort(u, "law-v2", share)}
          for share in (0.05, 0.1, 0.2, 0.5)}
    for share, cohort in at.items():
        assert abs(len(cohort) / len(users) - share) < 0.01  # 20k draws: sd < 0.0036
    assert at[0.05] <= at[0.1] <= at[0.2] <= at[0.5]  # nobody leaves the canary as it grows
    assert all(in_cohort(u, "law-v2", 0.1) for u in at[0.1])  # the same answer every time
    other = {u for u in users if in_cohort(u, "law-v3", 0.1)}
    assert len(other & at[0.1]) < 0.2 * len(other)  # another canary picks other users
    assert not in_cohort("anyone", "law-v2", 0.0) and in_cohort("anyone", "law-v2", 1.0)


def test_the_settings_build_the_rule_with_the_gates_confidence_and_min_samples() -> None:
    rule = canary_rule(ShadowSettings(min_samples=12),
                       CanarySettings(initial_share=0.1, max_share=0.3, latency_slo_s=4.0))
    assert (rule.min_samples, rule.initial_share, rule.max_share, rule.latency_slo_s) == (
        12, 0.1, 0.3, 4.0)
    with pytest.raises(ValueError, match="initial_share"):
        CanarySettings(initial_share=0.6, max_share=0.5)


def test_check_canary_steps_on_the_sequence_and_measures_latency() -> None:
    rule = CanaryRule(min_samples=6, step_samples=2, latency_min_samples=3)
    sequence = BettingSequence.start()
    for _ in range(12):  # twelve straight wins put a 95% sequence above zero
        sequence = sequence.update(1.0)
    check = check_canary(CanaryProgress.start(rule), rule, sequence, [0.1, 0.2, 0.3],
                         [0.1], gate_closed=False)
    assert check.standing is Standing.BETTER and check.progress.phase is CanaryPhase.PROMOTED
    assert check.bounds.n == 12 and check.bounds.low > 0
    assert check.latency_p95_s == pytest.approx(0.29) and check.baseline_latency_p95_s is None


# ------------------------------------------------------------------- registry and routing
def entry(name: str, status: AdapterStatus, domain: str = "legal",
          version: int = 1) -> AdapterEntry:
    return AdapterEntry(name=name, domain=domain, path=Path("/x"), status=status,
                        version=version)


def registry(*entries: AdapterEntry) -> Registry:
    return Registry(entries, domains=["legal", "finance"], check_files=False)


def test_a_domain_has_at_most_one_canary_and_it_is_in_the_routing_table() -> None:
    two = (entry("law-v2", AdapterStatus.CANARY), entry("law-v3", AdapterStatus.CANARY))
    with pytest.raises(RegistryError, match="already has a canary"):
        registry(*two)
    ok = registry(entry("law-v1", AdapterStatus.ACTIVE), two[0],
                  entry("money-v2", AdapterStatus.CANARY, "finance"))
    table = ok.routing_table({"base"})
    assert table.canary == {"legal": "law-v2", "finance": "money-v2"}
    assert table.active == {"legal": "law-v1"} and "law-v2" in table.adapters
    promoted = ok.with_status("law-v2", AdapterStatus.ACTIVE)  # the promote path
    assert promoted.get("law-v1").status is AdapterStatus.RETIRED  # type: ignore[union-attr]
    assert promoted.routing_table({"base"}).canary == {"finance": "money-v2"}


TABLE = RoutingTable(domains=frozenset({"legal", "finance"}),
                     adapters={"law-v1": "legal", "law-v2": "legal"},
                     active={"legal": "law-v1"}, canary={"legal": "law-v2"})


def split_users(share: float) -> tuple[str, str]:
    """One user in the canary's cohort at ``share`` and one outside it."""
    users = [f"u{i}" for i in range(1000)]
    inside = next(u for u in users if in_cohort(u, "law-v2", share))
    outside = next(u for u in users if not in_cohort(u, "law-v2", share))
    return inside, outside


def test_routing_sends_the_canarys_cohort_to_it_by_domain_or_auto_but_not_by_name() -> None:
    inside, outside = split_users(0.3)
    shares = {"legal": 0.3}
    by_domain = decide("legal", None, TABLE, canary_shares=shares, sticky=inside)
    assert (by_domain.adapter, by_domain.canary, by_domain.reason) == (
        "law-v2", True, RouteReason.EXPLICIT)
    auto = decide("auto", Classification("legal", 0.9), TABLE, canary_shares=shares,
                  sticky=inside, threshold=0.5)
    assert (auto.adapter, auto.reason) == ("law-v2", RouteReason.CLASSIFIED)
    assert decide("legal", None, TABLE, canary_shares=shares, sticky=outside).adapter == "law-v1"
    named = decide("law-v1", None, TABLE, canary_shares=shares, sticky=inside)
    assert named.adapter == "law-v1" and not named.canary  # an explicit version is honoured
    assert decide("legal", None, TABLE, sticky=inside).adapter == "law-v1"  # no share yet
    unsure = decide("auto", Classification("legal", 0.2), TABLE, canary_shares=shares,
                    sticky=inside, threshold=0.5)
    assert unsure.adapter is None  # low confidence goes to general, canary or not
    # The gate holds back the active version, not the canary's cohort.
    gated = decide("legal", None, TABLE, gated=frozenset({"legal"}), canary_shares=shares,
                   sticky=inside)
    assert gated.adapter == "law-v2"
    assert fall_back(by_domain, RouteReason.ADAPTER_UNAVAILABLE).canary is False


def test_a_domain_without_an_active_version_splits_between_its_canary_and_general() -> None:
    table = RoutingTable(domains=frozenset({"legal"}), adapters={"law-v2": "legal"},
                         canary={"legal": "law-v2"})
    inside, outside = split_users(0.5)
    assert decide("legal", None, table, canary_shares={"legal": 0.5},
                  sticky=inside).adapter == "law-v2"
    rest = decide("legal", None, table, canary_shares={"legal": 0.5}, sticky=outside)
    assert (rest.adapter, rest.reason) == (None, RouteReason.NO_ADAPTER)


def test_canary_shares_follow_the_current_canary_version_and_travel_with_the_document(
) -> None:
    leader, follower = GateState(Metrics(), 0.05), GateState(Metrics(), 0.05)
    v1 = registry(entry("law-v1", AdapterStatus.ACTIVE), entry("law-v2", AdapterStatus.CANARY))
    for gate in (leader, follower):
        gate.follow(v1, v1.routing_table({"base"}))
    assert follower.canary_shares == {"legal": 0.05}  # not judged yet: the initial share
    leader.set_canaries({("law-v2", 1): (0.2, "growing")})
    follower.adopt(7, leader.document(None, "leader"))
    assert follower.canary_shares == {"legal": 0.2} and follower.version == 7
    assert follower.metrics.canary_share.labels("legal")._value.get() == 0.2
    assert follower.metrics.canary_share.labels("finance")._value.get() == 0.0
    follower.set_canaries({("law-v2", 1): (0.2, "rolled_back")})
    assert follower.canary_shares == {"legal": 0.0}  # no traffic once rolled back
    v2 = registry(entry("law-v1", AdapterStatus.ACTIVE),
                  entry("law-v2", AdapterStatus.CANARY, version=2))
    follower.follow(v2, v2.routing_table({"base"}))  # a new version starts at the beginning
    assert follower.canary_shares == {"legal": 0.05}


def test_a_successor_resumes_the_canary_rollouts_with_the_evidence() -> None:
    settings = ShadowSettings(min_samples=6)
    evidence = Evidence(12, gate_rule(settings))
    observations = [Observation(("law-v2", 1), 1.0, 0.0, (GENERAL_KEY, 0.0))] * 5
    evidence.commit(observations, evidence.advance(observations))
    evidence.canaries[("law-v2", 1)] = CanaryProgress(0.2, 4, CanaryPhase.GROWING)
    successor = Evidence(12, gate_rule(settings))
    assert successor.restore(evidence.dump()) == 1
    assert successor.canaries == evidence.canaries
    assert successor.versus(("law-v2", 1), GENERAL_KEY).n == 5


def test_the_sticky_key_is_the_end_users_identifier_when_the_client_sends_one() -> None:
    def body(**extra: object) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(
            {"model": "auto", "messages": [{"role": "user", "content": "hi"}], **extra})

    assert sticky_key(body(user="alice")) == "alice"
    assert sticky_key(body(user="alice", safety_identifier="h-123")) == "h-123"
    assert sticky_key(body()) is None and sticky_key(body(user="")) is None
    assert sticky_key(body(user=42)) is None  # not a string: split by request instead
