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


def test_the_shipped_distilled_adapter_is_the_default_decomposer():
    import json

    from divconq.nodes.manifest import ADAPTER_MANIFEST, model_fingerprint
    from divconq.nodes.models import DEFAULT_ADAPTER_DIR

    manifest = json.loads((DEFAULT_ADAPTER_DIR / ADAPTER_MANIFEST).read_text())
    assert manifest["base_model"] == "default" and manifest["variant"] == "decomposer"
    assert manifest["metrics"]["eval_loss_after"] < manifest["metrics"]["eval_loss_before"]
    size = sum(f.stat().st_size for f in DEFAULT_ADAPTER_DIR.iterdir())
    assert size < 20 * 2**20
    training_ids = (DEFAULT_ADAPTER_DIR / "training_ids.txt").read_text().split()
    assert len(training_ids) > 400 and any(i.startswith("gsm8k-") for i in training_ids)

    # The transformers engine: its weights are what this test reads (test_llamacpp.py covers llama.cpp).
    base = load_chat_model("default", role="solver", max_new_tokens=8, engine="transformers")
    student = load_chat_model("default", role="decomposer", max_new_tokens=80, engine="transformers")
    assert model_fingerprint(base.llm.pipeline.model) == manifest["base_fingerprint"]
    # The adapter was merged into the decomposer's copy of the weights, not the solver's.
    q_base = base.llm.pipeline.model.model.layers[0].self_attn.q_proj.weight
    q_student = student.llm.pipeline.model.model.layers[0].self_attn.q_proj.weight
    assert not (q_base == q_student).all()


@pytest.mark.parametrize("engine", ["transformers", "auto"])  # auto: llama.cpp once it is built
def test_the_distilled_decomposer_writes_subquestions_zero_shot(engine):
    from divconq.nodes import prompts as P
    from divconq.nodes.parsing import parse_subquestions

    student = load_chat_model("default", role="decomposer", max_new_tokens=80, engine=engine)
    messages = P.decompose_messages(P.get_prompts("math"), QUESTION)  # zero-shot: no worked example
    assert len(parse_subquestions(student.invoke(messages).content, 3, QUESTION)) >= 1
