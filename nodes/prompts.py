"""Prompts for the decomposer and the solver, after arXiv 2402.15000.

Every model call in the graph builds its messages with one of the ``*_messages``
functions below; the distillation code builds SFT data with the same functions, so a
student is trained on exactly the prompt it sees at inference time. Bump
``PROMPT_VERSION`` whenever a template changes: adapters record it in their manifest.
"""

from __future__ import annotations

import json
import string
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Literal, get_args

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from divconq.contract import ANSWER_LEAD
from divconq.errors import DivconqError

_SAY_ANSWER = f'"{ANSWER_LEAD}"'  # the marker each solver prompt asks for, quoted

# 3: the joint solver's user turn ends by restating the original question (the decomposer
# templates are unchanged since 2, so adapters trained on version 2 data still match).
# 4: that turn ends with the answer marker itself, since a model that echoes the
# instruction then writes no made-up answer after it. 5: the joint solver treats the
# sub-questions as a suggested plan it checks (see _SOLVE). The paper's templates and
# every decomposer template are unchanged since 3 and 2.
PROMPT_VERSION = "5"

PromptStyle = Literal["divconq", "paper"]
PROMPT_STYLES: tuple[str, ...] = get_args(PromptStyle)

# The paper's zero-shot decomposition instruction (Appendix), kept close to its wording.
_DECOMPOSE = (
    "Your task is to break down a given complex {kind} into the most relevant and helpful "
    "sub-questions, ensuring that no more than {max_subquestions} sub-questions are "
    "formulated for each question. {inputs} If the question does not need breaking down "
    'to be answered, return "No decomposition"; otherwise, list the necessary '
    "sub-questions, one per line, numbered. Only return sub-questions that directly aid "
    "in answering the original question."
)
_NEXT = (
    "You are breaking down a complex {kind} one step at a time. {inputs} Given the "
    "sub-questions answered so far, write the single next sub-question that helps answer "
    'the original question. If the answers so far are enough, reply exactly "No more '
    'sub-questions".'
)
# Small instruct models (the 1.5B teacher of bench/) tend to open with "The answer is"
# and reason afterwards; saying "only after that" and "last line" twice, once in the user
# turn, keeps the answer at the end (bench/solver_prompt.py compares; figures in RESULTS.md).
# Version 5 calls the sub-questions a suggested plan that may be incomplete, out of order or
# wrong: told to answer them in order (v4), the teacher followed a small student's plan
# into wrong answers (Toulouse's sheep before Charleston's, whom they depend on), and
# decomposing cost more than it gave (bench/results/solver_plan.json measures the change).
_SOLVE = (
    "Solve the {kind} step by step. A helper has suggested sub-questions as a plan. The plan "
    "may be incomplete, out of order or wrong: check each sub-question against the question, "
    "answer the useful ones with your working, in whatever order the facts allow, and work out "
    f"any step still missing. Only after that, write a last line {_SAY_ANSWER} followed by the "
    "final answer{fmt}."
)
# The sub-questions often stop one step short of the question; a solver told only "then
# the question" then answers the last sub-question. So the user turn ends by restating the
# original question. Nothing follows the marker: the embedded 135M solver echoes the
# instruction, and text after the marker would be read as its answer.
_SOLVE_REMINDER = (
    "Solve step by step, then answer the original question: {question}\n"
    f"End with a last line that starts with {_SAY_ANSWER}"
)

# Heads the sub-question list in the joint solver's user turn (bench/instant_server.py tells a
# solver call from a decomposer call by it).
SUBQUESTIONS_HEADER = "Suggested sub-questions:"

_SOLVE_ONE = f"Answer the question concisely. End your response with {_SAY_ANSWER} followed by the answer."
_SOLVE_FINAL = (
    "Answer the original {kind} using the answers to its sub-questions. "
    f"End your response with {_SAY_ANSWER} followed by the final answer{{fmt}}."
)
_DIRECT = f"Solve the {{kind}} step by step. End your response with {_SAY_ANSWER} followed by the final answer{{fmt}}."

_TASKS = {
    "math": dict(kind="math word problem", inputs="The question will be provided to you.", fmt=" as a number"),
    "reading": dict(
        kind="question about a passage",
        inputs="Both the passage and the question will be provided to you.",
        fmt="",
    ),
    "multihop": dict(kind="multi-hop question", inputs="The question will be provided to you.", fmt=""),
}

# One worked decomposition, shown to base models that were never trained on the format
# (small models write no usable sub-questions zero-shot). Distilled students do not need it.
_EXAMPLES = {
    "math": (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
        "1. How many clips did Natalia sell in May?\n"
        "2. How many clips did Natalia sell altogether in April and May?",
    ),
    "reading": (
        "How many more yards was the longest touchdown pass than the shortest?",
        "1. How many yards was the longest touchdown pass?\n"
        "2. How many yards was the shortest touchdown pass?\n"
        "3. What is the difference between the two?",
    ),
    "multihop": (
        "Who was president of the United States when the Eiffel Tower was completed?",
        "1. In what year was the Eiffel Tower completed?\n"
        "2. Who was president of the United States in that year?",
    ),
}


@dataclass(frozen=True)
class PromptSet:
    """All templates the graph uses. Replace any field with ``dataclasses.replace``.

    Template fields: ``{question}``, ``{context_block}`` (empty or "Context: ...\\n\\n"),
    ``{subquestions_block}``, ``{qa_block}``, ``{subquestion}``, ``{max_subquestions}``.
    """

    decompose_system: str
    decompose_user: str
    next_system: str
    next_user: str
    solve_system: str
    solve_user: str
    solve_one_system: str
    solve_one_user: str
    solve_final_system: str
    solve_final_user: str
    direct_system: str
    direct_user: str
    example: tuple[str, str] | None = None
    version: str = PROMPT_VERSION
    name: str = "divconq"  # which wording: recorded in results files, so rows say what they ran

    def __post_init__(self) -> None:
        allowed = {"question", "context_block", "subquestions_block", "qa_block", "subquestion", "max_subquestions"}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("example", "version", "name") or not isinstance(value, str):
                continue
            names = {name for _, name, _, _ in string.Formatter().parse(value) if name}
            unknown = names - allowed
            if unknown:
                raise ValueError(
                    f"prompt field {f.name!r} uses unknown placeholder(s) {sorted(unknown)}; "
                    f"use only {sorted(allowed)} (double braces for literal ones)"
                )


# The paper's own wording (arXiv 2402.15000, appendix), for rows that line up with its
# Table 1. Reconstructed from the paper's appendix as the project's issues quote it: the
# arXiv text is not reachable from this machine, so treat it as close, not verbatim. Three
# templates differ from ours: the zero-shot decomposition, the two-stage solver, and the
# single-stage prompt, which asks for a direct answer of at most five words (no reasoning).
_PAPER_DECOMPOSE = (
    "Your task is to break down a given complex question into the most relevant and helpful "
    "subquestions, ensuring that no more than {max_subquestions} subquestions are formulated "
    "for each question. {inputs} If the question does not need breaking down to be answered, "
    'return "No decomposition"; otherwise, list the necessary subquestions. Only return '
    "subquestions that directly aid in answering the original question, avoiding any that "
    "could be harmful or unhelpful."
)
_PAPER_SOLVE = (
    "Your task is to answer a given complex question. The question and its subquestions will "
    "be provided to you. Answer the subquestions first, then use their answers to answer the "
    f"question. End your response with {_SAY_ANSWER} followed by the answer."
)
_PAPER_DIRECT = (
    "Answer the given question directly with a concise answer of at most five words. "
    f"Respond only with {_SAY_ANSWER} followed by the answer."
)


def get_prompts(task: str = "math", *, one_shot: bool = False, style: PromptStyle = "divconq") -> PromptSet:
    """The prompt set for ``task`` ("math", "reading" or "multihop") in ``style``.

    ``style="divconq"`` is ours (a step-by-step single-stage baseline, a joint solver told to
    answer the original question last); ``style="paper"`` swaps in the paper's zero-shot
    decomposition, two-stage solver and direct-answer single-stage prompts.
    """
    if task not in _TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {sorted(_TASKS)}")
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}: choose one of {', '.join(PROMPT_STYLES)} or a JSON file")
    t = _TASKS[task]
    # Only {max_subquestions} survives into the template; the task words are filled now.
    decompose = _DECOMPOSE.format(max_subquestions="{max_subquestions}", **t)
    prompts = PromptSet(
        decompose_system=decompose,
        decompose_user="{context_block}Question: {question}",
        next_system=_NEXT.format(**t),
        next_user="{context_block}Question: {question}\n\nAnswered so far:\n{qa_block}",
        solve_system=_SOLVE.format(**t),
        solve_user="{context_block}Question: {question}\n\n" + SUBQUESTIONS_HEADER + "\n{subquestions_block}\n\n" + _SOLVE_REMINDER,
        solve_one_system=_SOLVE_ONE,
        solve_one_user="{context_block}{qa_block}Question: {subquestion}",
        solve_final_system=_SOLVE_FINAL.format(**t),
        solve_final_user="{context_block}Question: {question}\n\nSub-questions and their answers:\n{qa_block}",
        direct_system=_DIRECT.format(**t),
        direct_user="{context_block}Question: {question}",
        example=_EXAMPLES[task] if one_shot else None,
    )
    if style == "paper":
        prompts = replace(
            prompts,
            name="paper",
            decompose_system=_PAPER_DECOMPOSE.format(max_subquestions="{max_subquestions}", inputs=t["inputs"]),
            solve_system=_PAPER_SOLVE,
            solve_user="{context_block}Question: {question}\n\nSubquestions:\n{subquestions_block}",
            direct_system=_PAPER_DIRECT,
        )
    return prompts


_TEMPLATE_FIELDS = tuple(f.name for f in fields(PromptSet) if f.default is MISSING)


def load_prompt_set(path: str | Path) -> PromptSet:
    """A prompt set from a JSON file holding every template field (and optionally ``name``).

    Checked up front, so a typo fails before any model runs: a missing or unknown field,
    or a non-string template, ends with one line naming it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DivconqError(f"cannot read prompt set {path} ({exc}): pass a JSON object of templates") from exc
    if not isinstance(data, dict):
        raise DivconqError(f"prompt set {path} is not a JSON object: give one key per template field")
    missing = [f for f in _TEMPLATE_FIELDS if f not in data]
    if missing:
        raise DivconqError(f"prompt set {path} lacks field(s) {', '.join(missing)}: every one of {', '.join(_TEMPLATE_FIELDS)} is needed")
    known = {f.name for f in fields(PromptSet)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DivconqError(f"prompt set {path} has unknown field(s) {', '.join(unknown)}: use only {', '.join(sorted(known))}")
    bad = [f for f in _TEMPLATE_FIELDS if not isinstance(data[f], str)]
    if bad:
        raise DivconqError(f"prompt set {path}: field(s) {', '.join(bad)} must be strings")
    if data.get("example") is not None:
        data["example"] = tuple(data["example"])
    data.setdefault("name", path.stem)
    try:
        return PromptSet(**data)
    except (TypeError, ValueError) as exc:
        raise DivconqError(f"prompt set {path}: {exc}") from exc


def example_for(task: str) -> tuple[str, str]:
    """The worked decomposition shown one-shot for ``task``."""
    return _EXAMPLES[task]


def with_example(prompts: PromptSet, example: tuple[str, str] | None) -> PromptSet:
    """A copy of ``prompts`` with (or, for ``None``, without) a one-shot decomposition example."""
    return replace(prompts, example=example)


def _context_block(context: str | None) -> str:
    return f"Context: {context.strip()}\n\n" if context and context.strip() else ""


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {q}" for i, q in enumerate(items, 1))


def _qa_block(subquestions: list[str], answers: list[str]) -> str:
    return "\n".join(f"Q{i}: {q}\nA{i}: {a}" for i, (q, a) in enumerate(zip(subquestions, answers), 1))


def _render(template: str, **values: object) -> str:
    return template.format(**values)


def decompose_messages(
    prompts: PromptSet, question: str, context: str | None = None, max_subquestions: int = 3
) -> list[BaseMessage]:
    """Messages for a static decomposition: all sub-questions at once."""
    system = _render(prompts.decompose_system, max_subquestions=max_subquestions)
    messages: list[BaseMessage] = [SystemMessage(system)]
    if prompts.example:
        example_q, example_d = prompts.example
        messages += [
            HumanMessage(_render(prompts.decompose_user, question=example_q, context_block="")),
            AIMessage(example_d),
        ]
    user = _render(prompts.decompose_user, question=question, context_block=_context_block(context))
    return messages + [HumanMessage(user)]


def next_subquestion_messages(
    prompts: PromptSet, question: str, context: str | None, subquestions: list[str], answers: list[str]
) -> list[BaseMessage]:
    """Messages for one dynamic step: the next sub-question given those answered so far."""
    qa = _qa_block(subquestions, answers) or "(none yet)"
    user = _render(prompts.next_user, question=question, context_block=_context_block(context), qa_block=qa)
    return [SystemMessage(prompts.next_system), HumanMessage(user)]


def solve_messages(
    prompts: PromptSet, question: str, context: str | None, subquestions: list[str]
) -> list[BaseMessage]:
    """The paper's solver call: answer all sub-questions in order, then the question."""
    user = _render(
        prompts.solve_user,
        question=question,
        context_block=_context_block(context),
        subquestions_block=_numbered(subquestions),
    )
    return [SystemMessage(prompts.solve_system), HumanMessage(user)]


def solve_one_messages(
    prompts: PromptSet,
    subquestion: str,
    context: str | None,
    previous_subquestions: list[str] = (),  # type: ignore[assignment]
    previous_answers: list[str] = (),  # type: ignore[assignment]
) -> list[BaseMessage]:
    """Answer one sub-question, optionally with the earlier ones and their answers."""
    qa = _qa_block(list(previous_subquestions), list(previous_answers))
    qa_block = f"Earlier questions and answers:\n{qa}\n\n" if qa else ""
    user = _render(
        prompts.solve_one_user, subquestion=subquestion, context_block=_context_block(context), qa_block=qa_block
    )
    return [SystemMessage(prompts.solve_one_system), HumanMessage(user)]


def solve_final_messages(
    prompts: PromptSet, question: str, context: str | None, subquestions: list[str], answers: list[str]
) -> list[BaseMessage]:
    """Answer the original question from its answered sub-questions."""
    user = _render(
        prompts.solve_final_user,
        question=question,
        context_block=_context_block(context),
        qa_block=_qa_block(subquestions, answers),
    )
    return [SystemMessage(prompts.solve_final_system), HumanMessage(user)]


def direct_messages(prompts: PromptSet, question: str, context: str | None = None) -> list[BaseMessage]:
    """The single-stage baseline: the solver answers the question directly."""
    user = _render(prompts.direct_user, question=question, context_block=_context_block(context))
    return [SystemMessage(prompts.direct_system), HumanMessage(user)]
