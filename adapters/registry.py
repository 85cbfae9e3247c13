"""The adapter registry: which LoRA adapters exist, for which domain, and which one is active.

Entries come from the settings (``adapters:`` in the YAML config). They are validated once at
start-up, so a typo is a clear error before any traffic, not a 502 on the first request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from router.policy import AUTO_MODEL, RoutingTable

ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RegistryError(ValueError):
    """The adapter entries are inconsistent (duplicate, unknown domain, missing files...)."""


class AdapterStatus(StrEnum):
    ACTIVE = "active"  # serves its domain
    SHADOW = "shadow"  # servable by name and evaluated, not routed to by domain
    RETIRED = "retired"  # kept for the record, never served


class AdapterEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    domain: str
    path: Path
    version: int = Field(default=1, ge=1)
    status: AdapterStatus = AdapterStatus.ACTIVE


class Registry:
    def __init__(
        self,
        entries: Iterable[AdapterEntry],
        *,
        domains: Iterable[str],
        reserved_names: Iterable[str] = (),
        check_files: bool = True,
    ) -> None:
        self._domains = frozenset(domains)
        self._entries: dict[str, AdapterEntry] = {}
        reserved = {AUTO_MODEL, *reserved_names, *self._domains}
        active_domains: dict[str, str] = {}
        for entry in entries:
            if entry.name in self._entries:
                raise RegistryError(f"adapter {entry.name!r} is registered twice")
            if entry.name in reserved:
                raise RegistryError(
                    f"adapter name {entry.name!r} is reserved (auto, base or a domain id)"
                )
            if entry.domain not in self._domains:
                raise RegistryError(f"adapter {entry.name!r}: unknown domain {entry.domain!r}")
            if entry.status is AdapterStatus.ACTIVE:
                if entry.domain in active_domains:
                    raise RegistryError(
                        f"domain {entry.domain!r} has two active adapters: "
                        f"{active_domains[entry.domain]!r} and {entry.name!r}"
                    )
                active_domains[entry.domain] = entry.name
            if check_files and not (entry.path / "adapter_config.json").is_file():
                raise RegistryError(
                    f"adapter {entry.name!r}: no adapter_config.json in {entry.path}"
                )
            self._entries[entry.name] = entry

    def __iter__(self) -> Iterator[AdapterEntry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> AdapterEntry | None:
        return self._entries.get(name)

    def routing_table(self, base_aliases: Iterable[str]) -> RoutingTable:
        servable = {e.name: e.domain for e in self if e.status is not AdapterStatus.RETIRED}
        active = {e.domain: e.name for e in self if e.status is AdapterStatus.ACTIVE}
        return RoutingTable(
            domains=self._domains,
            adapters=servable,
            active=active,
            base_aliases=frozenset(base_aliases),
        )
