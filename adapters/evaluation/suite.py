"""The 14-domain evaluation suite, scored on a vLLM server for any served model.

Items (:class:`~adapters.evaluation.items.SuiteItem`) come from the suite file
(:mod:`adapters.evaluation.items`; how they are chosen: :mod:`adapters.evaluation.export`).

Scoring talks to vLLM's OpenAI server (an adapter is just a ``model`` name there), as
:mod:`adapters.evaluation.scoring` describes: multiple choice by option log-likelihood (vLLM
tokenizes the conversation with the served chat template and returns ``prompt_logprobs`` for the
context followed by each option, all options in one request), short answers and generations by
a greedy answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from adapters.evaluation.items import MULTIPLE_CHOICE, SHORT_ANSWER, SuiteItem
from adapters.evaluation.scoring import (
    GENERATED_MATCH,
    continuation_logprob,
    likelihood_method,
    match_option,
    pick_option,
    score_text,
    token_f1,
)

logger = logging.getLogger(__name__)

# vllm_xargs key read by adapters/vllm_cpu_fix.py (section 4); kept here so that scoring never
# imports the vLLM plugin (and vLLM with it).
CACHEABLE_PREFIX_ARG = "slm_cacheable_prefix"

MAX_ANSWER_TOKENS = {"multiple_choice": 24, "short_answer": 32, "generation": 96}


class SuiteError(RuntimeError):
    """The server refused or failed a scoring request."""


class Preempted(Exception):
    """A call was abandoned because ``preempt`` fired (the shadow evaluator yields to users)."""


@dataclass(frozen=True)
class ItemScore:
    item_id: str
    domain: str
    model: str
    metric: str
    score: float
    answer: str  # the generated text; likelihood scoring: the option picked
    f1: float | None = None  # short answers: token F1, partial credit
    seconds: float = 0.0
    method: str = ""  # how it was scored: loglik, loglik_norm, exact_match, rouge_l, ...
    option_logprobs: tuple[float, ...] | None = None  # likelihood scoring: per option

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class VllmScorer:
    """Scores suite items on one vLLM OpenAI server (``client`` has its base URL)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str = "",
        throttle: Callable[[], AbstractAsyncContextManager[None]] | None = None,
        preempt: Callable[[], Awaitable[None]] | None = None,
        multiple_choice: str = "loglik",
    ) -> None:
        """``base_url`` prefixes every path (empty: the client's own base URL); ``throttle``
        admits each model call (the shadow evaluator's budget); a call still running when
        ``preempt()`` returns is cancelled (vLLM aborts a request whose client went away) and
        :class:`Preempted` raised. ``multiple_choice``: ``loglik`` (option likelihoods, the
        default) or ``generate`` (a greedy answer matched to an option, for engines that cannot
        return prompt log-probabilities with an adapter)."""
        if multiple_choice not in ("loglik", "generate"):
            raise ValueError(f"multiple_choice must be loglik or generate, not {multiple_choice!r}")
        self._client = client
        self._base_url = base_url
        self._throttle = throttle or contextlib.nullcontext
        self._preempt = preempt
        self.multiple_choice = multiple_choice

    async def _tokenize(self, body: dict[str, Any]) -> list[int]:
        """vLLM's tokenizer (no model call: neither throttled nor preempted)."""
        response = await self._client.post(self._base_url + "/tokenize", json=body)
        if response.status_code != 200:
            raise SuiteError(f"/tokenize answered {response.status_code}: {response.text[:300]}")
        return [int(t) for t in response.json()["tokens"]]

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._throttle():
            call = asyncio.ensure_future(self._client.post(self._base_url + path, json=body))
            # If we are cancelled ourselves (shutdown) the call must not outlive us unobserved.
            call.add_done_callback(lambda f: f.cancelled() or f.exception())
            try:
                if self._preempt is not None:
                    stop = asyncio.ensure_future(self._preempt())
                    try:
                        await asyncio.wait({call, stop}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        stop.cancel()
                    if not call.done():
                        raise Preempted(path)
                response = await call
            finally:
                call.cancel()  # no-op once done
        if response.status_code != 200:
            raise SuiteError(f"{path} answered {response.status_code}: {response.text[:300]}")
        result: dict[str, Any] = response.json()
        return result

    async def chat(self, model: str, messages: list[dict[str, Any]], max_tokens: int) -> str:
        """A greedy answer to a conversation."""
        result = await self._post("/v1/chat/completions", {
            "model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
        })
        return str(result["choices"][0]["message"]["content"] or "")

    async def generate(self, model: str, prompt: str, max_tokens: int) -> str:
        return await self.chat(model, [{"role": "user", "content": prompt}], max_tokens)

    async def option_logprobs(self, model: str, prompt: str, options: Sequence[str]
                              ) -> list[float]:
        """Each option's summed log-probability as the assistant's reply to ``prompt``.

        The context is the conversation as the engine renders it (its chat template, with the
        assistant turn opened); each option is tokenized on its own and appended (the template
        ends the context with a newline, which the tokenizer never merges with what follows, so
        this is the same split as tokenizing context + option together). ``max_tokens`` is 1
        because vLLM must generate something. The first option goes alone, the others in one
        request after it: with the project's vLLM plugin they read the context's KV blocks from
        the prefix cache (``slm_cacheable_prefix``: never past the context, so every option
        token is computed), which makes a k-option question cost about one prefill, not k."""
        context = await self._tokenize({
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "add_generation_prompt": True})
        prompts: list[list[int]] = []
        for option in options:
            tokens = await self._tokenize({
                "model": model, "prompt": option, "add_special_tokens": False})
            prompts.append([*context, *tokens])
        choices: list[dict[str, Any]] = []
        for batch in (prompts[:1], prompts[1:]):
            if not batch:
                continue
            result = await self._post("/v1/completions", {
                "model": model, "prompt": batch, "max_tokens": 1, "temperature": 0,
                "prompt_logprobs": 0, "vllm_xargs": {CACHEABLE_PREFIX_ARG: len(context)}})
            answered = sorted(result["choices"], key=lambda c: int(c["index"]))
            if len(answered) != len(batch):
                raise SuiteError(f"{len(answered)} completions for {len(batch)} options")
            choices.extend(answered)
        return [continuation_logprob(c["prompt_logprobs"], ids, len(context))
                for c, ids in zip(choices, prompts, strict=True)]

    async def _score_by_likelihood(self, item: SuiteItem, model: str, started: float
                                   ) -> ItemScore:
        method = likelihood_method(item.source)
        logprobs = await self.option_logprobs(model, item.prompt, item.choices)
        chosen = pick_option(logprobs, item.choices, method)
        return ItemScore(
            item_id=item.id, domain=item.domain, model=model, metric=item.metric,
            score=float(chosen == item.answer_index), answer=item.choices[chosen],
            seconds=time.perf_counter() - started, method=method,
            option_logprobs=tuple(round(lp, 4) for lp in logprobs))

    async def score(self, item: SuiteItem, model: str) -> ItemScore:
        started = time.perf_counter()
        if item.task == MULTIPLE_CHOICE and self.multiple_choice == "loglik":
            return await self._score_by_likelihood(item, model, started)
        answer = await self.generate(model, item.prompt, MAX_ANSWER_TOKENS[item.task])
        # ROUGE-L (stemming, LCS) costs milliseconds per long answer, and the shadow evaluator
        # scores on the gateway's event loop: answers are scored in a worker thread.
        score, f1, method = await asyncio.to_thread(score_answer, item, answer)
        return ItemScore(
            item_id=item.id, domain=item.domain, model=model, metric=item.metric, score=score,
            answer=answer, f1=f1, seconds=time.perf_counter() - started, method=method,
        )


def score_answer(item: SuiteItem, answer: str) -> tuple[float, float | None, str]:
    """A generated answer's score, token F1 (short answers only) and scoring method."""
    if item.task == MULTIPLE_CHOICE:
        chosen = match_option(answer, item.choices)
        return float(chosen is not None and chosen == item.answer_index), None, GENERATED_MATCH
    references = item.references or (item.answer,)
    f1 = token_f1(answer, references) if item.task == SHORT_ANSWER else None
    return score_text(item.metric, answer, references), f1, item.metric


Progress = Callable[[int, int], None]


async def score_all(
    scorer: VllmScorer,
    jobs: Sequence[tuple[SuiteItem, str]],
    *,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> list[ItemScore]:
    """Score (item, model) pairs, ``concurrency`` at a time, results in job order."""
    semaphore = asyncio.Semaphore(concurrency)
    done = 0

    async def one(item: SuiteItem, model: str) -> ItemScore:
        nonlocal done
        async with semaphore:
            result = await scorer.score(item, model)
        done += 1
        if progress is not None:
            progress(done, len(jobs))
        return result

    return list(await asyncio.gather(*(one(item, model) for item, model in jobs)))


async def run_suite(
    base_url: str,
    base_model: str,
    adapters: Mapping[str, tuple[str, str]],
    items: Sequence[SuiteItem],
    *,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> list[ItemScore]:
    """Score every item on the general model and, where its domain has one (``adapters``:
    domain -> (adapter name, path)), on the domain adapter, which is loaded first."""
    from adapters.vllm_admin import load_adapter

    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        for name, path in adapters.values():
            await load_adapter(client, base_url, name, path)
        jobs: list[tuple[SuiteItem, str]] = []
        for item in sorted(items, key=lambda i: i.domain):  # one adapter at a time, mostly
            jobs.append((item, base_model))
            if item.domain in adapters:
                jobs.append((item, adapters[item.domain][0]))
        return await score_all(VllmScorer(client), jobs, concurrency=concurrency,
                               progress=progress)
