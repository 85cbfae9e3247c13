"""The gateway's classification front: micro-batching, cache hits on the loop, CPU budget."""

from __future__ import annotations

import asyncio

import pytest

from gateway.classify import ClassifierService
from gateway.metrics import Metrics
from router.classifier import FullStageBudget
from router.policy import Classification
from tests.unit.fakes import ScriptedClassifier


async def test_concurrent_requests_share_one_batch_and_get_their_own_answer() -> None:
    fake = ScriptedClassifier()
    service = ClassifierService(fake, Metrics(), max_batch=32)
    texts = [f"domain{i} question" for i in range(20)]
    results = await asyncio.gather(*(service.classify(t) for t in texts))
    assert [r.domain for r in results] == [f"domain{i}" for i in range(20)]
    assert len(fake.batches) < 20, "concurrent requests were not batched"
    assert sum(len(b) for b in fake.batches) == 20


async def test_batches_never_exceed_max_batch() -> None:
    fake = ScriptedClassifier()
    service = ClassifierService(fake, Metrics(), max_batch=4)
    await asyncio.gather(*(service.classify(f"d{i} x") for i in range(10)))
    assert max(len(b) for b in fake.batches) <= 4


async def test_cache_hit_is_answered_without_a_batch() -> None:
    fake = ScriptedClassifier(memory={"hello": Classification("legal", 0.8)})
    metrics = Metrics()
    service = ClassifierService(fake, metrics)
    assert await service.classify("hello") == Classification("legal", 0.8)
    assert fake.batches == []
    count = metrics.registry.get_sample_value(
        "slm_classification_duration_seconds_count", {"stage": "cache"}
    )
    assert count == 1


async def test_classifier_failure_reaches_the_waiting_requests() -> None:
    service = ClassifierService(ScriptedClassifier(fail=True), Metrics())
    with pytest.raises(RuntimeError):
        await service.classify("legal question")


async def test_spent_budget_turns_the_full_stage_off() -> None:
    now = [0.0]
    budget = FullStageBudget(share=0.1, burst=0.02, clock=lambda: now[0])
    fake = ScriptedClassifier()
    service = ClassifierService(fake, Metrics(), budget=budget)
    await service.classify("a x")  # spends 0.01 s: budget 0.02 -> 0.01
    await service.classify("b x")  # spends 0.01 s: budget -> 0
    await service.classify("c x")
    assert fake.max_full_seen == [2, 2, 0]
    now[0] += 1.0  # refills at 0.1 s/s, capped at the burst
    await service.classify("d x")
    assert fake.max_full_seen[-1] == 2


def test_budget_with_zero_share_never_allows_the_full_stage() -> None:
    assert not FullStageBudget(share=0.0).available()


async def test_a_conversation_sends_only_its_uncached_turns_and_resolves_them_all() -> None:
    fake = ScriptedClassifier(memory={"legal 0.9 my deposit": Classification("legal", 0.9)})
    service = ClassifierService(fake, Metrics())
    result = await service.classify_turns(["legal 0.9 my deposit", "follow what now?"])
    assert result == Classification("legal", 0.9)  # the follow-up kept the conversation's domain
    assert fake.batches == [["follow what now?"]]


async def test_the_next_request_of_a_conversation_finds_its_earlier_turns_in_the_cache() -> None:
    fake = ScriptedClassifier()
    service = ClassifierService(fake, Metrics())
    await service.classify_turns(["healthcare 0.8 rash"])
    result = await service.classify_turns(["healthcare 0.8 rash", "legal 0.7 new topic"])
    assert result == Classification("legal", 0.7)
    assert fake.batches == [["healthcare 0.8 rash"], ["legal 0.7 new topic"]]


async def test_a_conversation_without_user_text_goes_to_the_general_model() -> None:
    service = ClassifierService(ScriptedClassifier(), Metrics())
    assert (await service.classify_turns([])).domain is None
