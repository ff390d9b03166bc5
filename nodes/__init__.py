"""Decomposer and solver nodes, their prompts and parsers, and model loading."""

from divconq.nodes.models import (
    DEFAULT_MODEL_NAME,
    LocalChatModel,
    load_chat_model,
    parse_spec,
)
from divconq.nodes.graph_nodes import DECOMPOSER, SOLVER, NodeSettings, call_model
from divconq.nodes.parsing import (
    NO_DECOMPOSITION,
    extract_answer,
    is_no_decomposition,
    parse_next_subquestion,
    parse_subquestions,
    split_sub_answers,
)
from divconq.nodes.prompts import PROMPT_VERSION, PromptSet, get_prompts

__all__ = [
    "DECOMPOSER",
    "DEFAULT_MODEL_NAME",
    "LocalChatModel",
    "NO_DECOMPOSITION",
    "NodeSettings",
    "PROMPT_VERSION",
    "PromptSet",
    "SOLVER",
    "call_model",
    "extract_answer",
    "get_prompts",
    "is_no_decomposition",
    "load_chat_model",
    "parse_next_subquestion",
    "parse_spec",
    "parse_subquestions",
    "split_sub_answers",
]
