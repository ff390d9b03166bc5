"""Does the solver prompt keep the final answer at the end? Old (v1) vs current, on a teacher.

Each GSM8K test question comes with its gold sub-questions (``test_socratic.jsonl``), so
only the solver prompt differs. Small instruct models given the v1 prompt often open
with "The answer is: ..." and reason afterwards, and the parser reads a guess.

    python bench/teacher.py --port 8080 &
    python bench/solver_prompt.py --solver openai:teacher@http://127.0.0.1:8080/v1 --start 200 --n 6
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from divconq.distill.datasets import load_dataset
from divconq.distill.metrics import gsm8k_em
from divconq.nodes import load_chat_model
from divconq.nodes.parsing import extract_answer
from divconq.nodes.prompts import get_prompts, solve_messages

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test_socratic.jsonl"

V1_SOLVE = ("Solve the math word problem by answering the sub-questions one by one, then the original "
            'question. End your response with "The answer is: " followed by the final answer as a number.')
V1_USER = "{context_block}Question: {question}\n\nSub-questions:\n{subquestions_block}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver", required=True, help="model spec of the solver")
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    examples = load_dataset("gsm8k", DATA)[args.start : args.start + args.n]
    solver = load_chat_model(args.solver, role="solver", max_new_tokens=256)
    current = get_prompts("math")
    variants = {"v1": replace(current, solve_system=V1_SOLVE, solve_user=V1_USER), f"v{current.version}": current}
    figures = {}
    for name, prompts in variants.items():
        correct, started, ends_with_marker = 0, time.perf_counter(), 0
        for e in examples:
            text = str(solver.invoke(solve_messages(prompts, e.question, None, list(e.gold_subquestions[:3]))).content)
            correct += gsm8k_em(extract_answer(text), e.answers[0]) > 0
            last = [line for line in text.splitlines() if line.strip()][-1:] or [""]
            ends_with_marker += "answer is" in last[0].lower()
        figures[name] = {"correct": correct, "questions": len(examples), "answer_on_last_line": ends_with_marker,
                         "seconds_per_question": round((time.perf_counter() - started) / len(examples), 1)}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for name, f in figures.items():
            print(f"{name}: {f['correct']}/{f['questions']} correct, answer on the last line in "
                  f"{f['answer_on_last_line']}, {f['seconds_per_question']} s/question")


if __name__ == "__main__":
    main()
