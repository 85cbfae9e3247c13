"""The admin API: list, register, unload, promote and retire adapters at runtime.

Guarded by its own bearer token (``admin_token``, env ``SLM_GATEWAY_ADMIN_TOKEN``); with no
token configured the admin API is off (403), never open. Changes are desired state
(:mod:`gateway.fleet`): with ``state.redis_url`` they are stored in Redis, reach every instance
within seconds and survive restarts; while Redis is unreachable they are refused (503) and
serving goes on unchanged. Without it they live in the running gateway only: to keep them
across restarts, put them in the manifest (``slm-gateway adapters train`` writes it) or the
config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters.registry import (
    ADAPTER_NAME_PATTERN,
    PUBLISHED_DIR,
    AdapterEntry,
    AdapterStatus,
    PathNotAllowedError,
    RegistryError,
)
from gateway.api.openai import GatewayDep
from gateway.errors import (
    ERROR_RESPONSES,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    StateUnavailableError,
    retry_after,
)
from gateway.limits import token_matches
from gateway.proxy import Gateway
from gateway.state import StateUnavailable


def check_admin_token(gateway: Gateway, authorization: str, what: str = "the admin API"
                      ) -> None:
    """Raises unless ``authorization`` is ``Bearer <the configured admin token>``."""
    token = gateway.settings.admin_token
    if token is None:
        raise PermissionDeniedError(
            f"{what[0].upper()}{what[1:]} is disabled: set SLM_GATEWAY_ADMIN_TOKEN to enable it."
        )
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() == "bearer" and token_matches(given, token.get_secret_value()):
        return
    if not gateway.keys.open and gateway.keys.identify(authorization) is not None:
        raise PermissionDeniedError(f"This API key may not use {what}; use the admin token.",
                                    code="admin_token_required")
    raise AuthenticationError("A valid admin token is required (Authorization: Bearer ...).")


async def require_admin(request: Request) -> None:
    gateway: Gateway = request.app.state.gateway
    check_admin_token(gateway, request.headers.get("authorization", ""))

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)],
                   responses=ERROR_RESPONSES)

class RegisterAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    domain: str
    path: Path
    version: int | None = Field(default=None, ge=1)  # default: current version + 1, or 1
    status: AdapterStatus = AdapterStatus.SHADOW

def allowed_dirs_as_configured(dirs: list[Path]) -> str:
    """The directories as an operator wrote them (the packaged one by its repository path),
    never resolved: a client learns nothing of the server's file system from an error."""
    shown = ["adapters/published (packaged)" if Path(d) == PUBLISHED_DIR else str(d)
             for d in dirs]
    return ", ".join(shown) or "none configured"


def refused(gateway: Gateway, exc: Exception, given: Path | None = None) -> Exception:
    """The client error for a failed registry change."""
    if isinstance(exc, PathNotAllowedError):
        return PermissionDeniedError(
            f"Adapter path '{given if given is not None else exc.path}' is outside the allowed "
            "adapter directories ("
            f"{allowed_dirs_as_configured(gateway.settings.adapters.allowed_dirs)}); an "
            "operator can add one to adapters.allowed_dirs.",
            param="path", code="path_not_allowed")
    if isinstance(exc, StateUnavailable):
        return StateUnavailableError(
            "The shared state (Redis) is unreachable, so adapter changes cannot be stored; "
            "serving goes on unchanged. Retry once it is back.",
            headers=retry_after(gateway.settings.state.poll_interval_s * 5))
    message = str(exc)
    return ConflictError(message, param="path" if "path" in message else None)


def describe(gateway: Gateway, entry: AdapterEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "domain": entry.domain,
        "version": entry.version,
        "status": entry.status.value,
        "path": str(entry.path),
        "base": entry.base,
        "loaded_on": gateway.fleet.where_loaded(entry.name),
        "training": entry.training,
    }

def _entry(gateway: Gateway, name: str) -> AdapterEntry:
    entry = gateway.fleet.registry.get(name)
    if entry is None:
        raise NotFoundError(f"No adapter named '{name}' is registered.", param="name")
    return entry

@router.get("/adapters")
async def list_adapters(gateway: GatewayDep) -> dict[str, Any]:
    return {
        "adapters": [describe(gateway, e) for e in gateway.fleet.registry],
        "replicas": {
            r.name: {"url": r.url, "healthy": r.healthy,
                     "resident": gateway.fleet.loader.resident(r.url)}
            for r in gateway.pool.replicas
        },
        "registry_version": gateway.fleet.version,
    }

@router.post("/adapters")
async def register_adapter(body: RegisterAdapter, gateway: GatewayDep) -> dict[str, Any]:
    """Register a new adapter, or a new version of one (loaded in place where resident)."""

    def make(current: AdapterEntry | None) -> AdapterEntry:
        version = body.version or (current.version + 1 if current is not None else 1)
        return AdapterEntry(name=body.name, domain=body.domain, path=body.path.absolute(),
                            version=version, status=body.status)

    try:
        entry, replicas = await gateway.fleet.register(body.name, make)
    except (RegistryError, StateUnavailable) as exc:
        raise refused(gateway, exc, body.path) from None
    return {"adapter": describe(gateway, entry), "replicas": replicas}

def _check_replica(gateway: Gateway, replica: str | None) -> None:
    names = {r.name for r in gateway.pool.replicas}
    if replica is not None and replica not in names:
        raise NotFoundError(f"No replica named '{replica}' ({', '.join(sorted(names))}).",
                            param="replica")


@router.post("/adapters/{name}/load")
async def load_adapter(
    name: str, gateway: GatewayDep, replica: str | None = None
) -> dict[str, Any]:
    """Load on every healthy replica (or one: ``?replica=r1``), e.g. to warm a replica before
    traffic arrives; the least recently used adapter there makes room if needed."""
    entry = _entry(gateway, name)
    _check_replica(gateway, replica)
    if entry.status is AdapterStatus.RETIRED:
        raise ConflictError(f"Adapter '{name}' is retired: promote it before loading it.")
    return {"name": name, "replicas": await gateway.fleet.load_everywhere(entry, only=replica)}


@router.post("/adapters/{name}/unload")
async def unload_adapter(
    name: str, gateway: GatewayDep, replica: str | None = None
) -> dict[str, Any]:
    """Unload from every replica (or one: ``?replica=r1``), on every instance; it stays
    registered and loads again on the next request that needs it."""
    _entry(gateway, name)
    _check_replica(gateway, replica)
    try:
        replicas = await gateway.fleet.unload(name, only=replica)
    except StateUnavailable as exc:
        raise refused(gateway, exc) from None
    return {"name": name, "replicas": replicas}

async def _set_status(gateway: Gateway, name: str, status: AdapterStatus) -> dict[str, Any]:
    _entry(gateway, name)
    try:
        retired, replicas = await gateway.fleet.set_status(name, status)
    except (RegistryError, StateUnavailable) as exc:
        raise refused(gateway, exc) from None
    return {
        "adapter": describe(gateway, _entry(gateway, name)),
        "retired": retired,
        "replicas": replicas,
    }

@router.post("/adapters/{name}/promote")
async def promote_adapter(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Make ``name`` its domain's active adapter; the previous active one is retired."""
    return await _set_status(gateway, name, AdapterStatus.ACTIVE)

@router.post("/adapters/{name}/canary")
async def canary_adapter(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Start a canary rollout of ``name`` (usually a shadow version): it gets
    ``canary.initial_share`` of its domain's traffic, growing on its evidence, and is promoted or
    rolled back (to shadow) by the shadow evaluator. One canary per domain (409 otherwise)."""
    entry = _entry(gateway, name)
    if entry.status is AdapterStatus.ACTIVE:
        raise ConflictError(
            f"Adapter '{name}' is its domain's active adapter; register a new version as the "
            "canary instead.", param="name")
    return await _set_status(gateway, name, AdapterStatus.CANARY)


@router.post("/adapters/{name}/retire")
async def retire_adapter(name: str, gateway: GatewayDep) -> dict[str, Any]:
    """Stop serving ``name`` (kept in the list for the record) and unload it everywhere."""
    return await _set_status(gateway, name, AdapterStatus.RETIRED)

AdminDep = Annotated[None, Depends(require_admin)]


@router.get("/quality")
async def quality(gateway: GatewayDep) -> dict[str, Any]:
    """The shadow evaluator's evidence per domain, the quality gate's state and the canary
    rollouts (``canaries``: per domain its canary's share, state and evidence, or the last one
    decided there)."""
    gated = sorted(gateway.gate.gated)
    if gateway.shadow is None:
        return {"shadow": False, "gated": gated, "domains": {}}
    return {"shadow": True, "gated": gated, **gateway.shadow.report()}
