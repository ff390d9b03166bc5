"""The whole distillation loop on CPU: teacher traces -> S_D-T / S_D-R data -> LoRA student -> decomposer,
through the library API (``divconq.distill.collect``, ``build_sft``, ``finetune``) and the CLI.

The teacher is scripted: it answers with the gold sub-questions of GSM8K's
test_socratic.jsonl (real decompositions), through the real graph and recorder into a
real SQLite store; the student is a real tiny model, really trained.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import ScriptedChatModel

import divconq.distill
from divconq.cli import main
from divconq.distill import CollectResult, TraceStore, TrainConfig, build_sft, collect, finetune, metric_for
from divconq.distill.datasets import Example, load_dataset
from divconq.distill.train import read_result
from divconq.errors import DivconqError
from divconq.graph import build_graph
from divconq.nodes import load_chat_model, parse_subquestions
from divconq.nodes.prompts import SUBQUESTIONS_HEADER

SOCRATIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test_socratic.jsonl"
pytestmark = pytest.mark.skipif(not SOCRATIC.is_file(), reason=f"{SOCRATIC} is not there (../shared/data)")


def teacher_models(examples):
    """A decomposer that writes the gold sub-questions, a solver right on every other question."""
    by_question = {e.question: e for e in examples}
    order = {e.question: i for i, e in enumerate(examples)}

    def question_of(messages):
        return re.search(rf"Question: (.*?)(?:\n\n{SUBQUESTIONS_HEADER}|$)", str(messages[-1].content), re.S).group(1)

    def decompose(messages):
        gold = by_question[question_of(messages)].gold_subquestions
        return "\n".join(f"{i}. {q}" for i, q in enumerate(gold, 1))

    def solve(messages):
        q = question_of(messages)
        right = order[q] % 2 == 0
        return f"Working... The answer is: {by_question[q].answers[0] if right else '-1'}"

    return ScriptedChatModel(respond=decompose), ScriptedChatModel(respond=solve)


@pytest.fixture(scope="module")
def examples():
    # Some gold decompositions repeat a sub-question or hold none ("Simplify"); keep clean ones.
    usable = lambda e: parse_subquestions("\n".join(e.gold_subquestions), 3, e.question) == list(e.gold_subquestions)  # noqa: E731
    return [e for e in load_dataset("gsm8k", SOCRATIC) if 1 <= len(e.gold_subquestions) <= 3 and usable(e)][:40]


def teacher_graph(examples):
    return build_graph(*teacher_models(examples)).compile()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, examples):
    path = tmp_path_factory.mktemp("traces") / "teacher.db"
    result = collect(teacher_graph(examples), examples, path, dataset="gsm8k")
    assert result == CollectResult(str(path), examples=40, skipped=0, finished=40, failed=0)
    with TraceStore(path, readonly=True) as store:
        runs = list(store.runs())
    # The default metric is the dataset's (GSM8K: the final number): every other answer is right.
    assert len(runs) == 40 and sum(run.correct for run in runs) == 20
    assert {run.dataset for run in runs} == {"gsm8k"} and {run.example_id for run in runs} == {e.id for e in examples}
    return path


def last_json(text):
    """The JSON document printed last (training may log lines before it)."""
    start = text.rfind("\n{\n") + 1 if "\n{\n" in text else text.index("{")
    return json.loads(text[start:])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_traces_become_sd_t_and_sd_r_data(store_path, tmp_path, capsys):
    assert main(["sft", "--store", str(store_path), "--out", str(tmp_path / "sdt"), "--json"]) == 0
    sdt = json.loads(capsys.readouterr().out)
    assert main(["sft", "--store", str(store_path), "--screen", "gold", "--out", str(tmp_path / "sdr"), "--json"]) == 0
    sdr = json.loads(capsys.readouterr().out)
    total = lambda s: s["train"] + s["validation"]  # noqa: E731
    assert total(sdt) == 40 and total(sdr) == 20  # screening keeps the runs whose answer matched gold
    record = read_jsonl(tmp_path / "sdt" / "train.jsonl")[0]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][-1]["content"].startswith("1. ")
    pc = read_jsonl(tmp_path / "sdt" / "train_prompt_completion.jsonl")[0]
    assert pc["prompt"] == record["messages"][:2] and pc["completion"] == record["messages"][2:]


def test_student_learns_and_runs_as_the_decomposer(store_path, tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "sdr"
    assert main(["sft", "--store", str(store_path), "--screen", "gold", "--out", str(data), "--val-fraction", "0.25"]) == 0
    adapter = tmp_path / "student"
    args = ["train", "--data", str(data), "--base", f"hf:{tiny_model_dir}", "--out", str(adapter), "--max-steps", "24",
            "--learning-rate", "3e-3", "--per-device-train-batch-size", "4", "--max-length", "1536", "--eval-steps", "24", "--save-steps", "24", "--json"]
    capsys.readouterr()
    assert main(args) == 0
    result = last_json(capsys.readouterr().out)
    assert result["eval_loss_after"] < result["eval_loss_before"]
    manifest = json.loads((adapter / "divconq_adapter.json").read_text())
    assert manifest["variant"] == "decomposer" and manifest["screen"] == "gold"
    student = load_chat_model(f"hf:{tiny_model_dir}+adapter={adapter}", role="decomposer", max_new_tokens=24)
    out = build_graph(student, ScriptedChatModel(respond=lambda m: "The answer is: 3")).compile().invoke(
        {"question": "Tom has 2 apples and buys 1 more. How many apples does he have?"}
    )
    assert out["usage"]["decomposer"]["calls"] == 1 and out["decomposition"]


# --------------------------------------------------------------------------- the library API


def test_the_loop_from_python(store_path, tmp_path, tiny_model_dir):
    data = build_sft(store_path, screen="gold", out_dir=tmp_path / "sdr", val_fraction=0.25)
    assert (data.paper_name, data.kept) == ("S_D-R", 20) and (tmp_path / "sdr" / "train.jsonl").is_file()
    config = TrainConfig(max_steps=24, learning_rate=3e-3, per_device_train_batch_size=4, max_length=1536,
                         eval_steps=24, save_steps=24, disable_tqdm=True)
    student = finetune(data, base=f"hf:{tiny_model_dir}", out=tmp_path / "student", config=config)
    assert student == f"hf:{tiny_model_dir}+adapter={tmp_path / 'student'}"
    result = read_result(tmp_path / "student")
    assert result.steps == 24 and result.eval_loss_after < result.eval_loss_before
    decomposer = load_chat_model(student, role="decomposer", max_new_tokens=24)
    out = build_graph(decomposer, ScriptedChatModel(respond=lambda m: "The answer is: 3")).compile().invoke(
        {"question": "Tom has 2 apples and buys 1 more. How many apples does he have?"}
    )
    assert out["usage"]["decomposer"]["calls"] == 1 and out["decomposition"]


def test_collect_resumes_and_scores_runs_with_the_metric_given(examples, tmp_path):
    store, graph = tmp_path / "traces.db", teacher_graph(examples)
    first = collect(graph, examples[:6], store, dataset="gsm8k", metric=lambda answer, gold: 1.0)
    assert (first.skipped, first.finished) == (0, 6)
    with TraceStore(store) as opened:  # an open store works too, and stays open
        again = collect(graph, examples[:8], opened, dataset="gsm8k", metric=lambda answer, gold: 0.0)
        assert (again.examples, again.skipped, again.finished, again.failed) == (8, 6, 2, 0)
        assert opened.count() == 8
        correct = {run.example_id: run.correct for run in opened.runs()}
    assert [correct[e.id] for e in examples[:8]] == [True] * 6 + [False] * 2


def test_collect_stops_in_one_line_when_every_question_fails(examples, tmp_path):
    decomposer, _ = teacher_models(examples)

    def broken(messages):
        raise ValueError("the solver is broken")

    graph = build_graph(decomposer, ScriptedChatModel(respond=broken)).compile()
    with pytest.raises(DivconqError, match=r"all 3 questions failed \(first: ValueError: the solver is broken\)"):
        collect(graph, examples[:3], tmp_path / "traces.db", dataset="gsm8k")
    with TraceStore(tmp_path / "traces.db", readonly=True) as store:
        assert store.count(status="error") == 3  # kept, and retried by the next collect


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda g, e, s: collect(g, e, s, dataset=""), "needs the examples' dataset name"),
        (lambda g, e, s: collect(g, [{"question": "q"}], s, dataset="gsm8k"), "takes .*Example objects"),
        (lambda g, e, s: collect(g, e, s, dataset="gsm8k", metric="exact"), "metric must be a function"),
        (lambda g, e, s: metric_for("mydata"), "no metric for dataset 'mydata'"),
    ],
)
def test_collect_refuses_bad_input_before_any_question(examples, tmp_path, call, match):
    asked = []
    graph = build_graph(ScriptedChatModel(respond=lambda m: asked.append(m) or "No decomposition"),
                        ScriptedChatModel(respond=lambda m: "The answer is: 1")).compile()
    with pytest.raises(DivconqError, match=match):
        call(graph, examples[:2], tmp_path / "traces.db")
    assert not asked and not (tmp_path / "traces.db").exists()


def test_collect_scores_with_exact_match_on_data_divconq_does_not_know(tmp_path):
    examples = [Example("own-1", "What colour is the sky?", None, ("Blue",)), Example("own-2", "And grass?", None, ("red",))]
    graph = build_graph(ScriptedChatModel(respond=lambda m: "No decomposition"),
                        ScriptedChatModel(respond=lambda m: "The answer is: blue.")).compile()
    collect(graph, examples, tmp_path / "own.db", dataset="my-own")
    with TraceStore(tmp_path / "own.db", readonly=True) as store:
        assert {run.example_id: run.correct for run in store.runs()} == {"own-1": True, "own-2": False}


def test_build_sft_takes_the_store_itself_and_refuses_a_missing_one(store_path, tmp_path):
    with TraceStore(store_path, readonly=True) as store:
        assert build_sft(store, out_dir=tmp_path / "sdt").kept == 40
    with pytest.raises(DivconqError, match="trace store .*nothing.db does not exist: collect traces first"):
        build_sft(tmp_path / "nothing.db", out_dir=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_api_is_exported_from_divconq_distill_and_loads_lazily():
    from divconq.distill import collection, sft, train

    assert (divconq.distill.collect, divconq.distill.build_sft, divconq.distill.finetune) == (
        collection.collect, sft.build_sft, train.finetune)
    probe = "import sys, divconq.distill; print(sorted(m for m in ('trl', 'langgraph') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_collect_stores_extra_run_metadata_and_refuses_renaming_its_own_keys(examples, tmp_path):
    graph = teacher_graph(examples)
    store = tmp_path / "traces.db"
    collect(graph, examples[:2], store, dataset="gsm8k", metadata=lambda e: {"round": 3, "sample": e.id + "#0"})
    with TraceStore(store, readonly=True) as opened:
        stored = {run.example_id: (run.metadata.get("round"), run.metadata.get("sample"), run.dataset)
                  for run in opened.runs()}
    assert stored == {
        e.id: (3, e.id + "#0", "gsm8k") for e in examples[:2]}  # beside collect's own, which it keeps
    for bad, match in [(lambda e: {"dataset": "other"}, "sets dataset, which collect sets itself"),
                       (lambda e: ["round", 3], "returned list for example"),
                       ({"round": 3}, "metadata must be a function of the example")]:
        with pytest.raises(DivconqError, match=match):
            collect(graph, examples[2:4], tmp_path / "bad.db", dataset="gsm8k", metadata=bad)
    assert not (tmp_path / "bad.db").exists()
