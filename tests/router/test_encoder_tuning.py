"""The router's domain-tuned MiniLM: tuning writes a LoRA adapter the encoder merges at load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from router.data import CALIB, TRAIN, Example
from router.encoders import MiniLMEncoder
from router.taxonomy import load_taxonomy
from router.tune import PUBLISHED_ENCODER, RECORD, TuneConfig, tune_encoder

TEXTS = {
    "mathematics": ["what is 12 times 7", "solve 3x + 4 = 19", "derivative of x^2 please"],
    "food_beverage": ["how long to boil an egg", "a vegan swap for butter", "tea for mornings"],
    None: ["hi there!", "write me a poem about autumn", "thanks, that's all"],
}


def _examples() -> list[Example]:
    out = []
    for domain, texts in TEXTS.items():
        for i, text in enumerate(texts):
            out.append(Example(text, domain, "authored/test", CALIB if i == 2 else TRAIN))
    return out


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    out = tmp_path_factory.mktemp("tune") / "adapter"
    config = TuneConfig(epochs=2, batch_size=4, rank=4, lr=5e-3)
    messages: list[str] = []
    return out, tune_encoder(_examples(), out, config, progress=messages.append) | {
        "_messages": messages
    }


def test_tuning_writes_an_adapter_and_a_record_of_every_epoch(
    tuned: tuple[Path, dict[str, object]],
) -> None:
    out, record = tuned
    assert (out / "adapter_model.safetensors").exists()
    assert (out / "adapter_config.json").exists()
    saved = json.loads((out / RECORD).read_text())
    assert [e["epoch"] for e in saved["epochs"]] == [1, 2]
    assert saved["chosen_epoch"] in (1, 2)
    assert saved["labels"] == ["(outside)", "food_beverage", "mathematics"]
    assert saved["train_texts"] == 6 and saved["calib_texts"] == 3
    assert any("step" in m for m in record["_messages"])  # type: ignore[union-attr]
    assert not out.with_name(out.name + ".tmp").exists()


def test_the_tuned_encoder_merges_the_adapter_and_changes_the_vectors(
    tuned: tuple[Path, dict[str, object]],
) -> None:
    out, _ = tuned
    texts = ["what is 12 times 7", "write me a poem about autumn"]
    plain, tuned_encoder = MiniLMEncoder(), MiniLMEncoder(out)
    a, b = plain.encode(texts), tuned_encoder.encode(texts)
    assert a.shape == b.shape == (2, 384)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a, b, atol=1e-3)
    # The adapter's hash is in the name, so no cache built on other vectors is reused.
    assert plain.name != tuned_encoder.name and "domain LoRA" in tuned_encoder.name
    # No LoRA layer survives the merge: serving pays only for MiniLM itself.
    assert not any("lora" in name for name, _ in tuned_encoder._model.named_modules())


def test_the_published_adapter_was_tuned_on_the_default_taxonomy() -> None:
    record = json.loads((PUBLISHED_ENCODER / RECORD).read_text())
    assert set(load_taxonomy().ids) <= set(record["labels"])
    chosen = record["epochs"][record["chosen_epoch"] - 1]
    assert chosen["calib_user_accuracy"] == max(e["calib_user_accuracy"] for e in record["epochs"])
    assert MiniLMEncoder.published().adapter == PUBLISHED_ENCODER
