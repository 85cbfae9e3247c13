"""Every error a client can see, built in one place, in OpenAI's envelope.

    GatewayError                    {"error": {"message", "type", "param", "code"}}
    ├── InvalidRequestError         400  bad input (validation, malformed JSON, upstream 400)
    ├── ModelNotFoundError          404  `model` is not auto, base, a domain or an adapter
    ├── AuthenticationError         401  no or wrong API key / admin token
    ├── PermissionDeniedError       403  a user key on the admin API; admin API disabled
    ├── PayloadTooLargeError        413  body over limits.max_body_bytes
    ├── RateLimitError              429  the key's request or token budget is spent (Retry-After)
    ├── OverloadedError             503  too many requests in flight and queued (Retry-After)
    ├── StateUnavailableError       503  an admin change while the shared state (Redis) is down
    ├── UpstreamError               502  the upstream answered with an error or garbage
    ├── UpstreamUnavailableError    503  no upstream ready / connection refused
    └── UpstreamTimeoutError        504  the upstream did not answer in time

Once a stream has answered 200, a later error is sent as an SSE ``data: {"error": ...}`` frame
followed by ``data: [DONE]``; the openai SDK raises it as ``APIError``. A Responses API stream
gets the Responses API's ``error`` event instead (see :func:`responses_sse_error_frame`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    status_code = 500
    type = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None, retryable: bool = False):
        super().__init__(message)
        # Failed before the first byte reached the client in a way another upstream replica
        # may not share: the gateway may send the request there instead.
        self.retryable = retryable
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)


class InvalidRequestError(GatewayError):
    status_code = 400
    type = "invalid_request_error"


class ModelNotFoundError(GatewayError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class AuthenticationError(GatewayError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    type = "permission_error"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class OverloadedError(GatewayError):
    """The gateway itself is at capacity (not an upstream fault): try again shortly."""

    status_code = 503
    type = "service_unavailable"
    code = "overloaded"


class StateUnavailableError(GatewayError):
    """An admin change cannot be stored: the shared state is unreachable (serving goes on)."""

    status_code = 503
    type = "service_unavailable"
    code = "state_unavailable"


def retry_after(seconds: float) -> dict[str, str]:
    """A Retry-After header: whole seconds, at least 1 (HTTP has no fractions)."""
    return {"retry-after": str(max(1, math.ceil(seconds)))}


class NotFoundError(GatewayError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ConflictError(GatewayError):
    """The request is well formed but contradicts the current state (e.g. registry rules)."""

    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class UpstreamError(GatewayError):
    status_code = 502
    type = "upstream_error"


class UpstreamUnavailableError(GatewayError):
    status_code = 503
    type = "service_unavailable"


class UpstreamTimeoutError(GatewayError):
    status_code = 504
    type = "timeout"


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorBody(BaseModel):
    """For the OpenAPI schema: every error the gateway sends has this shape."""

    error: ErrorDetail


# Every route's documented error answer (any status: 400, 401, 403, 404, 413, 429, 5xx).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {"model": ErrorBody, "description": "An error, in OpenAI's format."}
}


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code,
                        headers={**(headers or {}), **exc.headers})


def sse_error_frame(exc: GatewayError) -> bytes:
    return b"data: " + json.dumps(exc.body()).encode() + b"\n\ndata: [DONE]\n\n"


def responses_sse_error_frame(exc: GatewayError, sequence_number: int) -> bytes:
    """The Responses API's stream error: ``event: error`` whose data has that event's fields
    (type, code, message, param, sequence_number) and also the usual envelope under ``error``,
    which the openai SDK raises as ``APIError`` (as for chat). No ``[DONE]``: Responses
    streams have none."""
    envelope = exc.body()
    detail = envelope["error"]
    event = {
        "type": "error",
        "code": detail["code"] or detail["type"],
        "message": detail["message"],
        "param": detail["param"],
        "sequence_number": sequence_number,
        **envelope,
    }
    return b"event: error\ndata: " + json.dumps(event).encode() + b"\n\n"


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """Turn FastAPI's validation error list into one readable OpenAI-style message."""
    errors = exc.errors()
    if not errors:
        return InvalidRequestError("Invalid request body.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return InvalidRequestError(
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}.",
            code="invalid_json",
        )
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid value"))
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return InvalidRequestError(message, param=param, code="invalid_value")


def upstream_error_from_response(status_code: int, content: bytes) -> GatewayError:
    """Map an upstream (vLLM) error answer to ours.

    A 400/422 from vLLM is about the request (too many tokens, bad parameter): the client gets a
    400 with vLLM's message. Anything else is our or the upstream's fault and becomes a 5xx.
    """
    message = _upstream_message(content)
    if status_code in (400, 413, 422):
        return InvalidRequestError(message, code="upstream_rejected")
    if status_code == 503:
        return UpstreamUnavailableError(f"upstream unavailable: {message}")
    if status_code == 504:
        return UpstreamTimeoutError(f"upstream timed out: {message}")
    return UpstreamError(f"upstream error (HTTP {status_code}): {message}")


def _upstream_message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except ValueError:
        return content[:200].decode("utf-8", "replace") or "no message"
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(data.get("message"), str):  # older vLLM: {"object": "error", ...}
            return str(data["message"])
    return "no message"


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(
    app: FastAPI, *, on_invalid: Callable[[str], None] = lambda path: None
) -> None:
    """``on_invalid(path)`` is told of every request body refused by validation (for metrics)."""

    async def on_gateway_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, GatewayError)
        return error_response(exc)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        on_invalid(request.url.path)
        return error_response(validation_error(exc))

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        type_ = "invalid_request_error" if exc.status_code < 500 else "internal_error"
        code = PayloadTooLargeError.code if exc.status_code == 413 else None
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path served by two routes
            # (GET and POST /admin/adapters) must list both.
            headers["allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse(
            error_body(str(exc.detail), type_, code=code),
            status_code=exc.status_code,
            headers=headers,
        )

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Our bug: log the traceback for us, never send it to the client.
        logger.exception("unhandled error")
        return JSONResponse(
            error_body("The gateway had an internal error.", "internal_error"), status_code=500
        )

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
