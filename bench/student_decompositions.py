"""How well a decomposer decomposes: held-out GSM8K questions against their gold sub-questions.

For each decomposer spec, on the same held-out test_socratic questions (none of them in
the shipped adapter's training ids): the share of questions with a usable decomposition,
the mean number of sub-questions, and the mean similarity of each gold sub-question to
its best-matching predicted one (difflib ratio on normalised text; 1.0 = identical).

    python bench/student_decompositions.py --questions 30 [--specs default default+adapter=none] [--slice FILE] [--json]
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import time
from pathlib import Path

from divconq.distill.datasets import load_dataset
from divconq.distill.slices import read_slice
from divconq.nodes import load_chat_model
from divconq.nodes import prompts as P
from divconq.nodes.models import DEFAULT_ADAPTER_DIR
from divconq.nodes.graph_nodes import DECOMPOSER, call_model
from divconq.nodes.parsing import parse_subquestions

SOCRATIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test_socratic.jsonl"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def gold_similarity(predicted: list[str], gold: list[str]) -> float:
    """Mean over gold sub-questions of the best difflib ratio against any prediction."""
    if not predicted:
        return 0.0
    return sum(max(difflib.SequenceMatcher(None, _norm(g), _norm(p)).ratio() for p in predicted) for g in gold) / len(gold)


def held_out(n: int, slice_file: Path | None = None) -> list:
    """``n`` questions with one to three gold steps: from a held-out slice file (in its
    order), or else from the end of test_socratic outside the shipped adapter's ids."""
    if slice_file is not None:
        by_id = {e.id: e for e in load_dataset("gsm8k", SOCRATIC)}
        return [by_id[i] for i in read_slice(slice_file).ids if 1 <= len(by_id[i].gold_subquestions) <= 3][:n]
    ids_file = DEFAULT_ADAPTER_DIR / "training_ids.txt"
    trained = set(ids_file.read_text().split()) if ids_file.is_file() else set()
    examples = [e for e in load_dataset("gsm8k", SOCRATIC) if e.id not in trained and 1 <= len(e.gold_subquestions) <= 3]
    return examples[-n:]  # the end of the file: the recipe samples by id hash, eval takes the start


def measure(spec: str, examples: list, one_shot: bool) -> dict:
    model = load_chat_model(spec, role=DECOMPOSER, max_new_tokens=96)
    prompts = P.get_prompts("math", one_shot=one_shot)
    usable = counts = similarity = 0.0
    started = time.perf_counter()
    for example in examples:
        text, _ = call_model(model, P.decompose_messages(prompts, example.question), None, DECOMPOSER)
        subs = parse_subquestions(text, 3, example.question)
        usable += bool(subs)
        counts += len(subs)
        similarity += gold_similarity(subs, list(example.gold_subquestions))
    n = len(examples)
    return {"spec": spec, "one_shot": one_shot, "questions": n, "usable": usable / n, "subquestions_per_q": counts / n,
            "gold_similarity": similarity / n, "seconds_per_q": (time.perf_counter() - started) / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--specs", nargs="+", default=["default+adapter=none", "default+adapter=none:one-shot", "default"],
                        help="decomposer specs; a ':one-shot' suffix adds the worked example to the prompt")
    parser.add_argument("--slice", type=Path, help="take the questions from this held-out slice file (e.g. "
                        "bench/results/gsm8k_heldout.txt, which no adapter here trained on)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    examples = held_out(args.questions, args.slice)
    rows = []
    for spec in args.specs:
        rows.append(measure(spec.removesuffix(":one-shot"), examples, one_shot=spec.endswith(":one-shot")))
        rows[-1]["spec"] = spec
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{len(examples)} held-out GSM8K test questions with gold sub-questions")
    print(f"{'decomposer':<34}{'usable':>8}{'subq/q':>8}{'gold sim':>10}{'s/q':>7}")
    for r in rows:
        print(f"{r['spec']:<34}{r['usable']:>8.2f}{r['subquestions_per_q']:>8.2f}{r['gold_similarity']:>10.3f}{r['seconds_per_q']:>7.1f}")


if __name__ == "__main__":
    main()
