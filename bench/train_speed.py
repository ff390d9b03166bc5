"""Training speed of the shipped-adapter recipe: seconds per step and per epoch.

Builds the recipe's SFT data (gold sources only: no teacher store) and trains the
embedded 135M student with the recipe's settings for ``--max-steps`` steps, with no
evaluation or checkpoint inside the timed loop. The epoch figure is extrapolated from the
measured seconds per optimizer step and the steps one epoch takes at these settings.

    nice -n 19 python bench/train_speed.py --data ../shared/data --max-steps 10 --label before

Prints the figures and merges them into bench/results/train_speed.json under the label.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from transformers import TrainerCallback

from divconq.distill.recipe import RecipeConfig, build_data
from divconq.distill.train import train

RESULTS = Path(__file__).resolve().parent / "results" / "train_speed.json"


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


def measure(data_root: Path, max_steps: int) -> dict:
    recipe = RecipeConfig()
    settings = replace(recipe.train, max_steps=max_steps, eval_steps=10_000, save_steps=10_000, progress=False)
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="divconq-train-speed-") as scratch:
        data, _, _ = build_data(data_root, Path(scratch), None, recipe)
        started = time.perf_counter()
        result = train(data, "default", Path(scratch) / "adapter", settings, overwrite=True, callbacks=[clock])
        total = time.perf_counter() - started
    # The first step includes one-off warm-up; the steady rate is from step 1 to the last.
    steady = (clock.step_times[-1] - clock.step_times[0]) / (len(clock.step_times) - 1)
    steps_per_epoch = math.ceil(clock.batches_per_epoch / settings.grad_accumulation)
    return {
        "steps": result.steps,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "train_examples": result.train_examples,
        "skipped_too_long": result.skipped_too_long,
        "first_step_s": round(clock.step_times[0] - clock.start, 2),
        "s_per_step": round(steady, 2),
        "steps_per_epoch": steps_per_epoch,
        "epoch_s_extrapolated": round(steady * steps_per_epoch, 1),
        "run_s": round(total, 1),
        "train_loss": result.train_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--label", required=True, help="the key the figures are stored under")
    args = parser.parse_args()
    figures = measure(args.data, args.max_steps)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    figures["code"] = commit or "unknown"
    print(json.dumps(figures, indent=2))
    stored = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    stored[args.label] = figures
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=2) + "\n")
    tmp.replace(RESULTS)


if __name__ == "__main__":
    main()
