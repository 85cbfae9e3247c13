"""Replica crash under load, overload memory, graceful drain: the gateway as a process."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from loadtests.fault_run import fault_setup, run_fault
from tests.system.conftest import fake_upstream, gateway_process

BODY = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_a_replica_killed_and_restarted_under_load_costs_no_request_and_regains_its_share(
) -> None:
    with fault_setup("fake", delay_ms=20) as (gateway, victim):
        report = asyncio.run(run_fault(gateway, victim, duration_s=12, concurrency=8))
    assert report.requests > 500
    assert report.failures == 0, report.failure_samples
    assert report.recovery_s is not None and report.recovery_s < 60


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _burst(url: str, n: int) -> list[tuple[int, str | None]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> tuple[int, str | None]:
            async with session.post(f"{url}/v1/chat/completions", json=BODY) as response:
                await response.read()
                return response.status, response.headers.get("retry-after")

        return await asyncio.gather(*(one() for _ in range(n)))


def test_overload_is_refused_with_503_and_retry_after_while_memory_stays_flat() -> None:
    limits = {"LIMITS__MAX_IN_FLIGHT": "8", "LIMITS__MAX_QUEUE": "16",
              "LIMITS__QUEUE_TIMEOUT_S": "2", "LIMITS__RETRY_AFTER_S": "2"}
    with fake_upstream("--delay-ms", "300") as upstream, \
            gateway_process(upstream, **limits) as (url, proc):
        asyncio.run(_burst(url, 300))  # warm-up: allocator and connection buffers
        baseline = _rss_kib(proc.pid)
        results = asyncio.run(_burst(url, 1500))
        grown = _rss_kib(proc.pid) - baseline
        statuses = [status for status, _ in results]
        assert statuses.count(200) >= 24  # what fits: 8 in flight and 16 queued, at least
        refused = [retry for status, retry in results if status == 503]
        assert len(refused) > 1000 and set(refused) == {"2"}
        assert set(statuses) <= {200, 503}
        # 1500 requests at once cost about what 300 did: held requests are bounded.
        assert grown < 40 * 1024, f"RSS grew {grown} KiB"
        assert httpx.post(f"{url}/v1/chat/completions", json=BODY).status_code == 200


def test_sigterm_lets_a_running_stream_finish_and_refuses_new_connections() -> None:
    with fake_upstream("--chunks", "10", "--chunk-delay-ms", "200") as upstream, \
            gateway_process(upstream, SHUTDOWN_GRACE_S="20") as (url, proc), \
            httpx.Client(timeout=30) as client, \
            client.stream("POST", f"{url}/v1/chat/completions",
                          json={**BODY, "stream": True}) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert json.loads(first.removeprefix("data: "))["choices"]
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
        rest = [line for line in lines if line]
        assert rest[-1] == "data: [DONE]"
        assert not any('"error"' in line for line in rest)
        assert len(rest) == 10  # nine more chunks and [DONE]
        # Exits once drained; uvicorn re-raises the SIGTERM it handled, as a process should.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
