"""Adapter loading: single-flight per (replica, adapter), idempotent, errors surfaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from adapters.lifecycle import AdapterLoader, AdapterLoadError
from adapters.registry import AdapterEntry


def entry(name: str = "law-v1") -> AdapterEntry:
    return AdapterEntry(name=name, domain="legal", path=Path("/adapters/law"))


async def test_concurrent_first_requests_load_the_adapter_once() -> None:
    calls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.host)
        await asyncio.sleep(0.05)
        return httpx.Response(200, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        loader = AdapterLoader(client)
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
        loader = AdapterLoader(client)
        await loader.ensure_loaded("http://r0", entry())
        assert loader.is_resident("http://r0", "law-v1")


async def test_failed_load_raises_and_is_retried_next_time() -> None:
    answers = [httpx.Response(404, json={"error": {"message": "No adapter found"}}),
               httpx.Response(200, text="ok")]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        loader = AdapterLoader(client)
        with pytest.raises(AdapterLoadError, match="No adapter found"):
            await loader.ensure_loaded("http://r0", entry())
        assert not loader.is_resident("http://r0", "law-v1")
        await loader.ensure_loaded("http://r0", entry())
        assert loader.is_resident("http://r0", "law-v1")


async def test_forgetting_a_replica_makes_its_adapters_cold() -> None:
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200))
    ) as client:
        loader = AdapterLoader(client)
        await loader.ensure_loaded("http://r0", entry())
        loader.forget_replica("http://r0")
        assert not loader.is_resident("http://r0", "law-v1")
