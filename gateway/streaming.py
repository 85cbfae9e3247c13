"""SSE relay: upstream chunks go to the client as they arrive, never buffered.

The upstream response is closed deterministically when the client goes away (which makes vLLM
abort the generation) or the stream ends, and a failure after the 200 has been sent becomes an
SSE error frame, so the client sees a clean error instead of a hang or a truncated stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import UpstreamError, sse_error_frame

logger = logging.getLogger(__name__)


async def relay_sse(
    upstream: httpx.Response,
    *,
    on_first_chunk: Callable[[], None],
    on_stream_error: Callable[[str], None],
    on_close: Callable[[], None],
) -> AsyncIterator[bytes]:
    first = True
    try:
        try:
            async for chunk in upstream.aiter_raw():
                if first:
                    first = False
                    on_first_chunk()
                yield chunk
        except httpx.TimeoutException:
            on_stream_error("stream_timeout")
            yield sse_error_frame(UpstreamError("The upstream stopped sending for too long."))
        except httpx.HTTPError as exc:
            logger.warning("upstream stream interrupted: %s", type(exc).__name__)
            on_stream_error("stream")
            yield sse_error_frame(UpstreamError("The upstream stream was interrupted."))
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
        on_close()


class RelayResponse(StreamingResponse):
    """A StreamingResponse that always closes its generator, even when the client disconnects."""

    body_iterator: AsyncIterator[bytes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
