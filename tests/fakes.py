"""Fake chat models for graph-logic tests only (model paths are tested on real models)."""

from __future__ import annotations

import time
from typing import Any, Callable

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult


class ScriptedChatModel(BaseChatModel):
    """Answers with ``respond(messages)``; reports fixed token usage per call."""

    respond: Callable[[list[BaseMessage]], str]
    input_tokens: int = 10
    output_tokens: int = 5
    delay: Callable[[list[BaseMessage]], float] | None = None

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        if self.delay:
            time.sleep(self.delay(messages))
        usage = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        message = AIMessage(self.respond(messages), usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=message)])

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"


def scripted(*replies: str, **kwargs: Any) -> ScriptedChatModel:
    """Replies in order, then repeats the last one."""
    queue = list(replies)

    def respond(_: list[BaseMessage]) -> str:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return ScriptedChatModel(respond=respond, **kwargs)


def last_user_text(messages: list[BaseMessage]) -> str:
    return str(messages[-1].content)


class ToolCallingChatModel(BaseChatModel):
    """A fake agent model that supports ``bind_tools``.

    On a turn (messages since the last human one) with no tool result yet it calls
    ``tool_name`` (default: the first bound tool) with ``tool_args(messages)`` (default:
    the last human message as ``question``); once the turn has a tool result it answers
    ``final_prefix + <first line of the last tool result>``. ``bound`` records the
    OpenAI-format schemas of the tools it was bound to, ``seen`` every message list.
    """

    tool_name: str | None = None
    tool_args: Callable[[list[BaseMessage]], dict | list[dict]] | None = None  # a list: one call each
    final_prefix: str = "The tool found: "
    bound: list[dict] = []
    seen: list[list[BaseMessage]] = []

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        schemas = [convert_to_openai_tool(t) for t in tools]
        self.bound.extend(schemas)
        return self.bind(tools=schemas, **kwargs)

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        from langchain_core.messages import HumanMessage, ToolMessage

        self.seen.append(list(messages))
        last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
        results = [m for m in messages[last_human + 1:] if isinstance(m, ToolMessage)]  # this turn's results
        if results:
            text = str(results[-1].content).strip().splitlines()[0] if str(results[-1].content).strip() else ""
            message = AIMessage(self.final_prefix + text)
        else:
            tools = kw.get("tools") or []
            name = self.tool_name or (tools[0]["function"]["name"] if tools else None)
            if name is None:
                raise ValueError("ToolCallingChatModel: no tool bound and no tool_name given")
            if self.tool_args:
                args = self.tool_args(messages)
            else:
                question = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
                args = {"question": str(question.content)}
            calls = [
                {"name": name, "args": one, "id": f"call_{len(self.seen)}_{i}", "type": "tool_call"}
                for i, one in enumerate(args if isinstance(args, list) else [args])
            ]
            message = AIMessage("", tool_calls=calls)
        return ChatResult(generations=[ChatGeneration(message=message)])

    @property
    def _llm_type(self) -> str:
        return "tool-calling-fake"
