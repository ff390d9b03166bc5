"""LoRA training on a tiny local chat model (CPU, a few seconds per run)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

from divconq.distill import train as train_module
from divconq.distill.sft import build_sft
from divconq.distill.train import IGNORE_INDEX, TrainConfig, encode_example, train
from divconq.errors import AdapterMismatchError, DivconqError, ModelSpecError
from divconq.nodes import load_chat_model
from divconq.nodes.models import ADAPTER_MANIFEST, load_causal_lm, model_fingerprint
from divconq.nodes.prompts import PROMPT_VERSION, decompose_messages, get_prompts
from test_sft import make_run
from tiny_models import build_tiny_chat_model

# A high learning rate: a few dozen steps must visibly move a random tiny model.
FAST = dict(learning_rate=1e-2, batch_size=4, max_length=1024, logging_steps=4, progress=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the models are tiny, and on a shared 2-core machine two spinning
    OpenMP threads run these tests several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft") / "data"
    summary = build_sft([make_run(n=i) for i in range(16)], variant="decomposer", out_dir=out, val_fraction=0.25)
    assert summary.train >= 8 and summary.validation >= 2
    return out


@pytest.fixture(scope="module")
def trained(tiny, sft_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    config = TrainConfig(max_steps=16, eval_steps=8, save_steps=8, **FAST)
    result = train(sft_data, f"hf:{tiny}", root / "adapter", config, merge_to=root / "merged")
    return result, root / "adapter", root / "merged"


def test_encode_example_masks_exactly_the_prompt(tiny):
    _, tokenizer = load_causal_lm(str(tiny))
    prompt = [
        {"role": "system", "content": "Break the question down."},
        {"role": "user", "content": "Question: What is 2 + 3?"},
    ]
    messages = prompt + [{"role": "assistant", "content": "1. What is 2 plus 3?"}]
    encoded = encode_example(tokenizer, messages)

    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert encoded["input_ids"][:n] == prompt_ids  # the exact inference prompt
    assert encoded["labels"][:n] == [IGNORE_INDEX] * n
    completion = encoded["labels"][n:]
    assert IGNORE_INDEX not in completion and completion == encoded["input_ids"][n:]
    # The completion is the answer plus the end-of-turn token(s) of the chat template.
    assert tokenizer.decode(completion) == "1. What is 2 plus 3?<|im_end|>\n"
    assert tokenizer.eos_token_id in completion
    assert encoded["attention_mask"] == [1] * len(encoded["input_ids"])
    # Too long: skipped, never truncated.
    assert encode_example(tokenizer, messages, max_length=n + 3) is None

    collate = train_module._Collator(tokenizer.pad_token_id)
    short = encode_example(tokenizer, prompt + [{"role": "assistant", "content": "ok"}])
    batch = collate([encoded, short])
    pad = len(encoded["input_ids"]) - len(short["input_ids"])
    assert batch["labels"][1].tolist()[-pad:] == [IGNORE_INDEX] * pad
    assert batch["attention_mask"][1].tolist()[-pad:] == [0] * pad
    assert batch["input_ids"][1].tolist()[-pad:] == [tokenizer.pad_token_id] * pad


def test_training_lowers_validation_loss_and_writes_adapter(trained, tiny, sft_data):
    result, adapter, _ = trained
    assert result.steps == 16
    assert result.eval_loss_before is not None and result.eval_loss_after is not None
    assert result.eval_loss_after < 0.8 * result.eval_loss_before
    assert result.train_loss is not None and result.train_examples >= 8 and result.eval_examples >= 2
    for name in ("adapter_config.json", "adapter_model.safetensors", ADAPTER_MANIFEST, "tokenizer.json"):
        assert (adapter / name).is_file(), name
    assert sorted(p.name for p in (adapter / "checkpoints").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-8"]
    assert not list(adapter.glob(".adapter-*"))  # the temp dir was moved into place

    manifest = json.loads((adapter / ADAPTER_MANIFEST).read_text())
    base_model, _ = load_causal_lm(str(tiny))
    assert manifest["base_model"] == f"hf:{tiny}"
    assert manifest["base_fingerprint"] == model_fingerprint(base_model)
    assert manifest["variant"] == "decomposer" and manifest["screen"] == "none" and manifest["task"] == "math"
    assert manifest["prompt_version"] == PROMPT_VERSION
    assert manifest["data"] == json.loads((sft_data / "summary.json").read_text())
    assert manifest["training"]["lora_r"] == 16 and manifest["training"]["bf16"] is False
    assert manifest["metrics"]["eval_loss_after"] == pytest.approx(result.eval_loss_after)
    assert "validation loss" in result.format()


def test_adapter_loads_and_generates(trained, tiny):
    _, adapter, _ = trained
    model = load_chat_model(f"hf:{tiny}+adapter={adapter}", max_new_tokens=8)
    reply = model.invoke(decompose_messages(get_prompts("math"), "What is 2 + 3?"))
    assert isinstance(reply.content, str) and reply.content


def test_adapter_refuses_another_base(trained, tmp_path):
    _, adapter, _ = trained
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(AdapterMismatchError, match="trained on base"):
        load_chat_model(f"hf:{other}+adapter={adapter}")


def test_merged_model_matches_base_plus_adapter(trained, tiny):
    import torch

    from divconq.nodes.models import attach_adapter

    _, adapter, merged_dir = trained
    assert (merged_dir / "config.json").is_file() and (merged_dir / "divconq_merged.json").is_file()
    merged, tokenizer = load_causal_lm(str(merged_dir))
    base, _ = load_causal_lm(str(tiny))
    with_adapter = attach_adapter(base, adapter, "tiny")
    ids = tokenizer("<|im_start|>user\nhello<|im_end|>\n", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, with_adapter(**ids).logits, atol=1e-4)
    reply = load_chat_model(f"hf:{merged_dir}", max_new_tokens=8).invoke("hi")
    assert reply.content


class _Crash(TrainerCallback):
    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_from_last_checkpoint(tiny, sft_data, tmp_path):
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=5, eval_steps=100, save_steps=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        train(sft_data, f"hf:{tiny}", out, config, callbacks=[_Crash(at=3)])
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    assert not (out / "checkpoints" / "checkpoint-4").exists()
    assert not (out / ADAPTER_MANIFEST).exists()  # no half-finished adapter

    with pytest.raises(DivconqError, match="resume"):
        train(sft_data, f"hf:{tiny}", out, config)
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(DivconqError, match="trained on base"):
        train(sft_data, f"hf:{other}", out, config, resume=True)

    result = train(sft_data, f"hf:{tiny}", out, config, resume=True)
    assert result.resumed_from is not None and result.resumed_from.endswith("checkpoint-2")
    assert result.steps == 5
    assert (out / ADAPTER_MANIFEST).is_file() and (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / ADAPTER_MANIFEST).read_text())["metrics"]["steps"] == 5


def test_input_errors_are_one_line(tiny, sft_data, tmp_path):
    config = TrainConfig(max_steps=1, **FAST)
    with pytest.raises(DivconqError, match="does not exist"):
        train(tmp_path / "missing", f"hf:{tiny}", tmp_path / "o1", config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DivconqError, match="no train.jsonl"):
        train(tmp_path / "empty", f"hf:{tiny}", tmp_path / "o2", config)

    bad = tmp_path / "bad"
    bad.mkdir()
    good_line = (sft_data / "train.jsonl").read_text().splitlines()[0]
    (bad / "train.jsonl").write_text(good_line + "\n\n" + '{"messages": [oops\n')
    with pytest.raises(DivconqError, match=r"train\.jsonl line 3: invalid JSON"):
        train(bad, f"hf:{tiny}", tmp_path / "o3", config)
    (bad / "train.jsonl").write_text(good_line + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"},
                                                                                 {"role": "user", "content": "y"}]}))
    with pytest.raises(DivconqError, match=r"line 2: the last message must be the assistant"):
        train(bad, f"hf:{tiny}", tmp_path / "o4", config)

    with pytest.raises(ModelSpecError, match="cannot load model"):
        train(sft_data, f"hf:{tmp_path / 'no-such-model'}", tmp_path / "o5", config)
    with pytest.raises(DivconqError, match="local base"):
        train(sft_data, "openai:gpt-4o-mini", tmp_path / "o6", config)
    not_empty = tmp_path / "o7"
    not_empty.mkdir()
    (not_empty / "notes.txt").write_text("mine")
    with pytest.raises(DivconqError, match="not empty"):
        train(sft_data, f"hf:{tiny}", not_empty, config)


def test_disk_full_while_saving_is_reported_and_keeps_checkpoints(tiny, sft_data, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module, "_save_adapter", full)
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=1, eval_steps=100, save_steps=1, **FAST)
    with pytest.raises(DivconqError, match="disk full") as info:
        train(sft_data, f"hf:{tiny}", out, config)
    assert "\n" not in str(info.value)
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    assert not (out / ADAPTER_MANIFEST).exists() and not list(out.glob(".adapter-*"))
