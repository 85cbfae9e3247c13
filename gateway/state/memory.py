"""The in-process state backend: the default, for one gateway instance.

Nothing is shared and nothing survives a restart: the registry comes from the manifest and the
config each time, as before shared state existed. Several gateways built on one
:class:`MemoryState` (tests) do share it, leases included, with the clock passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.limits import RateLimiter
from gateway.metrics import Metrics
from gateway.state import Snapshot, StaleWrite, StateHealth


class LocalLimiter:
    """:class:`gateway.limits.RateLimiter` (token buckets in this process) as a :class:`Limiter`."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = RateLimiter(requests_per_minute, tokens_per_minute)
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self.buckets.enabled

    async def check(self, key_id: str, tokens: int) -> tuple[float, str | None]:
        return self.buckets.check(key_id, tokens, self._clock())


class MemoryState:
    kind = "memory"
    shared = False

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic, *,
                 shared: bool = False) -> None:
        # shared=True: several apps in one process use this object as their common store
        # (tests); they then poll it like instances poll Redis.
        self.shared = shared
        self.health = StateHealth(metrics, self.kind)
        self._clock = clock
        self._documents: dict[str, Snapshot] = {}
        self._blobs: dict[str, bytes] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def versions(self) -> tuple[int, int]:
        return tuple(  # type: ignore[return-value]
            s.version if (s := self._documents.get(d)) else 0 for d in ("registry", "gate"))

    async def read(self, document: str) -> Snapshot | None:
        return self._documents.get(document)

    async def write(self, document: str, data: dict[str, Any], *,
                    expect: int | None = None) -> int:
        current = self._documents.get(document)
        version = current.version if current else 0
        if expect is not None and expect != version:
            raise StaleWrite(version)
        self._documents[document] = Snapshot(version + 1, data)
        return version + 1

    async def read_blob(self, name: str) -> bytes | None:
        return self._blobs.get(name)

    async def write_blob(self, name: str, blob: bytes) -> None:
        self._blobs[name] = blob

    async def hold_lease(self, role: str, holder: str, ttl_s: float) -> bool:
        now = self._clock()
        current = self._leases.get(role)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[role] = (holder, now + ttl_s)
        return True

    async def release_lease(self, role: str, holder: str) -> None:
        if self._leases.get(role, ("", 0.0))[0] == holder:
            del self._leases[role]

    async def lease_holder(self, role: str) -> str | None:
        current = self._leases.get(role)
        return current[0] if current is not None and current[1] > self._clock() else None

    def limiter(self, requests_per_minute: int | None,
                tokens_per_minute: int | None) -> LocalLimiter:
        return LocalLimiter(requests_per_minute, tokens_per_minute)
