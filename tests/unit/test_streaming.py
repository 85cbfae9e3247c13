"""The SSE relay closes the upstream response exactly once, however the client goes away."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import ClientDisconnect

from gateway.streaming import RelayResponse
from tests.unit.fakes import sse


class Closed:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


async def test_client_gone_before_the_first_chunk_still_closes_the_upstream() -> None:
    upstream = httpx.Response(200, content=sse("m"))
    closed = Closed()
    response = RelayResponse(upstream, headers={}, on_first_chunk=lambda: None,
                             on_stream_error=lambda kind: None, on_close=closed)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        raise OSError("client went away")  # fails on the very first send (headers)

    with pytest.raises(ClientDisconnect):
        await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert upstream.is_closed
    assert closed.count == 1


async def test_a_complete_stream_closes_once() -> None:
    upstream = httpx.Response(200, content=sse("m"))
    closed = Closed()
    sent: list[bytes] = []
    response = RelayResponse(upstream, headers={}, on_first_chunk=lambda: None,
                             on_stream_error=lambda kind: None, on_close=closed)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message.get("body", b""))  # type: ignore[arg-type]

    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert b"".join(sent).endswith(b"data: [DONE]\n\n")
    assert closed.count == 1
