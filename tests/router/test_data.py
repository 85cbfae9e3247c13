"""The labeled data: splits are stable and disjoint, held-out requests never leak into training."""

from __future__ import annotations

from collections import Counter

from router.conversation import FOLLOW_UP, user_turns
from router.data import (
    BRIEFS,
    CALIB,
    CONVERSATIONS,
    REALISTIC,
    TEST,
    TRAIN,
    authored_examples,
    bucket,
    conversation_examples,
    conversations,
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
    chats = conversations()
    held_out = [e.text for e in authored if e.split == REALISTIC] + [
        turn for c in chats if c.split == CONVERSATIONS for turn in user_turns(c.messages)
    ]
    training = [e.text for e in authored if e.split in (TRAIN, CALIB)] + [
        e.text for e in conversation_examples(chats)
    ]
    leaks = [(a, b) for a in held_out for b in training if near_duplicate(a, b)]
    assert leaks == []


def test_every_authored_file_names_its_brief() -> None:
    sources = {e.source.split("/")[1] for e in authored_examples()}
    sources |= {c.source.split("/")[1] for c in conversations()}
    assert sources <= set(BRIEFS), sources - set(BRIEFS)


def test_briefs_the_training_never_saw_have_held_out_requests_for_every_domain() -> None:
    for brief in ("eval-c", "eval-d"):
        counts = Counter(e.domain for e in authored_examples() if e.source == f"authored/{brief}")
        for domain in load_taxonomy().ids:
            assert counts[domain] >= 15, (brief, domain)
        assert counts[None] >= 15, brief
    # Round 3's held-out probe set (brief V): smaller, still every domain and outside.
    counts = Counter(e.domain for e in authored_examples() if e.source == "authored/eval-e")
    assert all(counts[domain] >= 10 for domain in load_taxonomy().ids), counts
    assert counts[None] >= 20
    # Round 6's blind writers (W, U): 8 per domain and 16 outside each before leak control.
    for brief in ("eval-f", "eval-g"):
        counts = Counter(e.domain for e in authored_examples() if e.source == f"authored/{brief}")
        assert all(counts[domain] >= 4 for domain in load_taxonomy().ids), (brief, counts)
        assert counts[None] >= 10, brief


def test_training_chats_teach_follow_ups_and_held_out_chats_cover_both_kinds() -> None:
    chats = conversations()
    labels = Counter(e.domain for e in conversation_examples(chats))
    assert labels[FOLLOW_UP] >= 50
    held_out = Counter(c.last_turn for c in chats if c.split == CONVERSATIONS)
    assert held_out["follow"] >= 30 and held_out["own"] >= 15


def test_every_domain_and_outside_has_realistic_held_out_requests() -> None:
    counts = Counter(e.domain for e in authored_examples() if e.split == REALISTIC)
    for domain in load_taxonomy().ids:
        assert counts[domain] >= 20, domain
    assert counts[None] >= 100


def test_benchmark_rows_cover_train_calib_and_test() -> None:
    splits = Counter(e.split for e in load_corpus() if not e.source.startswith("authored"))
    assert splits[TRAIN] > splits[CALIB] > 0 and splits[TEST] > 0
    assert REALISTIC not in splits
