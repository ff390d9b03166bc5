"""LoRA fine-tuning of a local causal LM on SFT data from :mod:`divconq.distill.sft`.

The loss covers completion tokens only. The prompt is rendered exactly as inference
renders it (``LocalChatModel`` -> ``apply_chat_template(..., add_generation_prompt=True)``)
and the completion is the rest of the fully rendered conversation, so it ends with the
chat template's end-of-turn tokens and the student learns to stop.

Output dir layout::

    adapter_config.json, adapter_model.safetensors   the PEFT LoRA adapter
    tokenizer files                                   the base tokenizer
    divconq_adapter.json                              manifest (base fingerprint, data, settings, metrics)
    checkpoints/checkpoint-<step>/                    Trainer checkpoints (``resume=True`` continues)

Load the result with ``load_chat_model("hf:<base dir>+adapter=<out dir>")`` (or
``default+adapter=<out dir>`` for the default base).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from divconq.errors import DivconqError
from divconq.nodes.models import (
    ADAPTER_MANIFEST,
    default_model_dir,
    load_causal_lm,
    model_fingerprint,
    parse_spec,
)

__all__ = ["TrainConfig", "TrainResult", "encode_example", "load_sft_jsonl", "train"]

CHECKPOINTS = "checkpoints"
RUN_FILE = "divconq_run.json"  # inside checkpoints/: what a resumed run must match
MERGED_MANIFEST = "divconq_merged.json"
IGNORE_INDEX = -100


@dataclass
class TrainConfig:
    """Training settings; every default is explicit here and recorded in the manifest."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # "all-linear": every linear layer but the output head (attention and MLP projections).
    target_modules: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    num_epochs: float = 3.0
    max_steps: int | None = None  # overrides num_epochs when set
    batch_size: int = 4  # per device
    grad_accumulation: int = 1
    max_length: int = 512  # longer examples are skipped (never truncated), and counted
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 42
    bf16: bool | None = None  # None: bf16 exactly when CUDA is available (never on CPU)
    progress: bool = True  # tqdm progress bar and logged losses

    def validate(self) -> None:
        positive = ("lora_r", "lora_alpha", "batch_size", "grad_accumulation", "max_length", "eval_steps",
                    "save_steps", "logging_steps")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DivconqError(f"training setting {name} must be a positive integer; got {value!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise DivconqError(f"max_steps must be a positive integer or None; got {self.max_steps!r}")
        if not self.learning_rate > 0:
            raise DivconqError(f"learning_rate must be positive; got {self.learning_rate!r}")
        if self.max_steps is None and not self.num_epochs > 0:
            raise DivconqError(f"num_epochs must be positive; got {self.num_epochs!r}")
        if not 0 <= self.lora_dropout < 1:
            raise DivconqError(f"lora_dropout must be in [0, 1); got {self.lora_dropout!r}")


@dataclass
class TrainResult:
    """What a training run produced."""

    adapter_dir: str
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
    checkpoints_dir: str = ""

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
        return "\n".join(lines)


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


def encode_example(tokenizer: Any, messages: list[dict[str, str]], max_length: int | None = None) -> dict | None:
    """Token ids and labels for one conversation; labels are -100 on the prompt.

    The prompt is ``messages[:-1]`` rendered with ``add_generation_prompt=True`` (what
    inference feeds the model); the completion is the rest of the rendered conversation
    (assistant text plus end-of-turn). Both are tokenised without special tokens.
    Returns None when the example is longer than ``max_length`` tokens.
    """
    prompt_messages = messages[:-1]
    prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise DivconqError(
            "the base model's chat template renders the prompt differently once the answer is appended, "
            "so the completion cannot be split off: use a base whose template is prefix-stable (e.g. ChatML)"
        )
    completion_text = full_text[len(prompt_text):]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion_text, add_special_tokens=False)["input_ids"]
    if not completion_ids:
        return None
    if max_length is not None and len(prompt_ids) + len(completion_ids) > max_length:
        return None
    input_ids = list(prompt_ids) + list(completion_ids)
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + list(completion_ids),
        "attention_mask": [1] * len(input_ids),
    }


class _Collator:
    """Right-pads a batch: pad id for inputs, -100 for labels, 0 for the attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        batch = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in features:
            pad = width - len(f["input_ids"])
            batch["input_ids"].append(f["input_ids"] + [self.pad_token_id] * pad)
            batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
            batch["attention_mask"].append(f["attention_mask"] + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


# --------------------------------------------------------------------------- helpers


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc)


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


def _read_data_summary(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DivconqError(f"{path} is unreadable ({exc}): rebuild the SFT data") from None


def _last_checkpoint(checkpoints: Path) -> Path | None:
    if not checkpoints.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(checkpoints))
    return Path(last) if last else None


def _check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse an output dir that would mix runs; True when old checkpoints must be cleared."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DivconqError(f"output path {out_dir} exists and is not a directory: choose another output dir")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    checkpoints = out_dir / CHECKPOINTS
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    has_adapter = (out_dir / "adapter_config.json").is_file() or (out_dir / ADAPTER_MANIFEST).is_file()
    if overwrite:
        return has_checkpoints
    if resume and (has_checkpoints or has_adapter):
        return False
    if has_checkpoints:
        raise DivconqError(
            f"{out_dir} holds checkpoints of an earlier run: resume it (resume=True / --resume) "
            "or start over (overwrite=True / --overwrite)"
        )
    if has_adapter:
        raise DivconqError(f"{out_dir} already holds an adapter: choose another output dir or pass overwrite")
    raise DivconqError(f"output dir {out_dir} is not empty and holds no adapter: choose another output dir")


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


def _log(config: TrainConfig, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- training


def train(
    data_dir: str | Path,
    base_spec: str,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    merge_to: str | Path | None = None,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train a LoRA adapter on ``data_dir`` (``train.jsonl``, optional ``validation.jsonl``).

    Args:
        data_dir: an SFT data dir from ``divconq.distill.sft``.
        base_spec: 'default' or 'hf:<dir>' (see ``divconq.nodes.models``).
        out_dir: where the adapter, tokenizer, manifest and ``checkpoints/`` go.
        config: training settings (``TrainConfig()`` when None).
        resume: continue from the last checkpoint in ``out_dir/checkpoints`` if any.
        overwrite: start over in an ``out_dir`` that holds an adapter or checkpoints.
        merge_to: also save a standalone model with the adapter merged in.
        callbacks: extra ``transformers.TrainerCallback`` objects.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    config.validate()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    merge_dir = Path(merge_to) if merge_to is not None else None

    # Inputs first: fail on bad data before loading any model.
    if not data_dir.is_dir():
        raise DivconqError(f"SFT data dir {data_dir} does not exist: build it first (divconq sft ... --out {data_dir})")
    train_file, val_file = data_dir / "train.jsonl", data_dir / "validation.jsonl"
    if not train_file.is_file():
        raise DivconqError(f"{data_dir} holds no train.jsonl: pass the output dir of `divconq sft`")
    train_conversations = load_sft_jsonl(train_file)
    val_conversations = load_sft_jsonl(val_file) if val_file.is_file() else []
    if not train_conversations:
        raise DivconqError(f"{train_file} is empty: rebuild the SFT data with more traces")
    data_summary = _read_data_summary(data_dir)
    if merge_dir is not None and merge_dir.exists() and (not merge_dir.is_dir() or any(merge_dir.iterdir())):
        if not overwrite:
            raise DivconqError(f"merge target {merge_dir} exists and is not empty: choose another dir or pass overwrite")

    import torch

    use_bf16 = torch.cuda.is_available() if config.bf16 is None else bool(config.bf16)
    if use_bf16 and not torch.cuda.is_available():
        raise DivconqError("bf16 training needs a CUDA GPU (bf16 on CPU is very slow): leave bf16 unset")

    base_path = _resolve_base(base_spec)
    clear_checkpoints = _check_out_dir(out_dir, resume, overwrite)

    model, tokenizer = load_causal_lm(base_path, for_training=True)
    if not tokenizer.chat_template:
        raise DivconqError(
            f"base {base_spec!r} has no chat template: use an instruction-tuned model, or set "
            "tokenizer.chat_template and save the tokenizer into the model dir"
        )
    fingerprint = model_fingerprint(model)

    skipped = 0
    datasets: dict[str, list[dict]] = {}
    for name, conversations in (("train", train_conversations), ("validation", val_conversations)):
        encoded = []
        for conversation in conversations:
            example = encode_example(tokenizer, conversation, config.max_length)
            if example is None:
                skipped += 1
            else:
                encoded.append(example)
        datasets[name] = encoded
    if not datasets["train"]:
        raise DivconqError(
            f"every training example is longer than max_length={config.max_length} tokens: raise max_length"
        )

    checkpoints = out_dir / CHECKPOINTS
    # Under torchrun / accelerate launch every process runs this function; only the first
    # (RANK 0) touches files, the Trainer itself saves checkpoints from that one alone.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if clear_checkpoints and main_process:  # only now: a base that fails to load leaves the old run intact
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True, exist_ok=True)
    run_info = {"base_model": base_spec, "base_fingerprint": fingerprint}
    last = _last_checkpoint(checkpoints) if resume else None
    run_file = checkpoints / RUN_FILE
    if last is not None and run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous.get("base_fingerprint") != fingerprint:
            raise DivconqError(
                f"checkpoints in {checkpoints} were trained on base {previous.get('base_model')!r}, "
                f"not {base_spec!r}: resume with that base or pass overwrite"
            )
    if main_process:
        run_file.write_text(json.dumps(run_info, indent=2) + "\n")
    if resume and last is None:
        _log(config, f"no checkpoint in {checkpoints}: starting from scratch")

    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    set_seed(config.seed)
    model.config.use_cache = False
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)

    has_eval = bool(datasets["validation"])
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        logging_first_step=True,
        seed=config.seed,
        bf16=use_bf16,
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=not config.progress,
        remove_unused_columns=False,
        label_names=["labels"],  # PeftModel's forward hides them: without this eval reports no loss
        prediction_loss_only=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=peft_model,
        args=args,
        data_collator=_Collator(tokenizer.pad_token_id),
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"] if has_eval else None,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )

    eval_before = trainer.evaluate()["eval_loss"] if has_eval else None
    if eval_before is not None:
        _log(config, f"validation loss before training: {eval_before:.4f}")
    try:
        output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    except Exception as exc:
        if _is_disk_full(exc):
            raise DivconqError(
                f"disk full while writing checkpoints to {checkpoints}: free space, then rerun with resume "
                "(checkpoints already written are kept)"
            ) from None
        raise
    eval_after = trainer.evaluate()["eval_loss"] if has_eval else None
    if eval_after is not None:
        _log(config, f"validation loss after training: {eval_after:.4f}")

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = TrainResult(
        adapter_dir=str(out_dir),
        train_loss=float(losses[-1]) if losses else None,
        train_loss_mean=float(output.training_loss) if output.training_loss is not None else None,
        eval_loss_before=float(eval_before) if eval_before is not None else None,
        eval_loss_after=float(eval_after) if eval_after is not None else None,
        steps=int(trainer.state.global_step),
        epochs=float(trainer.state.epoch or 0.0),
        seconds=0.0,
        train_examples=len(datasets["train"]),
        eval_examples=len(datasets["validation"]),
        skipped_too_long=skipped,
        base_model=base_spec,
        base_fingerprint=fingerprint,
        resumed_from=str(last) if last else None,
        merged_dir=str(merge_dir) if merge_dir is not None else None,
        checkpoints_dir=str(checkpoints),
    )
    summary = data_summary or {}
    manifest = {
        "base_model": base_spec,
        "base_path": base_path,
        "base_fingerprint": fingerprint,
        "variant": summary.get("variant"),
        "screen": summary.get("screen"),
        "answer": summary.get("answer"),
        "paper_name": summary.get("paper_name"),
        "task": summary.get("task"),
        "prompt_version": summary.get("prompt_version"),
        "max_subquestions": summary.get("max_subquestions"),
        "data_dir": str(data_dir),
        "data": data_summary,
        "training": asdict(config) | {"bf16": use_bf16},
        "metrics": {
            k: getattr(result, k)
            for k in ("train_loss", "train_loss_mean", "eval_loss_before", "eval_loss_after", "steps", "epochs",
                      "train_examples", "eval_examples", "skipped_too_long")
        },
        # Every logged loss (train and validation) by step: the training curve.
        "log_history": [
            {k: v for k, v in entry.items() if k in ("step", "epoch", "loss", "eval_loss", "learning_rate")}
            for entry in trainer.state.log_history
            if "loss" in entry or "eval_loss" in entry
        ],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    peft_model.eval()
    if not trainer.is_world_process_zero():
        return result  # the first process writes the adapter
    scratch = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir))
    try:
        _save_adapter(peft_model, tokenizer, scratch)
        result.seconds = round(time.perf_counter() - started, 2)
        manifest["metrics"]["seconds"] = result.seconds
        (scratch / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        _install_adapter(scratch, out_dir)
    except Exception as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        if _is_disk_full(exc):
            raise DivconqError(
                f"disk full while saving the adapter to {out_dir}: free space, then rerun with resume "
                f"(checkpoints in {checkpoints} are kept)"
            ) from None
        raise

    if merge_dir is not None:
        _save_merged(peft_model, tokenizer, merge_dir, manifest, out_dir)
    result.seconds = round(time.perf_counter() - started, 2)
    return result  # the caller reports it (divconq train prints it once, or as JSON)


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
        if _is_disk_full(exc):
            raise DivconqError(
                f"disk full while saving the merged model to {merge_dir}: the adapter in {adapter_dir} is saved; "
                "free space and merge again"
            ) from None
        raise
