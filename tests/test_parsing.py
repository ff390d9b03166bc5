"""Parsers on realistic, messy model output. They must never raise on it."""

import pytest

from divconq.nodes import extract_answer, is_no_decomposition, parse_next_subquestion, parse_subquestions, split_sub_answers

JANET = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
    "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
    "egg. How much in dollars does she make every day at the farmers' market?"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "Sure! Here are the sub-questions:\n1. How many eggs does Janet use each day?\n"
            "2. How many eggs are left to sell?\n3. How much money does she make from them?\nI hope this helps!",
            ["How many eggs does Janet use each day?", "How many eggs are left to sell?", "How much money does she make from them?"],
        ),
        (
            "Sub-question 1: How many eggs does Janet eat and bake with?\nSub-question 2: How many eggs remain?",
            ["How many eggs does Janet eat and bake with?", "How many eggs remain?"],
        ),
        ("- How many eggs remain?\n- How many eggs remain?\n* How much does she earn per day?",
         ["How many eggs remain?", "How much does she earn per day?"]),
        ("**Sub-questions:**\n\n1. **How many eggs remain after baking?**\n2. **What is the daily income?**",
         ["How many eggs remain after baking?", "What is the daily income?"]),
        ("1. How many eggs remain? 2. How much does she earn?", ["How many eggs remain?", "How much does she earn?"]),
        ("How many eggs remain? How much does she earn?", ["How many eggs remain?", "How much does she earn?"]),
        ("Q1: How many eggs remain? Answer: 9\nQ2: How much money is that? A2: 18",
         ["How many eggs remain?", "How much money is that?"]),
        ("(1) How many eggs remain?\n(2) How much money is that?", ["How many eggs remain?", "How much money is that?"]),
        ("```\n1. How many eggs remain?\n```", ["How many eggs remain?"]),
        ("1. Calculate the eggs left after breakfast and baking\n2. Multiply the remaining eggs by the price",
         ["Calculate the eggs left after breakfast and baking", "Multiply the remaining eggs by the price"]),
    ],
)
def test_parse_subquestions_formats(text, expected):
    assert parse_subquestions(text, 3, question=JANET) == expected


def test_cap_keeps_the_first_ones():
    text = "\n".join(f"{i}. What is step number {i}?" for i in range(1, 7))
    assert parse_subquestions(text, 2) == ["What is step number 1?", "What is step number 2?"]


@pytest.mark.parametrize(
    "text",
    [
        "No decomposition",
        "No decomposition.",
        '"No decomposition"',
        "**No decomposition**",
        JANET,  # an echo of the main question
        "Janet's ducks lay 16 eggs per day.\nShe eats three.",  # restated facts, no questions
        "Here are the sub-questions:",
        "",
        "   \n\n  ",
        None,
        12345,
    ],
)
def test_unusable_output_gives_empty_decomposition(text):
    assert parse_subquestions(text, 3, question=JANET) == []


def test_echo_with_small_edits_is_dropped_but_the_final_question_is_kept():
    text = f"1. {JANET.replace('Janet', 'janet')}\n2. How much in dollars does she make every day at the farmers' market?"
    assert parse_subquestions(text, 3, question=JANET) == [
        "How much in dollars does she make every day at the farmers' market?"
    ]


def test_no_decomposition_detection():
    assert is_no_decomposition("No decomposition.")
    assert not is_no_decomposition("1. How many eggs remain?\nNote: no decomposition beyond this is needed")
    assert not is_no_decomposition(None)


def test_bad_cap_is_a_programming_error():
    with pytest.raises(ValueError, match="max_subquestions"):
        parse_subquestions("1. What?", 0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is: 18", "18"),
        ("She makes 9 * 2 = $18 every day.\nThe answer is: $18.", "18"),
        ("The final answer is **18**.", "18"),
        ("So the result is \\boxed{18}", "18"),
        ("The answer is: 18.\n\nWait, I made a mistake. The answer is: 20", "20"),
        ("Answer: yes", "yes"),
        ("The answer is:\n42", "42"),
        ("The answer is:\n\\[\n\\boxed{72}\n\\]", "72"),
        ("The answer is: $$ 72 $$", "72"),
        ("no marker at all\n18 dollars", "18 dollars"),
        ("", ""),
        (None, ""),
        (["not", "text"], ""),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_next_subquestion_stops_on_done_and_repeats():
    assert parse_next_subquestion("No more sub-questions", JANET, []) is None
    assert parse_next_subquestion("Done.", JANET, ["How many eggs remain?"]) is None
    assert parse_next_subquestion("Next: How many eggs remain?", JANET, []) == "How many eggs remain?"
    assert parse_next_subquestion("How many eggs remain?", JANET, ["how many eggs remain"]) is None
    assert parse_next_subquestion(None, JANET, []) is None


def test_split_joint_solution_into_sub_answers():
    text = "1. She uses 3 + 4 = 7 eggs.\n2. 16 - 7 = 9 remain.\n3. 9 * 2 = 18.\n\nThe answer is: 18"
    assert split_sub_answers(text, 3) == ["She uses 3 + 4 = 7 eggs.", "16 - 7 = 9 remain.", "9 * 2 = 18."]
    assert split_sub_answers("Sub-question 1: 7\nSub-question 2: 9\n\nThe answer is: 18", 2) == ["7", "9"]
    assert split_sub_answers("She makes 18 dollars. The answer is: 18", 2) == []


def test_the_audit_inputs_parse_to_what_they_hold():
    # These took 23.5 s, 82 s and 7.6 s in quadratic regexes (bench/parsers.py times them now).
    assert parse_subquestions("a" + " " * 32000 + "b") == []
    assert split_sub_answers("a" + "\n" * 32000 + "b", 2) == []
    assert extract_answer("a" + "\n" * 32000 + "b") == "b"


def test_runaway_replies_keep_their_useful_end():
    from divconq.nodes.parsing import MAX_DECOMPOSITION_CHARS, MAX_SOLUTION_CHARS

    junk = " \n" * (1 << 19)  # a megabyte of whitespace
    listing = "1. How many eggs remain?\n2. How much money is that?\n"
    assert parse_subquestions(listing + junk, 3) == ["How many eggs remain?", "How much money is that?"]
    assert extract_answer("Let me think." + junk + "The answer is: 18") == "18"
    assert split_sub_answers("1. 9 eggs\n2. 18 dollars\n\n" + junk, 2) == ["9 eggs", "18 dollars"]
    # What lies past the window is not read: a list that starts after it is not seen.
    assert parse_subquestions("x" * MAX_DECOMPOSITION_CHARS + "\n" + listing, 3) == []
    assert extract_answer("The answer is: 18\n" + "y" * MAX_SOLUTION_CHARS) == "y" * MAX_SOLUTION_CHARS
