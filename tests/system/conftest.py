"""System tests: the gateway as its own process in front of fake upstream processes (no model),
on loopback: what only a real server shows (signals, memory, crashed replicas, locust)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

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
    redis = shutil.which("redis-server")
    if redis is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    proc = subprocess.Popen([redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--protected-mode", "yes"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
