"""What a canary rollout needs from serving: the recent latencies of each adapter's requests.

The request path records every answered request's end-to-end duration (to the last byte) under
the adapter that served it (``none``: the general model); the shadow evaluator compares the
canary's p95 with the SLO and the active version's (router/canary.py). Kept per instance: the
instance running the evaluator judges by the requests it served itself, which behind a load
balancer spreading users evenly is a uniform sample of the fleet's (canary users are chosen by a
hash, the same on every instance).
"""

from __future__ import annotations

from collections import deque


class LatencyBook:
    """The last ``window`` durations per adapter name (bounded: names come from the registry)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._seconds: dict[str, deque[float]] = {}

    def record(self, adapter: str, seconds: float) -> None:
        recent = self._seconds.get(adapter)
        if recent is None:
            recent = self._seconds[adapter] = deque(maxlen=self.window)
        recent.append(seconds)

    def recent(self, adapter: str) -> list[float]:
        """A copy (the evaluator reads it off the event loop)."""
        return list(self._seconds.get(adapter, ()))
