"""Adapter residency: single-flight loads, LRU eviction within capacity, in-place upgrades."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from adapters.lifecycle import AdapterLoadError, AdapterManager, choose_evictions
from adapters.registry import AdapterEntry


def entry(name: str = "law-v1", version: int = 1) -> AdapterEntry:
    return AdapterEntry(
        name=name, domain="legal", path=Path(f"/adapters/{name}/v{version}"), version=version
    )


class RecordingVllm:
    """Answers vLLM's LoRA admin calls and records them as (path, lora_name, inplace)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.calls.append((request.url.path, body["lora_name"], bool(body.get("load_inplace"))))
        return httpx.Response(200, text="ok")


async def test_concurrent_first_requests_load_the_adapter_once() -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        await asyncio.sleep(0.05)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        loader = AdapterManager(client)
        results = await asyncio.gather(
            *(loader.ensure_loaded("http://r0", entry()) for _ in range(20))
        )
        assert calls == ["r0"]
        assert sum(r is not None for r in results) == 1
        assert loader.is_resident("http://r0", "law-v1")
        # Another replica is a separate load.
        await loader.ensure_loaded("http://r1", entry())
        assert calls == ["r0", "r1"]


async def test_already_loaded_answer_counts_as_resident() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "has already been loaded"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        loader = AdapterManager(client)
        await loader.ensure_loaded("http://r0", entry())
        assert loader.is_resident("http://r0", "law-v1")


async def test_failed_load_raises_and_is_retried_next_time() -> None:
    answers = [httpx.Response(404, json={"error": {"message": "No adapter found"}}),
               httpx.Response(200, text="ok")]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        loader = AdapterManager(client)
        with pytest.raises(AdapterLoadError, match="No adapter found"):
            await loader.ensure_loaded("http://r0", entry())
        assert not loader.is_resident("http://r0", "law-v1")
        await loader.ensure_loaded("http://r0", entry())
        assert loader.is_resident("http://r0", "law-v1")


async def test_forgetting_a_replica_makes_its_adapters_cold() -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200))
    ) as client:
        loader = AdapterManager(client)
        await loader.ensure_loaded("http://r0", entry())
        loader.forget_replica("http://r0")
        assert not loader.is_resident("http://r0", "law-v1")


def test_eviction_picks_the_least_recently_used_idle_adapters() -> None:
    order = ["a", "b", "c", "d"]  # least recently used first
    assert choose_evictions(order, in_use=set(), capacity=5) == []
    assert choose_evictions(order, in_use=set(), capacity=4) == ["a"]
    assert choose_evictions(order, in_use={"a"}, capacity=4) == ["b"]
    assert choose_evictions(order, in_use=set(), capacity=2) == ["a", "b", "c"]
    # Everything busy: nothing is evicted (over capacity for a while, no failed request).
    assert choose_evictions(order, in_use=set(order), capacity=4) == []


async def test_loading_beyond_capacity_unloads_the_least_recently_used_adapter() -> None:
    vllm = RecordingVllm()
    async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as client:
        manager = AdapterManager(client, capacity=2)
        await manager.ensure_loaded("http://r0", entry("a"))
        await manager.ensure_loaded("http://r0", entry("b"))
        await manager.ensure_loaded("http://r0", entry("a"))  # a is now the most recent
        await manager.ensure_loaded("http://r0", entry("c"))
        assert list(manager.resident("http://r0")) == ["a", "c"]  # b was least recently used
        manager.acquire("http://r0", "a")
        manager.acquire("http://r0", "c")  # both serving requests: nothing can go
        await manager.ensure_loaded("http://r0", entry("d"))
        assert list(manager.resident("http://r0")) == ["a", "c", "d"]
        manager.release("http://r0", "a")
        await manager.ensure_loaded("http://r0", entry("e"))
        # Back within capacity: the idle ones go, least recently used first; busy c stays.
        assert list(manager.resident("http://r0")) == ["c", "e"]
        unloads = [name for path, name, _ in vllm.calls if path == "/v1/unload_lora_adapter"]
        assert unloads == ["b", "a", "d"]


async def test_a_new_version_is_loaded_in_place_under_the_same_name() -> None:
    vllm = RecordingVllm()
    async with httpx.AsyncClient(transport=httpx.MockTransport(vllm)) as client:
        manager = AdapterManager(client)
        await manager.ensure_loaded("http://r0", entry("a", version=1))
        results = await manager.upgrade(["http://r0", "http://r1"], entry("a", version=2))
        assert results == {"http://r0": "upgraded"}  # r1 never had it: loads on first use
        assert manager.resident("http://r0") == {"a": 2}
        assert vllm.calls[-1] == ("/v1/load_lora_adapter", "a", True)
        assert not any(path == "/v1/unload_lora_adapter" for path, _, _ in vllm.calls)
        # The same version again is a no-op.
        assert await manager.ensure_loaded("http://r0", entry("a", version=2)) is None
