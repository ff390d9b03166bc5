"""The decompose-then-solve ``StateGraph``.

    START --route--> decompose --+--> solve ---------------------------> END   (static, the paper)
                 |               +--> answer_step (loop) --> solve_final --> END   (static, sequential)
                 |               +--> solve_one x N (Send) --> solve_final --> END (static, parallel)
                 |               +--> solve_direct -------------------------> END (no usable decomposition)
                 +--> propose <--> answer_step, then solve_final -----------> END   (dynamic)
                 +--> solve_direct --------------------------------------> END   (single)

``build_graph`` returns the builder; compile it yourself, with your checkpointer.
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import CachePolicy, RetryPolicy, Send

from divconq.contract import GRAPH_METADATA_KEY, GRAPH_NAME
from divconq.errors import DivconqError
from divconq.graph.state import DivConqState, InputState, OutputState
from divconq.nodes import nodes as N
from divconq.nodes.models import load_chat_model
from divconq.nodes.prompts import PromptSet, get_prompts

MODES = ("static", "dynamic", "single", "auto")
SOLVE_STRATEGIES = ("joint", "sequential", "parallel")
# Every step of a run is bounded by the caps; this keeps the worst case (2 steps per
# dynamic round plus three) under LangGraph's default recursion limit of 25.
MAX_CAP = 10
# Marks every node as part of a divconq graph, so a TraceRecorder (or a LangSmith import)
# finds each run of this graph however deeply it is nested in an agent or a parent graph.
NODE_METADATA = {GRAPH_METADATA_KEY: GRAPH_NAME}

Policy = Callable[[str, "str | None"], str]


def decompose_first(question: str, context: str | None) -> str:
    """The default ``auto`` policy: decompose statically; the decomposer may still say
    "No decomposition", and the run then answers single-stage."""
    return "static"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DivconqError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def _check_cap(name: str, value: int) -> None:
    if not isinstance(value, int) or not 1 <= value <= MAX_CAP:
        raise DivconqError(f"{name} must be an integer from 1 to {MAX_CAP}, got {value!r}")


def _run_settings(defaults: dict[str, str], config: RunnableConfig | None) -> tuple[str, str]:
    """Mode and solve strategy for this run: build-time defaults, overridable per call."""
    configurable = (config or {}).get("configurable", {}) or {}
    mode = configurable.get("mode", defaults["mode"])
    solve = configurable.get("solve", defaults["solve"])
    _check_choice("mode", mode, MODES)
    _check_choice("solve strategy", solve, SOLVE_STRATEGIES)
    return mode, solve


def _check_input(state: dict[str, Any]) -> tuple[str, str | None]:
    question = state.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DivconqError("the question is empty: invoke the graph with {'question': '<your question>'}")
    context = state.get("context")
    if context is not None and not isinstance(context, str):
        raise DivconqError(f"context must be a string or None, got {type(context).__name__}")
    return question.strip(), context


def _route(defaults: dict[str, str], policy: Policy, state: dict[str, Any], config: RunnableConfig) -> Send:
    """The routing edge from START: pick the route and start a fresh run on it."""
    question, context = _check_input(state)
    mode, solve = _run_settings(defaults, config)
    route = policy(question, context) if mode == "auto" else mode
    _check_choice("route from the auto policy", route, ("static", "dynamic", "single"))
    node = {"static": "decompose", "dynamic": "propose", "single": "solve_direct"}[route]
    payload = {"question": question, "context": context, "mode": mode, "solve": solve, "route": route, "entry": True}
    return Send(node, payload)


def _after_decompose(state: dict[str, Any]) -> str | list[Send]:
    if not state.get("subquestions"):
        return "solve_direct"
    if state["solve"] == "joint":
        return "solve"
    if state["solve"] == "sequential":
        return "answer_step"
    context = state.get("context")
    return [
        Send("solve_one", {"subquestion": q, "index": i, "context": context})
        for i, q in enumerate(state["subquestions"])
    ]


def _after_propose(state: dict[str, Any]) -> str:
    if state.get("pending"):
        return "answer_step"
    return "solve_final" if state.get("subquestions") else "solve_direct"


def _after_answer(state: dict[str, Any]) -> str:
    if state.get("route") == "dynamic":
        return "propose"
    done = len(state.get("sub_answers") or []) >= len(state.get("subquestions") or [])
    return "solve_final" if done else "answer_step"


def _scoped_key(scope: bytes, inner: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    key = inner(*args, **kwargs)
    return scope + b"|" + (key.encode() if isinstance(key, str) else key)


def _scoped_cache(policy: CachePolicy, decomposer: str | BaseChatModel, settings: N.NodeSettings) -> CachePolicy:
    """A cache policy whose keys also name the decomposer, prompts and cap.

    The node's input alone (the question) would let two graphs sharing one cache, say a
    teacher and a student, read each other's decompositions. Spec strings are stable
    across processes; a model object is only known by its identity in this one.
    """
    who = decomposer if isinstance(decomposer, str) else f"{type(decomposer).__qualname__}@{id(decomposer)}"
    scope = hashlib.sha256(repr((who, settings.prompts, settings.max_subquestions)).encode()).hexdigest()[:16]
    return CachePolicy(key_func=partial(_scoped_key, scope.encode(), policy.key_func), ttl=policy.ttl)


def build_graph(
    decomposer: str | BaseChatModel,
    solver: str | BaseChatModel,
    *,
    mode: str = "static",
    solve: str = "joint",
    task: str = "math",
    prompts: PromptSet | None = None,
    max_subquestions: int = 3,
    max_rounds: int = 3,
    policy: Policy = decompose_first,
    retry: RetryPolicy | None = None,
    cache_decomposer: bool | CachePolicy = False,
    review: bool = False,
) -> StateGraph:
    """The uncompiled divide-and-conquer graph.

    Args:
        decomposer, solver: chat models, or model specs for ``load_chat_model``.
        mode: "static" (the paper), "dynamic" (self-ask style), "single" or "auto";
            override per call with ``config={"configurable": {"mode": ...}}``.
        solve: static solving, "joint" (one solver call, the paper), "sequential" or
            "parallel" (one call per sub-question); overridable per call like ``mode``.
        task: prompt variant, "math", "reading" or "multihop"; ``prompts`` replaces it.
        max_subquestions: cap on static sub-questions (3 is the paper's best).
        max_rounds: cap on dynamic rounds.
        policy: for ``mode="auto"``, ``(question, context) -> "static"|"dynamic"|"single"``.
        retry: the ``RetryPolicy`` of every model-calling node; by default three attempts
            on connection errors, rate limits and server errors only.
        cache_decomposer: cache static decompositions (``True`` or a ``CachePolicy``);
            compile with a cache, e.g. ``compile(cache=InMemoryCache())``.
        review: pause after decomposition (``interrupt``) so a person can edit the
            sub-questions; needs a checkpointer, resume with ``Command(resume=[...])``.
    """
    _check_choice("mode", mode, MODES)
    _check_choice("solve strategy", solve, SOLVE_STRATEGIES)
    _check_cap("max_subquestions", max_subquestions)
    _check_cap("max_rounds", max_rounds)
    if not callable(policy):
        raise DivconqError(f"policy must be a function (question, context) -> route, got {policy!r}")
    settings = N.NodeSettings(
        decomposer=load_chat_model(decomposer, role=N.DECOMPOSER),
        solver=load_chat_model(solver, role=N.SOLVER),
        prompts=prompts or get_prompts(task),
        max_subquestions=max_subquestions,
        max_rounds=max_rounds,
    )
    if isinstance(cache_decomposer, bool):
        cache_decomposer = CachePolicy() if cache_decomposer else None
    if cache_decomposer is not None:
        cache_decomposer = _scoped_cache(cache_decomposer, decomposer, settings)
    return assemble_graph(
        settings, mode=mode, solve=solve, policy=policy, retry=retry, cache_decomposer=cache_decomposer, review=review
    )


def assemble_graph(
    settings: N.NodeSettings | None,
    *,
    mode: str = "static",
    solve: str = "joint",
    policy: Policy = decompose_first,
    retry: RetryPolicy | None = None,
    cache_decomposer: CachePolicy | None = None,
    review: bool = False,
) -> StateGraph:
    """Wire the nodes and edges. ``settings=None`` gives the bare structure, for drawing."""
    defaults = {"mode": mode, "solve": solve}
    retry = retry or RetryPolicy(max_attempts=3, retry_on=N.is_transient_error)
    builder = StateGraph(DivConqState, input_schema=InputState, output_schema=OutputState)
    for name, node in [
        ("decompose", N.decompose),
        ("propose", N.propose_next),
        ("answer_step", N.answer_step),
        ("solve", N.solve_joint),
        ("solve_one", N.solve_one),
        ("solve_final", N.solve_final),
        ("solve_direct", N.solve_direct),
    ]:
        cache = cache_decomposer if name == "decompose" else None
        builder.add_node(name, partial(node, settings), retry_policy=retry, cache_policy=cache, metadata=NODE_METADATA)
    builder.add_conditional_edges(START, partial(_route, defaults, policy), ["decompose", "propose", "solve_direct"])
    solving = ["solve", "answer_step", "solve_one", "solve_direct"]
    if review:
        builder.add_node("review", partial(N.review, settings), metadata=NODE_METADATA)
        builder.add_edge("decompose", "review")
        builder.add_conditional_edges("review", _after_decompose, solving)
    else:
        builder.add_conditional_edges("decompose", _after_decompose, solving)
    builder.add_conditional_edges("propose", _after_propose, ["answer_step", "solve_final", "solve_direct"])
    builder.add_conditional_edges("answer_step", _after_answer, ["propose", "answer_step", "solve_final"])
    builder.add_edge("solve_one", "solve_final")
    for last in ("solve", "solve_final", "solve_direct"):
        builder.add_edge(last, END)
    return builder
