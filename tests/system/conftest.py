"""System tests: the gateway as its own process in front of fake upstream processes (no model),
on loopback: what only a real server shows (signals, memory, crashed replicas, locust)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from loadtests import servers
from loadtests.servers import free_port, gateway_env, process


@contextmanager
def fake_upstream(*args: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "loadtests.fake_upstream", "--port", str(port), *args],
                 f"{url}/health"):
        yield url


@contextmanager
def gateway_process(
    upstream: str, **settings: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = gateway_env(port, upstream, ROUTING__CLASSIFIER="false", **settings)
    with process([sys.executable, "-m", "gateway.cli", "serve"], f"{url}/readyz", env,
                 timeout=60) as proc:
        yield url, proc


@contextmanager
def redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real Redis (Debian's redis-server: `make system-deps`) on loopback and a free port,
    keeping nothing on disk; stopped on every exit path."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    with servers.redis_server() as running:
        yield running
