"""SFT data for the paper's variants (S_D-T, S_D-R, S_E-T, S_E-A) from fabricated traces."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from divconq.distill.sft import (
    SFT_FILES,
    build_sft,
    build_sft_from_gold,
    normalise_question,
    split_of,
    with_gold_answer,
)
from divconq.errors import DivconqError
from divconq.nodes.parsing import NO_DECOMPOSITION
from divconq.nodes.prompts import (
    PROMPT_VERSION,
    decompose_messages,
    get_prompts,
    solve_messages,
)


def call(node: str, role: str) -> SimpleNamespace:
    return SimpleNamespace(call_id=f"c-{node}", seq=0, role=role, node=node, model="teacher", messages=[],
                           output="", input_tokens=0, output_tokens=0, seconds=0.0)


def make_run(**fields) -> SimpleNamespace:
    """A TraceRun-like record from plain values (defaults: a correct static joint run)."""
    n = fields.pop("n", 0)
    question = fields.pop("question", f"Tom has {n} apples and buys {n + 2} more. How many apples does he have?")
    subquestions = fields.pop("subquestions", ["How many apples did Tom buy?", "How many apples does Tom have now?"])
    route = fields.pop("route", "static")
    default_calls = {
        "static": [call("decompose", "decomposer"), call("solve", "solver")],
        "dynamic": [call("propose", "decomposer"), call("answer_step", "solver"), call("solve_final", "solver")],
        "single": [call("solve_direct", "solver")],
    }[route]
    base = dict(
        run_id=f"run-{n}",
        example_id=f"ex-{n}",
        dataset="gsm8k",
        question=question,
        context=None,
        gold=[str(2 * n + 2)],
        answer=str(2 * n + 2),
        correct=True,
        route=route,
        subquestions=subquestions,
        sub_answers=[str(n + 2), str(2 * n + 2)],
        decomposition="Sure! Here are the sub-questions:\n" + "\n".join(f"{i}) {q}" for i, q in enumerate(subquestions, 1)),
        solution=f"1. Tom bought {n + 2} apples.\n2. He has {2 * n + 2} apples.\n\nThe answer is: {2 * n + 2}",
        usage={},
        status="ok",
        source="test",
        metadata={},
        calls=default_calls,
    )
    base.update(fields)
    return SimpleNamespace(**base)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_examples(out: Path) -> list[dict]:
    files = [out / "train.jsonl", out / "validation.jsonl"]  # an empty split has no file
    return [row for path in files if path.is_file() for row in read_jsonl(path)]


def as_dicts(messages) -> list[dict]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": m.content} for m in messages]


# --------------------------------------------------------------------------- decomposer


def test_sd_t_keeps_all_usable_decompositions_with_rebuilt_zero_shot_prompt(tmp_path):
    runs = [
        make_run(n=1),
        make_run(n=2, correct=False, answer="7"),
        make_run(n=3, decomposition="No decomposition.", subquestions=[], route="single",
                 calls=[call("decompose", "decomposer"), call("solve_direct", "solver")]),
        make_run(n=4, decomposition="I cannot help with that.", subquestions=[], route="single",
                 calls=[call("decompose", "decomposer"), call("solve_direct", "solver")]),
        make_run(n=5, route="single", decomposition=None, subquestions=[]),
        make_run(n=6, route="dynamic"),
        make_run(n=7, status="error"),
    ]
    out = tmp_path / "sd_t"
    summary = build_sft(runs, variant="decomposer", screen="none", out_dir=out, val_fraction=0.0)

    assert summary.paper_name == "S_D-T"
    assert (summary.seen, summary.kept, summary.train, summary.validation) == (7, 3, 3, 0)
    assert summary.no_decomposition == 1
    assert summary.dropped == {
        "decomposition held no usable sub-questions": 1,
        "dynamic run (no static decomposition to learn)": 1,
        "no decomposer output (single-stage run)": 1,
        "run status 'error'": 1,
    }
    written = {name for name in SFT_FILES if (out / name).is_file()}
    # No validation example, so no validation file: a two-split load would break on an empty one.
    assert written == set(SFT_FILES) - {"validation.jsonl", "validation_prompt_completion.jsonl"}

    examples = read_jsonl(out / "train.jsonl")
    by_question = {ex["messages"][1]["content"]: ex for ex in examples}
    run1 = runs[0]
    ex1 = by_question[f"Question: {run1.question}"]
    # The prompt is exactly what decompose_messages builds (zero-shot, as at inference).
    expected_prompt = as_dicts(decompose_messages(get_prompts("math"), run1.question, None, 3))
    assert ex1["messages"][:-1] == expected_prompt
    # The completion is the canonical rendering of the parsed sub-questions.
    assert ex1["messages"][-1] == {
        "role": "assistant",
        "content": "1. How many apples did Tom buy?\n2. How many apples does Tom have now?",
    }
    ex3 = by_question[f"Question: {runs[2].question}"]
    assert ex3["messages"][-1]["content"] == NO_DECOMPOSITION

    # The prompt/completion file holds the same examples.
    pcs = read_jsonl(out / "train_prompt_completion.jsonl")
    assert [pc["prompt"] + pc["completion"] for pc in pcs] == [ex["messages"] for ex in examples]
    assert all(pc["completion"][0]["role"] == "assistant" and len(pc["completion"]) == 1 for pc in pcs)

    written = json.loads((out / "summary.json").read_text())
    assert written["variant"] == "decomposer" and written["screen"] == "none" and written["task"] == "math"
    assert written["prompt_version"] == PROMPT_VERSION
    assert written["kept"] == 3 and written["dropped"] == summary.dropped
    text = summary.format()
    assert "S_D-T" in text and "kept 3" in text and "dynamic run" in text


def test_decomposer_caps_subquestions_and_uses_context_and_task(tmp_path):
    run = make_run(
        n=1,
        context="The Bears scored twice.",
        decomposition="1. What did the Bears score first?\n2. What did the Bears score second?\n"
        "3. How many points in total did they score?\n4. Who won the game in the end?",
    )
    out = tmp_path / "reading"
    build_sft([run], variant="decomposer", out_dir=out, task="reading", max_subquestions=2, val_fraction=0.0)
    (example,) = read_jsonl(out / "train.jsonl")
    assert example["messages"][:-1] == as_dicts(
        decompose_messages(get_prompts("reading"), run.question, run.context, 2)
    )
    assert "Context: The Bears scored twice." in example["messages"][1]["content"]
    assert example["messages"][-1]["content"] == (
        "1. What did the Bears score first?\n2. What did the Bears score second?"
    )


def test_sd_r_keeps_only_runs_that_matched_gold(tmp_path):
    runs = [make_run(n=1), make_run(n=2, correct=False), make_run(n=3, correct=None, gold=None), make_run(n=4)]
    out = tmp_path / "sd_r"
    summary = build_sft(runs, variant="decomposer", screen="gold", out_dir=out, val_fraction=0.0)
    assert summary.paper_name == "S_D-R"
    assert summary.kept == 2
    assert summary.dropped == {"answer did not match gold": 1, "no gold to screen against": 1}
    questions = {ex["messages"][1]["content"] for ex in all_examples(out)}
    assert questions == {f"Question: {runs[0].question}", f"Question: {runs[3].question}"}


def test_empty_after_screening_raises_with_fix(tmp_path):
    runs = [make_run(n=1, correct=False), make_run(n=2, correct=None)]
    out = tmp_path / "empty"
    with pytest.raises(DivconqError, match=r"no run matched gold.*--gold.*--screen none"):
        build_sft(runs, variant="decomposer", screen="gold", out_dir=out)
    assert not out.exists()
    with pytest.raises(DivconqError, match="no S_D-T examples"):
        build_sft([], variant="decomposer", out_dir=out)


def test_deduplicates_by_normalised_question_keeping_the_first(tmp_path):
    q = "How many apples does Tom have after buying 3 more?"
    first = make_run(n=1, question=q, decomposition="1. How many apples did Tom have first?")
    second = make_run(n=2, question="  how many APPLES does Tom have   after buying 3 more? ",
                      decomposition="1. What is the total number of apples?")
    # A usable later run for a question whose first run was unusable is kept.
    bad = make_run(n=3, question="What is 5 plus 7 in total?", decomposition="nothing useful")
    good = make_run(n=4, question="What is 5 plus 7 in total?", decomposition="1. What is 5 plus 7 exactly?")
    # Same question, different passage: a different example (reading comprehension).
    ctx_a = make_run(n=5, question="Who scored the first goal of the match?", context="Passage A.")
    ctx_b = make_run(n=6, question="Who scored the first goal of the match?", context="Passage B.")
    out = tmp_path / "dedupe"
    summary = build_sft([first, second, bad, good, ctx_a, ctx_b], out_dir=out, task="reading", val_fraction=0.0)
    assert summary.kept == 4
    assert summary.dropped["duplicate question (kept the first)"] == 1
    completions = {ex["messages"][1]["content"]: ex["messages"][-1]["content"] for ex in all_examples(out)}
    assert completions[f"Question: {q}"] == "1. How many apples did Tom have first?"
    assert completions["Question: What is 5 plus 7 in total?"] == "1. What is 5 plus 7 exactly?"


def test_split_is_a_stable_hash_of_the_question(tmp_path):
    runs = [make_run(n=i) for i in range(40)]
    small = build_sft(runs[:20], out_dir=tmp_path / "small", val_fraction=0.3)
    big = build_sft(runs[::-1], out_dir=tmp_path / "big", val_fraction=0.3)
    assert small.validation > 0 and small.train > 0 and big.kept == 40

    def split_questions(out: Path) -> dict[str, set[str]]:
        return {
            split: {ex["messages"][1]["content"] for ex in read_jsonl(out / f"{split}.jsonl")}
            for split in ("train", "validation")
        }

    s, b = split_questions(tmp_path / "small"), split_questions(tmp_path / "big")
    # Adding traces (in any order) never moves a question across the split.
    assert s["train"] <= b["train"] and s["validation"] <= b["validation"]
    # And the split is the documented hash of the normalised question.
    for run in runs:
        side = split_of(normalise_question(run.question), 0.3)
        assert f"Question: {run.question}" in b[side]


def test_no_overwrite_unless_asked(tmp_path):
    out = tmp_path / "data"
    build_sft([make_run(n=1)], out_dir=out, val_fraction=0.0)
    before = (out / "train.jsonl").read_text()
    with pytest.raises(DivconqError, match="not empty"):
        build_sft([make_run(n=2)], out_dir=out, val_fraction=0.0)
    assert (out / "train.jsonl").read_text() == before
    summary = build_sft([make_run(n=2)], out_dir=out, val_fraction=0.0, overwrite=True)
    assert summary.kept == 1 and (out / "train.jsonl").read_text() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dirs left behind
    # An existing empty dir is fine.
    (tmp_path / "empty").mkdir()
    build_sft([make_run(n=3)], out_dir=tmp_path / "empty", val_fraction=0.0)


def test_bad_settings_raise(tmp_path):
    with pytest.raises(DivconqError, match="variant"):
        build_sft([make_run()], variant="both", out_dir=tmp_path / "a")
    with pytest.raises(DivconqError, match="solver variant only"):
        build_sft([make_run()], variant="decomposer", answer="gold", out_dir=tmp_path / "a")
    with pytest.raises(DivconqError, match="unknown task"):
        build_sft([make_run()], task="poetry", out_dir=tmp_path / "a")
    with pytest.raises(DivconqError, match="val_fraction"):
        build_sft([make_run()], val_fraction=1.5, out_dir=tmp_path / "a")


# --------------------------------------------------------------------------- solver


def test_se_t_uses_teacher_solution_on_static_joint_runs_only(tmp_path):
    runs = [
        make_run(n=1, correct=False),
        make_run(n=2, route="dynamic"),
        make_run(n=3, calls=[call("decompose", "decomposer")] + [call("solve_one", "solver")] * 2
                 + [call("solve_final", "solver")]),
        make_run(n=4, route="single", subquestions=[], decomposition="No decomposition"),
        make_run(n=5, solution=""),
    ]
    out = tmp_path / "se_t"
    summary = build_sft(runs, variant="solver", answer="teacher", out_dir=out, val_fraction=0.0)
    assert summary.paper_name == "S_E-T"
    assert summary.kept == 1
    assert summary.dropped == {
        "no solver output": 1,
        "not a static joint run (dynamic)": 1,
        "not a static joint run (single)": 1,
        "not a static joint run (static/stepwise)": 1,
    }
    (example,) = read_jsonl(out / "train.jsonl")
    run = runs[0]
    assert example["messages"][:-1] == as_dicts(
        solve_messages(get_prompts("math"), run.question, None, run.subquestions)
    )
    # The teacher's text, wrong answer included (S_E-T does not screen unless asked).
    assert example["messages"][-1]["content"] == run.solution


def test_se_a_replaces_the_final_answer_with_gold(tmp_path):
    runs = [
        make_run(n=1, gold=["4"], correct=False,
                 solution="1. He bought 3.\n2. He has 5.\nThe answer is: 5 apples.\n"),
        make_run(n=2, gold=["6"], correct=True,
                 solution="First, the answer is: 3. Then he has 6 in total.\n\nthe answer is 6"),
        make_run(n=3, gold=["8"], solution="He has eight apples."),
        make_run(n=4, gold=None, correct=None),
    ]
    out = tmp_path / "se_a"
    summary = build_sft(runs, variant="solver", answer="gold", out_dir=out, val_fraction=0.0)
    assert summary.paper_name == "S_E-A"
    assert summary.kept == 3 and summary.answer_appended == 1
    assert summary.dropped == {"no gold answer to put in the solution": 1}
    completions = {ex["messages"][1]["content"].split("\n")[0]: ex["messages"][-1]["content"]
                   for ex in read_jsonl(out / "train.jsonl")}
    by_run = [completions[f"Question: {r.question}"] for r in runs[:3]]
    assert by_run[0] == "1. He bought 3.\n2. He has 5.\nThe answer is: 4"
    # Only the last marker is touched.
    assert by_run[1] == "First, the answer is: 3. Then he has 6 in total.\n\nthe answer is: 6"
    assert by_run[2] == "He has eight apples.\nThe answer is: 8"

    # With gold screening too, only the runs marked correct are left.
    screened = build_sft(runs, variant="solver", screen="gold", answer="gold", out_dir=tmp_path / "r",
                         val_fraction=0.0)
    assert screened.kept == 2 and screened.paper_name == "S_E-A+R"
    assert screened.dropped == {"answer did not match gold": 1, "no gold to screen against": 1}


def test_with_gold_answer_handles_multispan_gold(tmp_path):
    assert with_gold_answer("x. The answer is: a", "b") == ("x. The answer is: b", False)
    run = make_run(n=1, gold=["Smith | Jones"], solution="The answer is: Smith")
    out = tmp_path / "drop"
    build_sft([run], variant="solver", answer="gold", out_dir=out, task="reading", val_fraction=0.0)
    (example,) = read_jsonl(out / "train.jsonl")
    assert example["messages"][-1]["content"] == "The answer is: Smith, Jones"


# --------------------------------------------------------------------------- gold decompositions


def test_build_sft_from_gold_decompositions(tmp_path):
    examples = [
        SimpleNamespace(id="a", question="How many pens are left after selling 4 of 10?", context=None,
                        answers=("6",), gold_subquestions=("How many pens were sold?", "How many pens are left?")),
        SimpleNamespace(id="b", question="What is 2 + 2?", context=None, answers=("4",), gold_subquestions=()),
        SimpleNamespace(id="c", question="A long one?", context=None, answers=("1",),
                        gold_subquestions=("q1?", "q2?", "q3?", "q4?")),
    ]
    out = tmp_path / "gold"
    summary = build_sft_from_gold(examples, out, val_fraction=0.0)
    assert summary.source == "gold" and summary.kept == 1
    assert summary.dropped == {"more than 3 gold sub-questions": 1, "no gold sub-questions": 1}
    (example,) = read_jsonl(out / "train.jsonl")
    assert example["messages"][:-1] == as_dicts(decompose_messages(get_prompts("math"), examples[0].question))
    assert example["messages"][-1]["content"] == "1. How many pens were sold?\n2. How many pens are left?"
    with pytest.raises(DivconqError, match="gold decompositions"):
        build_sft_from_gold(examples[1:2], tmp_path / "none")


# --------------------------------------------------------------------------- from a trace store


def test_sft_from_store_reads_real_trace_runs(tmp_path):
    from divconq.distill.sft import sft_from_store
    from divconq.distill.traces import TraceCall, TraceRun, TraceStore

    def stored(n: int, correct: bool, **extra) -> TraceRun:
        fake = make_run(n=n, correct=correct)
        calls = [TraceCall(call_id=f"{n}-{c.node}", role=c.role, messages=[], node=c.node, seq=i)
                 for i, c in enumerate(fake.calls)]
        values = {k: v for k, v in vars(fake).items() if k in TraceRun.__dataclass_fields__}
        return TraceRun(**{**values, "calls": calls, "metadata": {"mode": "static", "solve": "joint"}, **extra})

    store_path = tmp_path / "traces.sqlite"
    with TraceStore(store_path) as store:
        store.write_run(stored(1, True))
        store.write_run(stored(2, False))
        store.write_run(stored(3, True, status="error", error="boom"))
        store.write_run(stored(4, True, metadata={"mode": "static", "solve": "parallel"}))

    decomposer = sft_from_store(store_path, variant="decomposer", screen="gold", out_dir=tmp_path / "sd_r",
                                val_fraction=0.0)
    assert decomposer.seen == 3 and decomposer.kept == 2  # the failed run is not even read
    assert decomposer.dropped == {"answer did not match gold": 1}
    solver = sft_from_store(store_path, variant="solver", out_dir=tmp_path / "se_t", val_fraction=0.0)
    assert solver.kept == 2 and solver.dropped == {"not a static joint run (static/parallel)": 1}
    with pytest.raises(DivconqError, match="does not exist"):
        sft_from_store(tmp_path / "missing.sqlite", out_dir=tmp_path / "x")


def test_no_decomposition_runs_can_be_left_out(tmp_path):
    runs = [
        make_run(n=1),
        make_run(n=2, decomposition="No decomposition", subquestions=[], route="single",
                 calls=[call("decompose", "decomposer"), call("solve_direct", "solver")]),
    ]
    summary = build_sft(runs, out_dir=tmp_path / "sd_t", val_fraction=0.0, keep_no_decomposition=False)
    assert (summary.kept, summary.no_decomposition) == (1, 0)
    assert summary.dropped == {"'No decomposition' (not kept)": 1}
    rows = read_jsonl(tmp_path / "sd_t" / "train_prompt_completion.jsonl")
    assert [row["completion"][0]["content"] for row in rows] == ["1. How many apples did Tom buy?\n2. How many apples does Tom have now?"]
