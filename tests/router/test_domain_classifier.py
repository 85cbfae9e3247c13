"""The trained classifier on requests written for these tests (not taken from any data file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from router.classifier import DomainClassifier
from router.conversation import user_turns
from router.policy import Classification, RouteReason, RoutingTable, decide
from router.taxonomy import load_taxonomy
from router.train import load_or_train
from tests.router.conftest import CACHE, ROOT

CLEAR = {
    "open_domain": ["Who was the first president of the United States?"],
    "common_sense": [
        "My coworker sighed and rolled her eyes when I asked for help. Is she annoyed with me?"
    ],
    "physics": ["Why does a heavier object not fall faster than a light one in a vacuum?"],
    "mathematics": ["Solve for x: 3x + 7 = 22"],
    "education": ["Help me make flashcards to study for my biology exam on cell division"],
    "linguistics": [
        "Is 'who' or 'whom' correct in the sentence 'To ___ should I send the letter?'"
    ],
    "chemistry": ["Balance the chemical equation: C3H8 + O2 -> CO2 + H2O"],
    "food_beverage": ["Give me a simple recipe for banana bread without eggs"],
    "video_games": ["What's the best loadout for ranked matches in Call of Duty Warzone?"],
    "customer_behaviors": [
        "I was charged twice for the same purchase on my debit card, how do I get my money back?"
    ],
    "legal": ["Can my employer fire me for discussing my salary with coworkers?"],
    "news": ["Summarize the main headlines about the presidential election this week"],
    "healthcare": ["What are the side effects of taking ibuprofen every day for back pain?"],
    "finance": ["Should I put my savings in an index fund or pay down my mortgage faster?"],
}

OUTSIDE = [
    "Write a Python function that checks whether a string is a palindrome",
    "hi! how's it going?",
    "thanks so much, that was really helpful",
    "Write a short poem about autumn leaves",
    "My Bluetooth headphones won't pair with my laptop, what should I try?",
]


@pytest.mark.parametrize(("domain", "text"), [(d, t) for d, texts in CLEAR.items() for t in texts])
def test_clearly_worded_request_is_classified_into_its_domain(
    classifier: DomainClassifier, domain: str, text: str
) -> None:
    result = classifier.classify(text)
    assert result.domain == domain, result
    assert 0.0 <= result.confidence <= 1.0


@pytest.mark.parametrize("text", OUTSIDE)
def test_out_of_taxonomy_request_is_routed_to_the_general_model(
    classifier: DomainClassifier, text: str
) -> None:
    table = RoutingTable(domains=frozenset(classifier.domains))
    decision = decide("auto", classifier.classify(text), table, threshold=0.5)
    assert decision.adapter is None
    assert decision.reason in {RouteReason.NO_DOMAIN, RouteReason.LOW_CONFIDENCE}


def test_threshold_decides_between_the_domain_and_the_general_model(
    classifier: DomainClassifier,
) -> None:
    result = classifier.classify("Solve for x: 3x + 7 = 22")
    table = RoutingTable(
        domains=frozenset(classifier.domains),
        adapters={"m": "mathematics"},
        active={"mathematics": "m"},
    )
    below = decide("auto", result, table, threshold=min(1.0, result.confidence + 0.001))
    above = decide("auto", result, table, threshold=result.confidence)
    assert below.reason == RouteReason.LOW_CONFIDENCE and below.adapter is None
    assert above.reason == RouteReason.CLASSIFIED and above.adapter == "m"


def test_confidence_is_lower_for_an_ambiguous_request(classifier: DomainClassifier) -> None:
    clear = classifier.classify("Balance the chemical equation: C3H8 + O2 -> CO2 + H2O")
    # Ambiguous between domains (interest rates: finance? news? one's own account?). A request
    # with no topic at all ("can you help me with this thing") is a confident general-model
    # answer since round 3, which is right, so it no longer tests this.
    vague = classifier.classify("what do you think about the rates")
    assert vague.confidence < clear.confidence


def test_empty_text_goes_to_the_general_model(classifier: DomainClassifier) -> None:
    assert classifier.classify("   ") == Classification(None, 1.0)


def test_repeated_text_is_answered_from_the_cache(classifier: DomainClassifier) -> None:
    text = "Give me a simple recipe for banana bread without eggs, please"
    first = classifier.classify_many([text])
    second = classifier.classify_many([text])
    assert second.stages == ["cache"]
    assert second.results == first.results


def test_full_stage_takes_at_most_max_full_texts_the_least_sure_first(
    classifier: DomainClassifier,
) -> None:
    # Vague texts; which of them the fast stage is unsure of depends on the training data (the
    # follow-up label makes some confident), so the test takes three it is unsure of.
    pool = ["can you help me with this thing", "hmm what about that", "ok so, the usual?",
            "tell me more about it please", "I have a question about the thing from before",
            "what do you think of this one", "something something",
            "could you check this for me", "need some advice", "which one would you take",
            "i have a question about something", "not sure how to say this"]
    unsure = classifier.predict(pool).unsure
    texts = [text for text, flag in zip(pool, unsure, strict=True) if flag][:3]
    assert len(texts) == 3, "vague texts should want the full stage"
    capped = classifier.predict(texts, max_full=1)
    assert capped.used_full.sum() == 1
    fast = classifier.predict(texts, stage="fast")
    # By the fast stage's own top probability (what `unsure` is decided on; the reported
    # confidence folds the follow-up label into "outside").
    least_sure = int(fast.proba.max(axis=1).argmin())
    assert capped.used_full[least_sure]
    assert not classifier.predict(texts, max_full=0).used_full.any()


def test_custom_domain_listed_in_the_taxonomy_file_is_recognised(tmp_path: Path) -> None:
    default = (ROOT / "router" / "taxonomy.yaml").read_text()
    examples = [
        "what does my horoscope say for this week as a scorpio",
        "is a leo compatible with a capricorn in a relationship",
        "what is my rising sign if I was born at 6am",
        "explain what mercury retrograde means for my zodiac sign",
        "which zodiac signs are the most stubborn",
        "read my birth chart: sun in gemini, moon in pisces",
        "what are the personality traits of a virgo",
        "daily horoscope for aries please",
        "what does it mean to have venus in the seventh house",
        "are tarot readings and astrology the same thing",
        "which signs are fire signs in astrology",
        "what's the best zodiac match for a sagittarius",
    ]
    custom = default + (
        "  - id: astrology\n    label: Astrology\n"
        "    description: Horoscopes, zodiac signs, birth charts.\n    examples:\n"
        + "".join(f"      - {json.dumps(e)}\n" for e in examples)
    )
    taxonomy_file = tmp_path / "taxonomy.yaml"
    taxonomy_file.write_text(custom)
    classifier = load_or_train(load_taxonomy(taxonomy_file), CACHE, progress=lambda m: None)
    assert "astrology" in classifier.domains
    for text in ("what's the horoscope for taurus today?", "is a gemini a good match for a libra"):
        assert classifier.classify(text).domain == "astrology", text
    # The built-in domains still work next to the new one.
    assert classifier.classify("Solve for x: 3x + 7 = 22").domain == "mathematics"


# Conversations written for these tests (not taken from any data file).
REFUND_CHAT = [
    ("user", "I returned a pair of boots to your shop three weeks ago and the refund is missing"),
    ("assistant", "Refunds reach your card within 10 working days of the return."),
    ("user", "It has been way longer than that. What now?"),
]


def test_a_follow_up_without_its_own_topic_keeps_the_conversation_domain(
    classifier: DomainClassifier,
) -> None:
    alone = classifier.classify_turns(user_turns(REFUND_CHAT[-1:]))
    in_chat = classifier.classify_turns(user_turns(REFUND_CHAT))
    assert in_chat.domain == "customer_behaviors", (alone, in_chat)


def test_a_clear_new_topic_switches_the_domain(classifier: DomainClassifier) -> None:
    chat = [*REFUND_CHAT, ("user", "Unrelated: balance this equation, Al + O2 -> Al2O3")]
    assert classifier.classify_turns(user_turns(chat)).domain == "chemistry"


def test_the_system_prompt_does_not_route_the_conversation(classifier: DomainClassifier) -> None:
    chat = [("system", "You are a cooking assistant for recipes and restaurants."), *REFUND_CHAT]
    assert classifier.classify_turns(user_turns(chat)).domain == "customer_behaviors"


def test_classify_cli_answers_one_json_line_per_input(classifier: DomainClassifier) -> None:
    chat = [{"role": role, "content": text} for role, text in REFUND_CHAT]
    lines = [
        json.dumps({"text": "Solve for x: 3x + 7 = 22"}),
        "this is not json",
        json.dumps({"text": "hi! how's it going?"}),
        json.dumps({"messages": chat}),
        json.dumps({"messages": "not a list"}),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "classify"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(out) == 5
    assert out[0]["domain"] == "mathematics" and out[0]["route"] == "mathematics"
    assert 0.5 <= out[0]["confidence"] <= 1.0
    assert "error" in out[1]
    assert out[2]["route"] == "base"
    # The logic `auto` uses. Confidence is not compared exactly: the int8 MiniLM quantizes
    # activations per batch, so a turn scored alone or next to another differs slightly.
    same = classifier.classify_turns(user_turns(REFUND_CHAT))
    assert out[3]["domain"] == same.domain == "customer_behaviors"
    assert "error" in out[4]
    assert done.returncode == 1, "an invalid input line makes the exit status non-zero"
