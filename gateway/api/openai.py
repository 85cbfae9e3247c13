"""Thin OpenAI-compatible routes: validate the body, hand it to the Gateway."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gateway.errors import ERROR_RESPONSES, ModelNotFoundError
from gateway.protocol import ChatCompletionRequest, CompletionRequest, ResponsesRequest
from gateway.proxy import Gateway
from router.policy import AUTO_MODEL, BASE_MODEL, decide


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


@router.post("/v1/responses", responses=COMPLETION_RESPONSES)
async def responses(request: Request, body: ResponsesRequest, gateway: GatewayDep) -> Response:
    """OpenAI's Responses API, routed like chat; a stream is vLLM's typed events, relayed."""
    return await gateway.serve(request, body, path="/v1/responses")


@router.get("/v1/models")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": model_cards(gateway)}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, gateway: GatewayDep) -> dict[str, Any]:
    """One of the models ``GET /v1/models`` lists, or the base model's served name (which
    requests may name too); anything else is a 404 model_not_found."""
    cards = model_cards(gateway)
    if model in gateway.fleet.table.base_aliases and model != BASE_MODEL:
        cards = [{**cards[1], "id": model}]
    card = next((c for c in cards if c["id"] == model), None)
    if card is None:
        raise ModelNotFoundError(f"The model '{model}' does not exist.", param="model")
    return card


def model_cards(gateway: Gateway) -> list[dict[str, Any]]:
    """OpenAI model objects (id, object, created, owned_by) with an ``slm`` extension: what
    kind of model it is and ``route``, where a request naming it goes right now (domain,
    adapter, reason: the quality gate included); ``route`` is null for ``auto`` (decided per
    request)."""
    created = int(time.time())

    def card(model_id: str, kind: str, **extra: Any) -> dict[str, Any]:
        route = None
        if model_id != AUTO_MODEL:
            decision = decide(model_id, None, gateway.fleet.table, gated=gateway.gate.gated)
            route = {"domain": decision.domain, "adapter": decision.adapter,
                     "reason": decision.reason.value}
        return {
            "id": model_id,
            "object": "model",
            "created": created,
            "owned_by": "slm-gateway",
            "slm": {"kind": kind, **extra, "route": route},
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
    return data
