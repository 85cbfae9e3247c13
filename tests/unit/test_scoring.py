"""Suite scoring on answers whose scores are known by hand."""

from __future__ import annotations

import pytest

from adapters.evaluation.scoring import (
    continuation_logprob,
    exact_match,
    likelihood_method,
    match_option,
    pick_option,
    rouge_l,
    score_text,
    token_f1,
)


def test_exact_match_ignores_case_punctuation_articles_and_what_follows_the_first_line() -> None:
    assert exact_match("The Eiffel Tower.\nIt was built in 1889.", ["Eiffel tower"]) == 1.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("", ["Paris"]) == 0.0


def test_token_f1_gives_partial_credit() -> None:
    assert token_f1("Paris, France", ["Paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("Berlin", ["Paris"]) == 0.0
    assert token_f1("the cat sat", ["cat sat"]) == 1.0


def test_rouge_l_is_the_f_measure_of_the_longest_common_subsequence() -> None:
    # LCS("the cat sat on the mat", "the cat lay on the mat") = 5 of 6 words each side.
    assert rouge_l("the cat sat on the mat", ["the cat lay on the mat"]) == pytest.approx(5 / 6)
    assert rouge_l("entirely different words", ["the cat"]) == 0.0
    assert rouge_l("the cat", ["a dog", "the cat"]) == 1.0  # best reference


def test_likelihood_picks_the_highest_sum_or_the_highest_per_character() -> None:
    options = ["no", "a longer option"]
    assert pick_option([-3.0, -6.0], options, "loglik") == 0
    assert pick_option([-3.0, -6.0], options, "loglik_norm") == 1  # -1.5 vs -0.4 per character
    assert pick_option([-1.0, -1.0], ["x", "y"], "loglik") == 0  # ties: the first
    with pytest.raises(ValueError):
        pick_option([-1.0], options, "loglik")
    with pytest.raises(ValueError):
        pick_option([-1.0, -2.0], options, "exact_match")


def test_acc_norm_is_the_convention_only_for_the_sources_lm_eval_reports_it_for() -> None:
    assert [likelihood_method(s) for s in ("arc_easy", "hellaswag", "piqa", "openbookqa")] == [
        "loglik_norm"] * 4
    assert likelihood_method("mmlu/anatomy") == likelihood_method("boolq") == "loglik"


def test_continuation_logprob_sums_the_option_tokens_only() -> None:
    ids = [5, 6, 7, 8]
    logprobs = [None, {"6": {"logprob": -1.0}}, {"7": {"logprob": -0.5}, "1": {"logprob": -0.1}},
                {"8": {"logprob": -0.25}}]
    assert continuation_logprob(logprobs, ids, 2) == -0.75
    with pytest.raises(ValueError, match="no log-probability"):
        continuation_logprob([None, None, None, {"9": {"logprob": 0.0}}], ids, 3)
    with pytest.raises(ValueError):
        continuation_logprob(logprobs, ids, 4)  # an empty continuation


def test_score_text_refuses_a_metric_that_is_not_about_text() -> None:
    assert score_text("exact_match", "yes", ["Yes"]) == 1.0
    with pytest.raises(ValueError, match="accuracy"):
        score_text("accuracy", "yes", ["Yes"])


def test_an_answer_is_matched_to_the_option_it_names() -> None:
    options = ["Paris", "New York City", "York"]
    assert match_option("paris.", options) == 0  # the whole first line, normalised
    assert match_option("It is New York City, of course", options) == 1  # longest contained
    assert match_option("york\nNew York City", options) == 2  # only the first line counts
    assert match_option("The big apple city", ["Paris", "New York City"]) == 1  # word overlap
    assert match_option("No idea.", options) is None
