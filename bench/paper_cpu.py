"""The paper's comparisons at small scale, on this CPU machine, resumable across sittings.

Teacher and solver: Qwen2.5-Coder-1.5B-Instruct through llama.cpp (bench/teacher.py).
Student: the embedded default model (SmolLM2-135M-Instruct) with LoRA adapters.
Score: GSM8K test exact match on a fixed held-out slice (the first --questions test
questions that no shipped adapter was trained on), the paper's Table 1 layout.

Stages (each skipped when its output exists, so a rerun continues where it stopped):
  1. collect  teacher traces on GSM8K train questions (divconq collect)
  2. sft      S_D-T, S_D-R (decomposer) and S_E-T (solver) data (divconq sft)
  3. train    one LoRA adapter each on the student (divconq train)
  4. eval     every configuration below on the held-out slice (divconq eval)

    python bench/paper_cpu.py --questions 100 --train-questions 200 [--configs static,sd_r] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from teacher import llama_server, native_server, teacher_gguf

from divconq.cli import run_step as divconq
from divconq.distill.evaluate import load_pricing, read_results, report, summarise

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results"

# name -> (decomposer, solver, mode, extra eval args). {teacher}, {student} (the bare
# student), {base} (the student spec adapters attach to) and {work} are filled in per run.
CONFIGS = {
    "single": ("{teacher}", "{teacher}", "single", []),
    "static": ("{teacher}", "{teacher}", "static", []),
    "dynamic": ("{teacher}", "{teacher}", "dynamic", []),
    # The paper's untrained student: the base model with the same zero-shot prompt.
    "untrained_student": ("{student}", "{teacher}", "static", ["--shots", "zero"]),
    "sd_t": ("{base}+adapter={work}/adapters/sd_t", "{teacher}", "static", []),
    "sd_r": ("{base}+adapter={work}/adapters/sd_r", "{teacher}", "static", []),
    "shipped_student": ("default", "{teacher}", "static", []),  # only when the student is the embedded model
    "se_t": ("{teacher}", "{base}+adapter={work}/adapters/se_t", "static", []),
}
# The teacher's step-by-step solutions run to 300-500 tokens; a 256 cap cuts some before
# "The answer is" (the traces of the first sitting were collected uncapped: 511 at most).
MAX_NEW_TOKENS = 512
SFT = {"sd_t": ["--screen", "none"], "sd_r": ["--screen", "gold"], "se_t": ["--variant", "solver", "--answer", "teacher"]}


@dataclass(frozen=True)
class Setup:
    """Which models play which part, and how hard to drive them."""

    teacher: str  # model spec of the teacher (decomposer and solver)
    student: str = "default+adapter=none"  # the bare student
    base: str = "default"  # the student spec that adapters train on and attach to
    concurrency: int = 2
    batch_size: int = 8
    name: str = "paper_cpu"  # results/<name>.{md,json,png}


def stage(name: str, done: bool) -> bool:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done already' if done else 'running'}", flush=True)
    return not done


def configs_for(setup: Setup, wanted: str | None) -> list[str]:
    names = wanted.split(",") if wanted else [c for c in CONFIGS if c != "shipped_student" or setup.base == "default"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    return names


def run(args: argparse.Namespace, setup: Setup) -> None:
    work = args.work
    store = work / "teacher.db"
    wanted = configs_for(setup, args.configs)
    if any(c in SFT for c in wanted) and stage("collect", (work / "collect.done").exists()):
        divconq(["collect", "--dataset", "gsm8k", "--data", str(DATA / "train.jsonl"), "--limit", str(args.train_questions),
                 "--decomposer", setup.teacher, "--solver", setup.teacher, "--store", str(store),
                 "--concurrency", str(setup.concurrency), "--max-new-tokens", str(MAX_NEW_TOKENS)])
        (work / "collect.done").touch()
    for name in (c for c in SFT if c in wanted):
        data, adapter = work / "sft" / name, work / "adapters" / name
        if stage(f"sft {name}", (data / "summary.json").exists()):
            divconq(["sft", "--store", str(store), "--out", str(data), "--overwrite", *SFT[name]])
        if stage(f"train {name}", (adapter / "divconq_adapter.json").exists()):
            divconq(["train", "--data", str(data), "--base", setup.base, "--out", str(adapter), "--resume",
                     "--epochs", str(args.epochs), "--batch-size", str(setup.batch_size), "--lora-r", "8", "--lora-alpha", "16"])
    fill = {"teacher": setup.teacher, "student": setup.student, "base": setup.base, "work": work}
    for name in wanted:
        decomposer, solver, mode, extra = CONFIGS[name]
        out = work / "results" / f"{name}.jsonl"
        if stage(f"eval {name}", len(read_results(out)) >= args.questions):
            divconq(["eval", "--dataset", "gsm8k", "--data", str(DATA / "test.jsonl"), "--limit", str(args.questions),
                     "--decomposer", decomposer.format(**fill), "--solver", solver.format(**fill), "--mode", mode,
                     *extra, "--out", str(out), "--concurrency", str(setup.concurrency), "--max-new-tokens", str(MAX_NEW_TOKENS)])


def write_table(args: argparse.Namespace, setup: Setup) -> str:
    """Table 1 from whatever results exist, priced as the paper does: the teacher at GPT-3.5
    prices, the student at their 13/175 scaling of them."""
    paths = [args.work / "results" / f"{name}.jsonl" for name in CONFIGS]
    paths = [p for p in paths if read_results(p)]
    if not paths:
        return "no results yet"
    pricing = load_pricing(None)
    for row in (read_results(p)[0] for p in paths):
        for role in ("decomposer", "solver"):
            student = row[role].startswith((setup.base, setup.student, "default"))
            pricing[row[role]] = pricing["13b-student" if student else "openai:gpt-3.5-turbo"]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / setup.name
    table = report(paths, pricing=pricing, markdown_out=out.with_suffix(".md"), png_out=out.with_suffix(".png"))
    summaries = {p.stem: summarise(read_results(p), pricing) for p in paths}
    out.with_suffix(".json").write_text(json.dumps(summaries, indent=2) + "\n")
    return table


def add_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    parser.add_argument("--questions", type=int, default=100, help="held-out GSM8K test questions (>= 100 for the table)")
    parser.add_argument("--train-questions", type=int, default=200, help="GSM8K train questions the teacher decomposes")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--table-only", action="store_true", help="print the table from the results so far")
    parser.add_argument("--json", action="store_true")


def finish(args: argparse.Namespace, setup: Setup) -> None:
    table = write_table(args, setup)
    path = RESULTS / f"{setup.name}.json"
    print(path.read_text() if args.json and path.exists() else table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "paper_cpu_work")
    parser.add_argument("--teacher-url", help="an already running teacher server (OpenAI base URL)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="questions in flight; the teacher server decodes this many together")
    # A fixed port keeps the teacher's spec, and so the table's rows, the same across sittings.
    parser.add_argument("--teacher-port", type=int, default=8080, help="port of the teacher server this script starts")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(exist_ok=True)
    if not args.table_only:
        if args.teacher_url:
            run(args, Setup(teacher=f"openai:teacher@{args.teacher_url}", concurrency=args.concurrency))
        else:
            with llama_server(teacher_gguf(), port=args.teacher_port, parallel=args.concurrency, binary=native_server()) as url:
                run(args, Setup(teacher=f"openai:teacher@{url}", concurrency=args.concurrency))
    finish(args, Setup(teacher="openai:teacher"))


if __name__ == "__main__":
    main()
