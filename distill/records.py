"""LangChain objects as divconq trace records: the one converter the recorder and the
LangSmith importer share, so an imported run looks exactly like a recorded one.

Messages (objects, LangChain-serialized dicts, plain dicts) become ``{"role", "content"}``;
model metadata, tags and usage become a ``TraceCall``'s role, model and token counts; a
graph run's inputs, outputs and metadata fill a ``TraceRun``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from langchain_core.messages import BaseMessage

from divconq.contract import DECOMPOSER, DECOMPOSER_NODES, GRAPH_METADATA_KEY, ROLE_METADATA_KEY, ROLE_TAG_PREFIX, SOLVER
from divconq.distill.metrics import Metric, is_correct
from divconq.distill.traces import TraceRun, to_json, usage_by_role

__all__ = [
    "call_role",
    "content_text",
    "fill_run",
    "is_divconq_task",
    "llm_output_usage",
    "message_dict",
    "model_name",
    "one_line",
    "order_key",
    "serialized_message",
    "token_counts",
]


# --------------------------------------------------------------------------- messages


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text
        return "".join(
            b if isinstance(b, str) else str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content
        )
    return "" if content is None else str(content)


_ROLE_OF_TYPE = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "developer": "system",
}
_ROLE_OF_CLASS = {
    "SystemMessage": "system",
    "HumanMessage": "user",
    "AIMessage": "assistant",
    "ToolMessage": "tool",
    "FunctionMessage": "function",
}


def message_dict(message: BaseMessage) -> dict[str, str]:
    role = getattr(message, "role", None) if message.type == "chat" else None
    return {"role": role or _ROLE_OF_TYPE.get(message.type, message.type), "content": content_text(message.content)}


def serialized_message(message: Mapping[str, Any]) -> dict[str, str] | None:
    """{"role", "content"} from a LangChain-serialized message or a plain message dict."""
    if message.get("lc") == 1 and isinstance(message.get("id"), list):
        kwargs = message.get("kwargs") or {}
        cls = str(message["id"][-1])
        role = kwargs.get("role") if cls in ("ChatMessage", "ChatMessageChunk") else None
        role = role or _ROLE_OF_CLASS.get(cls.removesuffix("Chunk"), cls)
        return {"role": str(role), "content": content_text(kwargs.get("content"))}
    data = message.get("data") if isinstance(message.get("data"), Mapping) else message  # messages_to_dict
    kind = message.get("role") or message.get("type") or data.get("role") or data.get("type")
    if kind is None or "content" not in data:
        return None
    return {"role": _ROLE_OF_TYPE.get(str(kind), str(kind)), "content": content_text(data.get("content"))}


def _texts_of(messages: Any, role: str) -> list[str]:
    """The texts of the messages with ``role`` ("user", "assistant"), as objects or dicts."""
    found = []
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, BaseMessage):
            as_dict: dict[str, str] | None = message_dict(message)
        else:
            as_dict = serialized_message(message) if isinstance(message, Mapping) else None
        if as_dict and as_dict["role"] == role:
            found.append(as_dict["content"])
    return found


# --------------------------------------------------------------------------- calls


def call_role(metadata: Mapping[str, Any], tags: Iterable[str] | None, node: str | None) -> str:
    """Decomposer or solver: what ``call_model`` tagged, else guessed from the node name."""
    if metadata.get(ROLE_METADATA_KEY):
        return str(metadata[ROLE_METADATA_KEY])
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith(ROLE_TAG_PREFIX):
            return tag.split(":", 1)[1]
    name = (node or "").lower()  # a graph of one's own may call its nodes "decomposer", "propose_step"...
    return DECOMPOSER if "decompos" in name or any(n in name for n in DECOMPOSER_NODES) else SOLVER


def model_name(*sources: Mapping[str, Any] | None) -> str | None:
    for source in sources:
        for key in ("ls_model_name", "model", "model_name", "model_id", "repo_id"):
            value = (source or {}).get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def token_counts(*usages: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(input, output) tokens from the first usage_metadata or OpenAI-style token_usage dict that has any."""
    for usage in (u or {} for u in usages):
        prompt = usage.get("input_tokens", usage.get("prompt_tokens"))
        completion = usage.get("output_tokens", usage.get("completion_tokens"))
        tokens = _int(prompt), _int(completion)
        if tokens != (None, None):
            return tokens
    return None, None


def llm_output_usage(llm_output: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The token usage a provider put in ``LLMResult.llm_output``, where usage_metadata is missing."""
    llm_output = llm_output or {}
    return llm_output.get("token_usage") or llm_output.get("usage")


def order_key(metadata: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """(superstep, task path): parallel ``Send`` branches sort by their index, not by timing."""
    metadata = metadata or {}
    step = metadata.get("langgraph_step")
    path = metadata.get("langgraph_path") or ()
    path_key = tuple((0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in path)
    return (step if isinstance(step, int) else 0, path_key)


# --------------------------------------------------------------------------- runs


def _gold(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple, set)) else [str(value)]


def _first_str(mapping: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        if isinstance(mapping.get(key), str):
            return mapping[key]
    return None


_OUR_METADATA = {"gold", "example_id", "dataset", GRAPH_METADATA_KEY}
# Metadata a run inherits from the runtime (LangGraph's task keys, LangSmith's and
# LangChain's own), not from the person who started it: not kept with the run.
_RUNTIME_PREFIXES = ("ls_", "lc_", "langgraph_", "checkpoint_", "__pregel")
_EXTRA_OUTPUTS = ("mode", "solve", "fallback_reason")


def fill_run(run: TraceRun, inputs: Any, outputs: Any, metadata: Mapping[str, Any], metric: Metric) -> None:
    """Question, answer and the rest from a root run's inputs, outputs and metadata.

    Our graph's keys map one to one; for other graphs ``question``/``input``/``query``
    or the first human message, and ``answer``/``output`` or the last AI message.
    """
    ins = inputs if isinstance(inputs, Mapping) else {}
    outs = outputs if isinstance(outputs, Mapping) else {}
    question = _first_str(ins, "question", "input", "query") or _first_str(outs, "question")
    if question is None:
        human = _texts_of(ins.get("messages"), "user")
        question = human[0] if human else inputs if isinstance(inputs, str) else to_json(inputs) or ""
    run.question = question
    run.context = _first_str(ins, "context") or _first_str(outs, "context")
    run.answer = _first_str(outs, "answer", "output")
    if run.answer is None:
        said = _texts_of(outs.get("messages"), "assistant")
        run.answer = said[-1] if said else outputs if isinstance(outputs, str) else None
    run.route = _first_str(outs, "route")
    for name in ("subquestions", "sub_answers"):
        if isinstance(outs.get(name), list):
            setattr(run, name, [str(v) for v in outs[name]])
    run.decomposition = _first_str(outs, "decomposition")
    run.solution = _first_str(outs, "solution")
    run.usage = dict(outs["usage"]) if isinstance(outs.get("usage"), Mapping) else usage_by_role(run.calls)
    run.gold = _gold(metadata.get("gold"))
    run.example_id = None if metadata.get("example_id") is None else str(metadata["example_id"])
    run.dataset = None if metadata.get("dataset") is None else str(metadata["dataset"])
    kept = {k: v for k, v in metadata.items() if k not in _OUR_METADATA and not k.startswith(_RUNTIME_PREFIXES)}
    kept.update({k: outs[k] for k in _EXTRA_OUTPUTS if outs.get(k) is not None})
    run.metadata = kept
    if run.gold and run.status == "ok":  # no gold answers (Break): nothing to score against
        run.correct = is_correct(metric, run.answer, run.gold)


def one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:500]


def is_divconq_task(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a run carries the metadata every divconq graph node sets (``contract.GRAPH_METADATA_KEY``)."""
    return bool((metadata or {}).get(GRAPH_METADATA_KEY))
