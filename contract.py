"""What the graph promises the code around it: names, metadata keys, the fixed choices and
the shape of an answer.

A light module (no LangChain import), so the recorder, the CLI's argument parser, the
LangSmith importer, the parsers, the SFT builder and the metrics share these literals
without loading models or the graph.
"""

from __future__ import annotations

import re
import string
from typing import Literal, get_args

GRAPH_NAME = "divconq"

# Every node of a divconq graph carries {GRAPH_METADATA_KEY: GRAPH_NAME} in its metadata
# (add_node(..., metadata=...)). A run whose tasks carry it is a divconq graph run, at any
# nesting level: inside an agent's tool call, as a subgraph node, or at the top.
GRAPH_METADATA_KEY = "divconq_graph"
# Every model call carries {ROLE_METADATA_KEY: "decomposer" | "solver"} and a "divconq:<role>" tag.
ROLE_METADATA_KEY = "divconq_role"
ROLE_TAG_PREFIX = "divconq:"

Role = Literal["decomposer", "solver"]
DECOMPOSER: Role = "decomposer"
SOLVER: Role = "solver"
ROLES: tuple[Role, ...] = get_args(Role)

# The graph's nodes. Traces name the node of each model call, so the SFT builder tells a
# static joint run from a stepwise or dynamic one by these names.
NodeName = Literal["decompose", "propose", "review", "answer_step", "solve", "solve_one", "solve_final", "solve_direct"]
DECOMPOSE_NODE: NodeName = "decompose"  # static: all sub-questions at once (the paper)
PROPOSE_NODE: NodeName = "propose"  # dynamic: the next sub-question, given the answers so far
REVIEW_NODE: NodeName = "review"  # pauses for a person to edit the sub-questions
ANSWER_STEP_NODE: NodeName = "answer_step"  # one sub-question, sequential and dynamic
JOINT_SOLVE_NODE: NodeName = "solve"  # one call answers every sub-question, then the question (the paper)
SOLVE_ONE_NODE: NodeName = "solve_one"  # one sub-question, parallel (Send)
SOLVE_FINAL_NODE: NodeName = "solve_final"  # the question, from the sub-answers
SOLVE_DIRECT_NODE: NodeName = "solve_direct"  # the question alone (single-stage)
DECOMPOSER_NODES = frozenset({DECOMPOSE_NODE, PROPOSE_NODE})
STEPWISE_NODES = frozenset({ANSWER_STEP_NODE, SOLVE_ONE_NODE, SOLVE_FINAL_NODE})  # one call per sub-question

Mode = Literal["static", "dynamic", "single", "auto"]
Route = Literal["static", "dynamic", "single"]
Solve = Literal["joint", "sequential", "parallel"]
Task = Literal["math", "reading", "multihop"]
Variant = Literal["decomposer", "solver"]
# Which runs a decomposer SFT set keeps: all (S_D-T), those whose answer matched gold (S_D-R),
# or the student's own sampled decompositions that led the solver to gold (S_D-S, divconq improve).
Screen = Literal["none", "gold", "self"]
AnswerSource = Literal["teacher", "gold"]  # SFT solver data: the teacher's final answer, or gold (S_E-A)
Shots = Literal["auto", "zero", "one"]  # decomposer prompt: auto shows one example to the bare embedded model
# Which library runs a local model: auto takes llama.cpp for `default` when it is built.
Engine = Literal["auto", "transformers", "llamacpp"]
# GGUF weight formats `divconq export` writes (q4_k_m through llama-quantize).
Quant = Literal["f32", "f16", "q8_0", "q4_k_m"]
# What each round of divconq improve trains: a new adapter on the base, or the round's student on.
TrainFrom = Literal["base", "student"]

MODES: tuple[Mode, ...] = get_args(Mode)
ROUTES: tuple[Route, ...] = get_args(Route)
SOLVE_STRATEGIES: tuple[Solve, ...] = get_args(Solve)
TASKS: tuple[Task, ...] = get_args(Task)
VARIANTS: tuple[Variant, ...] = get_args(Variant)
SCREENS: tuple[Screen, ...] = get_args(Screen)
ANSWER_SOURCES: tuple[AnswerSource, ...] = get_args(AnswerSource)
SHOTS: tuple[Shots, ...] = get_args(Shots)
ENGINES: tuple[Engine, ...] = get_args(Engine)
QUANTS: tuple[Quant, ...] = get_args(Quant)
TRAIN_FROM: tuple[TrainFrom, ...] = get_args(TrainFrom)

# Every step of a run is bounded by the caps (max_subquestions, max_rounds); this keeps the
# worst case (2 steps per dynamic round plus three) under LangGraph's default recursion limit of 25.
MAX_CAP = 10

# Seconds an API model may take to answer one request before it counts as a transient
# error (retried by the graph's RetryPolicy, then reported): a server that accepts the
# connection and never answers must not hang a run. Long enough for a CPU model to write
# 256 tokens; `--timeout` and build_graph(timeout=) change it.
DEFAULT_TIMEOUT_SECONDS = 120.0


# --------------------------------------------------------------------------- answers

# Every solver prompt asks for a last line "The answer is: ..."; the parser reads what
# follows the last marker, and S_E-A data puts the gold answer there.
ANSWER_MARKER = "The answer is"
ANSWER_LEAD = f"{ANSWER_MARKER}: "  # what a prompt tells the model to write before its answer
# The marker as models write it: "The answer is", "the final answer is:", "Final answer:",
# or "Answer:" opening a line (not "answer:" inside a sentence).
ANSWER_RE = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?|final\s+answer\s*[:：]|^[^\S\n]*answer\s*[:：]",
    re.IGNORECASE | re.MULTILINE,
)

# A multi-span answer (DROP) as one string: in ``Example.answers`` and in model output.
DROP_SPAN_SEP = " | "

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_SEPARATORS = re.compile(r"[-\u2010-\u2015/_]")
_PUNCTUATION = re.compile("(?<!\\d)\\.|\\.(?!\\d)|[" + re.escape(string.punctuation.replace(".", "")) + "]")


def normalise_answer(text: str) -> str:
    """The one answer normaliser: two answers that normalise alike say the same thing.

    Lower case; hyphens, dashes, slashes and underscores separate words ('Titan
    IIIE-Centaur' holds 'Titan IIIE'); other punctuation goes, so 'U.S.' is 'us' and
    '1,000' is '1000', except a decimal point ('3.5' stays apart from '35'); the articles
    a, an, the go unless nothing else is left (a choice 'A' stays 'a'); spaces collapse.
    Exact match (the recorder's default) and containment (Bamboogle) compare these.
    The official DROP evaluator keeps its own normalisation (``distill.metrics``).
    """
    text = _PUNCTUATION.sub("", _SEPARATORS.sub(" ", text.lower()))
    words = text.split()
    kept = _ARTICLES.sub(" ", " ".join(words)).split()
    return " ".join(kept or words)
