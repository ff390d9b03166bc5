"""Graph state: a TypedDict of plain values, with reducers where branches write together."""

from __future__ import annotations

from typing import Annotated, Any

# pydantic builds the graph's JSON schemas (LangGraph Studio's input form) only from
# typing_extensions.TypedDict on Python < 3.12.
from typing_extensions import TypedDict

from divconq.contract import Mode, Route, Solve

RoleUsage = dict[str, float]  # calls, input_tokens, output_tokens, seconds


def merge_usage(left: dict[str, RoleUsage] | None, right: dict[str, Any] | None) -> dict[str, RoleUsage]:
    """Add per-role usage. A new run starts from zero by writing ``Overwrite(...)``."""
    if not right:
        return dict(left or {})
    total = {role: dict(stats) for role, stats in (left or {}).items()}
    for role, stats in right.items():
        into = total.setdefault(role, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0})
        for key, value in stats.items():
            into[key] = into.get(key, 0) + value
    return total


def merge_parallel(left: list[dict] | None, right: list[dict] | None) -> list[dict]:
    """Collect answers from parallel branches. A new run empties the list with ``Overwrite([])``."""
    return list(left or []) + list(right or [])


class InputState(TypedDict, total=False):
    question: str
    context: str | None


class OutputState(TypedDict, total=False):
    question: str
    context: str | None
    mode: Mode  # what was asked for: static, dynamic, single or auto
    solve: Solve  # how static sub-questions are solved: joint, sequential or parallel
    route: Route  # what ran: static, dynamic or single
    fallback_reason: str | None  # why a decomposing route answered single-stage
    decomposition: str | None  # the decomposer's raw text
    subquestions: list[str]
    sub_answers: list[str]
    solution: str | None  # the solver's raw final text
    answer: str | None
    usage: Annotated[dict[str, RoleUsage], merge_usage]


class DivConqState(InputState, OutputState, total=False):
    entry: bool  # set only on the payload that starts a run
    pending: str | None  # dynamic mode: the sub-question proposed and not yet answered
    parallel_answers: Annotated[list[dict], merge_parallel]
    run_key: str | None  # the run's model and prompt overrides (Context), so cached decompositions are keyed by them
