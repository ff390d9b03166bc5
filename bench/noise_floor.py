"""Run-to-run noise of one configuration: two results files of the same row, compared question by question.

Issue 11 asks for the noise floor once. Round 0 of ``bench/improve.py --start shipped``
scores the shipped adapter on the slice's first 100 questions with the teacher as solver,
which is exactly the ``recipe_student`` row of ``bench/paper_cpu.py`` (same adapter file,
slice, prompts and settings), run again later. Whatever differs between the two runs is the
solver server's nondeterminism: llama-server batches the requests in flight, so its
arithmetic is not bit-identical from one run to the next.

    python bench/noise_floor.py [--first FILE] [--second FILE] [--across FIELD,...] [--out FILE] [--json]

The same comparison serves two students on one slice with one solver (``--first`` and
``--second`` of other rows): how many sub-questions differ, and how many scores flip.
With ``--across prompt_version`` it compares two solver prompts on one decomposer (prompts
v4 against v5, issue 11): where the sub-questions agree, only the solver's prompt and the
server's noise moved a score. The pilot that chose v5's wording (the slice's questions
101-160, the wording as a prompt file) ran as

    divconq eval --dataset gsm8k --data ../shared/data/gsm8k/test.jsonl \
        --slice results/solver_plan/slice.txt --decomposer default+adapter=ADAPTER \
        --solver openai:teacher@http://127.0.0.1:8080/v1 --mode static \
        --prompts results/solver_plan/plan_solver_prompts.json \
        --out results/solver_plan/pilot_student.jsonl --concurrency 4 --max-new-tokens 512

Writes bench/results/noise_floor.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paper_cpu import RESULTS, repo_path

from divconq.distill.evaluate import read_results
from divconq.distill.stats import paired_bootstrap
from divconq.safeio import atomic_write

FIRST = RESULTS / "paper_cpu" / "recipe_student.jsonl"
SECOND = RESULTS / "improve" / "round_0.jsonl"
OUT = RESULTS / "noise_floor.json"
# What must match for the two files to be runs of one configuration.
SAME = ("dataset", "slice", "solver", "mode", "prompts", "prompt_version")


def compare(first: Path, second: Path, across: tuple[str, ...] = ()) -> dict:
    """The two files question by question; ``across`` names the SAME fields allowed to differ."""
    a, b = read_results(first), read_results(second)
    if not a or not b:
        raise SystemExit(f"noise_floor: {first if not a else second} holds no results: run its row first")
    for key in SAME:
        if key not in across and a[0].get(key) != b[0].get(key):
            raise SystemExit(f"noise_floor: the files differ in {key} ({a[0].get(key)!r} vs {b[0].get(key)!r}): "
                             f"pass two runs of one configuration, or --across {key} to compare them anyway")
    by_id = {row["id"]: row for row in b}
    pairs = [(row, by_id[row["id"]]) for row in a if row["id"] in by_id]
    return {
        "first": repo_path(first),
        "second": repo_path(second),
        "across": {key: [a[0].get(key), b[0].get(key)] for key in across},
        "n": len(pairs),
        "em_first": 100 * sum(x["score"] for x, _ in pairs) / len(pairs),
        "em_second": 100 * sum(y["score"] for _, y in pairs) / len(pairs),
        "same_subquestions": sum(x["subquestions"] == y["subquestions"] for x, y in pairs),
        "different_predictions": sum(x["prediction"] != y["prediction"] for x, y in pairs),
        "score_flips": sum(x["score"] != y["score"] for x, y in pairs),
        # Where the sub-questions changed, the decomposer can have moved a score; elsewhere only the solver.
        **{key: _correct(chosen) for key, chosen in (
            ("where_subquestions_differ", [(x, y) for x, y in pairs if x["subquestions"] != y["subquestions"]]),
            ("where_subquestions_agree", [(x, y) for x, y in pairs if x["subquestions"] == y["subquestions"]]))},
        "second_minus_first": paired_bootstrap([y["score"] for _, y in pairs], [x["score"] for x, _ in pairs]).to_dict(),
    }


def _correct(pairs: list[tuple[dict, dict]]) -> dict:
    """Questions, and how many of them each run got right."""
    return {"n": len(pairs), "correct_first": sum(x["score"] for x, _ in pairs),
            "correct_second": sum(y["score"] for _, y in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=Path, default=FIRST)
    parser.add_argument("--second", type=Path, default=SECOND)
    parser.add_argument("--across", default="", metavar="FIELD,...",
                        help=f"fields allowed to differ between the files, of {', '.join(SAME)}")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--json", action="store_true", help="print the JSON record instead of the summary")
    args = parser.parse_args()
    across = tuple(key for key in args.across.split(",") if key)
    unknown = [key for key in across if key not in SAME]
    if unknown:
        raise SystemExit(f"noise_floor: --across {','.join(unknown)} is not a field the files must share: "
                         f"choose from {', '.join(SAME)}")
    record = compare(args.first, args.second, across)
    atomic_write(args.out, json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
        return
    d = record["second_minus_first"]
    print(f"{record['n']} questions: EM {record['em_first']:.1f} then {record['em_second']:.1f}, "
          f"{d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]; same sub-questions on "
          f"{record['same_subquestions']}, predictions differ on {record['different_predictions']}, "
          f"{record['score_flips']} scores flip")
    for key in ("where_subquestions_differ", "where_subquestions_agree"):
        part = record[key]
        print(f"  {key.replace('_', ' ')}: {part['n']} questions, right {part['correct_first']:g} then "
              f"{part['correct_second']:g}")


if __name__ == "__main__":
    main()
