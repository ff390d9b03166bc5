"""The linear-time parsers return exactly what the earlier (quadratic) ones did.

``data/parsing_golden.json`` holds a seeded corpus of messy decomposer and solver replies
(numbered and inline lists, labels, bullets, bold, code fences, answer markers, boxed
values, blank-line and whitespace runs) with what the parsers returned on each before the
rewrite; the corpus is rebuilt here from its seed, so the file cannot drift from it.
"""

import json
import random
from pathlib import Path

import pytest

from divconq.nodes import extract_answer, is_no_decomposition, parse_next_subquestion, parse_subquestions, split_sub_answers

QUESTION = "Janet's ducks lay 16 eggs per day. How much in dollars does she make every day at the farmers' market?"
PIECES = [
    "1.", "2.", "3.", "(1)", "2)", "3:", "Q1:", "Q2:", "A1:", "Sub-question 1:", "Sub-question 2:", "Step 2 -", "- ", "* ",
    "• ", "**", "`", "```", "```python", "# ", "How many eggs remain?", "How much does she earn?", "What is x?",
    "Find the total cost of the eggs", "Janet's ducks lay 16 eggs per day.", QUESTION, "The answer is", "The answer is:",
    "the final answer is", "Final answer:", "answer:", "Answer: 18", "\\boxed{18}", "\\[", "\\]", "$$", "$18", "18.",
    "No decomposition", "No more sub-questions", "Done.", "Next:", "?", ":", "=", "9", "42", "yes", "eggs", "and",
    " ", "  ", "\t", "\n", "\n\n", "\n\n\n", " \n ", "\r\n",
]


def corpus(n: int = 800, seed: int = 13) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) + rng.choice(["", " ", "\n"]) for _ in range(rng.randint(1, 24))) for _ in range(n)]


GOLDEN = json.loads((Path(__file__).parent / "data" / "parsing_golden.json").read_text(encoding="utf-8"))


def test_the_golden_corpus_is_the_seeded_one():
    assert [case["text"] for case in GOLDEN] == corpus()
    # It exercises every parser's non-trivial path, not only its empty answer.
    assert sum(bool(c["subquestions"]) for c in GOLDEN) > 300 and sum(bool(c["sub_answers"]) for c in GOLDEN) > 50
    assert sum(c["no_decomposition"] for c in GOLDEN) > 10 and sum(bool(c["next"]) for c in GOLDEN) > 150


@pytest.mark.parametrize("chunk", range(5))
def test_parsers_return_what_they_returned_before(chunk):
    for case in GOLDEN[chunk::5]:
        text = case["text"]
        assert parse_subquestions(text, 3, question=QUESTION) == case["subquestions"], text
        assert parse_next_subquestion(text, QUESTION, ["How many eggs remain?"]) == case["next"], text
        assert extract_answer(text) == case["answer"], text
        assert split_sub_answers(text, 2) == case["sub_answers"], text
        assert is_no_decomposition(text) == case["no_decomposition"], text
