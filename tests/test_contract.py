"""The graph's contract has one home: the parsers, the SFT builder, the metrics, the prompts
and the graph itself all read the same names, marker and normaliser from divconq.contract."""

from __future__ import annotations

from typing import get_args

import pytest
from fakes import ScriptedChatModel

from divconq import contract
from divconq.contract import ANSWER_LEAD, ANSWER_RE, DROP_SPAN_SEP, NodeName, normalise_answer
from divconq.distill.metrics import drop_score, strategyqa_accuracy
from divconq.distill.metrics import exact_match
from divconq.distill.sft import with_gold_answer
from divconq.graph import assemble_graph, build_graph
from divconq.nodes.parsing import extract_answer
from divconq.nodes.prompts import PROMPT_STYLES, get_prompts


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("  The  Quick-Brown fox! ", "quick brown fox"),
        (" The Answer!", "answer"),
        ("1,000", "1000"),
        ("$1,234.50", "1234.50"),
        ("3.5", "3.5"),
        ("72.", "72"),
        ("U.S.", "us"),
        ("Titan IIIE-Centaur", "titan iiie centaur"),
        ("A", "a"),  # only an article: kept, so a multiple-choice letter still compares
    ],
)
def test_normalise_answer(text, normalised):
    assert normalise_answer(text) == normalised


def test_exact_match_and_containment_compare_the_same_normal_form():
    for prediction, gold in [("The U.S.", "US"), ("3.5", "3.5"), ("1,000", "1000"), ("B", "b")]:
        assert exact_match(prediction, [gold])
    assert not exact_match("3.5", ["35"])


@pytest.mark.parametrize(
    "solution",
    ["Working.\nThe answer is: 7", "Working.\nthe final answer is 7", "Working.\nFinal answer: 7", "Working.\nAnswer: 7"],
)
def test_one_answer_marker_for_the_parser_the_sft_builder_and_the_metrics(solution):
    assert ANSWER_RE.search(solution)
    assert extract_answer(solution) == "7"
    # S_E-A puts the gold answer exactly where the parser reads the answer.
    text, appended = with_gold_answer(solution, "9")
    assert not appended and extract_answer(text) == "9" and "7" not in text.splitlines()[-1]
    assert strategyqa_accuracy(solution.replace("7", "yes, it is no trick"), "yes") == 1.0


def test_a_solution_without_the_marker_gets_the_prompts_lead():
    text, appended = with_gold_answer("Working it out.", "9")
    assert appended and text.endswith(f"\n{ANSWER_LEAD}9") and extract_answer(text) == "9"


def test_every_solver_prompt_asks_for_the_contract_marker():
    for style in PROMPT_STYLES:
        prompts = get_prompts("math", style=style)
        for name in ("solve_system", "solve_one_system", "solve_final_system", "direct_system"):
            assert f'"{ANSWER_LEAD}"' in getattr(prompts, name), (style, name)


def test_multispan_answers_travel_joined_by_the_contract_separator():
    assert drop_score(DROP_SPAN_SEP.join(["Smith", "Jones"]), ["Jones | Smith"]) == (1.0, 1.0)


def test_the_graph_has_exactly_the_contract_node_names():
    nodes = set(assemble_graph(None, review=True).compile().get_graph().nodes) - {"__start__", "__end__"}
    assert nodes == set(get_args(NodeName))
    assert contract.DECOMPOSER_NODES | contract.STEPWISE_NODES < nodes


def test_model_calls_are_traced_under_the_contract_node_names():
    decomposer = ScriptedChatModel(respond=lambda m: "1. How many apples did Tom buy?\n2. How many does he have?")
    solver = ScriptedChatModel(respond=lambda m: "1. 3\n2. 5\n\nThe answer is: 5")
    seen = []
    for chunk in build_graph(decomposer, solver).compile().stream({"question": "Tom has 2 apples and buys 3."}):
        seen += list(chunk)
    assert seen == [contract.DECOMPOSE_NODE, contract.JOINT_SOLVE_NODE]
