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
