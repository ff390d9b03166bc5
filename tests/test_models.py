"""Model loading from spec strings: the hf: path on a real tiny model, with and without LoRA."""

import json

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from divconq.errors import AdapterMismatchError, ModelSpecError
from divconq.graph import build_graph
from divconq.nodes import LocalChatModel, load_chat_model, parse_spec
from divconq.nodes.manifest import ADAPTER_MANIFEST, model_fingerprint

MESSAGES = [SystemMessage("Answer briefly."), HumanMessage("What is 2 + 3?")]


def make_adapter(base_dir, out_dir, *, manifest=True):
    """A LoRA adapter with non-zero weights (so it changes the model), as training would save it."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    fingerprint = model_fingerprint(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(out_dir)
    if manifest:
        (out_dir / ADAPTER_MANIFEST).write_text(json.dumps({"base_model": f"hf:{base_dir}", "base_fingerprint": fingerprint}))
    return out_dir


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


def test_parse_spec_forms():
    assert parse_spec("default").kind == "default"
    assert parse_spec("hf:/m+adapter=/a").adapter == "/a"
    spec = parse_spec("openai:qwen@http://127.0.0.1:8080/v1")
    assert (spec.kind, spec.target, spec.base_url) == ("chat", "openai:qwen", "http://127.0.0.1:8080/v1")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty model spec"),
        ("gpt4-please", "unknown model spec"),
        ("hf:", "names no model"),
        ("hf:/m+adapter=", "names no adapter"),
        ("openai:gpt-4o+adapter=/a", "adapters attach to local models only"),
        ("nosuchprovider:model-x", "unknown model spec"),
    ],
)
def test_bad_specs_say_what_to_do(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        load_chat_model(spec)


def test_hf_path_generates_and_counts_tokens(tiny_model_dir):
    chat = load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=6)
    assert isinstance(chat, LocalChatModel)
    reply = chat.invoke(MESSAGES)
    assert isinstance(reply.content, str) and reply.content
    # Token counts are the tokenizer's: the rendered chat prompt, and the reply text.
    prompt = chat.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 3?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert reply.usage_metadata["input_tokens"] == len(chat.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < reply.usage_metadata["output_tokens"] <= 6
    assert reply.response_metadata["model_name"] == str(tiny_model_dir)


def test_hf_models_are_loaded_once_per_process(tiny_model_dir):
    assert load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=6) is load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=6)


def test_adapter_is_attached_and_changes_the_weights(tiny_model_dir, adapter_dir):
    base = load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=6)
    adapted = load_chat_model(f"hf:{tiny_model_dir}+adapter={adapter_dir}", max_new_tokens=6)
    base_q = base.llm.pipeline.model.model.layers[0].self_attn.q_proj.weight
    adapted_q = adapted.llm.pipeline.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(base_q, adapted_q)  # the LoRA delta was merged in
    assert adapted.invoke(MESSAGES).content


def test_adapter_for_another_base_is_refused(other_tiny_model_dir, adapter_dir):
    with pytest.raises(AdapterMismatchError, match="was trained on base"):
        load_chat_model(f"hf:{other_tiny_model_dir}+adapter={adapter_dir}")


def test_missing_adapter_dir(tiny_model_dir, tmp_path):
    with pytest.raises(ModelSpecError, match="holds no adapter_config.json"):
        load_chat_model(f"hf:{tiny_model_dir}+adapter={tmp_path / 'nope'}")


def test_missing_model_dir(tmp_path):
    with pytest.raises(ModelSpecError, match="cannot load model"):
        load_chat_model(f"hf:{tmp_path / 'nothing-here'}")


def test_graph_runs_on_local_models(tiny_model_dir, adapter_dir):
    graph = build_graph(
        load_chat_model(f"hf:{tiny_model_dir}+adapter={adapter_dir}", max_new_tokens=8),
        load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=8),
    ).compile()
    out = graph.invoke({"question": "What is 2 + 3?"})
    # Random weights write no sub-questions: the graph falls back and still answers.
    assert out["route"] == "single" and out["fallback_reason"]
    assert out["usage"]["decomposer"]["input_tokens"] > 0 and out["usage"]["solver"]["output_tokens"] > 0


async def _ainvoke_many(chat, n):
    import asyncio

    return await asyncio.gather(*[chat.ainvoke(MESSAGES) for _ in range(n)])


def test_async_local_generation_runs_in_a_worker_thread(tiny_model_dir):
    import asyncio
    import threading
    import time

    chat = load_chat_model(f"hf:{tiny_model_dir}", max_new_tokens=4)
    model = chat.llm.pipeline.model
    real_generate, threads = model.generate, []

    def slow_generate(*args, **kwargs):
        # The real generation, made long enough (0.2 s) that a blocked event loop would show.
        threads.append(threading.get_ident())
        time.sleep(0.2)
        return real_generate(*args, **kwargs)

    model.generate = slow_generate

    async def main():
        ticks = 0
        done = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        replies = await _ainvoke_many(chat, 3)
        done.set()
        await tick_task
        return replies, ticks, threading.get_ident()

    replies, ticks, loop_thread = asyncio.run(main())
    assert len(threads) == 3 and loop_thread not in threads  # generate never ran on the loop's thread
    assert ticks >= 20  # 3 x 0.2 s of generation: the loop kept running other tasks throughout
    assert len({r.content for r in replies}) == 1  # greedy: the same prompt gives the same reply
