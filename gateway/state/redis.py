"""The Redis state backend: several gateway instances share one registry, gate and rate limits.

Keys (all under ``state.key_prefix``, so fleets can share one Redis):

* ``<doc>`` and ``<doc>:version`` for the documents ``registry`` and ``gate``: JSON and an integer.
  A write is one MULTI/EXEC under WATCH of the version (optimistic: a lost race is a
  :class:`StaleWrite`, never a lost update); readers poll the two versions with one MGET.
* ``blob:<name>``: the evaluator's evidence.
* ``lease:<role>``: the holder's id with a TTL (``SET NX PX``, renewed by the holder: redis-py's
  :class:`~redis.asyncio.lock.Lock`, whose renewal and release check the holder atomically).
* ``limits:...``: the rate-limit windows, kept by the ``limits`` library (sliding window counters).

Every call has a short socket timeout and no retries: a Redis that is down must cost a request
nothing but one refused connection, and the background loops are the retry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio.lock import Lock
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError, WatchError
from redis.retry import Retry

from gateway.metrics import Metrics
from gateway.settings import StateSettings
from gateway.state import Snapshot, StaleWrite, StateHealth, StateUnavailable
from gateway.state.memory import LocalLimiter

logger = logging.getLogger(__name__)

# What a Redis client raises when the server is down or slow (OSError: before redis-py wraps it).
_FAILURES = (RedisError, OSError, asyncio.TimeoutError)


class RedisState:
    kind = "redis"
    shared = True

    def __init__(self, settings: StateSettings, metrics: Metrics) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.health = StateHealth(metrics, self.kind)
        self.prefix = settings.key_prefix
        self.url = settings.redis_url.get_secret_value()
        self.client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=30,
        )
        self._locks: dict[tuple[str, str], Lock] = {}

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def start(self) -> None:
        try:
            await self.client.ping()
            self.health.ok()
        except _FAILURES as exc:  # serve anyway; the sync loop keeps trying
            self.health.failed("connect", exc)

    async def close(self) -> None:
        await self.client.aclose()

    async def _call(self, operation: str, work: Any) -> Any:
        try:
            result = await work
        except _FAILURES as exc:
            self.health.failed(operation, exc)
            raise StateUnavailable(f"{operation}: {exc}") from exc
        self.health.ok()
        return result

    async def versions(self) -> tuple[int, int]:
        raw = await self._call("read", self.client.mget(
            [self._key("registry:version"), self._key("gate:version")]))
        return int(raw[0] or 0), int(raw[1] or 0)

    async def read(self, document: str) -> Snapshot | None:
        raw = await self._call("read", self.client.get(self._key(document)))
        if raw is None:
            return None
        stored = json.loads(raw)
        return Snapshot(int(stored["version"]), stored["data"])

    async def write(self, document: str, data: dict[str, Any], *,
                    expect: int | None = None) -> int:
        version_key = self._key(f"{document}:version")

        async def transaction() -> int:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(version_key)
                current = int(await pipe.get(version_key) or 0)
                if expect is not None and current != expect:
                    raise StaleWrite(current)
                version = current + 1
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(self._key(document), json.dumps({"version": version, "data": data}))
                pipe.set(version_key, version)
                try:
                    await pipe.execute()
                except WatchError:  # another writer came between our read and our write
                    raise StaleWrite(current) from None
                return version

        written: int = await self._call("write", transaction())
        return written

    async def read_blob(self, name: str) -> bytes | None:
        raw: bytes | None = await self._call("read", self.client.get(self._key("blob", name)))
        return raw

    async def write_blob(self, name: str, blob: bytes) -> None:
        await self._call("write", self.client.set(self._key("blob", name), blob))

    def _lock(self, role: str, holder: str, ttl_s: float) -> Lock:
        lock = self._locks.get((role, holder))
        if lock is None or lock.timeout != ttl_s:
            lock = Lock(self.client, self._key("lease", role), timeout=ttl_s, blocking=False,
                        thread_local=False)
            self._locks[(role, holder)] = lock
        return lock

    async def hold_lease(self, role: str, holder: str, ttl_s: float) -> bool:
        lock = self._lock(role, holder, ttl_s)

        async def hold() -> bool:
            if lock.local.token is not None:
                try:
                    await lock.reacquire()  # renew: only if the stored holder is still us
                    return True
                except LockError:
                    lock.local.token = None  # lost it (expired, taken over)
            return bool(await lock.acquire(blocking=False, token=holder))

        held: bool = await self._call("lease", hold())
        return held

    async def release_lease(self, role: str, holder: str) -> None:
        lock = self._locks.get((role, holder))
        if lock is None or lock.local.token is None:
            return
        try:
            await lock.release()
        except (LockError, *_FAILURES):
            pass  # expired or unreachable: the TTL frees it

    async def lease_holder(self, role: str) -> str | None:
        raw = await self._call("read", self.client.get(self._key("lease", role)))
        return raw.decode() if raw is not None else None

    def limiter(self, requests_per_minute: int | None,
                tokens_per_minute: int | None) -> SharedLimiter:
        return SharedLimiter(self, requests_per_minute, tokens_per_minute)


class SharedLimiter:
    """Per-key budgets shared by every instance: the ``limits`` library's sliding window
    counters in Redis (two counters per key and limit: O(1) whatever the budget, unlike a moving
    window's log of every token). The in-process limiter's token buckets refill continuously;
    a sliding window counter weighs the previous minute's count by how much of it is still
    inside the last 60 s, so the two agree on the sustained rate and the minute-sized burst.

    While Redis is unreachable each instance enforces the budgets alone (its own token buckets),
    and does not try Redis per request until the state's health check sees it back.
    """

    def __init__(self, state: RedisState, requests_per_minute: int | None,
                 tokens_per_minute: int | None) -> None:
        self.state = state
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self.local = LocalLimiter(requests_per_minute, tokens_per_minute)
        storage = RedisStorage(
            "async+" + state.url, implementation="redispy",
            key_prefix=state.prefix + "limits",
            connection_pool=state.client.connection_pool,  # type: ignore[arg-type]
        )
        self._strategy = SlidingWindowCounterRateLimiter(storage)
        self._requests = (RateLimitItemPerMinute(requests_per_minute)
                          if requests_per_minute else None)
        self._tokens = RateLimitItemPerMinute(tokens_per_minute) if tokens_per_minute else None

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    async def check(self, key_id: str, tokens: int) -> tuple[float, str | None]:
        if self.tpm is not None and tokens > self.tpm:
            return math.inf, "tokens"
        if not self.state.health.up:
            return await self.local.check(key_id, tokens)
        try:
            return await self._check(key_id, tokens)
        except _FAILURES as exc:
            self.state.health.failed("rate_limit", exc)
            return await self.local.check(key_id, tokens)

    async def _check(self, key_id: str, tokens: int) -> tuple[float, str | None]:
        # One atomic check-and-charge per limit, requests first. Unlike the in-process buckets
        # (both checked, then both charged) a request refused for tokens has used one request
        # of the minute: testing both before charging would double the round trips (measured
        # in loadtests/bench_state.py), and a refused request is still a request.
        for item, cost, name in ((self._requests, 1, "requests"), (self._tokens, tokens, "tokens")):
            if item is not None and not await self._strategy.hit(item, key_id, cost=cost):
                return await self._wait(item, key_id), name
        return 0.0, None

    async def _wait(self, item: RateLimitItemPerMinute, key_id: str) -> float:
        stats = await self._strategy.get_window_stats(item, key_id)
        return max(1.0, stats.reset_time - time.time())
