"""`divconq train` settings: TrainConfig (TRL's SFTConfig), the generated flags, --config FILE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trl import SFTConfig

from divconq.cli import build_parser, main
from divconq.distill.train import TrainConfig, config_from_cli
from divconq.errors import DivconqError

REQUIRED = ["train", "--data", "d", "--out", "o"]


def parse(*flags: str, config_file: str | None = None) -> TrainConfig:
    return config_from_cli(build_parser().parse_args([*REQUIRED, *flags]), config_file=config_file)


def test_the_config_is_trl_sft_config_with_our_defaults():
    config = TrainConfig()
    assert isinstance(config, SFTConfig)
    assert (config.base, config.lora_r, config.lora_alpha, config.lora_target_modules) == ("default", 16, 32, "all-linear")
    assert config.learning_rate == 2e-4 and config.per_device_train_batch_size == 4 and config.max_length == 512
    assert config.train_sampling_strategy == "group_by_length" and not config.padding_free and not config.packing
    # TRL's defaults are True, on any device.
    assert config.bf16 is False and config.activation_checkpointing is False and config.gradient_checkpointing is False
    lora = TrainConfig(lora_target_modules="q_proj, v_proj").lora()
    assert set(lora.target_modules) == {"q_proj", "v_proj"} and lora.r == 16


def test_flags_come_from_the_config_class_and_the_old_names_still_work():
    assert parse() == TrainConfig()  # no flag: the class defaults, declared once
    config = parse("--lr", "1e-3", "--epochs", "2", "--batch-size", "2", "--grad-accumulation", "3",
                   "--lora-r", "4", "--max-length", "256", "--warmup_steps", "5", "--lora_dropout", "0.1",
                   "--lora-target-modules", "q_proj,v_proj", "--base", "hf:/m", "--packing", "--seed", "7")
    assert (config.learning_rate, config.num_train_epochs, config.per_device_train_batch_size) == (1e-3, 2.0, 2)
    assert (config.gradient_accumulation_steps, config.lora_r, config.max_length) == (3, 4, 256)
    assert (config.warmup_steps, config.lora_dropout, config.lora_target_modules) == (5, 0.1, "q_proj,v_proj")
    assert config.base == "hf:/m" and config.packing is True and config.seed == 7


def test_help_lists_every_trainer_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--lora_target_modules", "--weight_decay", "--warmup_steps", "--padding_free", "--packing",
                 "--lr_scheduler_type", "--config", "--resume", "--lr"):
        assert flag in text, flag
    assert "(default: 0.0002)" in text  # the class default, shown once


def test_config_file_then_flags(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text("learning_rate: 3e-4\nlora-r: 8\nepochs: 1\nlora_target_modules: q_proj\n")
    config = parse("--lora-r", "2", config_file=str(yaml_file))
    assert config.learning_rate == 3e-4  # YAML reads 3e-4 as a string: converted like the flag
    assert config.lora_r == 2 and config.num_train_epochs == 1.0 and config.lora_target_modules == "q_proj"

    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({"per_device_train_batch_size": 2, "packing": True}))
    config = parse(config_file=str(json_file))
    assert config.per_device_train_batch_size == 2 and config.packing is True


@pytest.mark.parametrize("text, message", [
    ("lerning_rate: 0.1\n", r"unknown setting 'lerning_rate'; did you mean 'learning_rate'\?"),
    ("lora_alfa: 8\n", r"unknown setting 'lora_alfa'; did you mean 'lora_alpha'\?"),
    ("zzzz: 1\n", r"unknown setting 'zzzz'; `divconq train --help` lists the settings"),
    ("- 1\n- 2\n", r"must map setting names to values, not a list"),
    ("learning_rate: [oops\n", r"not valid YAML"),
    ("max_steps: many\n", r"max_steps: cannot read 'many' as int"),
])
def test_a_bad_config_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DivconqError, match=message) as info:
        parse(config_file=str(path))
    assert "\n" not in str(info.value)


def test_a_bad_config_file_exits_2_before_any_training(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("lerning_rate: 0.1\n")
    assert main([*REQUIRED, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"divconq: error: config file {path}: unknown setting 'lerning_rate'; did you mean 'learning_rate'?"]
    assert main([*REQUIRED, "--lora_dropout", "2"]) == 2
    assert "lora_dropout must be in [0, 1)" in capsys.readouterr().err


def test_other_commands_do_not_import_trl():
    """The train flags come from TRL's config class; building them is left to `divconq train`."""
    code = ("import sys; from divconq.cli import build_parser; p = build_parser(); p.parse_args(['draw']); "
            "p.format_help(); print('trl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_finetune_is_part_of_the_distill_api():
    import divconq.distill as distill
    from divconq.distill import train

    assert distill.finetune is train.finetune and distill.TrainConfig is TrainConfig
    assert {"finetune", "TrainConfig"} <= set(distill.__all__)
