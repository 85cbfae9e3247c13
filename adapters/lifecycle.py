"""Ensure an adapter is resident on a replica before a request is sent there.

Loading is single-flight: one lock per (replica, adapter), so a burst of first requests for a
cold adapter makes one ``load_lora_adapter`` call and the rest wait for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import httpx

from adapters.registry import AdapterEntry
from adapters.vllm_admin import VllmAdminError, load_adapter


class AdapterLoadError(RuntimeError):
    pass


class AdapterLoader:
    def __init__(self, client: httpx.AsyncClient, *, timeout_s: float = 30.0) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._resident: defaultdict[str, set[str]] = defaultdict(set)
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    def is_resident(self, replica_url: str, name: str) -> bool:
        return name in self._resident[replica_url]

    def resident(self, replica_url: str) -> frozenset[str]:
        return frozenset(self._resident[replica_url])

    def forget_replica(self, replica_url: str) -> None:
        """A replica restarted: nothing we loaded there is resident any more."""
        self._resident.pop(replica_url, None)

    async def ensure_loaded(self, replica_url: str, entry: AdapterEntry) -> float | None:
        """Make ``entry`` resident; returns the seconds spent loading, None if it already was."""
        if entry.name in self._resident[replica_url]:
            return None
        async with self._locks[(replica_url, entry.name)]:
            if entry.name in self._resident[replica_url]:
                return None
            started = time.perf_counter()
            try:
                await load_adapter(
                    self._client,
                    replica_url,
                    entry.name,
                    str(entry.path.resolve()),
                    timeout_s=self._timeout_s,
                )
            except VllmAdminError as exc:
                raise AdapterLoadError(str(exc)) from exc
            self._resident[replica_url].add(entry.name)
            return time.perf_counter() - started
