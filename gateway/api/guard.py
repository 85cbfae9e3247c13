"""The first thing every request meets: API key check and body size limit, before any body is
read or parsed (so a caller without a key learns nothing about validation, and a huge body is
refused at its Content-Length or as soon as it grows past the limit).

Sets ``request.state.key_id`` (see ``gateway.limits.KeyRing``) for the routes behind it.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import AuthenticationError, PayloadTooLargeError, error_response
from gateway.limits import KeyRing

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class Guard:
    def __init__(self, app: ASGIApp, *, keys: KeyRing, max_body_bytes: int,
                 protect_probes: bool, on_reject: Callable[[str], None] = lambda r: None) -> None:
        self.app = app
        self.on_reject = on_reject  # told "unauthorized" / "too_large" (metrics)
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.protect_probes = protect_probes

    def _needs_key(self, path: str) -> bool:
        return path.startswith("/v1/") or (self.protect_probes and path in PROBES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self._needs_key(scope["path"]):
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            key_id = self.keys.identify(authorization)
            if key_id is None:
                self.on_reject("unauthorized")
                error = AuthenticationError(
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                    headers={"www-authenticate": "Bearer"})
                await error_response(error)(scope, receive, send)
                return
            scope.setdefault("state", {})["key_id"] = key_id
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            self.on_reject("too_large")
            await error_response(self._too_large())(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than {self.max_body_bytes} bytes.")

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    self.on_reject("too_large")
                    # FastAPI lets HTTPException through its body parsing; the error handlers
                    # turn it into the OpenAI envelope (code request_too_large).
                    raise HTTPException(413, self._too_large().message)
            return message

        return wrapped
