"""SSE relay: upstream chunks go to the client as they arrive, never buffered.

The upstream response is closed deterministically when the client goes away (which makes vLLM
abort the generation) or the stream ends, and a failure after the 200 has been sent becomes an
SSE error frame, so the client sees a clean error instead of a hang or a truncated stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeoutError, sse_error_frame

logger = logging.getLogger(__name__)


class RelayResponse(StreamingResponse):
    """Relays an upstream SSE response; closes it exactly once, however the exchange ends.

    Closing happens in the generator's ``finally`` when it ran, and in ``__call__``'s ``finally``
    otherwise (a client that disconnects before the first chunk leaves the generator unstarted,
    and an unstarted generator's ``finally`` never runs).
    """

    body_iterator: AsyncIterator[bytes]

    def __init__(
        self,
        upstream: httpx.Response,
        *,
        headers: dict[str, str],
        on_first_chunk: Callable[[], None],
        on_stream_error: Callable[[str], None],
        on_close: Callable[[], None],
        first_chunk_deadline: float | None = None,
        deadline: float | None = None,
        error_frame: Callable[[GatewayError], bytes] = sse_error_frame,
        watch: Callable[[bytes], None] | None = None,
    ) -> None:
        """``error_frame`` writes the API's stream error (chat's ``data: {"error"}``, the
        Responses API's ``error`` event); ``watch`` sees every chunk as it is relayed."""
        # Event-loop times: the first chunk must arrive by the first, the last by the second.
        self._first_deadline = first_chunk_deadline
        self._deadline = deadline
        self._upstream = upstream
        self._on_close = on_close
        self._closed = False
        self._error_frame = error_frame
        self._watch = watch
        super().__init__(
            self._relay(on_first_chunk, on_stream_error),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _relay(
        self, on_first_chunk: Callable[[], None], on_stream_error: Callable[[str], None]
    ) -> AsyncIterator[bytes]:
        first = True
        chunks = self._upstream.aiter_raw()
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._first_deadline if first
                                                  else self._deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if first:
                    first = False
                    on_first_chunk()
                if self._watch is not None:
                    self._watch(chunk)
                yield chunk
        except TimeoutError:
            on_stream_error("deadline")
            what = "the first token" if first else "the whole answer"
            yield self._error_frame(
                UpstreamTimeoutError(f"The upstream model server did not send {what} in time.")
            )
        except httpx.TimeoutException:
            on_stream_error("stream_timeout")
            yield self._error_frame(UpstreamError("The upstream stopped sending for too long."))
        except httpx.HTTPError as exc:
            logger.warning("upstream stream interrupted: %s", type(exc).__name__)
            on_stream_error("stream")
            yield self._error_frame(UpstreamError("The upstream stream was interrupted."))
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            await self._close()

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            await self._upstream.aclose()
        self._on_close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._close()
