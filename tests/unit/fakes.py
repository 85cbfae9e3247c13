"""A fake vLLM behind httpx.MockTransport: records what the gateway sent, answers like vLLM."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from loadtests.fake_upstream import response_not_found, responses_answer, responses_events
from router.classifier import BatchResult
from router.policy import Classification


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Poll ``predicate`` (background loops such as the shadow evaluator's) until it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class FakeVllm:
    model: str = "SmolLM2-135M-Instruct"
    healthy: bool = True
    loaded: set[str] = field(default_factory=set)
    fail_loads: set[str] = field(default_factory=set)
    load_calls: list[str] = field(default_factory=list)
    inplace_loads: list[str] = field(default_factory=list)
    unload_calls: list[str] = field(default_factory=list)
    requests: list[dict[str, object]] = field(default_factory=list)
    # Override the completion behaviour: return a Response or raise an httpx error.
    on_completion: Callable[[httpx.Request, dict[str, object]], httpx.Response] | None = None
    # What each model answers (non-streaming); others say "Hello there".
    answers: dict[str, str] = field(default_factory=dict)
    # Responses API: ids this replica stored (vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1;
    # False: like vLLM without it, which stores nothing and says nothing about it).
    store_responses: bool = True
    stored: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/health":
            return httpx.Response(200 if self.healthy else 503)
        if not self.healthy:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content) if request.content else {}
        if path == "/v1/load_lora_adapter":
            name = body["lora_name"]
            self.load_calls.append(name)
            if name in self.fail_loads:
                return httpx.Response(
                    404, json={"error": {"message": f"Loading lora {name} failed", "code": 404}}
                )
            if body.get("load_inplace"):
                self.inplace_loads.append(name)
            elif name in self.loaded:
                return httpx.Response(
                    400, json={"error": {"message": f"{name} has already been loaded"}}
                )
            self.loaded.add(name)
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            self.unload_calls.append(body["lora_name"])
            self.loaded.discard(body["lora_name"])
            return httpx.Response(200, text="Success")
        if path == "/tokenize":
            return httpx.Response(200, json={"tokens": fake_tokens(body)})
        if path in ("/v1/chat/completions", "/v1/completions"):
            self.requests.append(body)
            if self.on_completion is not None:
                return self.on_completion(request, body)
            if body["model"] != self.model and body["model"] not in self.loaded:
                return httpx.Response(
                    404, json={"error": {"message": f"The model `{body['model']}` does not exist."}}
                )
            if path == "/v1/completions" and body.get("prompt_logprobs") is not None and all(
                    isinstance(p, list) for p in body.get("prompt", "")):  # token-id prompts
                return httpx.Response(200, json=likelihoods(
                    body, self.answers.get(str(body["model"]), "Hello there")))
            if body["model"] in self.answers:
                return httpx.Response(200, json=completion(str(body["model"]),
                                                           self.answers[str(body["model"])]))
            if body.get("stream"):
                return httpx.Response(
                    200, headers={"content-type": "text/event-stream"}, content=sse(body["model"])
                )
            return httpx.Response(200, json=completion(body["model"]))
        if path == "/v1/responses":
            self.requests.append(body)
            if self.on_completion is not None:
                return self.on_completion(request, body)
            return self._responses(body)
        return httpx.Response(404, json={"detail": "Not Found"})

    def _responses(self, body: dict[str, object]) -> httpx.Response:
        model = str(body["model"])
        if model != self.model and model not in self.loaded:
            return httpx.Response(
                404, json={"error": {"message": f"The model `{model}` does not exist."}})
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            return httpx.Response(404, json=response_not_found(str(previous)))
        response_id = f"resp_{uuid.uuid4().hex}"
        store = self.store_responses and body.get("store") is not False
        if store:
            self.stored.append(response_id)
        if not body.get("stream"):
            text = self.answers.get(model, "Hello there")
            return httpx.Response(200, json=responses_answer(response_id, body, text))

        async def events() -> AsyncIterator[bytes]:
            for event in responses_events(response_id, body, ["Hello", " there"]):
                yield event

        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=events())


# The fake tokenizer: one token per character (its code point); a conversation renders as
# "<role>content\n" per message, then "<assistant>" for the generation prompt.
ASSISTANT = "<assistant>"


def fake_tokens(body: dict[str, object]) -> list[int]:
    if "messages" in body:
        messages = body["messages"]
        assert isinstance(messages, list)
        text = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        text += ASSISTANT if body.get("add_generation_prompt") else ""
    else:
        text = str(body["prompt"])
    return [ord(c) for c in text]


def likelihoods(body: dict[str, object], preferred: str) -> dict[str, object]:
    """vLLM's answer to ``prompt_logprobs`` for token-id prompts, from a model that likes its
    ``preferred`` reply: each character of a reply equal to it costs -0.1, of any other reply
    -2.0, of the context -1.0."""
    prompts = body["prompt"]
    assert isinstance(prompts, list)
    choices = []
    for index, ids in enumerate(prompts):
        text = "".join(chr(i) for i in ids)
        start = text.rfind(ASSISTANT) + len(ASSISTANT)
        cost = -0.1 if text[start:] == preferred else -2.0
        logprobs: list[dict[str, dict[str, float]] | None] = [None] + [
            {str(token): {"logprob": cost if position >= start else -1.0, "rank": 1}}
            for position, token in enumerate(ids) if position > 0]
        choices.append({"index": index, "text": "x", "prompt_logprobs": logprobs,
                        "finish_reason": "length"})
    return {"id": "cmpl-1", "object": "text_completion", "model": body["model"],
            "choices": choices}


def completion(model: str, text: str = "Hello there") -> dict[str, object]:
    return {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def chunk(model: str, content: str, finish: str | None = None) -> bytes:
    data = {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def sse(model: str, *, cut_after: int | None = None) -> AsyncIterator[bytes]:
    words = ["Hello", " there", " friend"]
    for i, word in enumerate(words):
        if cut_after is not None and i == cut_after:
            raise httpx.ReadError("connection reset by peer")
        yield chunk(model, word, "stop" if i == len(words) - 1 else None)
    yield b"data: [DONE]\n\n"


@dataclass
class ScriptedClassifier:
    """Domain = the text's first word ("none" for outside the taxonomy, "follow" for a turn
    that keeps the conversation's answer), confidence = the second word when it is a number;
    records every batch it was given. Its per-turn scores are the turns' Classifications."""

    batches: list[list[str]] = field(default_factory=list)
    max_full_seen: list[int | None] = field(default_factory=list)
    memory: dict[str, Classification] = field(default_factory=dict)
    fail: bool = False

    def classify(self, text: str) -> Classification:
        return self.classify_many([text]).results[0]

    def cached_scores(self, text: str) -> Classification | None:
        return self.memory.get(text)

    def remember_many(self, texts: Sequence[str], scores: Sequence[Classification]) -> None:
        self.memory.update(zip(texts, scores, strict=True))

    def resolve(self, turns: Sequence[Classification]) -> Classification:
        resolved = Classification(None, 1.0)
        for turn in turns:
            resolved = resolved if turn.domain == "follow" else turn
        return resolved

    def classify_many(self, texts: Sequence[str], *, max_full: int | None = None) -> BatchResult:
        if self.fail:
            raise RuntimeError("boom")
        self.batches.append(list(texts))
        self.max_full_seen.append(max_full)
        results = [_scripted(t) for t in texts]
        self.remember_many(texts, results)  # as the real classifier caches what it computed
        return BatchResult(
            results, ["full"] * len(texts), full_seconds=0.01 * len(texts), scores=results
        )


def _scripted(text: str) -> Classification:
    words = text.split() or ["none"]  # empty text: outside the taxonomy
    domain = None if words[0] == "none" else words[0]
    try:
        confidence = float(words[1])
    except (IndexError, ValueError):
        confidence = 0.9
    return Classification(domain, confidence)
