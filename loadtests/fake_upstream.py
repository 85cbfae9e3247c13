"""A small, fast fake OpenAI/vLLM upstream, for measuring gateway overhead only.

It answers chat and text completions (streamed or not) after a fixed delay, accepts vLLM's
runtime LoRA calls, and does nothing a model does: never use it to claim anything about quality.
Raw ASGI on purpose: the less it costs, the more of the measured time is the gateway's.

    python -m loadtests.fake_upstream --port 9100 --delay-ms 20 --chunks 8 --chunk-delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
