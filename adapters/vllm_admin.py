"""Client for vLLM's runtime LoRA API (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``).

Errors (one level, callers act on it the same way)::

    VllmAdminError      the replica refused or could not be reached
"""

from __future__ import annotations

import httpx


class VllmAdminError(RuntimeError):
    pass


_ALREADY_LOADED = "has already been loaded"


async def load_adapter(
    client: httpx.AsyncClient,
    base_url: str,
    name: str,
    path: str,
    *,
    inplace: bool = False,
    timeout_s: float = 30.0,
) -> bool:
    """Load ``name`` from ``path`` on one replica. Returns False when it was already loaded."""
    payload: dict[str, object] = {"lora_name": name, "lora_path": path}
    if inplace:
        payload["load_inplace"] = True
    try:
        response = await client.post(
            f"{base_url}/v1/load_lora_adapter", json=payload, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise VllmAdminError(f"loading {name!r} on {base_url}: {type(exc).__name__}") from exc
    if response.status_code == 200:
        return True
    if response.status_code == 400 and _ALREADY_LOADED in response.text:
        return False
    raise VllmAdminError(
        f"loading {name!r} on {base_url}: HTTP {response.status_code}: {response.text[:300]}"
    )


async def unload_adapter(
    client: httpx.AsyncClient, base_url: str, name: str, *, timeout_s: float = 30.0
) -> None:
    try:
        response = await client.post(
            f"{base_url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise VllmAdminError(f"unloading {name!r} on {base_url}: {type(exc).__name__}") from exc
    if response.status_code not in (200, 404):
        raise VllmAdminError(
            f"unloading {name!r} on {base_url}: HTTP {response.status_code}: {response.text[:300]}"
        )
