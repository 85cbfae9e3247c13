"""Settings come from YAML, then environment (SLM_GATEWAY_*), validated once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, load_settings


def test_defaults_listen_on_loopback_8000(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLM_GATEWAY_CONFIG", raising=False)
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9000\nupstream:\n  urls: ['http://10.0.0.1:8100']\n")
    monkeypatch.setenv("SLM_GATEWAY_PORT", "9100")
    settings = load_settings(config)
    assert settings.port == 9100
    assert settings.upstream.base_urls() == ["http://10.0.0.1:8100"]


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_GATEWAY_UPSTREAM__URLS", '["http://a:1", "http://b:2/"]')
    monkeypatch.setenv("SLM_GATEWAY_ROUTING__CONFIDENCE_THRESHOLD", "0.7")
    settings = Settings()
    assert settings.upstream.base_urls() == ["http://a:1", "http://b:2"]
    assert settings.routing.confidence_threshold == 0.7


def test_config_file_env_var_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 9001\n")
    monkeypatch.setenv("SLM_GATEWAY_CONFIG", str(config))
    assert load_settings().port == 9001


def test_invalid_values_and_unknown_keys_fail_at_start(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 70000\n")
    with pytest.raises(ValidationError):
        load_settings(config)
    config.write_text("prot: 8000\n")
    with pytest.raises(ValidationError):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.yaml")
