"""A small, fast fake OpenAI/vLLM upstream, for measuring gateway overhead only.

It answers chat and text completions and the Responses API (streamed or not) after a fixed
delay, accepts vLLM's runtime LoRA calls, and does nothing a model does: never use it to claim
anything about quality. Like vLLM with VLLM_ENABLE_RESPONSES_API_STORE=1, it stores responses
(the last few thousand) and answers 404 to a ``previous_response_id`` it does not hold.
Raw ASGI on purpose: the less it costs, the more of the measured time is the gateway's.

    python -m loadtests.fake_upstream --port 9100 --delay-ms 20 --chunks 8 --chunk-delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from starlette.types import Receive, Scope, Send

MODEL = "SmolLM2-135M-Instruct"
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class FakeUpstream:
    def __init__(self, *, delay_s: float, chunks: int, chunk_delay_s: float) -> None:
        self.delay_s = delay_s
        self.chunks = chunks
        self.chunk_delay_s = chunk_delay_s
        self.stored: OrderedDict[str, None] = OrderedDict()  # response ids, bounded
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if path in ("/health", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            await _respond(send, 200, b"ok", [(b"content-type", b"text/plain")])
        elif path == "/v1/models":
            models = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}
            await _respond(send, 200, json.dumps(models).encode(), _JSON)
        elif path in ("/v1/chat/completions", "/v1/completions"):
            await self._complete(json.loads(body or b"{}"), path, send)
        elif path == "/v1/responses":
            await self._respond_api(json.loads(body or b"{}"), send)
        else:
            await _respond(send, 404, b'{"error": {"message": "not found"}}', _JSON)

    async def _complete(self, request: dict[str, Any], path: str, send: Send) -> None:
        model = request.get("model", MODEL)
        chat = path.endswith("chat/completions")
        await asyncio.sleep(self.delay_s)
        if not request.get("stream"):
            message = {"role": "assistant", "content": "fake " * self.chunks}
            choice = {"index": 0, "finish_reason": "length",
                      **({"message": message} if chat else {"text": message["content"]})}
            answer = {
                "id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                "created": 0, "model": model, "choices": [choice],
                "usage": {"prompt_tokens": 8, "completion_tokens": self.chunks,
                          "total_tokens": 8 + self.chunks},
            }
            await _respond(send, 200, json.dumps(answer).encode(), _JSON)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for i in range(self.chunks):
            if i:
                await asyncio.sleep(self.chunk_delay_s)
            delta = {"delta": {"content": "fake "}} if chat else {"text": "fake "}
            event = {"id": "cmpl-fake", "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": [{"index": 0, **delta, "finish_reason": None}]}
            await send({"type": "http.response.body",
                        "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                    "more_body": False})


    async def _respond_api(self, request: dict[str, Any], send: Send) -> None:
        previous = request.get("previous_response_id")
        if previous is not None and previous not in self.stored:
            await _respond(send, 404, json.dumps(response_not_found(previous)).encode(), _JSON)
            return
        await asyncio.sleep(self.delay_s)
        response_id = f"resp_fake{next(self._ids):08x}"
        store = request.get("store", True) is not False
        if store:
            self.stored[response_id] = None
            while len(self.stored) > 4096:
                self.stored.popitem(last=False)
        words = ["fake "] * self.chunks
        if not request.get("stream"):
            answer = responses_answer(response_id, request, "".join(words))
            await _respond(send, 200, json.dumps(answer).encode(), _JSON)
            return
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for i, event in enumerate(responses_events(response_id, request, words)):
            if i > 4 and self.chunk_delay_s:  # between deltas only, like tokens
                await asyncio.sleep(self.chunk_delay_s)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def responses_answer(response_id: str, request: dict[str, Any], text: str, *,
                     store: bool | None = None, status: str = "completed") -> dict[str, Any]:
    """A Responses API answer shaped like vLLM 0.32's (the fields the SDK reads, and a few).
    vLLM's has no ``store`` field; ``store`` adds one, as OpenAI's answers have."""
    output = [] if status == "in_progress" else [{
        "id": f"msg_{response_id}", "type": "message", "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": None}],
    }]
    words = len(text.split())
    return {
        "id": response_id, "object": "response", "created_at": 0, "model": request.get("model"),
        "status": status, "output": output, "instructions": request.get("instructions"),
        "previous_response_id": request.get("previous_response_id"),
        "max_output_tokens": request.get("max_output_tokens"), "parallel_tool_calls": True,
        "temperature": request.get("temperature", 1.0), "top_p": 1.0, "tool_choice": "auto",
        "tools": [], "truncation": "disabled", "text": None, "metadata": None, "error": None,
        "incomplete_details": None, "background": False, "service_tier": "auto",
        "usage": None if status == "in_progress" else {
            "input_tokens": 8, "output_tokens": words, "total_tokens": 8 + words,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0}},
        **({} if store is None else {"store": store}),
    }


def responses_events(response_id: str, request: dict[str, Any], words: list[str], *,
                     store: bool | None = None) -> Iterator[bytes]:
    """vLLM's event sequence for a plain text answer: created, in_progress, item and part
    added, one output_text.delta per word, the matching done events, completed."""
    item_id = f"msg_{response_id}"
    text = "".join(words)
    start = responses_answer(response_id, request, "", store=store, status="in_progress")
    done = responses_answer(response_id, request, text, store=store)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": None}
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **at, "part": part},
        *({"type": "response.output_text.delta", **at, "delta": w, "logprobs": []}
          for w in words),
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0,
         "item": done["output"][0]},
        {"type": "response.completed", "response": done},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
        yield (f"event: {event['type']}\ndata: ".encode() + json.dumps(event).encode() + b"\n\n")


def response_not_found(response_id: str) -> dict[str, Any]:
    """vLLM's answer (HTTP 404) to a previous_response_id it does not hold."""
    return {"error": {"message": f"Response with id '{response_id}' not found.",
                      "type": "invalid_request_error", "param": "response_id", "code": 404}}


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
                   ) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=float(os.environ.get("FAKE_DELAY_MS", 0)))
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    app = FakeUpstream(delay_s=args.delay_ms / 1000, chunks=args.chunks,
                       chunk_delay_s=args.chunk_delay_ms / 1000)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
