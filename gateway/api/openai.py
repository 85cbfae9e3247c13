"""Thin OpenAI-compatible routes: validate the body, hand it to the Gateway."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.errors import ERROR_RESPONSES
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.proxy import Gateway
from router.policy import AUTO_MODEL, BASE_MODEL


async def get_gateway(request: Request) -> Gateway:
    # async on purpose: FastAPI runs a sync dependency in a worker thread, per request.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

router = APIRouter(responses=ERROR_RESPONSES)

# Answers are relayed from vLLM as they are: JSON, or an SSE stream when `stream` is true.
COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The completion (JSON) or its stream (server-sent events).",
          "content": {"application/json": {}, "text/event-stream": {}}}
}


@router.post("/v1/chat/completions", responses=COMPLETION_RESPONSES)
async def chat_completions(
    request: Request, body: ChatCompletionRequest, gateway: GatewayDep
) -> Response:
    return await gateway.serve(request, body, path="/v1/chat/completions")


@router.post("/v1/completions", responses=COMPLETION_RESPONSES)
async def completions(request: Request, body: CompletionRequest, gateway: GatewayDep) -> Response:
    return await gateway.serve(request, body, path="/v1/completions")


@router.get("/v1/models")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    created = int(time.time())

    def card(model_id: str, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "slm-gateway",
            "slm": {"kind": kind, **extra},
        }

    data = [
        card(AUTO_MODEL, "router"),
        card(BASE_MODEL, "base", upstream_model=gateway.settings.upstream.served_model_name),
    ]
    data += [
        card(domain, "domain", adapter=gateway.fleet.table.active.get(domain))
        for domain in sorted(gateway.fleet.table.domains)
    ]
    data += [
        card(e.name, "adapter", domain=e.domain, version=e.version, status=e.status.value)
        for e in gateway.fleet.registry
        if e.name in gateway.fleet.table.adapters
    ]
    return {"object": "list", "data": data}
