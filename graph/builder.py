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
from langgraph.runtime import Runtime
from langgraph.types import CachePolicy, RetryPolicy, Send

from divconq.contract import (
    ANSWER_STEP_NODE,
    DECOMPOSE_NODE,
    GRAPH_METADATA_KEY,
    GRAPH_NAME,
    JOINT_SOLVE_NODE,
    MODES,
    PROPOSE_NODE,
    REVIEW_NODE,
    ROUTES,
    SOLVE_DIRECT_NODE,
    SOLVE_FINAL_NODE,
    SOLVE_ONE_NODE,
    SOLVE_STRATEGIES,
    Mode,
    Solve,
    Task,
)
from divconq.errors import DivconqError
from divconq.argcheck import check_choice
from divconq.graph.context import MAX_CAP, Context, check_cap, run_context
from divconq.graph.state import DivConqState, InputState, OutputState
from divconq.nodes import graph_nodes as N
from divconq.nodes.models import DEFAULT_TIMEOUT_SECONDS, load_chat_model, parse_spec
from divconq.nodes.prompts import PromptSet, get_prompts

__all__ = ["MAX_CAP", "MODES", "NODE_METADATA", "SOLVE_STRATEGIES", "assemble_graph", "build_graph", "decompose_first"]

# Marks every node as part of a divconq graph, so a TraceRecorder (or a LangSmith import)
# finds each run of this graph however deeply it is nested in an agent or a parent graph.
NODE_METADATA = {GRAPH_METADATA_KEY: GRAPH_NAME}

Policy = Callable[[str, "str | None"], str]


def decompose_first(question: str, context: str | None) -> str:
    """The default ``auto`` policy: decompose statically; the decomposer may still say
    "No decomposition", and the run then answers single-stage."""
    return "static"


def _check_input(state: DivConqState) -> tuple[str, str | None]:
    question = state.get("question")
    if question is not None and not isinstance(question, str):
        raise DivconqError(f"the question must be a string, got {type(question).__name__}: "
                           "invoke the graph with {'question': '<your question>'}")
    if not question or not question.strip():
        raise DivconqError("the question is empty: invoke the graph with {'question': '<your question>'}")
    context = state.get("context")
    if context is not None and not isinstance(context, str):
        raise DivconqError(f"context must be a string or None, got {type(context).__name__}")
    return question.strip(), context


def _route(
    defaults: dict[str, Any], policy: Policy, state: DivConqState, config: RunnableConfig, runtime: Runtime[Context]
) -> Send:
    """The routing edge from START: pick the route and start a fresh run on it."""
    question, context = _check_input(state)
    run = run_context(runtime.context, config, warn=True)
    if run.review and not defaults["review"]:
        raise DivconqError("context review=True needs a graph built with review: build_graph(..., review=True)")
    mode, solve = run.mode or defaults["mode"], run.solve or defaults["solve"]
    route = policy(question, context) if mode == "auto" else mode
    check_choice("route from the auto policy", route, ROUTES)
    node = {"static": DECOMPOSE_NODE, "dynamic": PROPOSE_NODE, "single": SOLVE_DIRECT_NODE}[route]
    payload = {"question": question, "context": context, "mode": mode, "solve": solve, "route": route, "entry": True}
    if run.models_or_prompts != (None, None, None, None):
        # In the node's input, so a cached decomposition is keyed by what this run overrides.
        payload["run_key"] = repr(run.models_or_prompts)
    return Send(node, payload)


def _after_decompose(state: DivConqState) -> str | list[Send]:
    if not state.get("subquestions"):
        return SOLVE_DIRECT_NODE
    if state["solve"] == "joint":
        return JOINT_SOLVE_NODE
    if state["solve"] == "sequential":
        return ANSWER_STEP_NODE
    context = state.get("context")
    return [
        Send(SOLVE_ONE_NODE, {"subquestion": q, "index": i, "context": context})
        for i, q in enumerate(state["subquestions"])
    ]


def _after_propose(state: DivConqState) -> str:
    if state.get("pending"):
        return ANSWER_STEP_NODE
    return SOLVE_FINAL_NODE if state.get("subquestions") else SOLVE_DIRECT_NODE


def _after_answer(state: DivConqState) -> str:
    if state.get("route") == "dynamic":
        return PROPOSE_NODE
    done = len(state.get("sub_answers") or []) >= len(state.get("subquestions") or [])
    return SOLVE_FINAL_NODE if done else ANSWER_STEP_NODE


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
    mode: Mode = "static",
    solve: Solve = "joint",
    task: Task = "math",
    prompts: PromptSet | None = None,
    max_subquestions: int = 3,
    max_rounds: int = 3,
    policy: Policy = decompose_first,
    retry: RetryPolicy | None = None,
    cache_decomposer: bool | CachePolicy = False,
    review: bool = False,
    lazy: bool = False,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
) -> StateGraph:
    """The uncompiled divide-and-conquer graph.

    Args:
        decomposer, solver: chat models, or model specs for ``load_chat_model``.
        mode: "static" (the paper), "dynamic" (self-ask style), "single" or "auto";
            override per call with ``context=Context(mode=...)`` (every run setting can be).
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
        lazy: load spec-string models on their first use instead of now (the specs are
            still checked now); LangGraph Studio's graph loads this way.
        timeout: seconds per request for models given as API specs (a hung server
            becomes a transient error, retried by ``retry``, then raised); ``None``
            waits forever. Chat model objects keep their own settings.
    """
    check_choice("mode", mode, MODES)
    check_choice("solve strategy", solve, SOLVE_STRATEGIES)
    check_cap("max_subquestions", max_subquestions)
    check_cap("max_rounds", max_rounds)
    if not callable(policy):
        raise DivconqError(f"policy must be a function (question, context) -> route, got {policy!r}")
    settings = N.NodeSettings(
        decomposer=_model_or_spec(decomposer, N.DECOMPOSER, lazy, timeout),
        solver=_model_or_spec(solver, N.SOLVER, lazy, timeout),
        timeout=timeout,
        prompts=prompts or get_prompts(task),
        max_subquestions=max_subquestions,
        max_rounds=max_rounds,
        review=review,
    )
    if isinstance(cache_decomposer, bool):
        cache_decomposer = CachePolicy() if cache_decomposer else None
    if cache_decomposer is not None:
        cache_decomposer = _scoped_cache(cache_decomposer, decomposer, settings)
    return assemble_graph(
        settings, mode=mode, solve=solve, policy=policy, retry=retry, cache_decomposer=cache_decomposer, review=review
    )


def _model_or_spec(model: str | BaseChatModel, role: str, lazy: bool, timeout: float | None) -> str | BaseChatModel:
    if lazy and isinstance(model, str):
        parse_spec(model)  # a bad spec fails now, not on the first question
        return model
    return load_chat_model(model, role=role, timeout=timeout)


def assemble_graph(
    settings: N.NodeSettings | None,
    *,
    mode: Mode = "static",
    solve: Solve = "joint",
    policy: Policy = decompose_first,
    retry: RetryPolicy | None = None,
    cache_decomposer: CachePolicy | None = None,
    review: bool = False,
) -> StateGraph:
    """Wire the nodes and edges. ``settings=None`` gives the bare structure, for drawing."""
    defaults = {"mode": mode, "solve": solve, "review": review}
    retry = retry or RetryPolicy(max_attempts=3, retry_on=N.is_transient_error)
    builder = StateGraph(DivConqState, context_schema=Context, input_schema=InputState, output_schema=OutputState)
    for name, node in [
        (DECOMPOSE_NODE, N.decompose),
        (PROPOSE_NODE, N.propose_next),
        (ANSWER_STEP_NODE, N.answer_step),
        (JOINT_SOLVE_NODE, N.solve_joint),
        (SOLVE_ONE_NODE, N.solve_one),
        (SOLVE_FINAL_NODE, N.solve_final),
        (SOLVE_DIRECT_NODE, N.solve_direct),
    ]:
        cache = cache_decomposer if name == DECOMPOSE_NODE else None
        builder.add_node(name, partial(node, settings), retry_policy=retry, cache_policy=cache, metadata=NODE_METADATA)
    entries = [DECOMPOSE_NODE, PROPOSE_NODE, SOLVE_DIRECT_NODE]
    builder.add_conditional_edges(START, partial(_route, defaults, policy), entries)
    solving = [JOINT_SOLVE_NODE, ANSWER_STEP_NODE, SOLVE_ONE_NODE, SOLVE_DIRECT_NODE]
    if review:
        builder.add_node(REVIEW_NODE, partial(N.review, settings), metadata=NODE_METADATA)
        builder.add_edge(DECOMPOSE_NODE, REVIEW_NODE)
        builder.add_conditional_edges(REVIEW_NODE, _after_decompose, solving)
    else:
        builder.add_conditional_edges(DECOMPOSE_NODE, _after_decompose, solving)
    builder.add_conditional_edges(PROPOSE_NODE, _after_propose, [ANSWER_STEP_NODE, SOLVE_FINAL_NODE, SOLVE_DIRECT_NODE])
    builder.add_conditional_edges(ANSWER_STEP_NODE, _after_answer, [PROPOSE_NODE, ANSWER_STEP_NODE, SOLVE_FINAL_NODE])
    builder.add_edge(SOLVE_ONE_NODE, SOLVE_FINAL_NODE)
    for last in (JOINT_SOLVE_NODE, SOLVE_FINAL_NODE, SOLVE_DIRECT_NODE):
        builder.add_edge(last, END)
    return builder
