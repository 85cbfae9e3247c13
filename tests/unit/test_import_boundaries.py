"""Package boundaries, checked in fresh interpreters: the router stands alone, and the gateway
process runs (shadow evaluator included) without the training side of `adapters`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def modules_after(script: str, timeout_s: float = 120) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``script``."""
    report = "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script + report],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=timeout_s, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_no_router_module_imports_anything_from_adapters() -> None:
    loaded = modules_after(
        "import importlib, pkgutil, router\n"
        "for m in pkgutil.iter_modules(router.__path__):\n"
        "    importlib.import_module(f'router.{m.name}')")
    assert {m for m in loaded if m.startswith("router.")} >= {"router.gate", "router.train"}
    assert not sorted(m for m in loaded if m == "adapters" or m.startswith("adapters."))


# A gateway with the shadow evaluator on, its suite read from the default file, in front of a
# fake vLLM, run until the evaluator has scored an item; the console script's module too.
SERVER = """
import tempfile, time
from pathlib import Path
from fastapi.testclient import TestClient
import gateway.cli
from adapters.registry import AdapterEntry
from gateway.app import create_app
from gateway.settings import Settings
from tests.unit.fakes import FakeVllm

root = Path(tempfile.mkdtemp())
(root / "law").mkdir()
(root / "law" / "adapter_config.json").write_text("{}")
settings = Settings(
    upstream={"urls": ["http://vllm-a:8000"], "health_interval_s": 3600},
    shadow={"enabled": True, "calls_per_second": 1000, "store": root / "pairs.jsonl"},
    adapters={"manifest": None, "allowed_dirs": [root], "preload": False,
              "entries": [AdapterEntry(name="law-v1", domain="legal", path=root / "law")]})
app = create_app(settings, transport=FakeVllm().transport())
with TestClient(app) as client:
    shadow = app.state.gateway.shadow
    deadline = time.monotonic() + 60
    while shadow.items_scored < 1:
        assert time.monotonic() < deadline, "the shadow evaluator scored nothing"
        time.sleep(0.05)
"""

# The training side: the corpus renderers (and the router's, which they use), training, the
# suite's exporter and hub loader, and the model libraries behind them.
TRAINING_SIDE = {"adapters.corpus", "adapters.train", "adapters.perplexity", "adapters.compare",
                 "adapters.evaluation.export", "adapters.evaluation.slm_bench", "router.data",
                 "router.train", "peft", "transformers", "torch", "datasets"}


def test_the_gateway_process_runs_the_shadow_evaluator_without_the_training_corpus() -> None:
    loaded = modules_after(SERVER)
    assert {"gateway.shadow", "adapters.evaluation.items", "adapters.evaluation.suite"} <= loaded
    assert not sorted(loaded & TRAINING_SIDE)
    # Nor scipy.stats (the suite's t-intervals): its first import takes about a second, which
    # on the event loop (the evaluator publishes mean scores there) would stall every request.
    assert "scipy.stats" not in loaded
