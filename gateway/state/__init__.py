"""Where the gateway's shared state lives: this process, or Redis shared by several instances.

The state is small and changes rarely, except the rate limits:

* the **adapter registry** as desired state: a versioned document (entries, plus the fleet-wide
  unloads) that every instance converges to (:mod:`gateway.fleet`);
* the **quality gate**: the adapter versions whose gate is closed, and the evaluator's report,
  written by the one elected evaluator and read by every instance's routing (:mod:`gateway.gates`);
* the evaluator's **evidence** (its confidence sequences), so a new leader goes on from it;
* **leases** (leader election: one shadow evaluator for the fleet);
* **rate limits** per API key.

:class:`StateBackend` is the seam; :mod:`gateway.state.memory` (the default: nothing shared, as a
single gateway needs) and :mod:`gateway.state.redis` implement it. Every backend call may raise
:class:`StateUnavailable`; callers then go on with the state they last knew (serving never waits
for Redis), and admin writes are refused with a 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.metrics import Metrics
    from gateway.settings import StateSettings

logger = logging.getLogger(__name__)

SHADOW_ROLE = "shadow"  # the lease of the fleet's one shadow evaluator


class StateUnavailable(Exception):
    """The shared state could not be read or written (Redis down or too slow)."""


class StaleWrite(Exception):
    """A versioned write lost a race: someone else wrote ``current`` first."""

    def __init__(self, current: int) -> None:
        super().__init__(f"the stored version is {current}")
        self.current = current


@dataclass(frozen=True)
class Snapshot:
    """A versioned document: version 1 is the first write; every write adds one."""

    version: int
    data: dict[str, Any]


class Limiter(Protocol):
    """Per-key request and token budgets (``limits.*``)."""

    rpm: int | None
    tpm: int | None

    @property
    def enabled(self) -> bool: ...

    async def check(self, key_id: str, tokens: int) -> tuple[float, str | None]:
        """(0, None) and charge the key when admitted; else (seconds to wait, "requests" or
        "tokens"). Infinite seconds: the request alone exceeds the token limit."""
        ...


class StateBackend(Protocol):
    kind: str  # "memory" or "redis": /readyz and logs
    shared: bool  # False: nothing is shared with other instances
    health: StateHealth

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def versions(self) -> tuple[int, int]:
        """(registry version, gate version), 0 when none is stored: one cheap read, polled."""
        ...

    async def read(self, document: str) -> Snapshot | None:
        """The stored ``document`` ("registry" or "gate"), None when none is stored yet."""
        ...

    async def write(self, document: str, data: dict[str, Any], *,
                    expect: int | None = None) -> int:
        """Store ``data`` as the next version of ``document`` and return that version. With
        ``expect`` the write happens only if the stored version is ``expect`` (0: none stored
        yet), else :class:`StaleWrite`."""
        ...

    async def read_blob(self, name: str) -> bytes | None: ...

    async def write_blob(self, name: str, blob: bytes) -> None: ...

    async def hold_lease(self, role: str, holder: str, ttl_s: float) -> bool:
        """Take the lease for ``role`` if free, or renew it if ``holder`` has it; True when
        ``holder`` holds it for ``ttl_s`` from now."""
        ...

    async def release_lease(self, role: str, holder: str) -> None: ...

    async def lease_holder(self, role: str) -> str | None: ...

    def limiter(self, requests_per_minute: int | None,
                tokens_per_minute: int | None) -> Limiter: ...


class StateHealth:
    """Whether the backend answered its last call. A failure is counted every time and logged
    once per outage; the first success after it logs the recovery."""

    def __init__(self, metrics: Metrics, kind: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.kind = kind
        self.clock = clock
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        metrics.state_up.set(1)

    def failed(self, operation: str, exc: BaseException) -> None:
        self.metrics.state_errors.labels(operation).inc()
        self.last_error = f"{operation}: {type(exc).__name__}"
        if self.up:
            self.up = False
            self.down_since = self.clock()
            self.metrics.state_up.set(0)
            logger.warning("shared state (%s) unreachable (%s: %s): serving on the last known "
                           "state; admin changes are refused until it is back", self.kind,
                           operation, exc)

    def ok(self) -> None:
        if not self.up:
            logger.info("shared state (%s) reachable again after %.0f s", self.kind,
                        self.clock() - (self.down_since or self.clock()))
            self.up = True
            self.down_since = None
            self.metrics.state_up.set(1)

    def describe(self) -> dict[str, Any]:
        return {"reachable": self.up, "down_since": self.down_since,
                "last_error": self.last_error}


def open_backend(settings: StateSettings, metrics: Metrics) -> StateBackend:
    """The backend the settings ask for: Redis when ``state.redis_url`` is set, else memory."""
    if settings.redis_url is None:
        from gateway.state.memory import MemoryState

        return MemoryState(metrics)
    from gateway.state.redis import RedisState

    return RedisState(settings, metrics)
