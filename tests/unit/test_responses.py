"""The Responses API (POST /v1/responses) against fake vLLM replicas: routing like chat, the
typed event stream, stateful follow-ups pinned to the replica that stored the earlier response,
limits, the tool-call refusal, and model lookup (GET /v1/models/{id})."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from adapters.registry import AdapterEntry
from gateway.app import create_app
from gateway.engine import vllm_command, vllm_environment
from gateway.metrics import Metrics
from gateway.proxy import Gateway
from gateway.responses import LocalResponseDirectory, ResponseStreamWatcher
from gateway.settings import EngineSettings, Settings
from loadtests.fake_upstream import responses_events
from tests.unit.conftest import make_adapter_dir
from tests.unit.fakes import FakeVllm, ScriptedClassifier

RESPONSES = "/v1/responses"


def ask(model: str = "base", **extra: object) -> dict[str, object]:
    return {"model": model, "input": "hi", **extra}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class Fleet:
    """Fake replicas behind one transport, told apart by host."""

    def __init__(self, hosts: list[str]) -> None:
        self.replicas = {host: FakeVllm() for host in hosts}

    def transport(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            return await self.replicas[request.url.host].handle(request)

        return httpx.MockTransport(handle)

    def served(self, host: str) -> int:
        return sum(1 for r in self.replicas[host].requests if "input" in r)


def settings_for(fleet: Fleet, root: Path, **upstream: object) -> Settings:
    return Settings(
        upstream={"urls": [f"http://{h}:8000" for h in fleet.replicas],
                  "health_interval_s": 3600, **upstream},
        shadow={"enabled": False},
        adapters={"manifest": None, "allowed_dirs": [root], "preload": False, "entries": [
            AdapterEntry(name="law-v1", domain="legal", path=make_adapter_dir(root, "law"))]},
    )


@pytest.fixture
def fleet() -> Fleet:
    return Fleet(["a", "b"])


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(fleet: Fleet, metrics: Metrics, adapter_root: Path) -> Iterator[TestClient]:
    app = create_app(settings_for(fleet, adapter_root), transport=fleet.transport(),
                     metrics=metrics, classifier=ScriptedClassifier())
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def gateway_of(client: TestClient) -> Gateway:
    gateway: Gateway = client.app.state.gateway  # type: ignore[attr-defined]
    return gateway


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, object]]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


# ----------------------------------------------------------------------------- routing
def test_a_response_is_routed_like_chat_with_route_headers_and_the_model_rewritten(
    client: TestClient, fleet: Fleet, metrics: Metrics
) -> None:
    response = client.post(RESPONSES, json=ask("legal", instructions="Be brief."))
    assert response.status_code == 200
    assert response.headers["x-slm-adapter"] == "law-v1"
    assert response.headers["x-slm-route-reason"] == "explicit"
    assert response.headers["x-request-id"].startswith("slm-")
    answer = response.json()
    assert answer["object"] == "response" and answer["model"] == "law-v1"
    sent = fleet.replicas["a"].requests[-1]
    assert sent == {"model": "law-v1", "input": "hi", "instructions": "Be brief."}
    assert sample(metrics, "slm_requests_total", endpoint="responses", domain="legal",
                  adapter="law-v1", route_reason="explicit", status_class="2xx") == 1


@pytest.mark.parametrize("body", [
    {"input": "legal 0.93 may my landlord keep the deposit"},
    {"input": [
        {"role": "user", "content": "finance what is a bond"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "finance A loan you can trade."}]},
        {"type": "function_call_output", "call_id": "c1", "output": "finance 0.99"},
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "legal 0.93 and who may sue me?"}]},
    ]},
], ids=["string", "items"])
def test_auto_classifies_the_latest_user_turn_of_the_input_never_the_instructions(
    client: TestClient, body: dict[str, object]
) -> None:
    response = client.post(RESPONSES, json={
        "model": "auto", "instructions": "finance 0.99 You are a banker.", **body})
    assert response.status_code == 200
    assert response.headers["x-slm-route-reason"] == "classified"
    assert response.headers["x-slm-domain"] == "legal"
    assert response.headers["x-slm-confidence"] == "0.930"


def test_a_stream_relays_the_typed_events_ending_with_response_completed(
    client: TestClient, metrics: Metrics
) -> None:
    with client.stream("POST", RESPONSES, json=ask("legal", stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-slm-adapter"] == "law-v1"
        events = events_of(response)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert all(data["type"] == name for name, data in events)
    deltas = "".join(str(d["delta"]) for n, d in events if n == "response.output_text.delta")
    assert deltas == "Hello there"
    assert sample(metrics, "slm_time_to_first_token_seconds_count", endpoint="responses",
                  domain="legal", adapter="law-v1") == 1


def test_a_stream_cut_after_it_started_ends_with_a_responses_error_event(
    client: TestClient, fleet: Fleet
) -> None:
    async def cut() -> AsyncIterator[bytes]:
        for i, event in enumerate(responses_events("resp_x", {}, ["a", "b", "c"])):
            if i == 5:
                raise httpx.ReadError("connection reset by peer")
            yield event

    fleet.replicas["a"].on_completion = lambda request, body: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=cut())
    with client.stream("POST", RESPONSES, json=ask(stream=True)) as response:
        events = events_of(response)
    name, error = events[-1]
    assert name == "error" and error["type"] == "error"
    assert error["sequence_number"] == 5  # five events went before it
    assert error["message"] == "The upstream stream was interrupted."
    assert error["error"] == {"message": error["message"], "type": "upstream_error",
                              "param": None, "code": None}
    assert "response.completed" not in [n for n, _ in events]


def test_the_openai_sdk_reads_the_stream_and_raises_the_error_event(
    client: TestClient, fleet: Fleet
) -> None:
    sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="x", http_client=client,
                        max_retries=0)
    with sdk.responses.stream(model="base", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello there" and final.status == "completed"

    async def failing() -> AsyncIterator[bytes]:
        yield next(responses_events("resp_x", {}, []))
        raise httpx.ReadError("connection reset by peer")

    fleet.replicas["a"].on_completion = lambda request, body: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=failing())
    # The gateway's own error event, after the stream started.
    with pytest.raises(openai.APIError, match="stream was interrupted"), \
            sdk.responses.stream(model="base", input="hi") as stream:
        stream.get_final_response()


def test_a_replica_failing_before_the_first_byte_is_retried_on_another(
    client: TestClient, fleet: Fleet, metrics: Metrics
) -> None:
    fleet.replicas["a"].healthy = False  # connection refused
    response = client.post(RESPONSES, json=ask(stream=True))
    assert response.status_code == 200
    assert fleet.served("b") == 1
    assert sample(metrics, "slm_upstream_retries_total", replica="r0") == 1
    # ... and the response it stored is remembered on the replica that made it.
    first = events_of(response)[0][1]["response"]["id"]  # type: ignore[index]
    assert gateway_of(client).responses.owner(str(first)) == "http://b:8000"


# ----------------------------------------------------------------------- stored responses
def create_on(client: TestClient, host: str, **extra: object) -> str:
    """Make a response that lands on ``host`` (the other replica looks busier) and return its
    id; afterwards both replicas look idle again, so placement alone would pick 'a'."""
    replicas = {r.url: r for r in gateway_of(client).pool.replicas}
    other = replicas["http://b:8000" if host == "a" else "http://a:8000"]
    other.outstanding += 10
    try:
        response = client.post(RESPONSES, json=ask(store=True, **extra))
    finally:
        other.outstanding -= 10
    assert response.status_code == 200
    if extra.get("stream"):
        return str(events_of(response)[0][1]["response"]["id"])  # type: ignore[index]
    return str(response.json()["id"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_follow_up_goes_to_the_replica_that_stored_the_previous_response(
    client: TestClient, fleet: Fleet, stream: bool
) -> None:
    first = create_on(client, "b", stream=stream)
    assert first in fleet.replicas["b"].stored
    for _ in range(3):
        follow_up = client.post(RESPONSES, json=ask(previous_response_id=first))
        assert follow_up.status_code == 200
    assert fleet.served("b") == 4 and fleet.served("a") == 0


def test_an_unknown_previous_response_is_a_400_that_reaches_no_replica(
    client: TestClient, fleet: Fleet
) -> None:
    response = client.post(RESPONSES, json=ask(previous_response_id="resp_nobody"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "previous_response_id"
    assert error["code"] == "previous_response_not_found"
    assert fleet.served("a") == fleet.served("b") == 0


def test_a_response_made_with_store_false_cannot_be_continued(client: TestClient) -> None:
    first = client.post(RESPONSES, json=ask(store=False)).json()["id"]
    response = client.post(RESPONSES, json=ask(previous_response_id=first))
    assert response.status_code == 400


def test_an_engine_that_does_not_store_responses_gets_clear_400s_for_follow_ups(
    client: TestClient, fleet: Fleet
) -> None:
    for replica in fleet.replicas.values():
        replica.store_responses = False  # vLLM without VLLM_ENABLE_RESPONSES_API_STORE
    first = client.post(RESPONSES, json=ask()).json()
    assert "store" not in first  # vLLM 0.32 does not say: the gateway assumes it stored
    response = client.post(RESPONSES, json=ask(previous_response_id=first["id"]))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "previous_response_not_found"
    assert gateway_of(client).responses.owner(first["id"]) is None


def test_a_response_its_replica_lost_is_a_400_and_forgotten(
    client: TestClient, fleet: Fleet
) -> None:
    first = create_on(client, "b")
    fleet.replicas["b"].stored.clear()  # the replica restarted: its memory is gone
    response = client.post(RESPONSES, json=ask(previous_response_id=first))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "previous_response_id"
    assert gateway_of(client).responses.owner(first) is None
    assert fleet.served("a") == 0  # never tried elsewhere


def test_when_the_owner_is_down_the_follow_up_is_a_503_not_sent_elsewhere(
    client: TestClient, fleet: Fleet
) -> None:
    first = create_on(client, "b")
    fleet.replicas["b"].healthy = False
    # The first try finds the connection refused (no failover: only 'b' holds the state), and
    # marks the replica down; from then on the gateway says so before trying.
    assert client.post(RESPONSES, json=ask(previous_response_id=first)).status_code == 503
    response = client.post(RESPONSES, json=ask(previous_response_id=first))
    assert response.status_code == 503
    assert response.json()["error"]["param"] == "previous_response_id"
    assert fleet.served("a") == 0


def test_the_directory_keeps_the_most_recently_used_ids() -> None:
    directory = LocalResponseDirectory(capacity=2)
    directory.remember("r1", "http://a")
    directory.remember("r2", "http://b")
    assert directory.owner("r1") == "http://a"  # used: now the most recent
    directory.remember("r3", "http://a")
    assert (directory.owner("r1"), directory.owner("r2"), directory.owner("r3")) == (
        "http://a", None, "http://a")
    assert len(directory) == 2


def test_the_watcher_finds_the_stored_id_however_the_stream_is_cut_into_chunks() -> None:
    stream = b"".join(responses_events("resp_1", {}, ["a", "b"]))
    for size in (1, 7, 64, len(stream)):
        stored: list[str] = []
        watcher = ResponseStreamWatcher(stored.append)
        for i in range(0, len(stream), size):
            watcher.feed(stream[i:i + size])
        assert stored == ["resp_1"]
        assert watcher.events == stream.count(b"event: ")


def test_the_watcher_remembers_nothing_for_an_unstored_or_unfinished_response() -> None:
    stored: list[str] = []
    said_so = ResponseStreamWatcher(stored.append)  # the answer says store: false (OpenAI)
    said_so.feed(b"".join(responses_events("resp_1", {}, ["a"], store=False)))
    not_asked = ResponseStreamWatcher(stored.append, requested=False)  # vLLM's: no store field
    not_asked.feed(b"".join(responses_events("resp_3", {}, ["a"])))
    unfinished = ResponseStreamWatcher(stored.append)
    unfinished.feed(b"".join(list(responses_events("resp_2", {}, ["a"]))[:-1]))
    assert stored == []


# ------------------------------------------------------------------------------- limits
def test_max_output_tokens_is_bounded_like_max_tokens(client: TestClient, fleet: Fleet) -> None:
    response = client.post(RESPONSES, json=ask(max_output_tokens=10**6))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_output_tokens"
    assert fleet.served("a") == 0


@pytest.mark.parametrize("body", [
    {"input": "x" * 200_001}, {"instructions": "x" * 200_001},
    {"input": [{"role": "user", "content": "x" * 200_001}]},
    {"input": [{"role": "user", "content": "hi"}] * 257},
    {"input": 42}, {"input": None}, {"model": ""},
])
def test_oversized_or_malformed_input_is_a_400(client: TestClient, body: dict[str, object]
                                                ) -> None:
    response = client.post(RESPONSES, json={**ask(), **body})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


TOOL = {"type": "function", "name": "weather", "parameters": {"type": "object"}}
CHAT_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {}}}


@pytest.mark.parametrize(("path", "body"), [
    (RESPONSES, ask(tools=[TOOL])),
    (RESPONSES, ask(tools=[TOOL], tool_choice="required")),
    (RESPONSES, ask(tools=[TOOL], tool_choice={"type": "function", "name": "weather"})),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}],
                              "tools": [CHAT_TOOL], "tool_choice": "auto"}),
    ("/v1/chat/completions", {"model": "base", "messages": [{"role": "user", "content": "hi"}],
                              "functions": [CHAT_TOOL["function"]]}),
])
def test_tools_without_a_tool_call_parser_are_a_clear_400(
    client: TestClient, fleet: Fleet, path: str, body: dict[str, object]
) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tools" and error["code"] == "tool_calls_not_enabled"
    assert "not enabled" in error["message"]
    assert fleet.replicas["a"].requests == []


def test_tool_choice_none_is_forwarded_without_a_parser(client: TestClient, fleet: Fleet
                                                        ) -> None:
    assert client.post(RESPONSES, json=ask(tools=[TOOL], tool_choice="none")).status_code == 200
    assert fleet.replicas["a"].requests[-1]["tool_choice"] == "none"


def test_tools_are_forwarded_when_the_engine_parses_tool_calls(
    fleet: Fleet, metrics: Metrics, adapter_root: Path
) -> None:
    app = create_app(settings_for(fleet, adapter_root, tool_calls=True),
                     transport=fleet.transport(), metrics=metrics)
    with TestClient(app) as client:
        assert client.post(RESPONSES, json=ask(tools=[TOOL])).status_code == 200
    assert fleet.replicas["a"].requests[-1]["tools"] == [TOOL]


def test_the_engine_command_enables_tool_calls_and_the_response_store_when_configured(
) -> None:
    plain = EngineSettings()
    tools = EngineSettings(tool_call_parser="hermes", responses_store=True)
    assert "--tool-call-parser" not in vllm_command(plain, Path("m"), "n")
    command = vllm_command(tools, Path("m"), "n")
    at = command.index("--enable-auto-tool-choice")
    assert command[at + 1:at + 3] == ["--tool-call-parser", "hermes"]
    assert vllm_environment(tools)["VLLM_ENABLE_RESPONSES_API_STORE"] == "1"
    assert vllm_environment(plain).get("VLLM_ENABLE_RESPONSES_API_STORE") == os.environ.get(
        "VLLM_ENABLE_RESPONSES_API_STORE")


# ------------------------------------------------------------------------- model lookup
def test_every_listed_model_can_be_retrieved_and_says_where_it_routes(
    client: TestClient
) -> None:
    listed = client.get("/v1/models").json()["data"]
    for card in listed:
        retrieved = client.get(f"/v1/models/{card['id']}")
        assert retrieved.status_code == 200
        # `created` is the time of the answer: the rest is the same card.
        assert {**retrieved.json(), "created": card["created"]} == card
        assert {"id", "object", "created", "owned_by"} <= set(card)
    by_id = {c["id"]: c for c in listed}
    assert by_id["legal"]["slm"]["route"] == {"domain": "legal", "adapter": "law-v1",
                                              "reason": "explicit"}
    assert by_id["finance"]["slm"]["route"]["reason"] == "no_adapter"
    assert by_id["auto"]["slm"]["route"] is None


def test_the_served_base_name_is_retrievable_and_unknown_models_are_404(
    client: TestClient
) -> None:
    served = gateway_of(client).settings.upstream.served_model_name
    assert client.get(f"/v1/models/{served}").json()["slm"]["kind"] == "base"
    missing = client.get("/v1/models/gpt-5")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    assert client.get("/v1/models/org/model").status_code == 404
