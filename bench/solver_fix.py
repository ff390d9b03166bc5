"""Does the joint solver answer the question when the sub-questions stop short? (issue 11, item 4)

The failure: three sub-questions cover the first steps only, and a solver told "answer the
sub-questions, then the question" answers the last sub-question instead. The controlled
test here gives the teacher solver the same short decompositions under the old and the new
joint-solver wording:

- questions: those of the held-out slice's first --questions whose gold GSM8K socratic
  decomposition has more than three steps;
- decomposer: those gold sub-questions, cut to the first three (``--max-subquestions 3``),
  so every decomposition stops at least one step short;
- solver: the teacher, with prompts v2's joint-solver turn ("Answer the sub-questions in
  order, then the question") against today's (v4: restates the original question and ends
  with the answer marker).

Scored by EM, and by how often the prediction is the gold result of step 3, the last
sub-question's answer, instead of the question's. Per-question results under
bench/results/solver_fix/, the summary in bench/results/solver_fix.json.

    python bench/solver_fix.py [--questions 100] [--teacher-url URL] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

from paper_cpu import DATA, GOLD, MAX_NEW_TOKENS, SLICE
from teacher import llama_server, native_server, teacher_gguf

from divconq.cli import run_step as divconq
from divconq.distill.datasets import load_dataset, question_id
from divconq.distill.evaluate import read_results
from divconq.distill.metrics import gsm8k_em
from divconq.distill.slices import read_slice
from divconq.distill.stats import paired_bootstrap, paired_rows
from divconq.nodes.prompts import get_prompts
from divconq.safeio import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "solver_fix"
# Prompts v2's joint-solver user turn, verbatim from git (nodes/prompts.py before 7064373).
V2_SOLVE_USER = ("{context_block}Question: {question}\n\nSub-questions:\n{subquestions_block}\n\n"
                 'Answer the sub-questions in order, then the question; finish with "The answer is: ".')
_STEP_RESULT = re.compile(r"<<[^>]*=([^>]*)>>")


def short_questions(limit: int) -> tuple[list[str], dict[str, str]]:
    """Ids among the slice's first ``limit`` whose gold has over three steps, and each one's step-3 result."""
    socratic = {e.id: e for e in load_dataset("gsm8k", DATA / "test_socratic.jsonl")}
    rows = [json.loads(line) for line in (DATA / "test_socratic.jsonl").read_text().splitlines() if line.strip()]
    raw = {question_id("gsm8k", row["question"]): row for row in rows}
    ids, step3 = [], {}
    for qid in read_slice(SLICE).ids[:limit]:
        if len(socratic[qid].gold_subquestions) > 3:
            steps = raw[qid]["answer"].split("\n")
            found = _STEP_RESULT.findall(steps[2])
            ids.append(qid)
            step3[qid] = found[-1] if found else ""
    return ids, step3


def write_inputs(ids: list[str]) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    slice_file = OUT / "slice.txt"
    atomic_write(slice_file, "# held-out slice questions whose gold decomposition has more than 3 steps\n" + "\n".join(ids) + "\n")
    v2 = replace(get_prompts("math"), solve_user=V2_SOLVE_USER, name="v2_joint_solver")
    prompt_file = OUT / "prompts_v2_solver.json"
    atomic_write(prompt_file, json.dumps({k: v for k, v in asdict(v2).items() if k != "version"}, indent=2) + "\n")
    return slice_file, prompt_file


def run(teacher: str, slice_file: Path, prompt_file: Path, concurrency: int) -> None:
    for name, prompts in (("v2_solver", str(prompt_file)), ("v4_solver", "divconq")):
        divconq(["eval", "--dataset", "gsm8k", "--data", str(DATA / "test.jsonl"), "--slice", str(slice_file),
                 "--decomposer", GOLD, "--solver", teacher, "--mode", "static", "--max-subquestions", "3",
                 "--prompts", prompts, "--out", str(OUT / f"{name}.jsonl"), "--concurrency", str(concurrency),
                 "--max-new-tokens", str(MAX_NEW_TOKENS)])


def summary(step3: dict[str, str]) -> dict:
    rows = {name: read_results(OUT / f"{name}.jsonl") for name in ("v2_solver", "v4_solver")}
    out = {}
    for name, results in rows.items():
        answered_step3 = [r for r in results if not r["score"] and step3.get(r["id"])
                          and gsm8k_em(r["prediction"] or "", step3[r["id"]]) == 1.0]
        out[name] = {"n": len(results), "em": 100 * sum(r["score"] for r in results) / max(len(results), 1),
                     "answered_the_last_subquestion": len(answered_step3)}
    new, old = paired_rows(rows["v4_solver"], rows["v2_solver"])
    out["v4_minus_v2"] = paired_bootstrap(new, old).to_dict() if new else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100, help="look among the slice's first N questions")
    parser.add_argument("--teacher-url", help="an already running teacher server (OpenAI base URL)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ids, step3 = short_questions(args.questions)
    slice_file, prompt_file = write_inputs(ids)
    if args.teacher_url:
        run(f"openai:teacher@{args.teacher_url}", slice_file, prompt_file, args.concurrency)
    else:
        with llama_server(teacher_gguf(), port=8080, parallel=args.concurrency, binary=native_server()) as url:
            run(f"openai:teacher@{url}", slice_file, prompt_file, args.concurrency)
    result = {"questions": len(ids), "among_first": args.questions, **summary(step3),
              "command": f"python bench/solver_fix.py --questions {args.questions}"}
    atomic_write(RESULTS / "solver_fix.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
