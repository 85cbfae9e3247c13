"""Adapter entries are validated at start-up with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.registry import (
    AdapterEntry,
    AdapterStatus,
    Registry,
    RegistryError,
    trained_on_other_bases,
)
from tests.unit.conftest import make_adapter_dir

DOMAINS = ("legal", "finance")


def entry(path: Path, name: str = "law-v1", domain: str = "legal", **kw: object) -> AdapterEntry:
    return AdapterEntry(name=name, domain=domain, path=path, **kw)  # type: ignore[arg-type]


def test_valid_entries_build_the_routing_table(tmp_path: Path) -> None:
    law = make_adapter_dir(tmp_path, "law")
    registry = Registry(
        [entry(law), entry(law, name="law-v2", status=AdapterStatus.SHADOW),
         entry(law, name="law-v0", status=AdapterStatus.RETIRED)],
        domains=DOMAINS,
    )
    table = registry.routing_table({"base"})
    assert table.active == {"legal": "law-v1"}
    assert set(table.adapters) == {"law-v1", "law-v2"}  # retired is not servable


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"domain": "astrology"}, "unknown domain"),
        ({"name": "legal"}, "reserved"),
        ({"name": "base"}, "reserved"),
        ({"name": "auto"}, "reserved"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        Registry([entry(make_adapter_dir(tmp_path, "a"), **kwargs)], domains=DOMAINS,
                 reserved_names={"base"})


def test_duplicate_names_and_two_active_adapters_for_one_domain_are_refused(
    tmp_path: Path,
) -> None:
    law = make_adapter_dir(tmp_path, "law")
    with pytest.raises(RegistryError, match="twice"):
        Registry([entry(law), entry(law)], domains=DOMAINS)
    with pytest.raises(RegistryError, match="two active"):
        Registry([entry(law), entry(law, name="law-v2")], domains=DOMAINS)


def test_missing_adapter_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"adapter_config\.json"):
        Registry([entry(tmp_path / "missing")], domains=DOMAINS)


@pytest.mark.parametrize("name", ["../etc", "a b", "", "x" * 65])
def test_adapter_names_are_restricted(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValidationError):
        entry(tmp_path, name=name)


def test_manifest_paths_are_relative_to_the_manifest_and_round_trip(tmp_path: Path) -> None:
    from adapters.registry import load_manifest, write_manifest

    law = make_adapter_dir(tmp_path, "law")
    manifest = tmp_path / "manifest.yaml"
    write_manifest(manifest, [entry(law, training={"steps": 3})])
    assert "path: law\n" in manifest.read_text()
    (loaded,) = load_manifest(manifest)
    assert loaded.path == tmp_path / "law" and loaded.training == {"steps": 3}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("adapters: [{name: x, domain: legal}]", "entry 1"),  # no path
        ("adapters: [{name: x, domain: legal, path: a, colour: red}]", "entry 1"),
        ("adapters: {name: x}", "list 'adapters'"),
        ("adapters: [", "manifest"),
    ],
)
def test_malformed_manifests_are_refused_with_the_file_named(
    tmp_path: Path, text: str, message: str
) -> None:
    from adapters.registry import load_manifest

    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    with pytest.raises(RegistryError, match=message) as info:
        load_manifest(manifest)
    assert str(manifest) in str(info.value)


def test_adapter_paths_must_stay_inside_the_allowed_directories(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    inside = make_adapter_dir(allowed, "law")
    outside = make_adapter_dir(tmp_path, "elsewhere")
    Registry([entry(inside)], domains=DOMAINS, allowed_dirs=[allowed])
    for path in (outside, allowed / ".." / "elsewhere"):
        with pytest.raises(RegistryError, match="outside the allowed"):
            Registry([entry(path)], domains=DOMAINS, allowed_dirs=[allowed])
    # A symlink inside pointing outside is judged by where it leads.
    (allowed / "link").symlink_to(outside)
    with pytest.raises(RegistryError, match="outside the allowed"):
        Registry([entry(allowed / "link")], domains=DOMAINS, allowed_dirs=[allowed])


def test_adapters_trained_on_another_base_are_named(tmp_path: Path) -> None:
    def entry(name: str, base: str | None) -> AdapterEntry:
        return AdapterEntry(name=name, domain="legal", path=tmp_path, base=base)

    entries = [entry("a", "m:w4a16:1"), entry("b", "m:none:1"), entry("c", None)]
    assert trained_on_other_bases(entries, "m:w4a16:1") == ["b"]
