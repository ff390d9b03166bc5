"""Prompts v4 against v5 for the joint solver, on the same decompositions (issue 11).

v4 told the solver to answer the sub-questions in order; v5 calls them a suggested plan,
which may be incomplete, out of order or wrong, to check against the question. The
decomposer (and so, on the shipped student, which decodes greedily, the sub-questions) is
the same in both files; only the solver's turn differs. Pairs two results files by
question id and reports each one's EM, the paired bootstrap CI of the difference, and the
split by whether the sub-questions agree.

The pilot that chose v5 (the slice's questions 101-160, the v5 wording as a prompt file):

    divconq eval --dataset gsm8k --data ../shared/data/gsm8k/test.jsonl \\
        --slice results/solver_plan/slice.txt --decomposer default+adapter=ADAPTER \\
        --solver openai:teacher@http://127.0.0.1:8080/v1 --mode static \\
        --prompts results/solver_plan/plan_solver_prompts.json \\
        --out results/solver_plan/pilot_student.jsonl --concurrency 4 --max-new-tokens 512

    python bench/solver_plan.py [--old FILE] [--new FILE] [--out FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from paper_cpu import RESULTS, repo_path

from divconq.distill.evaluate import read_results
from divconq.distill.stats import paired_bootstrap
from divconq.safeio import atomic_write

OLD = RESULTS / "paper_cpu" / "recipe_student.jsonl"
NEW = RESULTS / "solver_plan" / "pilot_student.jsonl"
OUT = RESULTS / "solver_plan.json"


def _em(rows: dict[str, dict], ids: list[str]) -> float:
    return 100 * sum(rows[i]["score"] for i in ids) / len(ids) if ids else 0.0


def compare(old_file: Path, new_file: Path) -> dict:
    old = {r["id"]: r for r in read_results(old_file) if not r.get("error")}
    new = {r["id"]: r for r in read_results(new_file) if not r.get("error")}
    ids = [i for i in new if i in old]
    if not ids:
        raise SystemExit(f"solver_plan: {old_file} and {new_file} share no answered question: pass two runs of one slice")
    same = [i for i in ids if old[i]["subquestions"] == new[i]["subquestions"]]
    decomposed = [i for i in ids if new[i]["subquestions"]]
    test = paired_bootstrap([new[i]["score"] for i in ids], [old[i]["score"] for i in ids])
    return {
        "old": {"file": repo_path(old_file), "prompts": f"{old[ids[0]].get('prompts')} v{old[ids[0]].get('prompt_version')}"},
        "new": {"file": repo_path(new_file), "prompts": f"{new[ids[0]].get('prompts')} v{new[ids[0]].get('prompt_version')}"},
        "n": len(ids),
        "em_old": _em(old, ids),
        "em_new": _em(new, ids),
        "new_minus_old": test.to_dict(),
        "subquestions_identical": len(same),
        # Where the sub-questions agree, only the solver's prompt (and the server's noise) differs.
        "on_identical_subquestions": {"n": len(same), "em_old": _em(old, same), "em_new": _em(new, same),
                                      "new_minus_old": paired_bootstrap([new[i]["score"] for i in same],
                                                                        [old[i]["score"] for i in same]).to_dict()
                                      if same else None},
        "on_decomposed": {"n": len(decomposed), "em_old": _em(old, decomposed), "em_new": _em(new, decomposed)},
        "flips": {"wrong_to_right": sum(1 for i in ids if new[i]["score"] > old[i]["score"]),
                  "right_to_wrong": sum(1 for i in ids if new[i]["score"] < old[i]["score"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, default=OLD, help="results under the old solver prompt")
    parser.add_argument("--new", type=Path, default=NEW, help="results under the new one, same decomposer")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--json", action="store_true", help="print the JSON record instead of the summary")
    args = parser.parse_args()
    record = compare(args.old, args.new)
    atomic_write(args.out, json.dumps(record, indent=2) + "\n")
    if args.json:
        print(json.dumps(record, indent=2))
        return
    d = record["new_minus_old"]
    same = record["on_identical_subquestions"]
    print(f"{record['n']} questions ({same['n']} with identical sub-questions: {same['em_old']:.1f} -> {same['em_new']:.1f}): "
          f"EM {record['em_old']:.1f} ({record['old']['prompts']}) -> {record['em_new']:.1f} ({record['new']['prompts']}), "
          f"{d['difference']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]; "
          f"{record['flips']['wrong_to_right']} wrong->right, {record['flips']['right_to_wrong']} right->wrong -> {args.out}")


if __name__ == "__main__":
    main()
