"""An agent (``langchain.agents.create_agent``) that hands reasoning questions to divconq.

    python examples/agent_tool.py                                   # offline, default models
    python examples/agent_tool.py --agent-model openai:gpt-4o-mini "How many ...?"

The divconq graph behind the tool runs on the embedded default models. The agent's own
model must call tools: pass any tool-calling ``provider:model`` spec. The embedded model
cannot, so without ``--agent-model`` a stand-in that always delegates to the tool is used.
"""

from __future__ import annotations

import argparse
from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from divconq.graph import build_graph
from divconq.graph.tools import as_tool

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


class DelegatingChatModel(BaseChatModel):
    """Stand-in agent model: asks the first bound tool, then repeats its answer line."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tool_names=[getattr(t, "name", None) or t["function"]["name"] for t in tools])

    def _generate(self, messages: list, stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        if isinstance(messages[-1], ToolMessage):
            reply = AIMessage(str(messages[-1].content).splitlines()[0])
        else:
            question = next(m for m in reversed(messages) if isinstance(m, HumanMessage)).content
            call = {"name": kwargs["tool_names"][0], "args": {"question": question}, "id": "call-1"}
            reply = AIMessage("", tool_calls=[{**call, "type": "tool_call"}])
        return ChatResult(generations=[ChatGeneration(message=reply)])

    @property
    def _llm_type(self) -> str:
        return "divconq-delegating-stand-in"


def build_agent(agent_model: BaseChatModel, decomposer: Any = "default", solver: Any = "default", **options: Any):
    """An agent with one tool: the divconq graph on ``decomposer``/``solver``."""
    tool = as_tool(build_graph(decomposer, solver, **options).compile())
    return create_agent(
        agent_model,
        tools=[tool],
        system_prompt="For multi-step math or reasoning questions, call the divide_and_conquer tool.",
    )


if __name__ == "__main__":
    from divconq.nodes.models import load_chat_model, needs_one_shot
    from divconq.nodes.prompts import get_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--agent-model", help="a tool-calling model spec, e.g. openai:gpt-4o-mini")
    args = parser.parse_args()
    model = load_chat_model(args.agent_model) if args.agent_model else DelegatingChatModel()
    agent = build_agent(model, prompts=get_prompts("math", one_shot=needs_one_shot("default")))
    result = agent.invoke({"messages": [HumanMessage(args.question)]})
    for message in result["messages"]:
        message.pretty_print()
