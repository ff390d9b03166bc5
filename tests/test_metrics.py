"""Metric worked cases, including edge cases of the official DROP evaluator."""

from __future__ import annotations

import itertools
import random

import pytest

from divconq.distill.metrics import (
    _max_assignment,
    bamboogle_accuracy,
    drop_score,
    get_metrics,
    gsm8k_em,
    score,
    strategyqa_accuracy,
)

# --------------------------------------------------------------------------- GSM8K


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("18", "18", 1.0),
        ("She has 18 dollars", "18", 1.0),
        ("The answer is $1,000.", "1000", 1.0),
        ("1000", "1,000", 1.0),
        ("It costs $5", "5", 1.0),
        ("18.00", "18", 1.0),
        ("18.0", "#### 18", 1.0),
        ("50%", "50", 1.0),
        ("The temperature is -5 degrees", "-5", 1.0),
        ("-5", "5", 0.0),
        ("She paid -$3", "-3", 1.0),
        ("16 - 3 - 4 = 9", "9", 1.0),  # hyphens between numbers are minus signs, not negatives
        ("It spread in COVID-19", "19", 1.0),
        ("I first got 17, then 18", "18", 1.0),  # the last number counts
        ("18 apples, then 17", "18", 0.0),
        (".5 of them", "0.5", 1.0),
        ("1,000,000 stars", "1000000", 1.0),
        ("#### 72\nBecause 3 + 4", "72", 1.0),  # GSM8K format: first number after '####'
        ("no idea", "18", 0.0),
        ("", "18", 0.0),
        ("18", "Janet sells 9 eggs.\n#### 18", 1.0),
        ("3.5", "3.50", 1.0),
        ("3.5", "35", 0.0),
    ],
)
def test_gsm8k_em(prediction: str, gold: str, expected: float) -> None:
    assert gsm8k_em(prediction, gold) == expected


# --------------------------------------------------------------------------- DROP official metric


def test_drop_article_removal_and_case() -> None:
    assert get_metrics("The Patriots", "patriots") == (1.0, 1.0)
    assert get_metrics("an apple", "apple") == (1.0, 1.0)


def test_drop_number_normalisation() -> None:
    assert get_metrics("1,000", "1000") == (1.0, 1.0)
    assert get_metrics("1000.0", "1000") == (1.0, 1.0)
    assert get_metrics("2.50", "2.5") == (1.0, 1.0)


def test_drop_number_mismatch_gives_zero_f1_despite_word_overlap() -> None:
    assert get_metrics("5 yards", "6 yards") == (0.0, 0.0)
    # A gold without numbers is not constrained by the prediction's numbers.
    assert get_metrics("5 yards", "yards") == (0.0, 0.67)


def test_drop_number_match_with_extra_words_is_partial() -> None:
    assert get_metrics("28", "28 yards") == (0.0, 0.67)


def test_drop_partial_span_f1() -> None:
    assert get_metrics("New York City", "New York") == (0.0, 0.8)


def test_drop_hyphen_is_a_token_boundary() -> None:
    assert get_metrics("Titan-IIIE", "titan iiie") == (1.0, 1.0)


def test_drop_multispan_alignment_is_order_free() -> None:
    assert get_metrics(["Tom", "Jerry"], ["Jerry", "Tom"]) == (1.0, 1.0)


def test_drop_multispan_missing_and_extra_spans_are_penalised() -> None:
    assert get_metrics(["Tom"], ["Tom", "Jerry"]) == (0.0, 0.5)
    assert get_metrics(["Tom", "Jerry", "Spike"], ["Tom", "Jerry"]) == (0.0, 0.67)
    assert get_metrics(["Tom", "Tom"], ["Tom", "Jerry"]) == (0.0, 0.5)  # one-to-one alignment


def test_drop_string_is_one_span_like_the_official_evaluator() -> None:
    # {'tom', 'and', 'jerry'} vs {'tom'}: F1 0.5 on one gold span, 0 on the other -> 0.25.
    assert get_metrics("Tom and Jerry", ["Tom", "Jerry"]) == (0.0, 0.25)


def test_drop_score_splits_strings_on_bar() -> None:
    assert drop_score("Tom | Jerry", ["Jerry | Tom"]) == (1.0, 1.0)
    assert drop_score(["Jerry", "Tom"], ["Tom | Jerry"]) == (1.0, 1.0)
    assert drop_score("Tom, Jerry", [["Tom", "Jerry"]]) == (0.0, 0.33)


def test_drop_score_takes_max_over_golds_separately() -> None:
    assert drop_score("Jerry", ["Tom | Jerry", "Jerry"]) == (1.0, 1.0)
    assert drop_score("Jerry", ["Tom | Jerry"]) == (0.0, 0.5)
    assert drop_score("the 8 September", ["8 September", "27 August"]) == (1.0, 1.0)


def test_drop_score_skips_blank_golds() -> None:
    assert drop_score("anything", ["", "   "]) == (0.0, 0.0)
    assert drop_score("3", ["", "3"]) == (1.0, 1.0)


def test_max_assignment_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n, m = rng.randint(1, 5), rng.randint(1, 5)
        scores = [[rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(m)] for _ in range(n)]
        if n <= m:
            best = max(sum(scores[i][p[i]] for i in range(n)) for p in itertools.permutations(range(m), n))
        else:
            best = max(sum(scores[p[j]][j] for j in range(m)) for p in itertools.permutations(range(n), m))
        pairs = _max_assignment(scores)
        assert len(pairs) == min(n, m)
        assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
        assert sum(scores[r][c] for r, c in pairs) == pytest.approx(best)


def test_max_assignment_empty() -> None:
    assert _max_assignment([]) == []
    assert _max_assignment([[], []]) == []


# --------------------------------------------------------------------------- Bamboogle


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("It was James Madison.", ["james madison"], 1.0),
        ("james madison", "James Madison", 1.0),
        ("Titan IIIE-Centaur", ["Titan IIIE"], 1.0),
        ("The U.S. did it", ["US"], 1.0),
        ("18120", ["1812"], 0.0),
        ("Madison", ["James Madison"], 0.0),
        ("Jewish", ["Catholic", "jewish"], 1.0),
        ("anything", [""], 0.0),
    ],
)
def test_bamboogle_accuracy(prediction: str, golds: list[str] | str, expected: float) -> None:
    assert bamboogle_accuracy(prediction, golds) == expected


def test_bamboogle_reads_numbers_as_numbers() -> None:
    assert bamboogle_accuracy("about 3.5 miles", ["3.5"]) == 1.0
    assert bamboogle_accuracy("about 35 miles", ["3.5"]) == 0.0  # a decimal point is not punctuation
    assert bamboogle_accuracy("It had 1,000 seats", ["1000"]) == 1.0
    assert bamboogle_accuracy("A", ["a"]) == 1.0  # a one-letter choice is not an article to drop


# --------------------------------------------------------------------------- StrategyQA


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Yes, because mammals...", "yes", 1.0),
        ("No.", True, 0.0),
        ("No.", False, 1.0),
        ("True", "yes", 1.0),
        ("false", "no", 1.0),
        ("Thinking: is it yes? So the answer is no.", "no", 1.0),
        ("Answer: Yes", "yes", 1.0),
        ("I cannot tell", "yes", 0.0),
        ("yesterday it rained", "yes", 0.0),
        ("", "no", 0.0),
    ],
)
def test_strategyqa_accuracy(prediction: str, gold: str | bool, expected: float) -> None:
    assert strategyqa_accuracy(prediction, gold) == expected


# --------------------------------------------------------------------------- dispatcher


def test_score_dispatch() -> None:
    assert score("gsm8k", "So she makes $18 a day.", ("18",)) == {"score": 1.0}
    assert score("drop", "Tom | Jerry", ("Jerry | Tom",)) == {"score": 1.0, "f1": 1.0}
    assert score("DROP", "New York City", ("New York",)) == {"score": 0.0, "f1": 0.8}
    assert score("bamboogle", "It was James Madison.", ("james madison",)) == {"score": 1.0}
    assert score("hotpotqa", "Chief of Protocol", ("Chief of Protocol",)) == {"score": 1.0}
    assert score("strategyqa", "No, it cannot.", ("no",)) == {"score": 1.0}
    assert score("jsonl", "the answer is Paris", ("paris",)) == {"score": 1.0}


def test_score_errors() -> None:
    with pytest.raises(ValueError, match="no gold answers"):
        score("break", "x", ())
    with pytest.raises(ValueError, match="no metric for dataset 'squad'"):
        score("squad", "x", ("a",))
