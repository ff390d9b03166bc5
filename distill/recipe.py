"""The recipe that builds the shipped default decomposer adapter, in one command.

    python -m divconq.distill.recipe --data ../shared/data --held-out bench/results/gsm8k_heldout.txt \
        [--teacher-store teacher.db] --out nodes/default_adapter

1. Gold decompositions (real, human-written or hand-cleaned): GSM8K test_socratic
   sub-questions (every question outside the ``--held-out`` slices, a long one shortened
   to its first two steps and its last), StrategyQA ``decomposition``, DROP ``decomp_qas``
   (with the passage), Break QDMR steps. A deterministic slice of each (by a hash of the
   question id).
2. Teacher traces, if given: runs of a local teacher (Qwen2.5-Coder-1.5B-Instruct through
   a llama.cpp server) collected with ``divconq collect``, screened to the runs whose
   answer matched gold (the paper's S_D-R).
3. One SFT set of all of them (each source with its own task prompt), LoRA training on
   the embedded default model, and ``training_ids.txt`` beside the adapter: every
   question id the adapter saw, so evaluations can leave them out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from divconq.errors import DivconqError
from divconq.distill.datasets import Example, load_dataset
from divconq.distill.slices import Slice, check_disjoint, read_slice
from divconq.distill.sft import append_sft_files, build_sft, build_sft_from_gold, write_card
from divconq.distill.train import TrainConfig, finetune, read_result
from divconq.nodes.parsing import parse_subquestions
from divconq.nodes.prompts import PROMPT_VERSION
from divconq.safeio import atomic_write
from divconq.scrub import scrub_text, scrub_value

TRAINING_IDS_FILE = "training_ids.txt"


@dataclass(frozen=True)
class GoldSource:
    dataset: str
    path: str  # relative to the shared data folder
    task: str
    take: int | None  # None: every usable example
    # What to do with a gold decomposition longer than the prompt's promise of three
    # sub-questions: drop the example, or shorten it to its first steps and its last one
    # (the last GSM8K socratic sub-question asks what the question asks).
    long: Literal["drop", "shorten"] = "drop"


@dataclass
class RecipeConfig:
    """Explicit defaults: sizes per source and the training settings."""

    gold: list[GoldSource] = field(default_factory=lambda: [
        # Every GSM8K test question outside the held-out slice (--held-out): the student's
        # main task, and the one the science benchmark scores it on.
        GoldSource("gsm8k", "gsm8k/test_socratic.jsonl", "math", None, long="shorten"),
        GoldSource("strategyqa", "strategyqa/train.json", "multihop", 100),
        GoldSource("drop", "drop_decomp/drop_dataset_train_300_annotations.json", "reading", 80),
        GoldSource("break", "break/qdmr_high_level_dev.csv", "multihop", 40),
    ])
    teacher_task: str = "math"
    # The 1.5B teacher answers "No decomposition" to about 2 GSM8K questions in 3 whose
    # gold solutions take several steps; the gold sources never do. Keeping those runs
    # would teach the student to decline, so only the teacher's decompositions go in.
    teacher_no_decomposition: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        lora_r=8, lora_alpha=16, learning_rate=3e-4, num_train_epochs=1.0, per_device_train_batch_size=8,
        max_length=512, eval_steps=25, save_steps=25, logging_steps=5,
    ))


def _natural_steps(example: Example, max_subquestions: int = 3, long: Literal["drop", "shorten"] = "drop") -> Example | None:
    """The example with only its natural-language gold sub-questions, or None.

    DROP and Break annotations end in symbolic steps ("count(#1)", "#1 that ...") that
    are the solver's arithmetic, not questions a decomposer should write: they go. What
    is left must be one to ``max_subquestions`` sub-questions our parser reads back as is;
    with ``long="shorten"`` a longer list keeps its first ``max_subquestions - 1`` steps
    and its last one.
    """
    steps = [q for q in example.gold_subquestions if parse_subquestions(q, 1, example.question) == [q]]
    if long == "shorten" and len(steps) > max_subquestions:
        steps = steps[: max_subquestions - 1] + steps[-1:]
    if not 1 <= len(steps) <= max_subquestions or parse_subquestions("\n".join(steps), max_subquestions) != steps:
        return None
    return replace(example, gold_subquestions=tuple(steps))


def _slice(examples: list[Example], source: GoldSource, held_out: frozenset[str] = frozenset()) -> list[Example]:
    """A deterministic sample of usable examples outside ``held_out``: the ``take`` whose id hashes lowest."""
    usable = [cleaned for e in examples if e.id not in held_out and (cleaned := _natural_steps(e, long=source.long)) is not None]
    return sorted(usable, key=lambda e: hashlib.sha1(e.id.encode()).hexdigest())[: source.take]


def build_data(data_root: Path, work: Path, teacher_store: Path | None, config: RecipeConfig,
               held_out: frozenset[str] = frozenset()) -> tuple[Path, dict, set[str]]:
    """One SFT dir from every source, none of ``held_out``'s questions in it; returns it,
    the per-source summaries and the ids used."""
    combined = work / "sft"
    combined.mkdir(parents=True)
    summaries: dict[str, dict] = {}
    ids: set[str] = set()
    for source in config.gold:
        examples = _slice(load_dataset(source.dataset, data_root / source.path), source, held_out)
        summary = build_sft_from_gold(examples, work / source.dataset, task=source.task)
        append_sft_files(work / source.dataset, combined)
        summaries[f"gold:{source.dataset}"] = summary.to_dict()
        ids |= {e.id for e in examples}
    if teacher_store is not None:
        from divconq.distill.traces import TraceStore

        summary = build_sft(teacher_store, screen="gold", out_dir=work / "teacher", task=config.teacher_task,
                            keep_no_decomposition=config.teacher_no_decomposition)
        append_sft_files(work / "teacher", combined)
        summaries["teacher:S_D-R"] = summary.to_dict()
        with TraceStore(teacher_store, readonly=True) as store:
            runs = list(store.runs())
        ids |= {run.example_id for run in runs if run.example_id}
        summaries["teacher:S_D-R"]["teacher"] = {
            "runs": len(runs),
            "correct": sum(1 for run in runs if run.correct),
            "datasets": sorted({run.dataset for run in runs if run.dataset}),
            "models": sorted({call.model for run in runs for call in run.calls if call.model}),
        }
    check_disjoint(Slice("held-out", tuple(sorted(held_out))), ids, "the recipe's data")
    totals = {key: sum(s[key] for s in summaries.values()) for key in ("train", "validation")}
    # S_D-R only when the teacher's gold-screened traces are in: the gold sources are not screened.
    paper_name = "S_D-R + gold decompositions" if teacher_store else "gold decompositions"
    write_card(combined, f"divconq SFT data: {paper_name}", "The data of the shipped default adapter.")
    atomic_write(combined / "summary.json", json.dumps(scrub_value({
        "variant": "decomposer", "screen": "gold" if teacher_store else "none", "task": "mixed", "paper_name": paper_name,
        "prompt_version": PROMPT_VERSION, "source": "gold+traces" if teacher_store else "gold",
        **totals, "sources": summaries,
    }), indent=2) + "\n")
    return combined, summaries, ids


def build_default_adapter(data_root: Path, out: Path, teacher_store: Path | None, config: RecipeConfig,
                          held_out: list[Path] = ()) -> dict:
    """Build the data, train, install the adapter at ``out``; never trains on a question of a ``held_out`` slice file."""
    slices = [read_slice(path) for path in held_out]
    with tempfile.TemporaryDirectory(prefix="divconq-recipe-") as scratch:
        data, summaries, ids = build_data(data_root, Path(scratch), teacher_store, config,
                                          frozenset(i for s in slices for i in s.ids))
        finetune(data, out=out, config=config.train, overwrite=True)  # on config.train.base
    result = read_result(out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ship the adapter, not the optimizer state
    atomic_write(out / TRAINING_IDS_FILE, "\n".join(sorted({scrub_text(i) for i in ids})) + "\n")
    record = {
        "command": "python -m divconq.distill.recipe --data ../shared/data"
        + (" --teacher-store TEACHER.db" if teacher_store else "")
        + (f" --base {config.train.base}" if config.train.base != "default" else "")
        + (f" --max-steps {config.train.max_steps}" if config.train.max_steps > 0 else "")
        + (f" --micro-batch {config.train.per_device_train_batch_size}" if config.train.gradient_accumulation_steps > 1
           else "")
        + "".join(f" --held-out {path}" for path in held_out),
        "held_out": {s.name: s.key for s in slices},
        "sources": {k: {key: v[key] for key in ("seen", "kept", "train", "validation", "dropped", "teacher") if key in v}
                    for k, v in summaries.items()},
        "training_ids": len(ids),
        "train": config.train.to_dict(),
        "result": result.to_dict(),
    }
    atomic_write(out / "recipe.json", json.dumps(scrub_value(record), indent=2, default=str) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the shipped default decomposer adapter.")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data folder")
    parser.add_argument("--teacher-store", type=Path, help="traces of the local teacher (divconq collect)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "nodes" / "default_adapter")
    parser.add_argument("--held-out", type=Path, action="append", default=[], metavar="SLICE",
                        help="a slice file (one question id per line) whose questions are never trained on; repeatable")
    parser.add_argument("--epochs", type=float, help="override the recipe's epochs")
    parser.add_argument("--base", default="default", metavar="SPEC",
                        help="the student's base: default (the embedded SmolLM2-135M-Instruct) or hf:<dir>")
    parser.add_argument("--max-steps", type=int, default=-1, metavar="N",
                        help="stop after N optimizer steps (a budget for a larger base on a CPU; default: the epochs)")
    parser.add_argument("--micro-batch", type=int, metavar="N",
                        help="examples per forward pass, accumulated to the recipe's batch (less memory for a "
                        "larger base); must divide it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # training progress on stderr
    config = RecipeConfig()
    if args.epochs:
        config.train.num_train_epochs = args.epochs
    config.train.base = args.base
    config.train.max_steps = args.max_steps
    if args.micro_batch:
        batch = config.train.per_device_train_batch_size * config.train.gradient_accumulation_steps
        if args.micro_batch < 1 or batch % args.micro_batch:
            raise SystemExit(f"recipe: --micro-batch {args.micro_batch} does not divide the recipe's batch of {batch}: "
                             "pass a divisor of it")
        config.train.per_device_train_batch_size = args.micro_batch
        config.train.gradient_accumulation_steps = batch // args.micro_batch
    try:
        record = build_default_adapter(args.data, args.out, args.teacher_store, config, args.held_out)
    except (DivconqError, OSError) as exc:  # a missing data file, an overlapping slice: one line
        raise SystemExit(f"recipe: {exc}") from None
    print(json.dumps({k: record[k] for k in ("sources", "training_ids")}, indent=2))
    print(json.dumps(record["result"], indent=2))


if __name__ == "__main__":
    main()
