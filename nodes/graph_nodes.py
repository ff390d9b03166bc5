"""The decomposer and solver nodes.

Each node takes the graph state (plain, serialisable values) and a ``RunnableConfig``
and returns a state update. Models live in ``NodeSettings``, never in the state. Every
model call goes through ``call_model``, which threads the config (callbacks, tracing,
tags) into the model and tags the call with its role so a ``TraceRecorder`` can tell
decomposer calls from solver calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.runtime import Runtime
from langgraph.types import Overwrite, interrupt

from divconq.contract import DECOMPOSER, DEFAULT_TIMEOUT_SECONDS, ROLE_METADATA_KEY, ROLE_TAG_PREFIX, SOLVER
from divconq.nodes import prompts as P
from divconq.nodes.parsing import (
    extract_answer,
    is_no_decomposition,
    parse_next_subquestion,
    parse_subquestions,
    split_sub_answers,
)


@dataclass(frozen=True)
class NodeSettings:
    """What the nodes need besides the state: the two models, prompts and caps.

    A model may be a spec string, loaded on first use (``load_chat_model`` caches local
    models per process), so a graph builds in no time and loads what a run needs.
    """

    decomposer: BaseChatModel | str
    solver: BaseChatModel | str
    prompts: P.PromptSet
    max_subquestions: int = 3
    max_rounds: int = 3
    review: bool = False  # the graph has a review node
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS  # per request, for models given as API specs
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def model(self, role: str) -> BaseChatModel:
        """The chat model of ``role``, loaded on its first use when given as a spec."""
        model = self.decomposer if role == DECOMPOSER else self.solver
        if not isinstance(model, str):
            return model
        key = ("model", role, model)
        if key not in self._cache:
            from divconq.nodes.models import load_chat_model

            self._cache[key] = load_chat_model(model, role=role, timeout=self.timeout)
        return self._cache[key]

    def for_run(self, context: Any, config: RunnableConfig | None) -> NodeSettings:
        """These settings with this run's context (``Runtime[Context]``) applied."""
        from divconq.graph.context import run_context
        from divconq.nodes.models import needs_one_shot

        ctx = run_context(context, config)
        decomposer, solver, task, cap = ctx.models_or_prompts
        if (decomposer, solver, task, cap) == (None, None, None, None) and ctx.review is None:
            return self
        key = ("run", decomposer, solver, task, cap, ctx.review)
        if key not in self._cache:
            prompts = self.prompts
            if task is not None:
                shown = decomposer if decomposer is not None else self.decomposer
                # The graph's own wording carries over to the new task (a custom set falls back to ours).
                style = self.prompts.name if self.prompts.name in P.PROMPT_STYLES else "divconq"
                prompts = P.get_prompts(task, one_shot=isinstance(shown, str) and needs_one_shot(shown), style=style)
            self._cache[key] = replace(
                self, decomposer=decomposer or self.decomposer, solver=solver or self.solver, prompts=prompts,
                max_subquestions=cap or self.max_subquestions,
                review=self.review if ctx.review is None else ctx.review, _cache=self._cache,
            )
        return self._cache[key]


def is_transient_error(exc: BaseException) -> bool:
    """Errors that mean "the model server is unreachable or overloaded": worth a retry."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {
        "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError",
        "ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError",
        "ConnectionError", "TimeoutError",
    })


def emit(**event: Any) -> None:
    """Send a ``stream_mode="custom"`` event; a no-op outside a graph run."""
    from langgraph.config import get_stream_writer

    try:
        writer = get_stream_writer()
    except RuntimeError:
        return
    writer(event)


def _text(message: Any) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):  # content blocks: keep the text parts
        return "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
    return content if isinstance(content, str) else str(content)


def call_model(
    model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig | None, role: str
) -> tuple[str, dict[str, dict[str, float]]]:
    """Invoke ``model`` with the run's config; return its text and a usage update for ``role``."""
    tagged = merge_configs(config, {"metadata": {ROLE_METADATA_KEY: role}, "tags": [f"{ROLE_TAG_PREFIX}{role}"]})
    started = time.perf_counter()
    reply = model.invoke(messages, config=tagged)
    seconds = time.perf_counter() - started
    usage = getattr(reply, "usage_metadata", None) or {}
    stats = {
        "calls": 1,
        "input_tokens": int(usage.get("input_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "seconds": seconds,
    }
    return _text(reply), {role: stats}


def fresh_run(state: dict[str, Any]) -> dict[str, Any]:
    """Reset values for a new run on a thread that may hold an earlier run's state.

    The routing edge marks the first node of each run with ``entry``; only that node
    clears what the previous question left behind (a checkpointer keeps it).
    """
    if not state.get("entry"):
        return {}
    emit(event="route", mode=state.get("mode"), route=state.get("route"), question=state["question"])
    return {
        "question": state["question"],
        "context": state.get("context"),
        "mode": state.get("mode"),
        "solve": state.get("solve"),
        "route": state.get("route"),
        "subquestions": [],
        "sub_answers": [],
        "decomposition": None,
        "solution": None,
        "answer": None,
        "fallback_reason": None,
        # Overwrite bypasses the accumulating reducers: the previous run's totals go.
        "parallel_answers": Overwrite([]),
        "usage": Overwrite({}),
    }


def _with_usage(update: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    if isinstance(update.get("usage"), Overwrite):
        usage = Overwrite(usage)  # the first node of a run: its usage starts the totals
    return {**update, "usage": usage}


def decompose(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """Static decomposition: all sub-questions in one decomposer call."""
    settings = settings.for_run(runtime.context, config)
    update = fresh_run(state)
    messages = P.decompose_messages(
        settings.prompts, state["question"], state.get("context"), settings.max_subquestions
    )
    text, usage = call_model(settings.model(DECOMPOSER), messages, config, DECOMPOSER)
    subquestions = parse_subquestions(text, settings.max_subquestions, question=state["question"])
    update.update(decomposition=text, subquestions=subquestions, route="static")
    if not subquestions:
        reason = (
            "decomposer answered 'No decomposition'"
            if is_no_decomposition(text)
            else "decomposer output held no usable sub-questions"
        )
        update.update(route="single", fallback_reason=reason)
        emit(event="route", route="single", reason=reason)
    emit(event="subquestions", subquestions=subquestions)
    return _with_usage(update, usage)


def propose_next(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """One dynamic (self-ask style) step: the next sub-question, or none when done."""
    settings = settings.for_run(runtime.context, config)
    update = fresh_run(state)
    asked = [] if update else list(state.get("subquestions") or [])
    answers = [] if update else list(state.get("sub_answers") or [])
    if len(asked) >= settings.max_rounds:  # the cap: no model call, go answer
        return {**update, "pending": None}
    messages = P.next_subquestion_messages(settings.prompts, state["question"], state.get("context"), asked, answers)
    text, usage = call_model(settings.model(DECOMPOSER), messages, config, DECOMPOSER)
    following = parse_next_subquestion(text, question=state["question"], asked=asked)
    previous = (state.get("decomposition") or "") if not update else ""
    update.update(pending=following, decomposition=(previous + "\n" + text).strip(), route="dynamic")
    if following is None and not asked:
        update.update(route="single", fallback_reason="dynamic decomposer proposed no usable first sub-question")
        emit(event="route", route="single", reason=update["fallback_reason"])
    elif following is not None:
        update["subquestions"] = asked + [following]
    return _with_usage(update, usage)


def answer_step(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """Answer the next unanswered sub-question, with the earlier ones as context."""
    settings = settings.for_run(runtime.context, config)
    subquestions = list(state["subquestions"])
    answers = list(state.get("sub_answers") or [])
    index = len(answers)
    messages = P.solve_one_messages(
        settings.prompts, subquestions[index], state.get("context"), subquestions[:index], answers
    )
    text, usage = call_model(settings.model(SOLVER), messages, config, SOLVER)
    return {"sub_answers": answers + [extract_answer(text) or text.strip()], "usage": usage}


def solve_joint(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """The paper's solver: one call answers the sub-questions in order, then the question."""
    settings = settings.for_run(runtime.context, config)
    subquestions = list(state["subquestions"])
    messages = P.solve_messages(settings.prompts, state["question"], state.get("context"), subquestions)
    text, usage = call_model(settings.model(SOLVER), messages, config, SOLVER)
    return {
        "solution": text,
        "answer": extract_answer(text),
        "sub_answers": split_sub_answers(text, len(subquestions)),
        "usage": usage,
    }


def solve_one(
    settings: NodeSettings, task: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """Answer one sub-question on its own (a parallel branch, sent with ``Send``)."""
    settings = settings.for_run(runtime.context, config)
    messages = P.solve_one_messages(settings.prompts, task["subquestion"], task.get("context"))
    text, usage = call_model(settings.model(SOLVER), messages, config, SOLVER)
    answer = extract_answer(text) or text.strip()
    # Branches finish in any order; the index puts each answer back in its place.
    return {"parallel_answers": [{"index": task["index"], "answer": answer}], "usage": usage}


def solve_final(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """Answer the original question from its answered sub-questions."""
    settings = settings.for_run(runtime.context, config)
    subquestions = list(state.get("subquestions") or [])
    answers = list(state.get("sub_answers") or [])
    update: dict[str, Any] = {}
    parallel = sorted(state.get("parallel_answers") or [], key=lambda item: item["index"])
    if parallel:
        answers = [item["answer"] for item in parallel]
        update["sub_answers"] = answers
    subquestions = subquestions[: len(answers)]  # a dynamic run may stop before answering the last
    messages = P.solve_final_messages(settings.prompts, state["question"], state.get("context"), subquestions, answers)
    text, usage = call_model(settings.model(SOLVER), messages, config, SOLVER)
    return {**update, "subquestions": subquestions, "solution": text, "answer": extract_answer(text), "usage": usage}


def solve_direct(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """The single-stage baseline, and the fallback when a decomposition is unusable."""
    settings = settings.for_run(runtime.context, config)
    update = fresh_run(state)
    messages = P.direct_messages(settings.prompts, state["question"], state.get("context"))
    text, usage = call_model(settings.model(SOLVER), messages, config, SOLVER)
    update.update(solution=text, answer=extract_answer(text), route="single", subquestions=[], sub_answers=[])
    return _with_usage(update, usage)


KEEP = "keep"


def _resume_problem(value: Any) -> str | None:
    """Why a resume value is not a list of sub-question strings, or None when it is."""
    if not isinstance(value, (list, tuple)):
        return f"got {type(value).__name__}"
    for i, item in enumerate(value, 1):
        if not isinstance(item, str):
            return f"item {i} is {type(item).__name__}, not a string"
    return None


def review(
    settings: NodeSettings, state: dict[str, Any], config: RunnableConfig, runtime: Runtime
) -> dict[str, Any]:
    """Human in the loop: pause after decomposition so a person can edit the sub-questions.

    Resume with ``Command(resume=[...sub-questions...])``, or ``Command(resume="keep")``
    to keep them; an empty list answers single-stage. A value that is not a list of
    strings pauses the run again with the problem in the interrupt's ``error`` field,
    so a slip of the reviewer never wedges the thread. ``Context(review=False)`` skips it.
    """
    settings = settings.for_run(runtime.context, config)
    if not settings.review:
        return {}
    payload: dict[str, Any] = {
        "question": state["question"],
        "subquestions": list(state.get("subquestions") or []),
        "resume_with": "Command(resume=['<sub-question>', ...]) to edit, Command(resume='keep') to keep",
    }
    while True:
        edited = interrupt(payload)
        if edited == KEEP:
            return {}
        problem = _resume_problem(edited)
        if problem is None:
            break
        payload = {**payload, "error": f"resume value must be a list of sub-question strings ({problem}): "
                   "resume with Command(resume=['first sub-question?', ...])"}
    subquestions = [q.strip() for q in edited if q.strip()][: settings.max_subquestions]
    if not subquestions:
        return {"subquestions": [], "route": "single", "fallback_reason": "the reviewer removed every sub-question"}
    return {"subquestions": subquestions, "route": "static", "fallback_reason": None}
