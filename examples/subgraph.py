"""The divconq graph as one node of a larger graph, with its own state.

The user's graph has its own state (``user_request``, ``notes``, ``final_report``);
a wrapper node maps it to the divconq input (``question``, ``context``), runs the
compiled divconq graph, and maps the output back into a short report. Because the
wrapper calls the compiled graph, LangGraph treats it as a subgraph: its steps show
in ``get_graph(xray=True)``, ``stream(..., subgraphs=True)`` and a checkpointer's
history.

    python examples/subgraph.py "Natalia sold 48 clips in April and half as many in May. How many in all?"
"""

from __future__ import annotations

import sys
from typing import Any

from typing_extensions import TypedDict  # pydantic (Studio schemas) needs it on Python < 3.12

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph

from divconq.graph import build_graph
from divconq.nodes.prompts import PromptSet


class ReportState(TypedDict, total=False):
    user_request: str  # what the user typed: a question, maybe with a "Context:" paragraph
    question: str  # the request's question
    notes: str | None  # the request's background text, if any
    answer: str  # from the divconq graph
    steps: list[str]  # from the divconq graph: "sub-question -> answer"
    final_report: str


def prepare(state: ReportState) -> dict[str, Any]:
    """Split "question\\n\\nContext: passage" into the question and its notes."""
    question, _, notes = state["user_request"].strip().partition("\n\nContext:")
    return {"question": question.strip(), "notes": notes.strip() or None}


def report(state: ReportState) -> dict[str, Any]:
    lines = [f"Question: {state['question']}", f"Answer: {state.get('answer') or '(no answer)'}"]
    if state.get("steps"):
        lines += ["Steps:", *(f"  {i}. {step}" for i, step in enumerate(state["steps"], 1))]
    return {"final_report": "\n".join(lines)}


def build_report_graph(
    decomposer: str | BaseChatModel = "default",
    solver: str | BaseChatModel = "default",
    *,
    prompts: PromptSet | None = None,
    **divconq_options: Any,
) -> StateGraph:
    """The user's graph: prepare -> divconq (the embedded graph) -> report.

    ``decomposer``/``solver`` and ``divconq_options`` go to ``build_graph``.
    """
    divconq = build_graph(decomposer, solver, prompts=prompts, **divconq_options).compile()

    def divide_and_conquer(state: ReportState, config: RunnableConfig) -> dict[str, Any]:
        # Map our state into the divconq input, and its output back into ours.
        out = divconq.invoke({"question": state["question"], "context": state.get("notes")}, config)
        answers = list(out.get("sub_answers") or [])
        steps = [f"{q} -> {answers[i] if i < len(answers) else '?'}" for i, q in enumerate(out["subquestions"])]
        return {"answer": out.get("answer") or "", "steps": steps}

    builder = StateGraph(ReportState)
    builder.add_node("prepare", prepare)
    builder.add_node("divide_and_conquer", divide_and_conquer)
    builder.add_node("report", report)
    builder.add_edge(START, "prepare")
    builder.add_edge("prepare", "divide_and_conquer")
    builder.add_edge("divide_and_conquer", "report")
    builder.add_edge("report", END)
    return builder


def default_prompts() -> PromptSet:
    """The prompts for the default models (the one-shot example for the untrained decomposer)."""
    from divconq.nodes.models import needs_one_shot
    from divconq.nodes.prompts import get_prompts

    return get_prompts("math", one_shot=needs_one_shot("default"))


if __name__ == "__main__":
    request = sys.argv[1] if len(sys.argv) > 1 else (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?"
    )
    graph = build_report_graph(prompts=default_prompts()).compile()
    final = {}
    # subgraphs=True shows the divconq steps inside the wrapper node as they finish.
    for namespace, update in graph.stream({"user_request": request}, stream_mode="updates", subgraphs=True):
        for node, values in update.items():
            print(f"[{' / '.join(namespace) or 'report graph'}] {node} done")
            if not namespace:  # the report graph's own state
                final.update(values or {})
    print()
    print(final["final_report"])
