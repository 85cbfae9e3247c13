"""The SLM-Bench hub loader's renderers, on a small local fixture with the hub data sets' columns
(no network in tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.evaluation.slm_bench import SOURCES, load_items

FIXTURES = Path(__file__).parents[1] / "fixtures" / "slm_bench"


@pytest.mark.parametrize("domain", sorted(SOURCES))
def test_every_hub_source_renders_valid_suite_items(domain: str) -> None:
    items = load_items(domain, limit=10, data_files=FIXTURES / f"{domain}.jsonl")
    assert items and all(i.domain == domain for i in items)
    assert all(i.source == f"slm-bench/{SOURCES[domain].path}" for i in items)


def test_rows_map_to_the_right_answers() -> None:
    race = load_items("education", 10, data_files=FIXTURES / "education.jsonl")
    assert [i.answer for i in race] == ["To the park", "On Sundays"]  # letters B and C
    assert race[0].prompt.endswith("Answer with one of the options.")
    qnli = load_items("linguistics", 10, data_files=FIXTURES / "linguistics.jsonl")
    assert [i.answer for i in qnli] == ["yes", "no"]  # 0 = entailment
    banking = load_items("customer_behaviors", 10, data_files=FIXTURES / "customer_behaviors.jsonl")
    assert [i.references for i in banking] == [("card arrival",), ("change pin",)]
    viggo = load_items("video_games", 10, data_files=FIXTURES / "video_games.jsonl")
    assert viggo[0].metric == "rouge_l" and viggo[0].answer == "Portal is an excellent puzzle game."


def test_rows_that_cannot_be_scored_are_skipped_and_the_limit_holds() -> None:
    news = load_items("news", 10, data_files=FIXTURES / "news.jsonl")
    assert [i.answer for i in news] == ["interest"]  # the row without a topic is skipped
    assert len(load_items("education", 1, data_files=FIXTURES / "education.jsonl")) == 1


def test_a_domain_without_a_hub_source_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no SLM-Bench hub source for 'physics'"):
        load_items("physics", 5)
