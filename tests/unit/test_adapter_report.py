"""The training report is read back from the published manifest and the records next to the
weights, so it can only describe adapters that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.registry import AdapterEntry, RegistryError, write_manifest
from adapters.report import format_markdown, training_report
from adapters.train import RECORD_FILE


def publish(root: Path, domain: str, before: float, after: float) -> AdapterEntry:
    path = root / f"{domain}-lora" / "v1"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    (path / "adapter_model.safetensors").write_bytes(b"\0" * 2_000_000)
    (path / RECORD_FILE).write_text(json.dumps({
        "domain": domain, "base": {"base_id": "b"}, "config": {"rank": 8},
        "data": {"train_items": 100, "sources": {"mmlu": 60, "authored": 40}},
        "steps": 48, "train_loss": 1.5, "perplexity_before": before,
        "perplexity_after": after, "seconds": 120.0,
    }))
    return AdapterEntry(name=f"{domain}-lora", domain=domain, path=path)


def test_report_lists_every_published_adapter_with_its_perplexity_change(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    write_manifest(manifest, [publish(tmp_path, "legal", 4.0, 3.0),
                              publish(tmp_path, "news", 2.0, 2.5)])
    report = training_report(manifest)
    assert [r["domain"] for r in report["adapters"]] == ["legal", "news"]
    assert report["improved"] == 1
    assert report["mean_perplexity_before"] == 3.0
    assert report["mean_perplexity_after"] == 2.75
    assert report["adapters"][0]["size_mb"] == 2.0
    table = format_markdown(report)
    assert "| legal | 100 (mmlu 60, authored 40) | 48 | 1.500 | 4.000 | 3.000 | -25.0% |" in table
    assert "| news |" in table and "+25.0%" in table


def test_report_of_a_manifest_pointing_at_missing_adapters_fails(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("adapters:\n- {name: legal-lora, domain: legal, path: gone/v1}\n")
    with pytest.raises((RegistryError, OSError)):
        training_report(manifest)
