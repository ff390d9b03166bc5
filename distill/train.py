"""LoRA fine-tuning of a local causal LM on SFT data from :mod:`divconq.distill.sft`, on TRL.

``finetune(data, base=..., out=..., config=...)`` trains with TRL's ``SFTTrainer`` on the
conversational prompt/completion format, with the loss on completion tokens only, and
returns the model spec of the trained student. :class:`TrainConfig` is TRL's ``SFTConfig``
(so every ``TrainingArguments`` option) plus the LoRA settings and the base model; the
``divconq train`` flags are generated from it.

What this adds to TRL:

- the prompt is rendered exactly as inference renders it (``apply_chat_template(...,
  add_generation_prompt=True)``), and a chat template that renders it differently once the
  answer is appended is refused (TRL only warns), so the student learns the inference
  prompt and, from the template's end-of-turn tokens, to stop;
- examples longer than ``max_length`` are skipped and counted, never truncated;
- the adapter dir gets a manifest with the base model's fingerprint, and is installed
  only when complete (manifest last);
- resuming picks the last *complete* checkpoint, refuses checkpoints of another base, and
  does not retrain a finished run.

Output dir layout::

    adapter_config.json, adapter_model.safetensors   the PEFT LoRA adapter
    tokenizer files                                   the base tokenizer
    divconq_adapter.json                              manifest (base fingerprint, data, settings, metrics)
    checkpoints/checkpoint-<step>/                    Trainer checkpoints (``resume=True`` continues)
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser, ProgressCallback, TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import IntervalStrategy
from trl import SFTConfig, SFTTrainer

from divconq.distill.sft import read_summary
from divconq.errors import DivconqError
from divconq.nodes.manifest import (
    ADAPTER_CONFIG,
    ADAPTER_MANIFEST,
    is_adapter_dir,
    model_fingerprint,
    read_adapter_manifest,
    write_adapter_manifest,
)
from divconq.nodes.models import attach_adapter, default_model_dir, load_causal_lm, parse_spec
from divconq.safeio import atomic_write, dir_holds_files, is_disk_full

__all__ = ["TrainConfig", "TrainResult", "config_from_cli", "finetune", "load_sft_jsonl", "read_result"]

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
RUN_FILE = "divconq_run.json"  # inside the checkpoints dir: what a resumed run must match
MERGED_MANIFEST = "divconq_merged.json"
_CHECKPOINT_PREFIX = "checkpoint-"


def _setting(default: Any, help: str, **metadata: Any) -> Any:
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig(SFTConfig):
    """TRL's ``SFTConfig`` with the LoRA settings and the base model.

    The defaults that differ from TRL's are declared here, once: the CLI, the recipe and
    the manifest read them from this class. ``--lr``, ``--epochs``, ``--batch-size`` and
    ``--grad-accumulation`` are the flags of divconq 0.1, kept as aliases for one release.
    """

    base: str = _setting("default", "the student's base model: 'default' (the embedded SmolLM2-135M-Instruct) "
                         "or 'hf:<dir or hub id>'", metavar="SPEC")
    lora_r: int = _setting(16, "LoRA rank")
    lora_alpha: int = _setting(32, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _setting(0.05, "dropout on the LoRA input, in [0, 1)")
    lora_target_modules: str = _setting("all-linear", "comma-separated names of the modules to adapt, or "
                                        "'all-linear' (every linear layer but the output head)")
    init_adapter: str | None = _setting(None, "an adapter dir of divconq to train on from, instead of a fresh LoRA "
                                        "adapter (its own rank, alpha and modules are kept, the lora_* settings are "
                                        "not used); it must have been trained on this base", metavar="DIR")

    # TrainingArguments / SFTConfig fields with other defaults, for LoRA on a small student.
    output_dir: str | None = _setting(None, "where checkpoints go (default: <out>/checkpoints)")
    learning_rate: float = _setting(2e-4, "peak learning rate of AdamW (LoRA takes a higher one than full "
                                    "fine-tuning)", aliases=["--lr"])
    num_train_epochs: float = _setting(3.0, "passes over the training data (max_steps, when set, wins)",
                                       aliases=["--epochs"])
    per_device_train_batch_size: int = _setting(4, "examples per device and step", aliases=["--batch-size"])
    gradient_accumulation_steps: int = _setting(1, "micro-batches per optimizer step",
                                                aliases=["--grad-accumulation"])
    max_length: int | None = _setting(512, "examples longer than this many tokens are skipped and counted, never "
                                      "truncated; with packing, also the length of a packed row")
    eval_strategy: IntervalStrategy | str = _setting("steps", "when to compute the validation loss (no "
                                                     "validation split: never)")
    eval_steps: float | None = _setting(50, "steps between validation losses")
    save_steps: float = _setting(50, "steps between checkpoints (what --resume continues from)")
    save_total_limit: int | None = _setting(2, "checkpoints kept")
    logging_first_step: bool = _setting(True, "log the loss of the first step too (the start of the curve)")
    # Padded batches in length groups: on a CPU (SDPA attention) the fastest of the batchings
    # bench/train_speed.py compares. Padding-free and packed batches are right there too
    # (tests/test_train.py), but a flattened batch costs a dense attention over all its
    # tokens without flash attention's variable-length kernels.
    train_sampling_strategy: str = _setting(
        "group_by_length", "order of the training examples: 'group_by_length' batches examples of similar length "
        "(little padding), 'random' does not; see also --padding_free and --packing (best with flash attention)",
        choices=["random", "sequential", "group_by_length", "batch_rebalance"])
    # TRL turns it on (True), which also warns on every run since transformers renamed it
    # activation_checkpointing; unset, both are off: the students are small.
    gradient_checkpointing: bool | None = _setting(None, "deprecated name of --activation_checkpointing (unset: off)")
    bf16: bool | None = _setting(None, "bf16 mixed precision (unset: exactly when a CUDA GPU is there; bf16 on a "
                                 "CPU is slow)")

    def __post_init__(self) -> None:
        import torch

        if self.bf16 is None:  # TRL's unset means bf16 everywhere, CPUs included
            self.bf16 = torch.cuda.is_available()
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # it only speeds copies to a GPU; torch warns on every loader
        self._check()
        placed = self.output_dir is not None
        super().__post_init__()
        if not placed:  # transformers fills in "trainer_output"; finetune puts checkpoints beside the adapter
            self.output_dir = None

    def _check(self) -> None:
        for name in ("lora_r", "lora_alpha", "per_device_train_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DivconqError(f"training setting {name} must be a positive integer; got {value!r}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise DivconqError(f"max_length must be a positive integer or None; got {self.max_length!r}")
        if not self.learning_rate > 0:
            raise DivconqError(f"learning_rate must be positive; got {self.learning_rate!r}")
        if self.max_steps <= 0 and not self.num_train_epochs > 0:
            raise DivconqError(f"num_train_epochs must be positive; got {self.num_train_epochs!r}")
        if not 0 <= self.lora_dropout < 1:
            raise DivconqError(f"lora_dropout must be in [0, 1); got {self.lora_dropout!r}")

    def lora(self) -> Any:
        from peft import LoraConfig

        modules = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout, bias="none",
            target_modules=modules if modules == "all-linear" else [m.strip() for m in modules.split(",") if m.strip()],
            task_type="CAUSAL_LM",
        )


@dataclass
class TrainResult:
    """What a training run produced, as recorded in the adapter's manifest."""

    adapter_dir: str
    spec: str  # the student's model spec: the base with this adapter
    train_loss: float | None  # last logged training loss
    train_loss_mean: float | None  # mean over the run (Trainer's training_loss)
    eval_loss_before: float | None  # None when the validation split is empty
    eval_loss_after: float | None
    steps: int
    epochs: float
    seconds: float
    train_examples: int
    eval_examples: int
    skipped_too_long: int
    base_model: str
    base_fingerprint: str
    resumed_from: str | None = None
    merged_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.4f}"

        lines = [
            f"adapter -> {self.adapter_dir} (base {self.base_model}, fingerprint {self.base_fingerprint})",
            f"  {self.steps} steps, {self.epochs:.2f} epochs, {self.seconds:.1f} s; "
            f"{self.train_examples} train / {self.eval_examples} validation examples"
            + (f", {self.skipped_too_long} skipped as too long" if self.skipped_too_long else ""),
            f"  train loss {f(self.train_loss)} (mean {f(self.train_loss_mean)}); "
            f"validation loss {f(self.eval_loss_before)} -> {f(self.eval_loss_after)}",
        ]
        if self.resumed_from:
            lines.append(f"  resumed from {self.resumed_from}")
        if self.merged_dir:
            lines.append(f"  merged model -> {self.merged_dir}")
        lines.append(f"  student spec: {self.spec}")
        return "\n".join(lines)


def read_result(adapter_dir: str | Path) -> TrainResult:
    """The result of the run that wrote ``adapter_dir``, from its manifest."""
    manifest = read_adapter_manifest(adapter_dir)
    if manifest is None:
        raise DivconqError(f"{adapter_dir} holds no {ADAPTER_MANIFEST}: train it with `divconq train` first")
    metrics = manifest["metrics"]
    names = {f.name for f in fields(TrainResult)}
    return TrainResult(
        adapter_dir=str(adapter_dir), spec=student_spec(manifest["base_model"], adapter_dir),
        base_model=manifest["base_model"], base_fingerprint=manifest["base_fingerprint"],
        merged_dir=manifest.get("merged_dir"), **{k: v for k, v in metrics.items() if k in names},
    )


def student_spec(base: str, adapter_dir: str | Path) -> str:
    """The model spec of ``base`` with the adapter in ``adapter_dir``."""
    return f"{base}+adapter={adapter_dir}"


# --------------------------------------------------------------------------- settings from the CLI


def add_config_arguments(parser: Any) -> None:
    """Add one flag per :class:`TrainConfig` field (HfArgumentParser's), without defaults,
    so that ``config_from_cli`` can tell the flags given from those left to the config
    file or to the class. The help shows each class default."""
    generated = HfArgumentParser(TrainConfig, add_help=False)
    settings = {f.name: f for f in fields(TrainConfig)}
    inherited = {f.name for f in fields(SFTConfig)}
    ours = parser.add_argument_group("student (each flag is also a key of --config FILE)")
    trl = parser.add_argument_group("training: TRL's SFTConfig, transformers' TrainingArguments")
    for action in generated._actions:
        setting = settings.get(action.dest)
        if setting is None or not action.option_strings:
            continue
        default = setting.default_factory() if setting.default_factory is not MISSING else setting.default
        if action.help and default is not None and not action.option_strings[0].startswith("--no_"):
            action.help = f"{action.help} (default: {default})"
        action.default = argparse.SUPPRESS
        (trl if action.dest in inherited else ours)._add_action(action)


def config_from_cli(args: Any, *, config_file: str | None = None, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``divconq train`` flags: class defaults, then the
    config file (YAML or JSON), then the flags given; ``overrides`` fill in what neither set."""
    names = {f.name for f in fields(TrainConfig) if f.init}
    values = dict(overrides)
    if config_file:
        values.update(_read_config_file(Path(config_file), names))
    values.update({k: v for k, v in vars(args).items() if k in names})
    return make_config(**values)


def make_config(**values: Any) -> TrainConfig:
    """``TrainConfig(**values)``, with TrainingArguments' own complaints as one line."""
    try:
        return TrainConfig(**values)
    except DivconqError:
        raise
    except (ValueError, TypeError) as exc:
        raise DivconqError(f"training settings: {str(exc).strip().splitlines()[0]}") from None


def _aliases() -> dict[str, str]:
    """Config-file spellings of the aliased flags (``lr``, ``epochs``...) -> field names."""
    return {alias.lstrip("-").replace("-", "_"): f.name
            for f in fields(TrainConfig) for alias in f.metadata.get("aliases", [])}


def _read_config_file(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DivconqError(f"cannot read config file {path} ({reason}): pass a readable YAML or JSON file") from None
    import yaml

    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DivconqError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'} "
                           f"({problem})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DivconqError(f"config file {path} must map setting names to values, not a {type(raw).__name__}")
    aliases = _aliases()
    parser = HfArgumentParser(TrainConfig)
    types = {action.dest: action.type for action in parser._actions}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        name = aliases.get(name, name)
        if name not in names:
            close = difflib.get_close_matches(name, sorted(names | set(aliases)), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; `divconq train --help` lists the settings"
            raise DivconqError(f"config file {path}: unknown setting {str(key)!r}{hint}")
        convert = types.get(name)
        if isinstance(value, str) and callable(convert) and convert is not str:
            try:  # YAML reads 3e-4 as a string; the flag's own type reads it as the CLI would
                value = convert(value)
            except (TypeError, ValueError):
                raise DivconqError(f"config file {path}: {key}: cannot read {value!r} as "
                                   f"{getattr(convert, '__name__', 'the setting type')}") from None
        values[name] = value
    return values


# --------------------------------------------------------------------------- data


def load_sft_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """The conversations of an SFT jsonl file (``{"messages": [...]}`` per line).

    Every line must hold at least one prompt message and end with an assistant message;
    a bad line raises ``DivconqError`` naming the file and line.
    """
    conversations = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DivconqError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DivconqError(f"{where}: invalid JSON ({exc.msg}); rebuild the data with `divconq sft`") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or len(messages) < 2:
            raise DivconqError(f'{where}: expected {{"messages": [prompt messages..., assistant message]}}')
        for message in messages:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DivconqError(f'{where}: every message needs string "role" and "content"')
        if messages[-1]["role"] != "assistant":
            raise DivconqError(f"{where}: the last message must be the assistant's completion")
        conversations.append([{"role": m["role"], "content": m["content"]} for m in messages])
    return conversations


def _load_splits(data_dir: Path) -> tuple[list, list]:
    if not data_dir.is_dir():
        raise DivconqError(f"SFT data dir {data_dir} does not exist: build it first (divconq sft ... --out {data_dir})")
    train_file, val_file = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    if not train_file.is_file():
        raise DivconqError(f"{data_dir} holds no train.jsonl: pass the output dir of `divconq sft`")
    train = load_sft_jsonl(train_file)
    if not train:
        raise DivconqError(f"{train_file} is empty: rebuild the SFT data with more traces")
    read_summary(data_dir)  # unreadable: said now, not after training
    return train, load_sft_jsonl(val_file) if val_file.is_file() else []


def completion_records(tokenizer: Any, conversations: list[list[dict]], max_length: int | None) -> tuple[list[dict], int]:
    """TRL prompt/completion records of the conversations that fit ``max_length`` tokens,
    and how many did not (skipped, never truncated).

    TRL renders the prompt with ``add_generation_prompt=True`` (what inference feeds the
    model) and masks it from the loss. When the template renders that prompt differently
    once the answer is appended, the completion cannot be split off: refused here.
    """
    records, skipped = [], 0
    for messages in conversations:
        prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise DivconqError(
                "the base model's chat template renders the prompt differently once the answer is appended, "
                "so the completion cannot be split off: use a base whose template is prefix-stable (e.g. ChatML)"
            )
        length = len(tokenizer(full_text, add_special_tokens=False)["input_ids"])
        if max_length is not None and length > max_length:
            skipped += 1
            continue
        records.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return records, skipped


# --------------------------------------------------------------------------- checks on inputs and the output dir


def _resolve_base(base_spec: str) -> str:
    spec = parse_spec(base_spec)
    if spec.kind == "chat":
        raise DivconqError(
            f"cannot train on {base_spec!r}: LoRA training needs a local base, 'default' or 'hf:<dir>'"
        )
    if spec.adapter:
        raise DivconqError(
            f"base {base_spec!r} carries an adapter: train on the plain base (drop '+adapter=...')"
        )
    return str(default_model_dir()) if spec.kind == "default" else spec.target


def _has_adapter(out_dir: Path) -> bool:
    return is_adapter_dir(out_dir) or (out_dir / ADAPTER_MANIFEST).is_file()


def _check_adapter_dir(out_dir: Path, checkpoints: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse an output dir that would mix runs; True when old checkpoints must be cleared."""
    holds_files = dir_holds_files(out_dir)
    has_checkpoints = dir_holds_files(checkpoints, "checkpoints path")
    if overwrite:
        return has_checkpoints
    if not holds_files:
        return False
    if resume and (has_checkpoints or _has_adapter(out_dir)):
        return False
    if has_checkpoints:
        raise DivconqError(
            f"{out_dir} holds checkpoints of an earlier run: resume it (resume=True / --resume) "
            "or start over (overwrite=True / --overwrite)"
        )
    if _has_adapter(out_dir):
        raise DivconqError(f"{out_dir} already holds an adapter: choose another output dir or pass overwrite")
    raise DivconqError(f"output dir {out_dir} is not empty and holds no adapter: choose another output dir")


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name[len(_CHECKPOINT_PREFIX):])


def _is_complete(checkpoint: Path) -> bool:
    """transformers writes ``trainer_state.json`` last: without it, or unreadable, the save
    was cut short (a kill, a full disk)."""
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(checkpoints: Path, *, remove_partial: bool = False) -> Path | None:
    """The newest complete checkpoint in ``checkpoints``; newer partial ones are skipped
    (and removed with ``remove_partial``, so the Trainer never rotates a good one out for them)."""
    if not checkpoints.is_dir():
        return None
    found = [p for p in checkpoints.iterdir()
             if p.is_dir() and p.name.startswith(_CHECKPOINT_PREFIX) and p.name[len(_CHECKPOINT_PREFIX):].isdigit()]
    for checkpoint in sorted(found, key=_step_of, reverse=True):
        if _is_complete(checkpoint):
            return checkpoint
        logger.warning("skipping %s: its save was interrupted (no %s)", checkpoint, TRAINER_STATE_NAME)
        if remove_partial:
            shutil.rmtree(checkpoint)
    return None


def _check_same_base(run_file: Path, manifest: dict | None, base_spec: str, fingerprint: str) -> None:
    """Refuse to continue checkpoints, or keep an adapter, made on another base."""
    earlier = [json.loads(run_file.read_text())] if run_file.is_file() else []
    earlier += [manifest] if manifest else []
    for record in earlier:
        if record.get("base_fingerprint") not in (None, fingerprint):
            raise DivconqError(
                f"{run_file.parent.parent} was trained on base {record.get('base_model')!r}, "
                f"not {base_spec!r}: resume with that base or pass overwrite"
            )


def _write_failure(exc: BaseException) -> str | None:
    """Why a save failed, when it is the disk (full, or over quota); None otherwise.

    safetensors and plain writes say so (``safeio.is_disk_full``); torch.save reports a
    failed write as ``RuntimeError: [enforce fail at inline_container.cc...] ... file
    write failed``, with no errno and no reason.
    """
    if is_disk_full(exc):
        return "disk full"
    text = str(exc)
    if "inline_container.cc" in text or "PytorchStreamWriter failed" in text or "file write failed" in text:
        return "a write failed, most likely a full disk"
    return None


# --------------------------------------------------------------------------- the trainer


class _LogLosses(TrainerCallback):
    """Losses go to ``logging`` (the CLI shows them on stderr), in place of transformers' prints."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: logs[k] for k in ("loss", "eval_loss", "learning_rate") if k in (logs or {})}
        if state.is_world_process_zero and shown:
            logger.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))


class _ProgressBar(ProgressCallback):
    """transformers' progress bar without its printed log dicts (``_LogLosses`` has them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _trainer_args(config: TrainConfig, checkpoints: Path, has_eval: bool) -> TrainConfig:
    """The settings the trainer runs with: the user's, placed and fitted to the data."""
    changes: dict[str, Any] = {"output_dir": str(checkpoints)}
    if not has_eval:
        changes["eval_strategy"] = IntervalStrategy.NO
    if config.padding_free and not config.packing:
        changes["max_length"] = None  # TRL asks for it: lengths are already checked (too long: skipped)
    return replace(config, **changes)


def build_trainer(model: Any, tokenizer: Any, train: list[dict], validation: list[dict], args: TrainConfig,
                  callbacks: list[Any] | None = None) -> SFTTrainer:
    """TRL's SFTTrainer over prompt/completion records, with a fresh LoRA adapter on ``model``
    unless it carries one already (``TrainConfig.init_adapter``)."""
    from datasets import Dataset

    trainer = SFTTrainer(
        model=model, args=args, processing_class=tokenizer,
        peft_config=None if _carries_adapter(model) else args.lora(),
        train_dataset=Dataset.from_list(train), eval_dataset=Dataset.from_list(validation) if validation else None,
        callbacks=[_LogLosses(), *(callbacks or [])],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not args.disable_tqdm:
        trainer.add_callback(_ProgressBar())
    return trainer


def _carries_adapter(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _check_init_adapter(init_adapter: str | None, out_dir: Path) -> None:
    """The adapter to train on from, checked before any model loads (its base once the base has)."""
    if init_adapter is None:
        return
    directory = Path(init_adapter)
    if not is_adapter_dir(directory):
        raise DivconqError(f"init_adapter {directory} holds no adapter ({ADAPTER_CONFIG}): pass an adapter dir "
                           "that divconq train wrote")
    if directory.resolve() == out_dir.resolve():
        raise DivconqError(f"init_adapter {directory} is the output dir: write the new adapter to another dir")
    if read_adapter_manifest(directory) is None:
        raise DivconqError(f"init_adapter {directory} has no {ADAPTER_MANIFEST}, so its base cannot be checked: "
                           "pass an adapter dir that divconq train wrote")


def _from_adapter(model: Any, config: TrainConfig) -> Any:
    """``model`` with the adapter of ``config.init_adapter``, trainable; refused if made on another base."""
    return attach_adapter(model, Path(config.init_adapter), config.base, merge=False, trainable=True)


def _total_steps(trainer: SFTTrainer) -> int:
    """The optimizer steps the run takes in all, computed as transformers does."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches = len(trainer.get_train_dataloader())
    return math.ceil(args.num_train_epochs * max(math.ceil(batches / args.gradient_accumulation_steps), 1))


def _load_checkpoint_adapter(trainer: SFTTrainer, checkpoint: Path) -> None:
    """The weights and state of a finished run's last checkpoint, without training a step."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(trainer.model, load_file(str(checkpoint / "adapter_model.safetensors")))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))


def _validation_loss(trainer: SFTTrainer, *, at_end: bool) -> float | None:
    """None without a validation split; at the end of training, the loss the last step
    logged when it evaluated (transformers evaluates at the last step), not a second pass."""
    if trainer.eval_dataset is None:
        return None
    logged = [e["eval_loss"] for e in trainer.state.log_history
              if "eval_loss" in e and e.get("step") == trainer.state.global_step]
    return float(logged[-1]) if at_end and logged else float(trainer.evaluate()["eval_loss"])


# --------------------------------------------------------------------------- training


@dataclass
class _Resume:
    """Where an earlier run in the output dir stands."""

    manifest: dict | None  # of the adapter installed, when there is one
    checkpoint: Path | None  # the last complete checkpoint
    step: int | None  # its global step
    run_info: dict  # the checkpoints' RUN_FILE: base fingerprint, validation loss before training


def finetune(
    data: str | os.PathLike,
    *,
    out: str | Path,
    base: str | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
    merge_to: str | Path | None = None,
    callbacks: list[Any] | None = None,
) -> str:
    """Train a LoRA adapter on ``data`` and return the student's model spec.

    Args:
        data: an SFT data dir (``train.jsonl``, optional ``validation.jsonl``), or the summary
            ``build_sft`` returns for the one it wrote.
        out: where the adapter, tokenizer, manifest and checkpoints go.
        base: 'default' or 'hf:<dir>' (``config.base`` when None).
        config: training settings (``TrainConfig()`` when None).
        resume: continue from the last complete checkpoint; a finished run is left as it is.
        overwrite: start over in an ``out`` that holds an adapter or checkpoints.
        merge_to: also save a standalone model with the adapter merged in.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        e.g. ``"default+adapter=adapters/sd_r"``: pass it as the decomposer (or solver) spec.
        ``read_result(out)`` gives the losses and counts.
    """
    started = time.perf_counter()
    config = copy.copy(config or TrainConfig())
    config.base = base if base is not None else config.base
    data_dir, out_dir = Path(data), Path(out)
    merge_dir = Path(merge_to) if merge_to is not None else None
    checkpoints = Path(config.output_dir) if config.output_dir else out_dir / CHECKPOINTS
    resume = resume and not overwrite

    # Inputs first: fail on bad data before loading any model.
    conversations = _load_splits(data_dir)
    _check_merge_target(merge_dir, overwrite)
    _check_device(config)
    base_path = _resolve_base(config.base)
    clear_checkpoints = _check_adapter_dir(out_dir, checkpoints, resume, overwrite)
    _check_init_adapter(config.init_adapter, out_dir)

    model, tokenizer = _load_base(base_path, config.base)
    fingerprint = model_fingerprint(model)
    if config.init_adapter is not None:
        model = _from_adapter(model, config)
    (train_records, val_records), skipped = _records(tokenizer, conversations, config.max_length)
    if clear_checkpoints and _is_main_process():  # only now: a base that fails to load leaves the old run intact
        shutil.rmtree(checkpoints)
    earlier = _earlier_run(out_dir, checkpoints, config.base, fingerprint) if resume else _Resume(None, None, None, {})

    args = _trainer_args(config, checkpoints, has_eval=bool(val_records))
    trainer = build_trainer(model, tokenizer, train_records, val_records, args, callbacks)
    total = _total_steps(trainer)
    if _is_finished(earlier, total, out_dir):
        return student_spec(config.base, out_dir)
    if resume and earlier.checkpoint is None:
        logger.info("no complete checkpoint in %s: starting from scratch", checkpoints)

    run_info = _start_run(trainer, checkpoints, earlier.run_info | {"base_model": config.base,
                                                                     "base_fingerprint": fingerprint})
    train_loss_mean = _train_or_finish(trainer, earlier, total, checkpoints)
    metrics = {
        "train_loss": next((float(e["loss"]) for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "train_loss_mean": float(train_loss_mean) if train_loss_mean is not None else None,
        "eval_loss_before": run_info["eval_loss_before"],
        "eval_loss_after": _validation_loss(trainer, at_end=True),
        "steps": int(trainer.state.global_step),
        "epochs": float(trainer.state.epoch or 0.0),
        "train_examples": len(train_records),
        "eval_examples": len(val_records),
        "skipped_too_long": skipped,
        "resumed_from": str(earlier.checkpoint) if earlier.checkpoint else None,
    }
    trainer.model.eval()
    if not trainer.is_world_process_zero():
        return student_spec(config.base, out_dir)  # the first process writes the adapter
    manifest = _manifest(config, base_path, fingerprint, data_dir, metrics, trainer.state.log_history)
    manifest["merged_dir"] = str(merge_dir) if merge_dir is not None else None
    manifest["metrics"]["seconds"] = round(time.perf_counter() - started, 2)
    _save_adapter_dir(trainer.model, tokenizer, manifest, out_dir, checkpoints)
    if merge_dir is not None:
        _save_merged(trainer.model, tokenizer, merge_dir, manifest, out_dir)
    logger.info("adapter -> %s (%d steps)", out_dir, metrics["steps"])
    return student_spec(config.base, out_dir)


def _is_main_process() -> bool:
    # Under torchrun / accelerate launch every process runs finetune; only the first
    # (RANK 0) touches files, the Trainer itself saves checkpoints from that one alone.
    return int(os.environ.get("RANK", "0")) == 0


def _check_merge_target(merge_dir: Path | None, overwrite: bool) -> None:
    if merge_dir is not None and merge_dir.exists() and (not merge_dir.is_dir() or any(merge_dir.iterdir())):
        if not overwrite:
            raise DivconqError(f"merge target {merge_dir} exists and is not empty: choose another dir or pass overwrite")


def _check_device(config: TrainConfig) -> None:
    import torch

    if config.bf16 and not torch.cuda.is_available():
        raise DivconqError("bf16 training needs a CUDA GPU (bf16 on CPU is very slow): leave bf16 unset")


def _load_base(base_path: str, base_spec: str) -> tuple[Any, Any]:
    model, tokenizer = load_causal_lm(base_path, for_training=True)
    if not tokenizer.chat_template:
        raise DivconqError(
            f"base {base_spec!r} has no chat template: use an instruction-tuned model, or set "
            "tokenizer.chat_template and save the tokenizer into the model dir"
        )
    return model, tokenizer


def _records(tokenizer: Any, conversations: tuple[list, list], max_length: int | None) -> tuple[tuple, int]:
    """The train and validation records, and how many examples were too long for either."""
    (train, skipped_train), (validation, skipped_val) = (
        completion_records(tokenizer, split, max_length) for split in conversations
    )
    if not train:
        raise DivconqError(f"every training example is longer than max_length={max_length} tokens: raise max_length")
    return (train, validation), skipped_train + skipped_val


def _earlier_run(out_dir: Path, checkpoints: Path, base_spec: str, fingerprint: str) -> _Resume:
    run_file = checkpoints / RUN_FILE
    manifest = read_adapter_manifest(out_dir)
    _check_same_base(run_file, manifest, base_spec, fingerprint)
    last = last_complete_checkpoint(checkpoints, remove_partial=_is_main_process())
    if last is None:
        return _Resume(manifest, None, None, {})
    step = TrainerState.load_from_json(str(last / TRAINER_STATE_NAME)).global_step
    return _Resume(manifest, last, step, json.loads(run_file.read_text()) if run_file.is_file() else {})


def _is_finished(earlier: _Resume, total: int, out_dir: Path) -> bool:
    """True when the installed adapter is the end of the run: a resume trains nothing."""
    if earlier.manifest is None:
        return False
    done = earlier.manifest["metrics"]["steps"]
    if done >= total and (earlier.step is None or earlier.step <= done):
        logger.info("%s is finished (%d of %d steps): nothing to train", out_dir, done, total)
        return True
    if earlier.checkpoint is None:
        raise DivconqError(f"{out_dir} holds an adapter of {done} steps and no checkpoint to continue to "
                           f"{total} steps from: pass overwrite to train again")
    return False


def _start_run(trainer: SFTTrainer, checkpoints: Path, run_info: dict) -> dict:
    """Write what a resume must match; the base's validation loss is measured once a run."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    if "eval_loss_before" not in run_info:
        run_info["eval_loss_before"] = _validation_loss(trainer, at_end=False)
    if _is_main_process():
        atomic_write(checkpoints / RUN_FILE, json.dumps(run_info, indent=2) + "\n", what="run file")
    return run_info


def _train_or_finish(trainer: SFTTrainer, earlier: _Resume, total: int, checkpoints: Path) -> float | None:
    """Train (from the last complete checkpoint, if any); a checkpoint that ends the run is
    loaded instead, since transformers would train one step past it. The mean training
    loss, when this call trained."""
    try:
        if earlier.step is not None and earlier.step >= total:
            logger.info("%s ends the run (%d steps): installing its adapter", earlier.checkpoint, earlier.step)
            _load_checkpoint_adapter(trainer, earlier.checkpoint)
            return None
        checkpoint = str(earlier.checkpoint) if earlier.checkpoint else None
        return trainer.train(resume_from_checkpoint=checkpoint).training_loss
    except (OSError, RuntimeError) as exc:
        if reason := _write_failure(exc):
            raise DivconqError(
                f"{reason} while writing checkpoints to {checkpoints}: free space, then rerun with resume "
                "(complete checkpoints are kept)"
            ) from None
        raise


def _manifest(config: TrainConfig, base_path: str, fingerprint: str, data_dir: Path, metrics: dict,
              log_history: list[dict]) -> dict[str, Any]:
    data_summary = read_summary(data_dir)
    summary = data_summary or {}
    return {
        "base_model": config.base,
        "base_path": base_path,
        "base_fingerprint": fingerprint,
        **{k: summary.get(k) for k in ("variant", "screen", "answer", "paper_name", "task", "prompt_version",
                                       "max_subquestions", "source")},
        # Where the data came from beyond its variant, e.g. the round, student and solver of
        # divconq improve that sampled and screened it.
        "provenance": summary.get("provenance"),
        "data_dir": str(data_dir),
        "data": data_summary,
        "training": config.to_dict(),
        "metrics": metrics,
        # Every logged loss (train and validation) by step: the training curve.
        "log_history": [
            {k: v for k, v in entry.items() if k in ("step", "epoch", "loss", "eval_loss", "learning_rate")}
            for entry in log_history
            if "loss" in entry or "eval_loss" in entry
        ],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _save_adapter(model: Any, tokenizer: Any, directory: Path) -> None:
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


def _install_adapter(scratch: Path, out_dir: Path) -> None:
    """Move the finished adapter files into ``out_dir``, manifest last (its presence marks
    a complete adapter). Checkpoints in ``out_dir`` stay where they are."""
    stale = out_dir / ADAPTER_MANIFEST
    if stale.exists():
        stale.unlink()
    for item in sorted(scratch.iterdir(), key=lambda p: p.name == ADAPTER_MANIFEST):
        target = out_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    scratch.rmdir()


def _save_adapter_dir(peft_model: Any, tokenizer: Any, manifest: dict, out_dir: Path, checkpoints: Path) -> None:
    """Write the adapter into a temp dir beside ``out_dir``'s files, then install it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir))
    try:
        _save_adapter(peft_model, tokenizer, scratch)
        (scratch / "README.md").unlink(missing_ok=True)  # peft's blank model card; the manifest says what this is
        write_adapter_manifest(scratch, manifest)
        _install_adapter(scratch, out_dir)
    except Exception as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if reason := _write_failure(exc):
            raise DivconqError(
                f"{reason} while saving the adapter to {out_dir}: free space, then rerun with resume "
                f"(checkpoints in {checkpoints} are kept)"
            ) from None
        raise


def _save_merged(peft_model: Any, tokenizer: Any, merge_dir: Path, manifest: dict, adapter_dir: Path) -> None:
    """A standalone model with the adapter merged in, written to a temp dir and moved into place."""
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    merge_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{merge_dir.name}-", dir=merge_dir.parent))
    try:
        merged.save_pretrained(str(scratch))
        tokenizer.save_pretrained(str(scratch))
        info = {k: manifest.get(k) for k in ("base_model", "base_fingerprint", "variant", "screen", "answer",
                                             "paper_name", "task", "prompt_version", "created_at")}
        info["adapter_dir"] = str(adapter_dir)
        (scratch / MERGED_MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
        if merge_dir.exists():
            shutil.rmtree(merge_dir)
        os.replace(scratch, merge_dir)
    except Exception as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if reason := _write_failure(exc):
            raise DivconqError(
                f"{reason} while saving the merged model to {merge_dir}: the adapter in {adapter_dir} is saved; "
                "free space and merge again"
            ) from None
        raise
