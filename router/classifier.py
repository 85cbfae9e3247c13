"""Classifier interface. Implementations (issue: domain router) plug in behind this protocol.

A classifier is CPU work: the gateway calls it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

from typing import Protocol

from router.policy import Classification


class Classifier(Protocol):
    def classify(self, text: str) -> Classification: ...
