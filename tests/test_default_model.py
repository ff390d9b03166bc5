"""The embedded default model answers a question end to end (slow; deselect with -m 'not default_model')."""

import pytest

from divconq.graph import build_graph
from divconq.nodes import load_chat_model
from divconq.nodes.models import default_model_dir
from divconq.nodes.prompts import get_prompts

pytestmark = pytest.mark.default_model

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def test_default_model_is_converted_once_to_safetensors():
    path = default_model_dir()
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert default_model_dir() == path  # cached: the second call converts nothing


def test_default_model_answers_through_the_graph():
    decomposer = load_chat_model("default", role="decomposer", max_new_tokens=64)
    solver = load_chat_model("default", role="solver", max_new_tokens=96)
    graph = build_graph(decomposer, solver, prompts=get_prompts("math", one_shot=True)).compile()
    out = graph.invoke({"question": QUESTION})
    assert out["route"] in ("static", "single")
    assert out["solution"] and out["answer"]
    assert out["usage"]["decomposer"]["input_tokens"] > 100  # the real chat-templated prompt
    assert out["usage"]["solver"]["output_tokens"] > 0
