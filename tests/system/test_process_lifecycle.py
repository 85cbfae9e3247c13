"""No process the gateway starts outlives it: `slm-gateway serve` with its classifier worker,
stopped gracefully (SIGTERM) or killed (SIGKILL), leaves no child behind.

Seen before the fix: uvicorn re-raises SIGTERM after its graceful shutdown with the default
handler, so the process ended before its `finally` shut the worker pool down, and the worker
(~900 MB, MiniLM loaded) and multiprocessing's resource tracker lived on under PID 1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from loadtests.servers import ROOT, free_port, gateway_env, wait_ready
from router.taxonomy import load_taxonomy
from router.train import load_or_train
from tests.system.conftest import fake_upstream


@pytest.fixture(scope="module")
def router_cache() -> Path:
    # Trained once per machine (about two minutes), shared with `make run` and the e2e tests.
    cache = ROOT / ".cache" / "router"
    load_or_train(load_taxonomy(), cache, progress=lambda message: None)
    return cache


@pytest.fixture
def serving_gateway(router_cache: Path) -> Iterator[tuple[psutil.Process, list[psutil.Process]]]:
    """`slm-gateway serve` with the classifier in a worker process, after one `auto` request
    (so the worker is up); yields the gateway and every descendant it has then."""
    with fake_upstream() as upstream:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = gateway_env(port, upstream, ROUTING__CLASSIFIER="true",
                          ROUTING__WORKER_PROCESS="true",
                          ROUTING__CACHE_DIR=str(router_cache))
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_ready(f"{url}/readyz", 120, proc)
            answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                "model": "auto", "max_tokens": 4,
                "messages": [{"role": "user", "content": "What does a balance sheet show?"}]})
            assert answer.status_code == 200
            gateway = psutil.Process(proc.pid)
            children = gateway.children(recursive=True)
            # The classifier worker at least (and multiprocessing's resource tracker).
            assert any("multiprocessing" in " ".join(c.cmdline()) for c in children)
            yield gateway, children
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _gone(processes: list[psutil.Process], timeout_s: float) -> list[str]:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    leftovers = [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive]
    for p in alive:  # do not leave them to the next test either
        p.kill()
    return leftovers


def test_serve_stopped_with_sigterm_leaves_no_child_process(
        serving_gateway: tuple[psutil.Process, list[psutil.Process]]) -> None:
    gateway, children = serving_gateway
    gateway.send_signal(signal.SIGTERM)
    assert gateway.wait(timeout=30) == 0  # stopped on request, cleaned up
    assert _gone(children, timeout_s=10) == []


def test_serve_killed_with_sigkill_leaves_no_child_process(
        serving_gateway: tuple[psutil.Process, list[psutil.Process]]) -> None:
    gateway, children = serving_gateway
    gateway.send_signal(signal.SIGKILL)
    gateway.wait(timeout=30)
    # The worker notices it was re-parented within a second and exits; the resource tracker
    # ends when its last user is gone.
    assert _gone(children, timeout_s=20) == []


def test_the_suite_render_worker_ends_when_its_owner_is_killed() -> None:
    """The gateway renders the suite in a spawned worker (adapters.evaluation.items): killed
    mid-render, the gateway must not leave that worker waiting for work forever."""
    owner_code = (
        "import time\n"
        "from adapters.evaluation.items import render_pool\n"
        "pool = render_pool()\n"
        "pool.submit(time.sleep, 0).result()  # the worker is up\n"
        "print(flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = psutil.Popen([sys.executable, "-c", owner_code], stdout=subprocess.PIPE)
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"\n"
        workers = [p for p in owner.children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert workers, "no render worker found"
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        assert _gone(workers, timeout_s=15) == []
    finally:
        if owner.is_running():
            owner.kill()
