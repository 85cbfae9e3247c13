"""Error mapping: every client-visible error is OpenAI's envelope with the right status."""

from __future__ import annotations

import json

import pytest

from gateway.errors import (
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
    sse_error_frame,
    upstream_error_from_response,
)


def vllm_error(message: str, code: int) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}}
    ).encode()


def test_upstream_400_is_the_clients_fault_and_keeps_vllms_message() -> None:
    error = upstream_error_from_response(400, vllm_error("max_tokens=5000 is too large", 400))
    assert isinstance(error, InvalidRequestError)
    assert error.status_code == 400
    assert error.body()["error"]["message"] == "max_tokens=5000 is too large"


@pytest.mark.parametrize(
    ("status", "expected", "http"),
    [
        (500, UpstreamError, 502),
        (404, UpstreamError, 502),
        (503, UpstreamUnavailableError, 503),
        (504, UpstreamTimeoutError, 504),
    ],
)
def test_upstream_failures_map_to_5xx(status: int, expected: type, http: int) -> None:
    error = upstream_error_from_response(status, vllm_error("boom", status))
    assert isinstance(error, expected)
    assert error.status_code == http


def test_older_vllm_error_shape_and_non_json_bodies_are_understood() -> None:
    old = upstream_error_from_response(400, b'{"object": "error", "message": "bad prompt"}')
    assert old.message == "bad prompt"
    html = upstream_error_from_response(502, b"<html>Bad Gateway</html>")
    assert "Bad Gateway" in html.message


def test_error_body_has_exactly_openais_fields() -> None:
    body = InvalidRequestError("nope", param="model", code="x").body()
    assert body == {"error": {"message": "nope", "type": "invalid_request_error",
                              "param": "model", "code": "x"}}


def test_sse_error_frame_is_an_error_event_then_done() -> None:
    frame = sse_error_frame(UpstreamError("cut"))
    events = [e for e in frame.decode().split("\n\n") if e]
    assert json.loads(events[0].removeprefix("data: "))["error"]["message"] == "cut"
    assert events[1] == "data: [DONE]"
