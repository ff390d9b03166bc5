"""LoRA training on TRL's SFTTrainer, on a tiny local chat model (CPU, seconds per run)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from divconq.distill import train as train_module
from divconq.distill.sft import build_sft
from divconq.distill.train import (
    TrainConfig,
    build_trainer,
    completion_records,
    finetune,
    last_complete_checkpoint,
    read_result,
)
from divconq.errors import AdapterMismatchError, DivconqError, ModelSpecError
from divconq.nodes import load_chat_model
from divconq.nodes.manifest import ADAPTER_MANIFEST, model_fingerprint
from divconq.nodes.models import attach_adapter, load_causal_lm
from divconq.nodes.prompts import PROMPT_VERSION, decompose_messages, get_prompts
from test_sft import make_run
from tiny_models import build_tiny_chat_model

# A high learning rate: a few dozen steps must visibly move a random tiny model.
FAST = dict(learning_rate=1e-2, per_device_train_batch_size=4, max_length=1024, logging_steps=4, disable_tqdm=True)
PROMPT = [
    {"role": "system", "content": "Break the question down."},
    {"role": "user", "content": "Question: What is 2 + 3?"},
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the models are tiny, and on a shared 2-core machine two spinning
    OpenMP threads run these tests several times slower."""
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
    spec = finetune(sft_data, base=f"hf:{tiny}", out=root / "adapter", config=config, merge_to=root / "merged")
    return spec, root / "adapter", root / "merged"


class StepCounter(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


def _trainer(tiny, records, tmp_path, **settings):
    model, tokenizer = load_causal_lm(str(tiny), for_training=True)
    args = train_module._trainer_args(TrainConfig(**(FAST | settings)), tmp_path / "checkpoints", has_eval=False)
    return build_trainer(model, tokenizer, records, [], args), tokenizer


def test_trl_masks_exactly_the_inference_prompt(tiny, tmp_path):
    messages = PROMPT + [{"role": "assistant", "content": "1. What is 2 plus 3?"}]
    _, tokenizer = load_causal_lm(str(tiny))
    records, skipped = completion_records(tokenizer, [messages], max_length=None)
    assert skipped == 0 and records == [{"prompt": PROMPT, "completion": messages[-1:]}]
    trainer, tokenizer = _trainer(tiny, records, tmp_path)
    example = trainer.train_dataset[0]

    prompt_text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids  # the exact inference prompt
    assert example["labels"][:n] == [-100] * n
    completion = example["labels"][n:]
    assert -100 not in completion and completion == example["input_ids"][n:]
    # The completion is the answer plus the end-of-turn token(s) of the chat template.
    assert tokenizer.decode(completion) == "1. What is 2 plus 3?<|im_end|>\n"
    assert tokenizer.eos_token_id in completion

    # Too long: skipped and counted, never truncated.
    assert completion_records(tokenizer, [messages], max_length=n + 3) == ([], 1)


def test_a_template_that_is_not_prefix_stable_is_refused(tiny):
    _, tokenizer = load_causal_lm(str(tiny))
    # The generation prompt says "<|im_start|>answer", the rendered reply "<|im_start|>assistant".
    tokenizer.chat_template = tokenizer.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>answer\n'")
    with pytest.raises(DivconqError, match="prefix-stable"):
        completion_records(tokenizer, [PROMPT + [{"role": "assistant", "content": "1. x?"}]], max_length=None)


def test_padding_free_batches_give_the_padded_loss(tiny, tmp_path):
    """padding_free flattens a batch into one row: on SDPA (no flash attention here) it is
    right only if the model keeps each example from attending to the one before it."""
    records = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "1. What is " + "2 " * k + "?"}]}
               for k in (1, 9, 30)]
    padded, _ = _trainer(tiny, records, tmp_path, padding_free=False)
    flat, _ = _trainer(tiny, records, tmp_path, padding_free=True)
    features = [padded.train_dataset[i] for i in range(3)]
    assert features == [flat.train_dataset[i] for i in range(3)]
    padded_batch, flat_batch = padded.data_collator(features), flat.data_collator(features)
    assert "attention_mask" not in flat_batch and flat_batch["input_ids"].shape[0] == 1
    assert padded_batch["input_ids"].shape[0] == 3 and (padded_batch["attention_mask"] == 0).any()
    padded.model.eval(), flat.model.eval()
    with torch.no_grad():
        losses = [trainer.compute_loss(trainer.model, batch).item()
                  for trainer, batch in ((padded, padded_batch), (flat, flat_batch))]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # And a model that let examples see each other would differ: drop the position ids.
    leaky = {k: v for k, v in flat_batch.items() if k not in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                                               "max_length_q", "max_length_k", "seq_idx")}
    with torch.no_grad():
        assert flat.compute_loss(flat.model, leaky).item() != pytest.approx(losses[0], rel=1e-3)


def test_packing_keeps_each_example_and_its_completion_mask(tiny, tmp_path):
    """Packed rows hold whole examples (too-long ones were skipped before) with their own
    labels, and the loss of a packed row is the loss of the same examples padded."""
    records = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "1. What is " + "2 " * k + "?"}]}
               for k in (1, 9, 30)]
    padded, _ = _trainer(tiny, records, tmp_path, padding_free=False)
    packed, _ = _trainer(tiny, records, tmp_path, packing=True)
    assert len(packed.train_dataset) == 1  # all three fit one row of max_length 1024
    row = packed.train_dataset[0]
    singles = sorted((padded.train_dataset[i] for i in range(3)), key=lambda e: -len(e["input_ids"]))
    assert row["seq_lengths"] == [len(e["input_ids"]) for e in singles]  # best-fit decreasing: longest first
    assert row["labels"] == [label for e in singles for label in e["labels"]]
    padded.model.eval(), packed.model.eval()
    with torch.no_grad():
        losses = [trainer.compute_loss(trainer.model, trainer.data_collator(features)).item()
                  for trainer, features in ((padded, singles), (packed, [row]))]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_training_lowers_validation_loss_and_writes_adapter(trained, tiny, sft_data):
    spec, adapter, _ = trained
    assert spec == f"hf:{tiny}+adapter={adapter}"
    result = read_result(adapter)
    assert result.steps == 16 and result.spec == spec
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
    assert [e["step"] for e in manifest["log_history"] if "eval_loss" in e] == [8, 16]
    assert "validation loss" in result.format() and spec in result.format()


def test_adapter_loads_and_generates(trained, tiny):
    """The chat model of the spec generates with the trained adapter applied: its reply is
    the greedy continuation of base plus adapter, and not the base model's reply."""
    spec, adapter, _ = trained
    messages = decompose_messages(get_prompts("math"), "What is 2 + 3?")
    reply = load_chat_model(spec, max_new_tokens=8).invoke(messages).content
    bare = load_chat_model(f"hf:{tiny}", max_new_tokens=8).invoke(messages).content

    base, tokenizer = load_causal_lm(str(tiny))
    student = attach_adapter(base, adapter, "tiny")
    prompt = load_chat_model(spec, max_new_tokens=8)._to_chat_prompt(messages)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = student.generate(**ids, max_new_tokens=8, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply == expected.strip() or reply == expected
    assert reply and reply != bare


def test_adapter_refuses_another_base(trained, tmp_path):
    spec, adapter, _ = trained
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(AdapterMismatchError, match="trained on base"):
        load_chat_model(f"hf:{other}+adapter={adapter}")


def test_merged_model_matches_base_plus_adapter(trained, tiny):
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


def _adapter_weights(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_training_on_from_an_adapter_starts_at_its_weights(trained, tiny, sft_data, tmp_path):
    """init_adapter continues the given adapter: the first validation loss is the one the
    adapter ended at (a fresh LoRA adapter would start at the base's), its rank is kept, and
    the manifest says where it started."""
    _, adapter, _ = trained
    start = read_result(adapter)
    config = TrainConfig(max_steps=4, eval_steps=4, save_steps=4, init_adapter=str(adapter), lora_r=4, **FAST)
    spec = finetune(sft_data, base=f"hf:{tiny}", out=tmp_path / "on", config=config)
    result = read_result(tmp_path / "on")
    assert spec == f"hf:{tiny}+adapter={tmp_path / 'on'}"
    assert result.eval_loss_before == pytest.approx(start.eval_loss_after, rel=1e-4)
    assert result.eval_loss_before < 0.8 * read_result(adapter).eval_loss_before  # not the base's loss
    before, after = _adapter_weights(adapter), _adapter_weights(tmp_path / "on")
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)  # rank 16 kept, lora_r=4 not used
    assert any(not torch.equal(before[k], after[k]) for k in before)  # and trained
    manifest = json.loads((tmp_path / "on" / ADAPTER_MANIFEST).read_text())
    assert manifest["training"]["init_adapter"] == str(adapter)
    assert json.loads((tmp_path / "on" / "adapter_config.json").read_text())["r"] == 16


def test_training_on_from_an_adapter_of_another_base_is_refused(trained, sft_data, tmp_path):
    _, adapter, _ = trained
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    config = TrainConfig(max_steps=1, init_adapter=str(adapter), **FAST)
    with pytest.raises(AdapterMismatchError, match="was trained on base .* retrain the adapter on this base"):
        finetune(sft_data, base=f"hf:{other}", out=tmp_path / "out", config=config)
    assert not (tmp_path / "out" / ADAPTER_MANIFEST).exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(DivconqError, match="holds no adapter"):
        finetune(sft_data, base=f"hf:{other}", out=tmp_path / "out2",
                 config=TrainConfig(max_steps=1, init_adapter=str(tmp_path / "plain"), **FAST))


def test_resume_skips_a_partial_checkpoint(tiny, sft_data, tmp_path):
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=5, eval_steps=100, save_steps=2, **FAST)
    with pytest.raises(KeyboardInterrupt):
        finetune(sft_data, base=f"hf:{tiny}", out=out, config=config, callbacks=[_Crash(at=3)])
    checkpoints = out / "checkpoints"
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (out / ADAPTER_MANIFEST).exists()  # no half-finished adapter
    # A kill during the save of step 4: the weights are there, the trainer state (written last) is not.
    partial = checkpoints / "checkpoint-4"
    partial.mkdir()
    shutil.copy(checkpoints / "checkpoint-2" / "adapter_model.safetensors", partial)
    assert last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-2"

    with pytest.raises(DivconqError, match="resume"):
        finetune(sft_data, base=f"hf:{tiny}", out=out, config=config)
    other = build_tiny_chat_model(tmp_path / "other", seed=1)
    with pytest.raises(DivconqError, match="trained on base"):
        finetune(sft_data, base=f"hf:{other}", out=out, config=config, resume=True)

    counter = StepCounter()
    finetune(sft_data, base=f"hf:{tiny}", out=out, config=config, resume=True, callbacks=[counter])
    result = read_result(out)
    assert result.resumed_from == str(checkpoints / "checkpoint-2")
    assert result.steps == 5 and counter.steps == 3  # steps 3, 4 and 5
    assert (checkpoints / "checkpoint-4" / "trainer_state.json").is_file()  # saved again, completely
    assert (out / "adapter_model.safetensors").is_file()


def test_resume_of_a_finished_run_trains_nothing(tiny, sft_data, tmp_path):
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=3, eval_steps=100, save_steps=3, **FAST)
    spec = finetune(sft_data, base=f"hf:{tiny}", out=out, config=config)
    files = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()}

    counter = StepCounter()
    assert finetune(sft_data, base=f"hf:{tiny}", out=out, config=config, resume=True, callbacks=[counter]) == spec
    assert counter.steps == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir() if p.is_file()} == files

    # Killed after the last checkpoint, before the adapter was installed: installed from it, untrained.
    for name in (ADAPTER_MANIFEST, "adapter_model.safetensors", "adapter_config.json"):
        (out / name).unlink()
    finetune(sft_data, base=f"hf:{tiny}", out=out, config=config, resume=True, callbacks=[counter])
    assert counter.steps == 0 and read_result(out).steps == 3
    assert (out / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"][0]


def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_resumable(tiny, sft_data, tmp_path, monkeypatch):
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=4, eval_steps=100, save_steps=2, **FAST)
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the optimizer state of the second checkpoint hits a full disk
        saves.append(str(f))
        if "checkpoint-4" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing "
                               "file data/12: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DivconqError, match="full disk.*rerun with resume") as info:
        finetune(sft_data, base=f"hf:{tiny}", out=out, config=config)
    assert "\n" not in str(info.value) and any("checkpoint-4" in s for s in saves)
    checkpoints = out / "checkpoints"
    assert last_complete_checkpoint(checkpoints) == checkpoints / "checkpoint-2"
    assert (checkpoints / "checkpoint-4").is_dir()  # partial
    monkeypatch.setattr(torch, "save", real_save)

    finetune(sft_data, base=f"hf:{tiny}", out=out, config=config, resume=True)
    assert read_result(out).steps == 4 and read_result(out).resumed_from.endswith("checkpoint-2")


def test_a_full_disk_while_saving_the_adapter_keeps_checkpoints(tiny, sft_data, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_module, "_save_adapter", full)
    out = tmp_path / "adapter"
    config = TrainConfig(max_steps=1, eval_steps=100, save_steps=1, **FAST)
    with pytest.raises(DivconqError, match="disk full") as info:
        finetune(sft_data, base=f"hf:{tiny}", out=out, config=config)
    assert "\n" not in str(info.value)
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    assert not (out / ADAPTER_MANIFEST).exists() and not list(out.glob(".adapter-*"))


def test_input_errors_are_one_line(tiny, sft_data, tmp_path):
    config = TrainConfig(max_steps=1, **FAST)

    def run(data, out, base=f"hf:{tiny}"):
        finetune(data, base=base, out=tmp_path / out, config=config)

    with pytest.raises(DivconqError, match="does not exist"):
        run(tmp_path / "missing", "o1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DivconqError, match="no train.jsonl"):
        run(tmp_path / "empty", "o2")

    bad = tmp_path / "bad"
    bad.mkdir()
    good_line = (sft_data / "train.jsonl").read_text().splitlines()[0]
    (bad / "train.jsonl").write_text(good_line + "\n\n" + '{"messages": [oops\n')
    with pytest.raises(DivconqError, match=r"train\.jsonl line 3: invalid JSON"):
        run(bad, "o3")
    (bad / "train.jsonl").write_text(good_line + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"},
                                                                                 {"role": "user", "content": "y"}]}))
    with pytest.raises(DivconqError, match=r"line 2: the last message must be the assistant"):
        run(bad, "o4")

    with pytest.raises(ModelSpecError, match="cannot load model"):
        run(sft_data, "o5", base=f"hf:{tmp_path / 'no-such-model'}")
    with pytest.raises(DivconqError, match="local base"):
        run(sft_data, "o6", base="openai:gpt-4o-mini")
    not_empty = tmp_path / "o7"
    not_empty.mkdir()
    (not_empty / "notes.txt").write_text("mine")
    with pytest.raises(DivconqError, match="not empty"):
        run(sft_data, "o7")
    with pytest.raises(DivconqError, match="lora_dropout"):
        TrainConfig(lora_dropout=1.5)
