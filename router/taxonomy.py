"""The domain taxonomy as data: loaded from YAML, never hard-coded in routing logic."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

DEFAULT_TAXONOMY = "taxonomy.yaml"


class TaxonomyError(ValueError):
    """The taxonomy file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Domain:
    id: str
    label: str
    description: str = ""
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    domains: tuple[Domain, ...]

    def __post_init__(self) -> None:
        ids = [d.id for d in self.domains]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise TaxonomyError(f"duplicate domain ids: {', '.join(duplicates)}")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(d.id for d in self.domains)

    def __contains__(self, domain_id: object) -> bool:
        return any(d.id == domain_id for d in self.domains)

    def __iter__(self) -> Iterator[Domain]:
        return iter(self.domains)

    def __len__(self) -> int:
        return len(self.domains)


def _parse(raw: object, origin: str) -> Taxonomy:
    if not isinstance(raw, dict) or not isinstance(raw.get("domains"), list):
        raise TaxonomyError(f"{origin}: expected a mapping with a 'domains' list")
    domains = []
    for i, entry in enumerate(raw["domains"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise TaxonomyError(f"{origin}: domains[{i}] needs a non-empty string 'id'")
        examples = entry.get("examples") or []
        if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
            raise TaxonomyError(f"{origin}: domains[{i}].examples must be a list of strings")
        domains.append(
            Domain(
                id=entry["id"],
                label=str(entry.get("label", entry["id"])),
                description=str(entry.get("description", "")),
                examples=tuple(examples),
            )
        )
    return Taxonomy(tuple(domains))


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Load a taxonomy file; without a path, the packaged default 14 domains."""
    if path is None:
        text = resources.files("router").joinpath(DEFAULT_TAXONOMY).read_text(encoding="utf-8")
        return _parse(yaml.safe_load(text), DEFAULT_TAXONOMY)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TaxonomyError(f"cannot read taxonomy {path}: {exc}") from exc
    return _parse(yaml.safe_load(text), str(path))
