"""Keep adapters loaded on the replicas: load on demand, evict, upgrade in place, resync.

The manager is the gateway's picture of what each vLLM replica has registered (by name and
version, in least-recently-used order). Rules:

* Loading is single-flight: one lock per (replica, adapter), so a burst of first requests for a
  cold adapter makes one ``load_lora_adapter`` call and the rest wait for it.
* At most ``capacity`` adapters stay registered per replica (set it to vLLM's
  ``--max-cpu-loras``): before loading one more, the least recently used adapter that no
  request is using on that replica is unloaded (:func:`choose_evictions`). vLLM itself keeps
  at most ``--max-loras`` in a running batch and swaps among the registered ones.
* A new version of a registered adapter is loaded with ``load_inplace`` under the same name, so
  requests in flight and new ones keep finding the name: nothing is dropped during a rollout.
* A replica that (re)starts has lost everything: its state is forgotten and the active adapters
  are loaded again (:meth:`AdapterManager.sync_replica`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Collection, Iterable, Mapping

import httpx

from adapters.registry import AdapterEntry
from adapters.vllm_admin import VllmAdminError, load_adapter, unload_adapter

logger = logging.getLogger(__name__)


class AdapterLoadError(RuntimeError):
    pass


def choose_evictions(
    lru_order: Iterable[str], in_use: Collection[str], capacity: int, incoming: int = 1
) -> list[str]:
    """Adapters to unload (oldest first) so ``incoming`` more fit in ``capacity``.

    Adapters serving a request are never chosen; if too few are idle the replica goes over
    capacity for a while rather than failing requests (vLLM's own LRU cache copes).
    """
    order = list(lru_order)
    excess = len(order) + incoming - capacity
    if excess <= 0:
        return []
    return [name for name in order if name not in in_use][:excess]


class AdapterManager:
    def __init__(
        self, client: httpx.AsyncClient, *, timeout_s: float = 30.0, capacity: int = 16
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self.capacity = capacity
        # replica url -> adapter name -> version, least recently used first
        self._resident: defaultdict[str, OrderedDict[str, int]] = defaultdict(OrderedDict)
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._in_use: defaultdict[tuple[str, str], int] = defaultdict(int)

    # ----------------------------------------------------------------- state
    def is_resident(self, replica_url: str, name: str) -> bool:
        return name in self._resident[replica_url]

    def resident(self, replica_url: str) -> dict[str, int]:
        """name -> version registered on the replica, least recently used first."""
        return dict(self._resident[replica_url])

    def forget_replica(self, replica_url: str) -> None:
        """A replica restarted: nothing we loaded there is resident any more."""
        self._resident.pop(replica_url, None)

    def forget(self, replica_url: str, name: str) -> None:
        """``name`` may be gone from the replica (someone else unloaded it): load it again on
        next use (in place, so a wrong guess costs one load, never an error)."""
        self._resident[replica_url].pop(name, None)

    def acquire(self, replica_url: str, name: str) -> None:
        """A request is about to use ``name`` on the replica: not evictable until released."""
        self._in_use[(replica_url, name)] += 1

    def release(self, replica_url: str, name: str) -> None:
        key = (replica_url, name)
        self._in_use[key] -= 1
        if self._in_use[key] <= 0:
            del self._in_use[key]

    def _busy(self, replica_url: str) -> set[str]:
        return {name for (url, name) in self._in_use if url == replica_url}

    # ----------------------------------------------------------------- actions
    async def ensure_loaded(self, replica_url: str, entry: AdapterEntry) -> float | None:
        """Make this version of ``entry`` resident; seconds spent loading, None if it was."""
        resident = self._resident[replica_url]
        if resident.get(entry.name) == entry.version:
            resident.move_to_end(entry.name)
            return None
        async with self._locks[(replica_url, entry.name)]:
            resident = self._resident[replica_url]
            if resident.get(entry.name) == entry.version:
                resident.move_to_end(entry.name)
                return None
            started = time.perf_counter()
            if entry.name not in resident:
                await self._make_room(replica_url)
            try:
                # In place also when we do not know the replica's state (e.g. after a gateway
                # restart the adapter may be registered with an older version).
                await load_adapter(
                    self._client,
                    replica_url,
                    entry.name,
                    str(entry.path.resolve()),
                    inplace=True,
                    timeout_s=self._timeout_s,
                )
            except VllmAdminError as exc:
                raise AdapterLoadError(str(exc)) from exc
            self._resident[replica_url][entry.name] = entry.version
            self._resident[replica_url].move_to_end(entry.name)
            return time.perf_counter() - started

    async def _make_room(self, replica_url: str) -> None:
        resident = self._resident[replica_url]
        for name in choose_evictions(resident, self._busy(replica_url), self.capacity):
            try:
                await unload_adapter(self._client, replica_url, name, timeout_s=self._timeout_s)
            except VllmAdminError as exc:
                logger.warning("could not evict %s from %s: %s", name, replica_url, exc)
                continue
            resident.pop(name, None)
            logger.info("evicted adapter %s from %s (least recently used)", name, replica_url)

    async def unload(self, replica_url: str, name: str) -> None:
        async with self._locks[(replica_url, name)]:
            await unload_adapter(self._client, replica_url, name, timeout_s=self._timeout_s)
            self._resident[replica_url].pop(name, None)

    async def upgrade(self, replica_urls: Iterable[str], entry: AdapterEntry) -> dict[str, str]:
        """Load the new version of ``entry`` in place wherever an older one is resident."""
        results: dict[str, str] = {}
        for url in replica_urls:
            if entry.name not in self._resident[url]:
                continue
            try:
                await self.ensure_loaded(url, entry)
                results[url] = "upgraded"
            except AdapterLoadError as exc:
                logger.warning("in-place upgrade of %s on %s failed: %s", entry.name, url, exc)
                results[url] = "failed"
        return results

    async def sync_replica(
        self, replica_url: str, entries: Iterable[AdapterEntry]
    ) -> Mapping[str, str]:
        """Load ``entries`` (up to capacity) on one replica; per adapter: loaded/resident/failed."""
        outcome: dict[str, str] = {}
        for entry in list(entries)[: self.capacity]:
            try:
                seconds = await self.ensure_loaded(replica_url, entry)
                outcome[entry.name] = "resident" if seconds is None else "loaded"
            except AdapterLoadError as exc:
                logger.warning("could not load %s on %s: %s", entry.name, replica_url, exc)
                outcome[entry.name] = "failed"
        return outcome
