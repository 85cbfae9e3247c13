"""Who may call, how much, and how many at once: API keys, per-key rate limits, admission.

The decisions are plain objects with the clock passed in (``now``), tested without HTTP; the
routes and ``Gateway.serve`` apply them.

These buckets are the in-process rate limits (:mod:`gateway.state.memory`). With
``state.redis_url`` the instances share per-key limits in Redis instead
(:class:`gateway.state.redis.SharedLimiter`), and fall back to these while Redis is away.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

ANONYMOUS = "anonymous"  # the caller when no keys are configured


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """API keys, kept only as SHA-256 digests. A caller is known by ``key_id``: the first 8 hex
    digits of its digest, safe to log and use as a metric label."""

    def __init__(self, keys: Iterable[str] = (), hashes: Iterable[str] = ()) -> None:
        self._digests = frozenset([*(hash_key(k) for k in keys), *hashes])

    @property
    def open(self) -> bool:
        return not self._digests

    def identify(self, authorization: str | None) -> str | None:
        """The caller's key id for an ``Authorization: Bearer <key>`` header, else None.
        With no keys configured everyone is ``anonymous``."""
        if self.open:
            return ANONYMOUS
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            return None
        digest = hash_key(key.strip())
        # Set membership compares digests of the key, not the key: timing tells nothing useful.
        return digest[:8] if digest in self._digests else None


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class TokenBucket:
    """``capacity`` units, refilled at ``rate`` per second."""

    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, amount: int, now: float) -> TokenBucket:
        return cls(capacity=amount, rate=amount / 60.0, level=amount, updated=now)

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` is available (0: now); infinite if it never fits."""
        self._refill(now)
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def take(self, amount: float) -> None:
        self.level -= amount


class RateLimiter:
    """Per key: a request bucket and a token bucket; a request is admitted only when both
    have room, and then charged to both. Remembers at most ``max_keys`` keys (LRU)."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None,
                 max_keys: int = 100_000) -> None:
        self.rpm = requests_per_minute
        self.tpm = tokens_per_minute
        self._buckets: OrderedDict[str, tuple[TokenBucket | None, TokenBucket | None]] = (
            OrderedDict())
        self._max_keys = max_keys

    @property
    def enabled(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def check(self, key_id: str, tokens: int, now: float) -> tuple[float, str | None]:
        """(0, None) and charge the buckets when admitted; else (seconds to wait, which limit:
        "requests" or "tokens"). Infinite seconds: the request alone exceeds the token limit."""
        if not self.enabled:
            return 0.0, None
        buckets = self._buckets.get(key_id)
        if buckets is None:
            buckets = (TokenBucket.per_minute(self.rpm, now) if self.rpm else None,
                       TokenBucket.per_minute(self.tpm, now) if self.tpm else None)
            self._buckets[key_id] = buckets
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key_id)
        requests, token_bucket = buckets
        waits = []
        if requests is not None:
            waits.append((requests.wait_for(1, now), "requests"))
        if token_bucket is not None:
            waits.append((token_bucket.wait_for(tokens, now), "tokens"))
        wait, limit = max(waits)
        if wait > 0:
            return wait, limit
        if requests is not None:
            requests.take(1)
        if token_bucket is not None:
            token_bucket.take(tokens)
        return 0.0, None


class Overloaded(Exception):
    pass


class Admission:
    """At most ``max_in_flight`` requests served at once and ``max_queue`` waiting for a slot
    (each at most ``timeout_s``); anything beyond is refused at once. Memory stays bounded by
    these two numbers whatever clients send."""

    def __init__(self, max_in_flight: int, max_queue: int, timeout_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.in_flight = 0
        self._waiters: OrderedDict[int, asyncio.Future[None]] = OrderedDict()
        self._next = 0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raises Overloaded when the line is full or
        the wait times out."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise Overloaded("queue full")
        ticket = self._next
        self._next += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        try:
            async with asyncio.timeout(self.timeout_s):
                await future  # release() hands its slot over: in_flight already counts us
        except BaseException as exc:  # timed out, or cancelled (the client went away)
            self._waiters.pop(ticket, None)
            if future.done() and not future.cancelled():
                self.release()  # handed a slot in the same instant we gave up: pass it on
            if isinstance(exc, TimeoutError):
                raise Overloaded("queue timeout") from None
            raise

    def release(self) -> None:
        while self._waiters:
            _, future = self._waiters.popitem(last=False)
            if not future.done():
                future.set_result(None)  # the slot passes straight to the first waiter
                return
        self.in_flight -= 1
