"""The evaluation suite: fixed items disjoint from training, scored against a fake vLLM whose
log-probabilities and answers are known (tokens are words, see FakeVllm), summarised into paired
deltas."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from adapters.corpus import TEST, TRAIN, DomainItem, domain_items
from adapters.suite import ItemScore, SuiteError, VllmScorer, score_all, suite_items
from adapters.suite_report import format_table, summarise
from tests.unit.fakes import FakeVllm

MC = DomainItem(id="t/1", domain="legal", source="t", task="multiple_choice",
                prompt="Pick one.\nOptions: alpha | beta gamma\nAnswer with one of the options.",
                choices=("alpha", "beta gamma"), answer="beta gamma", metric="accuracy",
                split=TEST)
SHORT = DomainItem(id="t/2", domain="legal", source="t", task="short_answer",
                   prompt="Capital of France?", choices=(), answer="Paris", metric="exact_match",
                   split=TEST, references=("Paris",))


def word_vllm(logprob: dict[str, dict[str, float]], answers: dict[str, str]) -> FakeVllm:
    """Every answer word's log-probability per model (-5 for words not listed)."""
    return FakeVllm(word_logprob=lambda model, word: logprob.get(model, {}).get(word, -5.0),
                    answers=answers, loaded={*logprob, *answers})


def scorer(fake: FakeVllm) -> VllmScorer:
    return VllmScorer(httpx.AsyncClient(transport=fake.transport(), base_url="http://vllm"))


def test_suite_items_come_from_the_test_split_only_and_never_from_training_prompts() -> None:
    items = suite_items(per_domain=1000)
    assert {i.split for i in items} == {TEST}
    training = {(i.domain, i.prompt) for i in domain_items(split=TRAIN)}
    assert not [i.id for i in items if (i.domain, i.prompt) in training]
    assert len(Counter(i.domain for i in items)) == 14


def test_a_small_suite_is_the_same_every_time_and_covers_every_source_of_a_domain() -> None:
    first, again = suite_items(["healthcare"], per_domain=6), suite_items(["healthcare"], 6)
    assert [i.id for i in first] == [i.id for i in again]
    sources = {i.source for i in domain_items("healthcare", TEST)}
    assert len({i.source for i in first}) == min(6, len(sources)) > 1
    with pytest.raises(ValueError, match="no suite items"):
        suite_items(["astrology"])


async def test_multiple_choice_is_scored_by_the_best_mean_logprob_of_the_option_tokens() -> None:
    # "beta gamma" averages -1.0 under the adapter, beating "alpha" (-2.0); the base prefers alpha.
    fake = word_vllm({"lora": {"alpha": -2.0, "beta": -1.5, "gamma": -0.5},
                     "base": {"alpha": -0.1, "beta": -3.0, "gamma": -3.0}}, answers={})
    s = scorer(fake)
    lora, base = await s.score(MC, "lora"), await s.score(MC, "base")
    assert (lora.score, lora.answer) == (1.0, "beta gamma")
    assert (base.score, base.answer) == (0.0, "alpha")
    assert lora.reference_logprob == pytest.approx(-1.0)  # the correct option's mean


async def test_short_answers_are_generated_then_matched_and_their_reference_is_scored() -> None:
    fake = word_vllm({"base": {"Paris": -0.25}}, answers={"base": "Paris.\nIt is in France."})
    result = await scorer(fake).score(SHORT, "base")
    assert (result.score, result.f1, result.reference_logprob) == (1.0, 1.0, -0.25)


async def test_a_server_error_is_reported_not_scored_as_a_wrong_answer() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "model lora not found"}})

    s = VllmScorer(httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://v"))
    with pytest.raises(SuiteError, match="404"):
        await s.score(SHORT, "lora")


async def test_score_all_keeps_job_order_and_reports_progress() -> None:
    fake = word_vllm({"a": {"Paris": -1.0}, "b": {"Paris": -1.0}}, answers={"a": "Paris", "b": "x"})
    seen: list[tuple[int, int]] = []
    results = await score_all(scorer(fake), [(SHORT, "a"), (SHORT, "b")], concurrency=2,
                              progress=lambda done, total: seen.append((done, total)))
    assert [(r.model, r.score) for r in results] == [("a", 1.0), ("b", 0.0)]
    assert seen[-1] == (2, 2)


def score(item: str, model: str, value: float, domain: str = "legal") -> ItemScore:
    return ItemScore(item_id=item, domain=domain, model=model, metric="accuracy", score=value,
                     answer="", reference_logprob=-1.0)


def test_summary_pairs_specialized_and_general_on_the_same_items() -> None:
    scores = [score(str(i), "base", float(i % 2)) for i in range(10)]
    scores += [score(str(i), "legal-lora", 1.0) for i in range(10)]
    scores += [score("x", "base", 1.0, domain="news")]  # a domain without adapter
    summary = summarise(scores, "base", {"legal": "legal-lora"})
    legal = summary["domains"]["legal"]
    assert (legal["n"], legal["general"]["mean"], legal["specialized"]["mean"]) == (10, 0.5, 1.0)
    assert legal["delta"]["mean"] == 0.5 and legal["delta"]["low"] > 0
    assert summary["adapters_better"] == 1 and "delta" not in summary["domains"]["news"]
    table = format_table(summary)
    assert "| legal | 10 | 0.500 [" in table and "(no adapter)" in table
