"""Conversation-aware routing as pure functions: which turns count and how they combine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.conversation import MAX_TURNS, resolve, user_turns

# Columns: legal, healthcare, outside, follow-up.
LEGAL, HEALTH, OUTSIDE, FOLLOW = 0, 1, 2, 3


def p(
    legal: float = 0.0, health: float = 0.0, outside: float = 0.0, follow: float = 0.0
) -> np.ndarray[Any, np.dtype[Any]]:
    return np.array([legal, health, outside, follow])


def test_only_non_empty_user_turns_are_classified_and_the_system_prompt_stays_out() -> None:
    messages = [
        ("system", "You are a cooking assistant."),
        ("user", "My landlord kept my deposit."),
        ("assistant", "Normal wear and tear cannot be deducted."),
        ("user", "  "),
        ("user", "what if he ignores my letter?"),
    ]
    assert user_turns(messages) == ["My landlord kept my deposit.", "what if he ignores my letter?"]


def test_only_the_last_max_turns_user_turns_are_kept() -> None:
    messages = [("user", f"turn {i}") for i in range(MAX_TURNS + 3)]
    assert user_turns(messages) == [f"turn {i}" for i in range(3, MAX_TURNS + 3)]


def test_a_follow_up_without_its_own_topic_keeps_the_conversation_domain() -> None:
    resolved = resolve(
        [p(legal=0.9, outside=0.1), p(health=0.1, follow=0.9)], OUTSIDE, FOLLOW, persistence=0
    )
    assert resolved.argmax() == LEGAL
    assert resolved[LEGAL] == pytest.approx(0.81)
    assert resolved[FOLLOW] == 0.0
    assert resolved.sum() == pytest.approx(1.0)


def test_a_clear_new_topic_switches_the_domain() -> None:
    resolved = resolve([p(legal=0.95, outside=0.05), p(health=0.9, follow=0.1)], OUTSIDE, FOLLOW)
    assert resolved.argmax() == HEALTH


def test_a_switch_to_something_outside_the_taxonomy_goes_to_the_general_model() -> None:
    resolved = resolve([p(health=0.9, outside=0.1), p(outside=0.85, follow=0.15)], OUTSIDE, FOLLOW)
    assert resolved.argmax() == OUTSIDE


def test_a_follow_up_of_a_follow_up_inherits_through_the_chain() -> None:
    turns = [p(health=0.9, outside=0.1), p(follow=1.0), p(legal=0.1, follow=0.9)]
    assert resolve(turns, OUTSIDE, FOLLOW).argmax() == HEALTH


def test_a_follow_up_that_opens_the_conversation_goes_to_the_general_model() -> None:
    resolved = resolve([p(legal=0.2, follow=0.8)], OUTSIDE, FOLLOW)
    assert resolved.argmax() == OUTSIDE
    assert resolved[OUTSIDE] == pytest.approx(0.8)


def test_without_a_follow_up_label_the_last_turn_decides() -> None:
    last = np.array([0.3, 0.7, 0.0])
    assert np.array_equal(
        resolve([np.array([1.0, 0.0, 0.0]), last], 2, None, persistence=0), last
    )


def test_persistence_keeps_a_follow_up_with_a_content_word_on_the_conversation_topic() -> None:
    # "the second boss" after a games question: little follow-up mass, a weak wrong guess.
    turns = [p(legal=0.9, outside=0.1), p(legal=0.3, health=0.45, outside=0.2, follow=0.05)]
    assert resolve(turns, OUTSIDE, FOLLOW, persistence=0).argmax() == HEALTH
    assert resolve(turns, OUTSIDE, FOLLOW, persistence=2.0).argmax() == LEGAL


def test_persistence_does_not_stop_a_confident_switch() -> None:
    turns = [p(legal=0.95, outside=0.05), p(legal=0.05, health=0.9, follow=0.05)]
    resolved = resolve(turns, OUTSIDE, FOLLOW, persistence=2.0)
    assert resolved.argmax() == HEALTH
    assert resolved.sum() == pytest.approx(1.0)


def test_resolve_refuses_an_empty_conversation() -> None:
    with pytest.raises(ValueError):
        resolve([], OUTSIDE, FOLLOW)
