"""The labeled data: splits are stable and disjoint, held-out requests never leak into training."""

from __future__ import annotations

from collections import Counter

from router.data import (
    CALIB,
    REALISTIC,
    TEST,
    TRAIN,
    authored_examples,
    bucket,
    load_corpus,
    near_duplicate,
)
from router.taxonomy import load_taxonomy


def test_split_is_a_pure_function_of_the_text() -> None:
    assert bucket("What is 2+2?") == bucket("  what is 2+2?  ")
    assert 0.0 <= bucket("anything") < 1.0


def test_no_text_sits_in_two_splits() -> None:
    seen: dict[str, str] = {}
    for example in load_corpus():
        key = example.text.strip().lower()
        assert seen.setdefault(key, example.split) == example.split, example.text


def test_held_out_requests_have_no_near_duplicate_in_training() -> None:
    authored = authored_examples()
    held_out = [e.text for e in authored if e.split == REALISTIC]
    training = [e.text for e in authored if e.split in (TRAIN, CALIB)]
    leaks = [(a, b) for a in held_out for b in training if near_duplicate(a, b)]
    assert leaks == []


def test_every_domain_and_outside_has_realistic_held_out_requests() -> None:
    counts = Counter(e.domain for e in authored_examples() if e.split == REALISTIC)
    for domain in load_taxonomy().ids:
        assert counts[domain] >= 20, domain
    assert counts[None] >= 100


def test_benchmark_rows_cover_train_calib_and_test() -> None:
    splits = Counter(e.split for e in load_corpus() if not e.source.startswith("authored"))
    assert splits[TRAIN] > splits[CALIB] > 0 and splits[TEST] > 0
    assert REALISTIC not in splits
