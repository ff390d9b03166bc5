"""The shipped-adapter recipe: gold decompositions from ../shared/data plus screened teacher traces."""

import json
from pathlib import Path

import pytest

from divconq.distill.recipe import GoldSource, RecipeConfig, build_data
from divconq.distill.traces import TraceCall, TraceRun, TraceStore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def teacher_run(n: int, decomposition: str, correct: bool) -> TraceRun:
    question = f"Ann has {n} pens and buys {n} more. How many pens does she have?"
    route = "single" if decomposition == "No decomposition" else "static"
    return TraceRun(
        run_id=f"r{n}", example_id=f"gsm8k-train-{n}", dataset="gsm8k", question=question, gold=[str(2 * n)],
        answer=str(2 * n) if correct else "0", correct=correct, route=route, decomposition=decomposition,
        calls=[TraceCall(call_id=f"r{n}-0", role="decomposer", node="decompose", model="teacher",
                         messages=[{"role": "user", "content": question}], output=decomposition)],
    )


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data")
def test_recipe_data_mixes_gold_and_screened_teacher_decompositions(tmp_path):
    store_path = tmp_path / "teacher.db"
    with TraceStore(store_path) as store:
        store.write_run(teacher_run(1, "1. How many pens did Ann buy?\n2. How many pens does Ann have?", True))
        store.write_run(teacher_run(2, "1. How many pens did Ann buy?", False))  # wrong answer: screened out
        store.write_run(teacher_run(3, "No decomposition", True))  # declined: not kept
    config = RecipeConfig(gold=[GoldSource("gsm8k", "gsm8k/test_socratic.jsonl", "math", 12)])
    data, summaries, ids = build_data(SHARED_DATA, tmp_path / "work", store_path, config)

    teacher = summaries["teacher:S_D-R"]
    assert teacher["kept"] == 1
    assert teacher["dropped"] == {"answer did not match gold": 1, "'No decomposition' (not kept)": 1}
    assert teacher["teacher"] == {"runs": 3, "correct": 2, "datasets": ["gsm8k"], "models": ["teacher"]}
    assert summaries["gold:gsm8k"]["kept"] == 12
    # Every id the adapter could have seen is listed, the screened-out teacher runs too.
    assert {"gsm8k-train-1", "gsm8k-train-2", "gsm8k-train-3"} <= ids and len(ids) == 15
    rows = [json.loads(line) for name in ("train.jsonl", "validation.jsonl") if (data / name).is_file()
            for line in (data / name).read_text().splitlines()]
    assert len(rows) == 13
    completions = [row["messages"][-1]["content"] for row in rows]
    assert "1. How many pens did Ann buy?\n2. How many pens does Ann have?" in completions
    assert not any("No decomposition" in c for c in completions)
    summary = json.loads((data / "summary.json").read_text())
    assert summary["source"] == "gold+traces" and summary["train"] + summary["validation"] == 13


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data")
def test_recipe_never_trains_on_a_held_out_question_and_shortens_long_gold(tmp_path):
    from divconq.distill.datasets import load_dataset

    socratic = load_dataset("gsm8k", SHARED_DATA / "gsm8k" / "test_socratic.jsonl")
    held_out = frozenset(e.id for e in socratic[:20])
    config = RecipeConfig(gold=[GoldSource("gsm8k", "gsm8k/test_socratic.jsonl", "math", 30, long="shorten")])
    data, summaries, ids = build_data(SHARED_DATA, tmp_path / "work", None, config, held_out)

    assert ids and not ids & held_out
    rows = [json.loads(line) for name in ("train.jsonl", "validation.jsonl") if (data / name).is_file()
            for line in (data / name).read_text().splitlines()]
    assert len(rows) == summaries["gold:gsm8k"]["kept"] == len(ids)
    by_question = {e.question: e for e in socratic}
    shortened = 0
    for row in rows:
        steps = row["messages"][-1]["content"].splitlines()
        gold = by_question[row["messages"][-2]["content"].removeprefix("Question: ")].gold_subquestions
        assert 1 <= len(steps) <= 3
        if len(gold) > 3:  # the first two steps and the last
            shortened += 1
            assert [s.split(". ", 1)[1] for s in steps] == [*gold[:2], gold[-1]]
    assert shortened, "some GSM8K gold decompositions run past three steps"


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data")
def test_recipe_refuses_a_held_out_slice_it_would_train_on(tmp_path):
    from divconq.distill.recipe import main

    slice_file = tmp_path / "slice.txt"
    slice_file.write_text("gsm8k-train-1\n")
    store_path = tmp_path / "teacher.db"
    with TraceStore(store_path) as store:
        store.write_run(teacher_run(1, "1. How many pens did Ann buy?\n2. How many pens does Ann have?", True))
    with pytest.raises(SystemExit) as ended:
        main(["--data", str(SHARED_DATA), "--teacher-store", str(store_path), "--held-out", str(slice_file),
              "--out", str(tmp_path / "adapter")])
    assert "overlaps the training ids" in str(ended.value) and "\n" not in str(ended.value)
    assert not (tmp_path / "adapter").exists()


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k").is_dir(), reason="needs ../shared/data")
def test_the_recipe_trains_another_base_within_a_step_budget(tmp_path, capsys):
    """--base and --max-steps: the recipe's student on a larger base, trained for a budget of
    steps on a CPU; the adapter, its manifest and recipe.json say which base and budget."""
    from tiny_models import build_tiny_chat_model

    from divconq.distill import recipe
    from divconq.nodes.manifest import ADAPTER_MANIFEST

    tiny = build_tiny_chat_model(tmp_path / "tiny", seed=0)
    small = RecipeConfig(gold=[GoldSource("gsm8k", "gsm8k/test_socratic.jsonl", "math", 24)])
    small.train.per_device_train_batch_size = 2
    small.train.disable_tqdm = True
    small.train.max_length = 8192  # the tiny model's tokenizer spells words out
    real_config = recipe.RecipeConfig
    recipe.RecipeConfig = lambda: small  # the real CLI, on a small slice of the gold data
    try:
        recipe.main(["--data", str(SHARED_DATA), "--out", str(tmp_path / "adapter"), "--base", f"hf:{tiny}",
                     "--max-steps", "3", "--micro-batch", "1"])
        with pytest.raises(SystemExit, match="--micro-batch 3 does not divide the recipe's batch of 2"):
            recipe.main(["--data", str(SHARED_DATA), "--out", str(tmp_path / "other"), "--micro-batch", "3"])
    finally:
        recipe.RecipeConfig = real_config
    manifest = json.loads((tmp_path / "adapter" / ADAPTER_MANIFEST).read_text())
    assert manifest["base_model"] == f"hf:{tiny}" and manifest["metrics"]["steps"] == 3
    record = json.loads((tmp_path / "adapter" / "recipe.json").read_text())
    assert f"--base hf:{tiny} --max-steps 3 --micro-batch 1" in record["command"]
    assert manifest["training"]["gradient_accumulation_steps"] == 2  # the recipe's batch of 2, one at a time
