"""The divide-and-conquer graph as a LangChain tool, for agents.

    from divconq.graph import build_graph
    from divconq.graph.tools import as_tool

    tool = as_tool(build_graph("default", "default").compile())
    tool.invoke({"question": "Natalia sold 48 clips in April and half as many in May. How many in all?"})
    # 'Answer: 72\\nSub-questions (static route, joint solve):\\n1. How many clips ...? -> 24\\n2. ...'

The tool takes ``question`` and an optional ``context`` (a passage for reading
questions). Its content, what the agent's model reads, is compact: the final answer on
the first line, then the numbered sub-questions with their answers. The tool message
also carries the graph's whole output state as its ``artifact`` (sub-answers, solver
text, route, token usage) for the program around the agent; the model never sees it.

Bad input (an empty question) comes back to the agent as an error message it can act
on, not as an exception that stops the agent.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, ToolException
from pydantic import BaseModel, Field

from divconq.errors import DivconqError

DEFAULT_NAME = "divide_and_conquer"
DEFAULT_DESCRIPTION = (
    "Answer a multi-step reasoning question (a math word problem, a question about a "
    "passage, or a multi-hop factual question) by breaking it into simpler sub-questions "
    "and solving them in order. Pass the full question in 'question'; pass a passage the "
    "question is about in 'context'. Returns the final answer on the first line, then "
    "the sub-questions with their answers."
)
# Sub-answers longer than this are cut in the tool content (the artifact keeps them whole).
MAX_ITEM_CHARS = 300
MAX_SOLUTION_CHARS = 600


class DivideAndConquerInput(BaseModel):
    """Arguments of the divide-and-conquer tool."""

    question: str = Field(description="The complete question to answer, with all the numbers and facts it states.")
    context: str | None = Field(
        default=None,
        description="Optional passage or background text the question is about; omit when there is none.",
    )


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def format_result(output: dict[str, Any]) -> str:
    """The compact text an agent reads: the answer first, then the sub-questions.

    ``output`` is the graph's output state (``graph.invoke(...)``'s result).
    """
    answer = (output.get("answer") or "").strip()
    lines = [f"Answer: {answer}" if answer else "Answer: (the solver gave no final answer; its reasoning follows)"]
    subquestions = list(output.get("subquestions") or [])
    sub_answers = list(output.get("sub_answers") or [])
    route = output.get("route") or "static"
    if subquestions:
        how = f"{route} route" + (f", {output['solve']} solve" if route == "static" and output.get("solve") else "")
        lines.append(f"Sub-questions ({how}):")
        for i, question in enumerate(subquestions):
            item = f"{i + 1}. {_cut(question, MAX_ITEM_CHARS)}"
            if i < len(sub_answers) and str(sub_answers[i]).strip():
                item += f" -> {_cut(sub_answers[i], MAX_ITEM_CHARS)}"
            lines.append(item)
    else:
        reason = output.get("fallback_reason")
        lines.append("Answered directly, without sub-questions" + (f" ({reason})." if reason else "."))
    if not answer and output.get("solution"):
        lines.append(f"Solver output: {_cut(output['solution'], MAX_SOLUTION_CHARS)}")
    return "\n".join(lines)


def _graph_input(question: str, context: str | None) -> dict[str, Any]:
    return {"question": question, "context": context or None}


def as_tool(
    graph: Runnable,
    *,
    name: str = DEFAULT_NAME,
    description: str = DEFAULT_DESCRIPTION,
    return_direct: bool = False,
) -> BaseTool:
    """The compiled divconq graph as a LangChain tool: ``as_tool(build_graph(...).compile())``.

    Args:
        graph: the compiled graph (``build_graph(...).compile()``), or any runnable that
            takes ``{"question", "context"}`` and returns the graph's output state.
        name, description: what the agent's model sees; the defaults describe the tool
            for multi-step reasoning questions.
        return_direct: end the agent's turn with the tool's content.

    The tool's arguments are ``question: str`` and ``context: str | None``; it returns
    ``format_result(output)`` as content and the full output state as the artifact.
    The caller's config (callbacks, tags, tracing) reaches every model call of the graph.
    """
    if not isinstance(graph, Runnable):
        raise DivconqError(
            f"as_tool needs the compiled graph, got {type(graph).__name__}: "
            "pass build_graph(...).compile()"
        )

    def run(question: str, context: str | None = None, *, config: RunnableConfig) -> tuple[str, dict[str, Any]]:
        try:
            output = graph.invoke(_graph_input(question, context), config)
        except DivconqError as exc:
            raise ToolException(str(exc)) from exc
        return format_result(output), output

    async def arun(
        question: str, context: str | None = None, *, config: RunnableConfig
    ) -> tuple[str, dict[str, Any]]:
        try:
            output = await graph.ainvoke(_graph_input(question, context), config)
        except DivconqError as exc:
            raise ToolException(str(exc)) from exc
        return format_result(output), output

    return StructuredTool.from_function(
        func=run,
        coroutine=arun,
        name=name,
        description=description,
        args_schema=DivideAndConquerInput,
        response_format="content_and_artifact",
        handle_tool_error=True,
        return_direct=return_direct,
    )
