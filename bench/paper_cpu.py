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
from pathlib import Path

from teacher import llama_server, teacher_gguf

from divconq.cli import main as divconq
from divconq.distill.evaluate import load_pricing, read_results, report, summarise

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results"

# name -> (decomposer, solver, mode); TEACHER and ADAPTERS are filled in at run time.
CONFIGS = {
    "single": ("{teacher}", "{teacher}", "single"),
    "static": ("{teacher}", "{teacher}", "static"),
    "dynamic": ("{teacher}", "{teacher}", "dynamic"),
    "untrained_student": ("default+adapter=none", "{teacher}", "static"),
    "sd_t": ("default+adapter={work}/adapters/sd_t", "{teacher}", "static"),
    "sd_r": ("default+adapter={work}/adapters/sd_r", "{teacher}", "static"),
    "shipped_student": ("default", "{teacher}", "static"),
    "se_t": ("{teacher}", "default+adapter={work}/adapters/se_t", "static"),
}
SFT = {"sd_t": ["--screen", "none"], "sd_r": ["--screen", "gold"], "se_t": ["--variant", "solver", "--answer", "teacher"]}


def stage(name: str, done: bool) -> bool:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done already' if done else 'running'}", flush=True)
    return not done


def run(args: argparse.Namespace, teacher: str) -> None:
    work = args.work
    store = work / "teacher.db"
    wanted = args.configs.split(",") if args.configs else list(CONFIGS)
    needs_students = any(c in SFT for c in wanted)
    if needs_students and stage("collect", (work / "collect.done").exists()):
        divconq(["collect", "--dataset", "gsm8k", "--data", str(DATA / "train.jsonl"), "--limit", str(args.train_questions),
                 "--decomposer", teacher, "--solver", teacher, "--store", str(store), "--concurrency", "2"])
        (work / "collect.done").touch()
    for name in (c for c in SFT if c in wanted):
        data, adapter = work / "sft" / name, work / "adapters" / name
        if stage(f"sft {name}", (data / "summary.json").exists()):
            divconq(["sft", "--store", str(store), "--out", str(data), "--overwrite", *SFT[name]])
        if stage(f"train {name}", (adapter / "divconq_adapter.json").exists()):
            divconq(["train", "--data", str(data), "--base", "default", "--out", str(adapter), "--resume",
                     "--epochs", str(args.epochs), "--batch-size", "8", "--lora-r", "8", "--lora-alpha", "16"])
    for name in wanted:
        decomposer, solver, mode = (part.format(teacher=teacher, work=work) for part in CONFIGS[name])
        out = work / "results" / f"{name}.jsonl"
        if stage(f"eval {name}", len(read_results(out)) >= args.questions):
            divconq(["eval", "--dataset", "gsm8k", "--data", str(DATA / "test.jsonl"), "--limit", str(args.questions),
                     "--decomposer", decomposer, "--solver", solver, "--mode", mode, "--out", str(out),
                     "--concurrency", "2", "--max-new-tokens", "256"])


def write_table(args: argparse.Namespace) -> str:
    """Table 1 from whatever results exist, priced as the paper does: teacher at GPT-3.5
    prices, the student at their 13/175 scaling of them."""
    paths = [args.work / "results" / f"{name}.jsonl" for name in CONFIGS]
    paths = [p for p in paths if read_results(p)]
    if not paths:
        return "no results yet"
    pricing = load_pricing(None)
    pricing |= {row["decomposer"]: pricing["13b-student"] for p in paths for row in read_results(p)[:1]
                if row["decomposer"].startswith("default")}
    pricing |= {row["solver"]: pricing["13b-student"] for p in paths for row in read_results(p)[:1]
                if row["solver"].startswith("default")}
    pricing |= {row[role]: pricing["openai:gpt-3.5-turbo"] for p in paths for row in read_results(p)[:1]
                for role in ("decomposer", "solver") if row[role].startswith("openai:")}
    RESULTS.mkdir(exist_ok=True)
    table = report(paths, pricing=pricing, markdown_out=RESULTS / "paper_cpu.md", png_out=RESULTS / "paper_cpu.png")
    summaries = {p.stem: summarise(read_results(p), pricing) for p in paths}
    (RESULTS / "paper_cpu.json").write_text(json.dumps(summaries, indent=2) + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100, help="held-out GSM8K test questions (>= 100 for the table)")
    parser.add_argument("--train-questions", type=int, default=200, help="GSM8K train questions the teacher decomposes")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--work", type=Path, default=Path("paper_cpu_work"))
    parser.add_argument("--teacher-url", help="an already running teacher server (OpenAI base URL)")
    parser.add_argument("--table-only", action="store_true", help="print the table from the results so far")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(exist_ok=True)
    if not args.table_only:
        if args.teacher_url:
            run(args, f"openai:teacher@{args.teacher_url}")
        else:
            with llama_server(teacher_gguf()) as url:
                run(args, f"openai:teacher@{url}")
    table = write_table(args)
    print(json.dumps(json.loads((RESULTS / "paper_cpu.json").read_text()), indent=2) if args.json else table)


if __name__ == "__main__":
    main()
