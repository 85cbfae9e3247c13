"""The operator console: a read-only page at ``/ui/`` and the JSON it polls, ``/ui/api/state``.

The page (``gateway/static/console/``) is static and holds no data, so it is served to anyone;
the data endpoint is guarded:

- an admin token is configured: the same token as ``/admin/`` (the page asks for it, keeps it in
  the tab's sessionStorage and sends it as ``Authorization: Bearer``; never in a URL);
- no admin token and no API keys (local development, where ``/v1/`` is open too): open, like
  the rest of the gateway then;
- no admin token but API keys configured: off (403), like ``/admin/`` -- the gateway is then
  exposed to clients, and evidence, versions and replica addresses are for operators only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from gateway.api.admin import check_admin_token
from gateway.api.openai import GatewayDep
from gateway.console import TrafficWindow, console_state
from gateway.errors import ERROR_RESPONSES, PermissionDeniedError
from gateway.proxy import Gateway

STATIC_DIR = Path(str(files("gateway") / "static" / "console"))

# The page loads only its own files: a script injected through some future bug could neither
# load code from elsewhere nor send the token anywhere but this gateway.
PAGE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidate: an upgraded gateway serves its new page
}


async def require_console(request: Request) -> None:
    gateway: Gateway = request.app.state.gateway
    if gateway.settings.admin_token is None and gateway.keys.open:
        return  # local development: nothing is protected
    if gateway.settings.admin_token is None:
        raise PermissionDeniedError(
            "The console is disabled: API keys are configured but no admin token. Set "
            "SLM_GATEWAY_ADMIN_TOKEN to enable it.", code="admin_token_required")
    check_admin_token(gateway, request.headers.get("authorization", ""), "the console")


async def get_window(request: Request) -> TrafficWindow:
    window: TrafficWindow = request.app.state.console_window
    return window


WindowDep = Annotated[TrafficWindow, Depends(get_window)]

router = APIRouter(prefix="/ui/api", dependencies=[Depends(require_console)],
                   responses=ERROR_RESPONSES)


@router.get("/state")
async def state(gateway: GatewayDep, window: WindowDep) -> JSONResponse:
    """Everything the console shows: per-domain evidence, gate and versions, traffic and latency
    over the recent window, fallbacks, replicas and the engine configuration."""
    data: dict[str, Any] = await console_state(gateway, window)
    return JSONResponse(data, headers={"cache-control": "no-store"})


class ConsolePage(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def install(app: FastAPI) -> None:
    """The data route, then the page (after it: the page's mount would answer /ui/api too)."""
    app.include_router(router)
    app.mount("/ui", ConsolePage(directory=STATIC_DIR, html=True), name="console")
