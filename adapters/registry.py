"""The adapter registry: which LoRA adapters exist, for which domain, and which one is active.

Entries come from a manifest file (``adapters.manifest``; the packaged one lists the published
domain adapters) plus inline ``adapters.entries`` in the config. They are validated once at
start-up, so a typo is a clear error before any traffic, not a 502 on the first request; every
adapter path must lie inside one of ``adapters.allowed_dirs`` (no path traversal via ``..`` or
symlinks: paths are compared after resolving). A Registry is immutable: the admin API builds a
new one (validated the same way) and swaps it in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from router.policy import AUTO_MODEL, RoutingTable

# The domain adapters trained by this project (weights + manifest, committed).
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
PUBLISHED_MANIFEST = PUBLISHED_DIR / "manifest.yaml"
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RegistryError(ValueError):
    """The adapter entries are inconsistent (duplicate, unknown domain, missing files...)."""


class PathNotAllowedError(RegistryError):
    """An adapter path outside ``adapters.allowed_dirs``."""

    def __init__(self, path: Path, allowed_dirs: Sequence[Path]) -> None:
        super().__init__(
            f"adapter path {path} is outside the allowed adapter directories "
            f"({', '.join(str(r) for r in allowed_dirs) or 'none configured'})"
        )
        self.path = path
        self.allowed_dirs = list(allowed_dirs)


class AdapterStatus(StrEnum):
    ACTIVE = "active"  # serves its domain
    SHADOW = "shadow"  # servable by name and evaluated, not routed to by domain
    # Serves a growing share of its domain's traffic while the shadow evaluator pairs it with the
    # active version; promoted or rolled back (to shadow) on that evidence (router/canary.py).
    # At most one per domain.
    CANARY = "canary"
    RETIRED = "retired"  # kept for the record, never served


class AdapterEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    domain: str
    path: Path
    version: int = Field(default=1, ge=1)
    status: AdapterStatus = AdapterStatus.ACTIVE
    base: str | None = None  # base_id the adapter was trained on (adapters.base_model)
    training: dict[str, Any] | None = None  # summary written by `adapters train`, informational


def load_manifest(path: Path) -> list[AdapterEntry]:
    """Entries of a manifest file; relative paths are relative to the manifest's directory."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"adapter manifest {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("adapters", []), list):
        raise RegistryError(f"adapter manifest {path}: expected a mapping with a list 'adapters'")
    entries = []
    for number, raw in enumerate(document.get("adapters") or [], start=1):
        try:
            entry = AdapterEntry.model_validate(raw)
        except ValidationError as exc:
            raise RegistryError(f"adapter manifest {path}, entry {number}: {exc}") from exc
        if not entry.path.is_absolute():
            entry = entry.model_copy(update={"path": Path(path).parent / entry.path})
        entries.append(entry)
    return entries


def write_manifest(path: Path, entries: Iterable[AdapterEntry]) -> None:
    """Write ``entries`` (paths under the manifest's directory stored relative to it)."""
    root = Path(path).parent.resolve()
    records = []
    for entry in entries:
        record = entry.model_dump(mode="json", exclude_none=True)
        resolved = entry.path.resolve()
        if resolved.is_relative_to(root):
            record["path"] = str(resolved.relative_to(root))
        records.append(record)
    header = "# Adapter manifest: written by `slm-gateway adapters train`, read at start-up.\n"
    Path(path).write_text(header + yaml.safe_dump({"adapters": records}, sort_keys=False))


def upsert(entries: Sequence[AdapterEntry], new: AdapterEntry) -> list[AdapterEntry]:
    """``entries`` with ``new`` replacing the entry of the same name (or appended)."""
    out = [e for e in entries if e.name != new.name]
    position = next((i for i, e in enumerate(entries) if e.name == new.name), len(out))
    out.insert(position, new)
    return out


def trained_on_other_bases(entries: Iterable[AdapterEntry], base_id: str) -> list[str]:
    """Names of adapters recorded as trained on weights other than ``base_id``.

    They still load (same architecture), but were fitted to other weights, e.g. the bf16
    base's adapters served on the 4-bit one: worth a warning, not a refusal.
    """
    return [e.name for e in entries if e.base is not None and e.base != base_id]


def check_confined(path: Path, allowed_dirs: Iterable[Path]) -> None:
    """Raises PathNotAllowedError (naming the directories as configured) unless ``path``
    resolves inside one of ``allowed_dirs``."""
    resolved = Path(path).resolve()
    configured = list(allowed_dirs)
    if not any(resolved.is_relative_to(Path(d).resolve()) for d in configured):
        raise PathNotAllowedError(path, configured)


class Registry:
    def __init__(
        self,
        entries: Iterable[AdapterEntry],
        *,
        domains: Iterable[str],
        reserved_names: Iterable[str] = (),
        allowed_dirs: Iterable[Path] | None = None,
        check_files: bool = True,
    ) -> None:
        self._domains = frozenset(domains)
        self._reserved_names = frozenset(reserved_names)
        self._allowed_dirs = None if allowed_dirs is None else tuple(allowed_dirs)
        self._check_files = check_files
        self._entries: dict[str, AdapterEntry] = {}
        reserved = {AUTO_MODEL, *reserved_names, *self._domains}
        active_domains: dict[str, str] = {}
        canary_domains: dict[str, str] = {}
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
            if entry.status is AdapterStatus.CANARY:
                if entry.domain in canary_domains:
                    raise RegistryError(
                        f"domain {entry.domain!r} already has a canary: "
                        f"{canary_domains[entry.domain]!r}; promote, roll back or retire it "
                        f"before {entry.name!r} can be one"
                    )
                canary_domains[entry.domain] = entry.name
            if self._allowed_dirs is not None:
                check_confined(entry.path, self._allowed_dirs)
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

    def replaced(self, entries: Iterable[AdapterEntry]) -> Registry:
        """A new registry with the same rules over ``entries`` (raises RegistryError)."""
        return Registry(
            entries,
            domains=self._domains,
            reserved_names=self._reserved_names,
            allowed_dirs=self._allowed_dirs,
            check_files=self._check_files,
        )

    def with_entry(self, entry: AdapterEntry) -> Registry:
        """Register ``entry``, or replace the entry of that name (a new version in place)."""
        return self.replaced(upsert(list(self), entry))

    def with_status(self, name: str, status: AdapterStatus) -> Registry:
        """Change one adapter's status; promoting to active retires the domain's active one (a
        canary promoted included)."""
        entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(f"no adapter named {name!r}")
        entries = []
        for other in self:
            if other.name == name:
                other = other.model_copy(update={"status": status})
            elif (
                status is AdapterStatus.ACTIVE
                and other.domain == entry.domain
                and other.status is AdapterStatus.ACTIVE
            ):
                other = other.model_copy(update={"status": AdapterStatus.RETIRED})
            entries.append(other)
        return self.replaced(entries)

    def routing_table(self, base_aliases: Iterable[str]) -> RoutingTable:
        servable = {e.name: e.domain for e in self if e.status is not AdapterStatus.RETIRED}
        active = {e.domain: e.name for e in self if e.status is AdapterStatus.ACTIVE}
        canary = {e.domain: e.name for e in self if e.status is AdapterStatus.CANARY}
        return RoutingTable(
            domains=self._domains,
            adapters=servable,
            active=active,
            base_aliases=frozenset(base_aliases),
            canary=canary,
        )
