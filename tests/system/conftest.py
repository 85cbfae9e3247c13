"""System tests: the gateway as its own process in front of fake upstream processes (no model),
on loopback: what only a real server shows (signals, memory, crashed replicas, locust)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from loadtests.servers import ROOT, free_port, gateway_env, wait_ready


@contextmanager
def fake_upstream(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port),
                             *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", 30, proc)
        yield url
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def gateway_process(
    upstream: str, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = gateway_env(port, upstream, ROUTING__CLASSIFIER="false", **settings)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", 60, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
