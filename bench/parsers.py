"""Parser (and scrubber) time on adversarial 1 MB inputs: each must stay linear.

Model output is untrusted: a reply of 32,000 spaces once cost 23 s in a quadratic regex.
This times every parser of ``divconq.nodes.parsing`` (and ``divconq.scrub.scrub_text``)
on 1 MB inputs built to hit backtracking (long runs of spaces, newlines, digits, list
markers, answer markers, question marks, ...), and prints the worst case of each, with the
per-input timings in ``bench/results/parsers.json``.

    python bench/parsers.py [--size 1048576] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Callable

from divconq.nodes.parsing import (
    extract_answer,
    is_no_decomposition,
    parse_next_subquestion,
    parse_subquestions,
    split_sub_answers,
)
from divconq.safeio import atomic_write
from divconq.scrub import scrub_text

QUESTION = "Natalia sold clips to 48 of her friends in April, and half as many in May. How many clips did she sell?"
GOAL_MS = 50.0  # the bound for a 1 MB input


def inputs(size: int) -> dict[str, str]:
    """Adversarial texts of about ``size`` characters; the first three are the issue's cases, scaled."""
    def fill(unit: str) -> str:
        return (unit * (size // len(unit) + 1))[:size]

    return {
        "spaces": "a" + " " * size + "b",
        "newlines": "a" + "\n" * size + "b",
        "tabs_and_spaces": "a" + fill(" \t") + "b",
        "letters": fill("a"),
        "words": fill("word "),
        "lines_of_words": fill("how many eggs\n"),
        "questions_one_line": fill("What is x? "),
        "question_lines": fill("What is the next value?\n"),
        "inline_numbered": fill("1. a "),
        "numbered_lines": fill("1. What is it?\n"),
        "numbered_spaces": "1." + " " * size + "b",
        "labels": fill("Sub-question 1: "),
        "bullets": fill("- "),
        "answer_markers": fill("The answer is: "),
        "answer_lines": fill("\nanswer:"),
        "answer_then_spaces": "The answer is" + " " * size,
        "final_spaces": "final" + " " * size + "x",
        "boxed_open": fill("\\boxed{1"),
        "display_math": "The answer is: \\[" + " " * size,
        "code_fences": fill("```"),
        "bold": fill("**"),
        "digits": fill("1"),
        "paren_digits": fill("(1"),
        "no_decomposition": fill("no "),
        "done": fill("done "),
        "unicode": fill("é？ "),
        "mixed": fill("1) What? A1: 5\n\n**Q2** - step 3 -\t"),
    }


PARSERS: dict[str, Callable[[str], object]] = {
    "parse_subquestions": lambda text: parse_subquestions(text, 3, question=QUESTION),
    "parse_next_subquestion": lambda text: parse_next_subquestion(text, QUESTION, ["What is x?"]),
    "extract_answer": extract_answer,
    "split_sub_answers": lambda text: split_sub_answers(text, 3),
    "is_no_decomposition": is_no_decomposition,
    "scrub_text": scrub_text,
}


def time_once(fn: Callable[[str], object], text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="characters per input (default 1 MB)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per input; the best is kept")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "parsers.json"))
    args = parser.parse_args()
    texts = inputs(args.size)
    timings = {name: {case: round(time_once(fn, text, args.repeat), 2) for case, text in texts.items()}
               for name, fn in PARSERS.items()}
    worst = {name: max(cases.items(), key=lambda kv: kv[1]) for name, cases in timings.items()}
    result = {
        "size_chars": args.size, "repeat": args.repeat, "goal_ms": GOAL_MS, "python": platform.python_version(),
        "machine": platform.machine(),
        "worst_ms": {name: {"input": case, "ms": ms} for name, (case, ms) in worst.items()},
        "timings_ms": timings,
    }
    out = atomic_write(args.out, json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{len(texts)} adversarial inputs of {args.size:,} characters, best of {args.repeat}; goal {GOAL_MS:.0f} ms")
    for name, (case, ms) in worst.items():
        flag = "" if ms <= GOAL_MS or name == "scrub_text" else "  OVER"
        print(f"  {name:<24} worst {ms:8.2f} ms  ({case}){flag}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
