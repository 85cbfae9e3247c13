"""Adapter entries are validated at start-up with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.registry import AdapterEntry, AdapterStatus, Registry, RegistryError
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
