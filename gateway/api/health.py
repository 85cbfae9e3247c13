"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.openai import GatewayDep
from gateway.errors import ERROR_RESPONSES

router = APIRouter(responses=ERROR_RESPONSES)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(gateway: GatewayDep) -> JSONResponse:
    replicas = {r.name: ("up" if r.healthy else "down") for r in gateway.pool.replicas}
    ready = gateway.pool.ready()
    body: dict[str, object] = {"status": "ready" if ready else "not_ready", "replicas": replicas}
    if gateway.engine is not None:
        body["engine"] = gateway.engine.info()
    # Shared state is detail, not readiness: an instance serves on its last known state while
    # Redis is down (admin changes are refused meanwhile).
    state: dict[str, object] = {"backend": gateway.state.kind,
                                "registry_version": gateway.fleet.version}
    if gateway.state.shared:
        state.update(gateway.state.health.describe())
        state["gate_version"] = gateway.gate.version
    if gateway.leadership is not None:
        state["instance"] = gateway.leadership.holder
        state["shadow_leader"] = gateway.leadership.leading
    body["state"] = state
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)  # Prometheus text, not an API
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
