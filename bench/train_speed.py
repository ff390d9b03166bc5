"""Training speed of the shipped-adapter recipe: seconds per step and per epoch.

The data is the recipe's SFT set (gold sources only: no teacher store); the model, the
embedded 135M student with the recipe's LoRA and batch settings.

``--mode run`` trains with ``finetune`` for ``--max-steps`` steps (0: one whole epoch),
with no evaluation or checkpoint inside the timed loop; for a part of an epoch the epoch
figure is extrapolated from the seconds per step and the steps an epoch takes.

``--mode batching`` compares the ways of batching one epoch (padded in random order,
padded in length groups, padding-free, packed) in one process: for each it times the
same number of optimizer steps on batches drawn at random from its own epoch, the
strategies taking turns so that a change in machine load hits them alike, and estimates
the epoch as the mean step time times its steps.

    nice -n 19 python bench/train_speed.py --mode run --max-steps 0 --label after
    nice -n 19 python bench/train_speed.py --mode batching --sample 4 --label batching

Prints the figures and merges them into bench/results/train_speed.json under the label.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from divconq.distill import train as train_module
from divconq.distill.recipe import RecipeConfig, build_data
from divconq.distill.train import finetune, read_result

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"
STRATEGIES = {
    "padded_random": dict(train_sampling_strategy="random"),
    "padded_length_groups": dict(train_sampling_strategy="group_by_length"),
    "padding_free": dict(train_sampling_strategy="random", padding_free=True),
    "packed_512": dict(train_sampling_strategy="random", packing=True),
    # Rows of 512 tokens hold about two examples: 4 rows a step keep the recipe's examples per step.
    "packed_512_4_rows": dict(train_sampling_strategy="random", packing=True, per_device_train_batch_size=4),
}


class StepClock(TrainerCallback):
    """Wall time of the training loop (first to last optimizer step) and the epoch size."""

    def __init__(self) -> None:
        self.step_times: list[float] = []
        self.batches_per_epoch: int | None = None

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.start = time.perf_counter()
        if train_dataloader is not None:
            self.batches_per_epoch = len(train_dataloader)

    def on_step_end(self, args, state, control, **kwargs):
        self.step_times.append(time.perf_counter())


def measure_run(data: Path, out: Path, max_steps: int) -> dict:
    settings = replace(RecipeConfig().train, max_steps=max_steps or -1, eval_strategy="no",
                       save_strategy="no", disable_tqdm=True)
    clock = StepClock()
    started = time.perf_counter()
    finetune(data, base="default", out=out, config=settings, overwrite=True, callbacks=[clock])
    total = time.perf_counter() - started
    result = read_result(out)
    steps_per_epoch = math.ceil(clock.batches_per_epoch / settings.gradient_accumulation_steps)
    loop = clock.step_times[-1] - clock.start
    per_step = loop / len(clock.step_times)
    return {
        "steps": result.steps,
        "steps_per_epoch": steps_per_epoch,
        "loop_s": round(loop, 1),
        "s_per_step": round(per_step, 2),
        "epoch_s": round(loop if not max_steps else per_step * steps_per_epoch, 1),
        "epoch_figure": "measured" if not max_steps else "extrapolated",
        "run_s": round(total, 1),
        "train_examples": result.train_examples,
        "skipped_too_long": result.skipped_too_long,
        "train_loss": result.train_loss,
        "settings": {k: getattr(settings, k) for k in ("per_device_train_batch_size", "max_length", "lora_r",
                                                      "train_sampling_strategy", "padding_free", "packing")},
    }


def measure_batching(data: Path, sample: int, seed: int = 0) -> dict:
    from divconq.nodes.models import default_model_dir, load_causal_lm

    recipe = RecipeConfig().train
    conversations, _ = train_module._load_splits(data)
    runs = {}
    for name, changes in STRATEGIES.items():
        model, tokenizer = load_causal_lm(str(default_model_dir()), for_training=True)
        records, _ = train_module.completion_records(tokenizer, conversations, recipe.max_length)
        args = train_module._trainer_args(replace(recipe, disable_tqdm=True, **changes), data / ".unused", False)
        trainer = train_module.build_trainer(model, tokenizer, records, [], args)
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        trainer.current_gradient_accumulation_steps = 1  # what train() sets before its first step
        batches = list(trainer.get_train_dataloader())
        chosen = random.Random(seed).sample(range(len(batches)), min(sample, len(batches)))
        runs[name] = (trainer, [batches[i] for i in chosen], len(batches), [])
    for i in range(sample):  # the strategies take turns
        for trainer, batches, _, times in runs.values():
            if i < len(batches):
                started = time.perf_counter()
                trainer.training_step(trainer.model, batches[i])
                trainer.optimizer.step()
                trainer.optimizer.zero_grad()
                times.append(time.perf_counter() - started)
    return {
        name: {"steps_per_epoch": steps, "sampled_steps": len(times), "s_per_step": round(sum(times) / len(times), 2),
               "epoch_s_estimated": round(sum(times) / len(times) * steps, 1)}
        for name, (_, _, steps, times) in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--mode", choices=["run", "batching"], default="run")
    parser.add_argument("--max-steps", type=int, default=0, help="run: steps to time (0: one whole epoch)")
    parser.add_argument("--sample", type=int, default=4, help="batching: steps timed per strategy")
    parser.add_argument("--label", required=True, help="the key the figures are stored under")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    with tempfile.TemporaryDirectory(prefix="divconq-train-speed-") as scratch:
        data, _, _ = build_data(args.data, Path(scratch), None, RecipeConfig())
        (data / "validation.jsonl").unlink()  # no validation loss: only training is timed
        if args.mode == "run":
            figures = measure_run(data, Path(scratch) / "adapter", args.max_steps)
        else:
            figures = measure_batching(data, args.sample)
    figures = {"code": commit, "mode": args.mode, **figures}
    print(json.dumps(figures, indent=2))
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stored[args.label] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
