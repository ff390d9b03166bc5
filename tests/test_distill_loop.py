"""The whole distillation loop on CPU: teacher traces -> S_D-T / S_D-R data -> LoRA student -> decomposer.

The teacher is scripted: it answers with the gold sub-questions of GSM8K's
test_socratic.jsonl (real decompositions), through the real graph and recorder.
"""

import json
import re
from pathlib import Path

import pytest
from fakes import ScriptedChatModel

from divconq.cli import main
from divconq.distill.datasets import load_dataset
from divconq.distill.metrics import score
from divconq.distill import TraceRecorder, TraceStore
from divconq.graph import build_graph
from divconq.nodes import load_chat_model, parse_subquestions

SOCRATIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test_socratic.jsonl"
pytestmark = pytest.mark.skipif(not SOCRATIC.is_file(), reason=f"{SOCRATIC} is not there (../shared/data)")


def teacher_models(examples):
    """A decomposer that writes the gold sub-questions, a solver right on every other question."""
    by_question = {e.question: e for e in examples}
    order = {e.question: i for i, e in enumerate(examples)}

    def question_of(messages):
        return re.search(r"Question: (.*?)(?:\n\nSub-questions:|$)", str(messages[-1].content), re.S).group(1)

    def decompose(messages):
        gold = by_question[question_of(messages)].gold_subquestions
        return "\n".join(f"{i}. {q}" for i, q in enumerate(gold, 1))

    def solve(messages):
        q = question_of(messages)
        right = order[q] % 2 == 0
        return f"Working... The answer is: {by_question[q].answers[0] if right else '-1'}"

    return ScriptedChatModel(respond=decompose), ScriptedChatModel(respond=solve)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    # Some gold decompositions repeat a sub-question or hold none ("Simplify"); keep clean ones.
    usable = lambda e: parse_subquestions("\n".join(e.gold_subquestions), 3, e.question) == list(e.gold_subquestions)  # noqa: E731
    examples = [e for e in load_dataset("gsm8k", SOCRATIC) if 1 <= len(e.gold_subquestions) <= 3 and usable(e)][:40]
    decomposer, solver = teacher_models(examples)
    path = tmp_path_factory.mktemp("traces") / "teacher.db"
    with TraceStore(path) as store:
        recorder = TraceRecorder(store, scorer=lambda answer, gold: score("gsm8k", answer or "", gold)["score"] == 1.0)
        graph = build_graph(decomposer, solver).compile()
        configs = [
            {"callbacks": [recorder], "metadata": {"gold": list(e.answers), "example_id": e.id, "dataset": "gsm8k"}}
            for e in examples
        ]
        graph.batch([{"question": e.question} for e in examples], configs)
        assert store.count() == 40
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
