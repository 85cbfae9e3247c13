"""The real domain classifier, trained once per machine and cached in .cache/router (the same
cache `make run` uses: the first run embeds the corpus with MiniLM, about two minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.classifier import DomainClassifier
from router.taxonomy import load_taxonomy
from router.train import load_or_train

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "router"


@pytest.fixture(scope="session")
def classifier() -> DomainClassifier:
    return load_or_train(load_taxonomy(), CACHE, progress=lambda message: None)
