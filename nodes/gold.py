"""An oracle decomposer: the gold sub-questions of a dataset, served as a chat model.

``gold:<dataset>:<file>`` (for example ``gold:gsm8k:../shared/data/gsm8k/test_socratic.jsonl``)
answers each static decomposition call with the human-written sub-questions of that
question, numbered one per line, as a decomposer would. It tells whether decomposition can
help a solver at all, and sets the ceiling a distilled decomposer can aim for. It writes
nothing, so it reports no tokens and costs nothing.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from divconq.errors import DivconqError

SPEC_PREFIX = "gold:"
_QUESTION_MARK = "Question: "  # the decomposer's user turn ends "Question: <question>" (nodes.prompts)


class GoldDecomposer(BaseChatModel):
    """Replies to a decomposition prompt with the question's gold sub-questions."""

    dataset: str
    path: str
    _gold: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        from divconq.distill.datasets import load_dataset

        examples = load_dataset(self.dataset, self.path)
        self._gold = {e.id: e.gold_subquestions for e in examples if e.gold_subquestions}
        if not self._gold:
            raise DivconqError(f"{self.path} has no gold sub-questions: use a file with decompositions, e.g. gsm8k/test_socratic.jsonl")

    @property
    def _llm_type(self) -> str:
        return "divconq-gold-decomposer"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        from divconq.distill.datasets import question_id

        user = next((m.content for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        if not isinstance(user, str) or _QUESTION_MARK not in user:
            raise DivconqError("the gold decomposer answers static decomposition prompts only: use --mode static")
        question = user.rsplit(_QUESTION_MARK, 1)[1].strip()
        subquestions = self._gold.get(question_id(self.dataset, question))
        if subquestions is None:
            raise DivconqError(f"no gold sub-questions in {self.path} for the question {question[:60]!r}")
        text = "\n".join(f"{i}. {q}" for i, q in enumerate(subquestions, 1))
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        message = AIMessage(text, usage_metadata=usage, response_metadata={"model_name": f"gold:{self.dataset}"})
        return ChatResult(generations=[ChatGeneration(message=message)])


def load_gold_decomposer(spec: str) -> GoldDecomposer:
    """``gold:<dataset>:<file>`` -> the oracle decomposer for that file."""
    dataset, _, path = spec[len(SPEC_PREFIX):].partition(":")
    if not dataset or not path:
        raise DivconqError(f"bad gold spec {spec!r}: use gold:<dataset>:<file>, e.g. gold:gsm8k:gsm8k/test_socratic.jsonl")
    return GoldDecomposer(dataset=dataset, path=path)
