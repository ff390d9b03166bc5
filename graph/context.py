"""Run settings as a LangGraph context schema: what may change from one call to the next.

    graph.invoke({"question": "..."}, context=Context(mode="dynamic", solve="parallel"))
    graph.invoke({"question": "..."}, context={"solver": "openai:gpt-4o-mini"})  # a dict works too

Every field left ``None`` keeps what ``build_graph`` was given. The graph passes this
class as ``context_schema``, so LangGraph Studio shows the fields as a form, and nodes
read it through ``Runtime[Context]``. The old way, ``config={"configurable": {"mode":
...}}``, still works for this release and warns (``DeprecationWarning``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any

from langchain_core.runnables import RunnableConfig
from pydantic import Field

from divconq.argcheck import check_choice
from divconq.contract import MAX_CAP, MODES, SOLVE_STRATEGIES, TASKS, Mode, Solve, Task
from divconq.errors import DivconqError


def check_cap(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CAP:
        raise DivconqError(f"{name} must be an integer from 1 to {MAX_CAP}, got {value!r}")


@dataclass(frozen=True)
class Context:
    """This run's settings; ``None`` keeps the graph's own (what ``build_graph`` was given)."""

    mode: Annotated[
        Mode | None,
        Field(description="static: all sub-questions first (the paper); dynamic: one at a time, self-ask style; "
                          "single: the solver alone; auto: the graph's policy picks"),
    ] = None
    solve: Annotated[
        Solve | None,
        Field(description="static mode: joint (one solver call, the paper), sequential or parallel "
                          "(one call per sub-question)"),
    ] = None
    task: Annotated[
        Task | None, Field(description="prompt variant: math, reading (a passage in context) or multihop")
    ] = None
    decomposer: Annotated[
        str | None,
        Field(description="model spec: default, default+adapter=DIR, hf:DIR, provider:model, "
                          "or openai:MODEL@http://host:port/v1"),
    ] = None
    solver: Annotated[str | None, Field(description="model spec, as for decomposer")] = None
    review: Annotated[
        bool | None,
        Field(description="pause after decomposition so a person can edit the sub-questions (graph built with review=True)"),
    ] = None
    max_subquestions: Annotated[
        int | None, Field(description=f"cap on static sub-questions, 1 to {MAX_CAP} (3 is the paper's best)")
    ] = None

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("solve", SOLVE_STRATEGIES), ("task", TASKS)):
            if getattr(self, name) is not None:
                check_choice(f"context {name}", getattr(self, name), choices)
        for name in ("decomposer", "solver"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DivconqError(f"context {name} must be a model spec string such as 'default', got {value!r}")
        if self.review is not None and not isinstance(self.review, bool):
            raise DivconqError(f"context review must be true or false, got {self.review!r}")
        if self.max_subquestions is not None:
            check_cap("context max_subquestions", self.max_subquestions)

    @property
    def models_or_prompts(self) -> tuple[str | None, str | None, str | None, int | None]:
        """The overrides that change a node's models or prompts (``None`` when not set)."""
        return self.decomposer, self.solver, self.task, self.max_subquestions


CONTEXT_FIELDS = tuple(f.name for f in fields(Context))
_DEPRECATED = (
    "run settings in config['configurable'] are deprecated and will stop working in the next release: "
    "pass them as the context, graph.invoke(inputs, context=Context(mode=...)) (from divconq.graph import Context)"
)


def from_mapping(values: Mapping[str, Any], where: str = "context") -> Context:
    """A ``Context`` from a dict; an unknown key is named with the known ones."""
    unknown = sorted(set(values) - set(CONTEXT_FIELDS))
    if unknown:
        raise DivconqError(f"unknown {where} key {unknown[0]!r}: use {', '.join(CONTEXT_FIELDS)}")
    return Context(**dict(values))


def run_context(context: Any, config: RunnableConfig | None, *, warn: bool = False) -> Context:
    """This run's settings: the runtime context, else the deprecated ``configurable`` keys
    (``warn``: say so; the routing edge does, once per run).

    A context of another type (an agent's, inherited by the graph as a tool) is not ours
    and is ignored.
    """
    if isinstance(context, Context):
        return context
    configurable = (config or {}).get("configurable") or {}
    legacy = {key: configurable[key] for key in CONTEXT_FIELDS if key in configurable}
    if not legacy:
        return Context()
    if warn:
        warnings.warn(_DEPRECATED, DeprecationWarning, stacklevel=3)
    return from_mapping(legacy, "configurable")


