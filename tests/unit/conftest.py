from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapters.registry import AdapterEntry
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from tests.unit.fakes import FakeVllm


def make_adapter_dir(root: Path, name: str) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    return tmp_path / "adapters"


@pytest.fixture
def settings(adapter_root: Path) -> Settings:
    return Settings(
        upstream={"urls": ["http://vllm-a:8000"], "health_interval_s": 3600},
        # Off here: these tests count upstream calls. The evaluator has its own tests.
        shadow={"enabled": False},
        adapters={
            "manifest": None,
            "allowed_dirs": [adapter_root],
            "preload": False,  # tests of on-demand loading; preloading has its own test
            "entries": [
                AdapterEntry(
                    name="law-v1", domain="legal", path=make_adapter_dir(adapter_root, "law")
                ),
                AdapterEntry(
                    name="money-v1", domain="finance", path=make_adapter_dir(adapter_root, "money")
                ),
            ],
        },
    )


@pytest.fixture
def fake() -> FakeVllm:
    return FakeVllm()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(settings: Settings, fake: FakeVllm, metrics: Metrics) -> Iterator[TestClient]:
    app = create_app(settings, transport=fake.transport(), metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
