"""What the graph promises the code around it: names, metadata keys and the fixed choices.

A light module (no LangChain import), so the recorder, the CLI's argument parser and the
LangSmith importer can share these literals without loading models or the graph.
"""

from __future__ import annotations

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

Mode = Literal["static", "dynamic", "single", "auto"]
Route = Literal["static", "dynamic", "single"]
Solve = Literal["joint", "sequential", "parallel"]
Task = Literal["math", "reading", "multihop"]
Variant = Literal["decomposer", "solver"]
# Which runs a decomposer SFT set keeps: all (S_D-T), those whose answer matched gold (S_D-R),
# or the student's own sampled decompositions that led the solver to gold (S_D-S, divconq improve).
Screen = Literal["none", "gold", "self"]

MODES: tuple[Mode, ...] = get_args(Mode)
ROUTES: tuple[Route, ...] = get_args(Route)
SOLVE_STRATEGIES: tuple[Solve, ...] = get_args(Solve)
TASKS: tuple[Task, ...] = get_args(Task)
VARIANTS: tuple[Variant, ...] = get_args(Variant)
SCREENS: tuple[Screen, ...] = get_args(Screen)

# Every step of a run is bounded by the caps (max_subquestions, max_rounds); this keeps the
# worst case (2 steps per dynamic round plus three) under LangGraph's default recursion limit of 25.
MAX_CAP = 10

# Seconds an API model may take to answer one request before it counts as a transient
# error (retried by the graph's RetryPolicy, then reported): a server that accepts the
# connection and never answers must not hang a run. Long enough for a CPU model to write
# 256 tokens; `--timeout` and build_graph(timeout=) change it.
DEFAULT_TIMEOUT_SECONDS = 120.0
