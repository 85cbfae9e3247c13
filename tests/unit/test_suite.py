"""The evaluation suite: fixed items disjoint from training, scored against a fake vLLM whose
answers are known, summarised into paired deltas."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from adapters.corpus import TEST, TRAIN, domain_items
from adapters.evaluation.items import SuiteItem, load_suite
from adapters.evaluation.render import suite_items
from adapters.evaluation.report import format_table, merge_previous, save, summarise
from adapters.evaluation.suite import (
    ItemScore,
    Preempted,
    SuiteError,
    VllmScorer,
    score_all,
)
from tests.unit.fakes import FakeVllm

MC = SuiteItem(id="t/1", domain="legal", source="t", task="multiple_choice",
               prompt="Pick one.\nOptions: alpha | beta gamma\nAnswer with one of the options.",
               choices=("alpha", "beta gamma"), answer="beta gamma", metric="accuracy")
SHORT = SuiteItem(id="t/2", domain="legal", source="t", task="short_answer",
                  prompt="Capital of France?", choices=(), answer="Paris", metric="exact_match",
                  references=("Paris",))
LONG = SuiteItem(id="t/4", domain="news", source="t", task="generation",
                 prompt="Summarise the report.", choices=(), metric="rouge_l",
                 answer="the council approved the budget on monday after a long debate")


def scorer(fake: FakeVllm) -> VllmScorer:
    return VllmScorer(httpx.AsyncClient(transport=fake.transport(), base_url="http://vllm"))


def test_the_gateway_gets_the_same_suite_from_a_child_process() -> None:
    """The gateway never imports the corpus (tests/unit/test_import_boundaries.py): it takes
    the suite from a child process, which must hand back exactly what the corpus renders."""
    items = load_suite(["legal", "news"], per_domain=7)
    assert len(items) == 14 and items == suite_items(["legal", "news"], per_domain=7)


def test_suite_items_come_from_the_test_split_only_and_never_from_training_prompts() -> None:
    items = suite_items(per_domain=1000)
    assert {i.id for i in items} <= {i.id for i in domain_items(split=TEST)}
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


def fake_answering(answers: dict[str, str]) -> FakeVllm:
    return FakeVllm(answers=answers, loaded=set(answers))


async def test_multiple_choice_is_scored_by_the_likeliest_option_in_one_request() -> None:
    fake = fake_answering({"lora": "beta gamma", "base": "alpha"})
    s = scorer(fake)
    lora, base = [await s.score(MC, m) for m in ("lora", "base")]
    assert (lora.score, lora.answer, base.score, base.answer) == (1.0, "beta gamma", 0.0, "alpha")
    assert lora.method == "loglik" and lora.option_logprobs is not None
    # The context is the chat-templated prompt; each option's own characters are scored.
    assert lora.option_logprobs == (round(-2.0 * 5, 4), round(-0.1 * 10, 4))
    # The first option alone, then the rest, which may read the context from the prefix cache.
    first, rest = fake.requests[:2]
    assert first["prompt_logprobs"] == rest["prompt_logprobs"] == 0
    assert [len(first["prompt"]), len(rest["prompt"])] == [1, 1]  # type: ignore[arg-type]
    context = len(first["prompt"][0]) - len("alpha")  # type: ignore[index]
    assert rest["vllm_xargs"] == {"slm_cacheable_prefix": context}


async def test_length_normalised_likelihood_where_lm_eval_reports_acc_norm() -> None:
    arc = SuiteItem(id="t/3", domain="open_domain", source="arc_easy", task="multiple_choice",
                    prompt="Pick.\nOptions: a | bbbbbbbbbb\nAnswer with one of the options.",
                    choices=("a", "bbbbbbbbbb"), answer="bbbbbbbbbb", metric="accuracy")
    # Neither option is the model's reply: -2 per character. By sum the short one wins; per
    # character they tie and the first wins; the convention for ARC is acc_norm.
    result = await scorer(fake_answering({"m": "none"})).score(arc, "m")
    assert result.method == "loglik_norm" and result.answer == "a"
    plain = await scorer(fake_answering({"m": "none"})).score(MC, "m")
    assert plain.method == "loglik" and plain.answer == "alpha"


async def test_multiple_choice_by_generation_matches_the_answer_to_an_option() -> None:
    fake = fake_answering({"lora": "Beta gamma.", "base": "I would say alpha", "bad": "no idea"})
    s = VllmScorer(httpx.AsyncClient(transport=fake.transport(), base_url="http://vllm"),
                   multiple_choice="generate")
    lora, base, bad = [await s.score(MC, m) for m in ("lora", "base", "bad")]
    assert (lora.score, base.score, bad.score) == (1.0, 0.0, 0.0)
    assert lora.method == "generated_match"
    assert fake.requests[0]["max_tokens"] == 24 and fake.requests[0]["temperature"] == 0


async def test_short_answers_are_matched_on_their_first_line() -> None:
    fake = fake_answering({"base": "Paris.\nIt is in France.", "other": "Lyon"})
    result = await scorer(fake).score(SHORT, "base")
    assert (result.score, result.f1, result.method) == (1.0, 1.0, "exact_match")
    assert (await scorer(fake).score(SHORT, "other")).score == 0.0


async def test_a_server_error_is_reported_not_scored_as_a_wrong_answer() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "model lora not found"}})

    s = VllmScorer(httpx.AsyncClient(transport=httpx.MockTransport(refuse), base_url="http://v"))
    with pytest.raises(SuiteError, match="404"):
        await s.score(SHORT, "lora")


async def test_score_all_keeps_job_order_and_reports_progress() -> None:
    fake = fake_answering({"a": "Paris", "b": "x"})
    seen: list[tuple[int, int]] = []
    results = await score_all(scorer(fake), [(SHORT, "a"), (SHORT, "b")], concurrency=2,
                              progress=lambda done, total: seen.append((done, total)))
    assert [(r.model, r.score) for r in results] == [("a", 1.0), ("b", 0.0)]
    assert seen[-1] == (2, 2)


def score(item: str, model: str, value: float, domain: str = "legal") -> ItemScore:
    return ItemScore(item_id=item, domain=domain, model=model, metric="accuracy", score=value,
                     answer="", method="loglik")


def test_summary_pairs_specialized_and_general_on_the_same_items() -> None:
    scores = [score(str(i), "base", float(i % 2)) for i in range(10)]
    scores += [score(str(i), "legal-lora", 1.0) for i in range(10)]
    scores += [score("x", "base", 1.0, domain="news")]  # a domain without adapter
    summary = summarise(scores, "base", {"legal": "legal-lora"})
    legal = summary["domains"]["legal"]
    assert (legal["n"], legal["general"]["mean"], legal["specialized"]["mean"]) == (10, 0.5, 1.0)
    assert legal["delta"]["mean"] == 0.5 and legal["delta"]["low"] > 0
    assert legal["methods"] == {"loglik": 10}
    assert summary["adapters_better"] == 1 and "delta" not in summary["domains"]["news"]
    table = format_table(summary)
    assert "| legal | 10 | 0.500 [" in table and "(no adapter)" in table


def test_rescoring_some_domains_keeps_the_other_domains_of_the_saved_run(tmp_path: Any) -> None:
    import json

    old = [score(str(i), "base", 0.0) for i in range(4)]
    old += [score(str(i), "legal-lora", 0.0) for i in range(4)]
    old += [score(str(i), "base", 0.0, domain="news") for i in range(4)]
    old += [score(str(i), "news-lora", 1.0, domain="news") for i in range(4)]
    path = tmp_path / "suite.json"
    save(summarise(old, "base", {"legal": "legal-lora", "news": "news-lora"}), old, path)
    new = [score(str(i), "base", 0.0) for i in range(4)]
    new += [score(str(i), "legal-lora", 1.0) for i in range(4)]
    scores, names = merge_previous(json.loads(path.read_text()), new,
                                   {"legal": "legal-lora"})
    summary = summarise(scores, "base", names)
    assert summary["domains"]["legal"]["delta"]["mean"] == 1.0  # the new legal scores
    assert summary["domains"]["news"]["delta"]["mean"] == 1.0  # news kept from the file
    assert len(scores) == 16


async def test_a_call_is_abandoned_as_soon_as_preempt_fires() -> None:
    cancelled = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return httpx.Response(200, json={})

    users = asyncio.Event()
    s = VllmScorer(httpx.AsyncClient(transport=httpx.MockTransport(slow), base_url="http://v"),
                   preempt=users.wait)
    task = asyncio.create_task(s.score(SHORT, "base"))
    await asyncio.sleep(0.05)
    users.set()  # a user request arrives
    with pytest.raises(Preempted):
        await asyncio.wait_for(task, 2.0)
    assert cancelled.is_set()  # the upstream call itself was cancelled, not left running


def test_the_default_suite_has_at_least_60_items_in_every_domain_and_100_where_it_can() -> None:
    counts = Counter(i.domain for i in suite_items())
    available = Counter(i.domain for i in domain_items(split=TEST))
    assert min(counts.values()) >= 60
    assert all(counts[d] == min(100, available[d]) for d in counts)


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor (where ``asyncio.to_thread`` runs work), counting."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_generated_answers_are_scored_in_a_worker_thread_not_on_the_event_loop() -> None:
    """ROUGE-L of a long answer takes milliseconds of CPU; the shadow evaluator scores on the
    gateway's event loop, so answer scoring goes to a thread (likelihood scoring needs none)."""
    executor = CountingExecutor()
    asyncio.get_running_loop().set_default_executor(executor)
    fake = fake_answering({"m": "the council approved the budget on monday", "x": "Paris"})
    result = await scorer(fake).score(LONG, "m")
    assert result.method == "rouge_l" and 0.5 < result.score < 1.0
    assert executor.submitted == 1
    assert (await scorer(fake).score(SHORT, "x")).score == 1.0
    assert executor.submitted == 2
    await scorer(fake).score(MC, "m")  # option likelihoods: arithmetic only, on the loop
    assert executor.submitted == 2
