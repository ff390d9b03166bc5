"""A `divconq sft` output dir loads with the real `datasets` package in one line, and the
real TRL `SFTTrainer` trains on it (a tiny local model, one step)."""

from __future__ import annotations

import json

import pytest
from test_sft import make_run
from tiny_models import build_tiny_chat_model

from divconq.distill.sft import build_sft

datasets = pytest.importorskip("datasets")


def sft_dir(tmp_path, n: int, val_fraction: float):
    runs = [make_run(n=i, question=f"Tom has {i} apples and buys {i + 1} more. How many now?") for i in range(n)]
    out = tmp_path / "sd_t"
    summary = build_sft(runs, out_dir=out, val_fraction=val_fraction)
    return out, summary


def test_load_dataset_gives_train_and_validation_splits(tmp_path):
    out, summary = sft_dir(tmp_path, 40, 0.3)
    assert summary.train and summary.validation  # both splits have examples at this size
    data = datasets.load_dataset(str(out))
    assert sorted(data) == ["train", "validation"]
    assert (data["train"].num_rows, data["validation"].num_rows) == (summary.train, summary.validation)
    assert data["train"].column_names == ["messages"]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert data["train"][0]["messages"] == first["messages"]
    pc = datasets.load_dataset(str(out), "prompt_completion")
    assert sorted(pc["train"].column_names) == ["completion", "prompt"]
    assert pc["validation"].num_rows == summary.validation


def test_a_small_store_writes_no_empty_split_and_still_loads(tmp_path):
    out, summary = sft_dir(tmp_path, 3, 0.0)
    assert summary.validation == 0
    assert not list(out.glob("validation*"))
    data = datasets.load_dataset(str(out))
    assert list(data) == ["train"] and data["train"].num_rows == 3


def test_trl_sft_trainer_trains_a_step_on_each_format(tmp_path):
    trl = pytest.importorskip("trl")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model_dir = build_tiny_chat_model(tmp_path / "tiny")
    out, _ = sft_dir(tmp_path, 40, 0.3)
    for config_name in ("messages", "prompt_completion"):
        data = datasets.load_dataset(str(out), config_name)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        before = {k: v.clone() for k, v in model.named_parameters()}
        args = trl.SFTConfig(
            output_dir=str(tmp_path / f"run-{config_name}"), max_steps=1, per_device_train_batch_size=2,
            learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, max_length=1024,
            logging_steps=1, dataloader_num_workers=0,
        )
        trainer = trl.SFTTrainer(
            model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
            processing_class=AutoTokenizer.from_pretrained(model_dir),
        )
        result = trainer.train()
        assert result.global_step == 1 and result.training_loss > 0
        assert any(not torch.equal(before[k], v) for k, v in model.named_parameters()), config_name
        if config_name == "prompt_completion":  # the loss is on the completion only
            batch = trainer.data_collator([trainer.train_dataset[0]])
            masked = batch["labels"] == -100
            assert masked.any() and (~masked).any()
            prompt_len = int(masked[0].long().argmin())  # labels start where the completion starts
            assert masked[0, :prompt_len].all() and prompt_len > 10
        assert trainer.evaluate()["eval_loss"] > 0
