"""divconq improve: sample, screen on gold, keep the cheapest, retrain, score; resumable, refusing bad input.

The student is a real tiny Hugging Face model whose only tokens (beside end of turn) are
whole sub-question lines, so every sampled reply parses and samples differ; it trains
through TRL like any student. The solver that decides which decompositions reach gold is
a fake (graph logic: what is kept), except where a real tiny model shows that a solver
that never reaches gold stops the round.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from tiny_models import build_tiny_chat_model

from divconq.cli import main
from divconq.distill import self_improve
from divconq.distill.sampling import SAMPLE_KEY, SampledDecomposer, prompt_digest, sample_decompositions
from divconq.distill.self_improve import HeldOut, ImproveConfig, improve
from divconq.distill.sft import build_sft, sft_from_store, solver_tokens
from divconq.distill.traces import TraceRun, TraceStore
from divconq.distill.train import TrainConfig
from divconq.errors import DivconqError
from divconq.nodes import load_chat_model
from divconq.nodes.prompts import decompose_messages, get_prompts

PHRASES = [
    "- How many apples did Tom buy?\n",
    "- How many apples are there in total?\n",
    "- What color are the apples?\n",
    "- Who sold the apples to Tom?\n",
]
TOTAL = "How many apples are there in total?"
# Ann's questions: the solver is right whatever the decomposition; Bob's: never; Tom's:
# only when a sub-question asks for the total.
NAMES = ["Ann", "Bob", "Tom", "Tom"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny-decomposer"), seed=0, phrases=PHRASES)


def question(name: str, a: int, b: int) -> str:
    return f"{name} has {a} apples and buys {b} more. How many apples does {name} have?"


def write_gsm8k(path: Path, items: list[tuple[str, int, int]]) -> Path:
    path.write_text("".join(json.dumps({"question": question(n, a, b), "answer": f"{a} + {b}\n#### {a + b}"}) + "\n"
                            for n, a, b in items))
    return path


@pytest.fixture()
def data(tmp_path):
    train = write_gsm8k(tmp_path / "train.jsonl", [(n, i + 1, i + 2) for i, n in enumerate(NAMES)])
    heldout = write_gsm8k(tmp_path / "heldout.jsonl", [("Tom", 7, 8), ("Ann", 9, 1)])
    return train, heldout


class JudgingSolver(BaseChatModel):
    """Solves the question in its prompt, right or wrong by ``rule``; its input tokens are the
    prompt's words, so a longer decomposition costs the solver more. ``stop_after`` calls it
    raises KeyboardInterrupt (a person stopping the run)."""

    calls: list = []
    stop_after: int | None = None

    @property
    def _llm_type(self) -> str:
        return "judging-fake"

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt
        prompt = "\n".join(str(m.content) for m in messages)
        self.calls.append(prompt)
        name, a, b = re.search(r"(\w+) has (\d+) apples and buys (\d+) more", prompt).groups()
        right = name == "Ann" or (name == "Tom" and TOTAL in prompt)
        answer = int(a) + int(b) + (0 if right else 100)
        usage = {"input_tokens": len(prompt.split()), "output_tokens": 5, "total_tokens": len(prompt.split()) + 5}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"So. The answer is: {answer}",
                                                                        usage_metadata=usage))])


def tiny_training(**overrides) -> TrainConfig:
    settings = dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, max_length=4096,
                    eval_steps=2, save_steps=2, logging_steps=1, disable_tqdm=True, report_to=[])
    return TrainConfig(**{**settings, **overrides})


CONFIG = ImproveConfig(samples=2, draws=6, temperature=1.0, max_new_tokens=6, val_fraction=0.0, concurrency=1)


def run_improve(student_dir, data, out, solver, **kwargs):
    train, heldout = data
    return improve(f"hf:{student_dir}", solver, dataset="gsm8k", data=train, out=out,
                   heldout=HeldOut(heldout), config=kwargs.pop("config", CONFIG),
                   train_config=kwargs.pop("train_config", tiny_training()), progress=False, **kwargs)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def key(subquestions):
    return tuple(" ".join(q.split()).casefold() for q in subquestions)


# --------------------------------------------------------------------------- sampling


def test_sampling_keeps_k_distinct_usable_decompositions_and_counts_every_draw(student_dir):
    student = load_chat_model(f"hf:{student_dir}", role="decomposer", max_new_tokens=6)
    text = question("Tom", 2, 3)
    messages = decompose_messages(get_prompts("math"), text, None, 3)
    draws = sample_decompositions(student, messages, question=text, samples=3, draws=8, temperature=1.5,
                                  max_subquestions=3, max_new_tokens=6, seed=1)
    assert 2 <= len(draws.samples) <= 3
    assert len({key(s.subquestions) for s in draws.samples}) == len(draws.samples)
    assert len(draws.samples) + draws.duplicates + draws.declined + draws.unusable + draws.surplus == 8
    prompt_tokens = draws.samples[0].input_tokens
    assert draws.input_tokens == 8 * prompt_tokens and all(s.input_tokens == prompt_tokens for s in draws.samples)
    assert all(s.text.startswith("- ") and set(s.subquestions) <= {p[2:].strip() for p in PHRASES}
               for s in draws.samples)
    again = sample_decompositions(student, messages, question=text, samples=3, draws=8, temperature=1.5,
                                  max_subquestions=3, max_new_tokens=6, seed=1)
    assert again.samples == draws.samples  # seeded: a resumed run draws what the first would have


@pytest.mark.default_model
def test_the_embedded_student_samples_distinct_real_decompositions():
    student = load_chat_model("default", role="decomposer", max_new_tokens=64, engine="transformers")
    text = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
    messages = decompose_messages(get_prompts("math"), text, None, 3)
    draws = sample_decompositions(student, messages, question=text, samples=2, draws=4, temperature=0.8,
                                  max_subquestions=3, max_new_tokens=64, seed=0)
    assert len(draws.samples) == 2 and key(draws.samples[0].subquestions) != key(draws.samples[1].subquestions)
    assert all(q.endswith("?") for s in draws.samples for q in s.subquestions)
    assert draws.samples[0].input_tokens > 100  # the real chat-templated prompt


def test_the_sampled_decomposer_serves_only_the_sample_a_run_names():
    prompts = get_prompts("math")
    messages = decompose_messages(prompts, "Q?", None, 3)
    from divconq.distill.sampling import Sample

    model = SampledDecomposer(samples={"q#0": (prompt_digest(messages), Sample("1. A b c?", ["A b c?"], 7, 3))},
                              model_name="student")
    reply = model.invoke(messages, config={"metadata": {SAMPLE_KEY: "q#0"}})
    assert reply.content == "1. A b c?" and reply.usage_metadata["input_tokens"] == 7
    with pytest.raises(DivconqError, match="no sampled decomposition"):
        model.invoke(messages, config={"metadata": {SAMPLE_KEY: "q#1"}})
    with pytest.raises(DivconqError, match="another prompt"):
        model.invoke([HumanMessage("another prompt")], config={"metadata": {SAMPLE_KEY: "q#0"}})


# --------------------------------------------------------------------------- S_D-S


def screened(run_id, text, correct, tokens, subquestions=("How many are red?",), status="ok"):
    return TraceRun(run_id=run_id, question=text, example_id=run_id, dataset="gsm8k", gold=["3"], correct=correct,
                    route="static" if subquestions else "single", subquestions=list(subquestions),
                    decomposition="\n".join(f"{i}. {q}" for i, q in enumerate(subquestions, 1)) or "No decomposition",
                    usage={"solver": {"input_tokens": tokens, "output_tokens": 1}}, status=status)


def test_sd_s_keeps_per_question_the_gold_match_with_the_fewest_solver_tokens(tmp_path, capsys):
    q1, q2, q3 = question("Tom", 1, 2), question("Bob", 1, 2), question("Ann", 1, 2)
    runs = [
        screened("a#0", q1, True, 30, ["How many did Tom have?"]),
        screened("a#1", q1, True, 20, ["How many did Tom buy?"]),  # kept: right, and the cheapest right one
        screened("a#2", q1, False, 5, ["What color are they?"]),  # cheaper, but wrong
        screened("b#0", q2, False, 9, ["How many did Bob have?"]),  # no right sample: nothing kept
        screened("c#0", q3, True, 1, []),  # right without a decomposition: not a candidate
        screened("c#1", q3, True, 50, ["How many did Ann buy?"]),
        screened("c#2", q3, True, 2, ["How many did Ann sell?"], status="error"),
    ]
    summary = build_sft(runs, screen="self", out_dir=tmp_path / "sds", val_fraction=0.0)
    completions = {r["messages"][1]["content"].rsplit("Question: ", 1)[1].split("\n")[0]: r["messages"][2]["content"]
                   for r in rows(tmp_path / "sds" / "train.jsonl")}
    assert completions == {q1: "1. How many did Tom buy?", q3: "1. How many did Ann buy?"}
    assert summary.paper_name == "S_D-S" and summary.screen == "self" and summary.seen == len(runs)
    assert summary.dropped["answer did not match gold"] == 2
    assert sum(summary.dropped.values()) == len(runs) - 2

    store = tmp_path / "screen.db"
    with TraceStore(store) as s:
        for run in runs:
            s.write_run(run)
    assert main(["sft", "--store", str(store), "--screen", "self", "--val-fraction", "0",
                 "--out", str(tmp_path / "cli"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["paper_name"] == "S_D-S" and printed["train"] == 2
    assert rows(tmp_path / "cli" / "train.jsonl") == rows(tmp_path / "sds" / "train.jsonl")
    with pytest.raises(DivconqError, match="decomposer variant only"):
        sft_from_store(store, variant="solver", screen="self", out_dir=tmp_path / "solver")


# --------------------------------------------------------------------------- a round


def test_a_round_keeps_the_cheapest_gold_decompositions_counts_signal_free_questions_and_retrains(
        student_dir, data, tmp_path):
    out = tmp_path / "run"
    result = run_improve(student_dir, data, out, JudgingSolver(calls=[]))
    round_dir = out / "round_1"
    samples = {row["id"]: row["draws"]["samples"] for row in rows(round_dir / "samples.jsonl")}
    assert len(samples) == len(NAMES)
    for drawn in samples.values():
        assert 1 <= len(drawn) <= 2 and len({key(s["subquestions"]) for s in drawn}) == len(drawn)

    with TraceStore(round_dir / "screen.db", readonly=True) as store:
        runs = list(store.runs())
    assert len(runs) == sum(len(s) for s in samples.values())  # one screening run per sample, through the graph
    assert all(run.calls[0].role == "decomposer" and run.calls[0].model == f"hf:{student_dir}" for run in runs)
    by_question: dict[str, list[TraceRun]] = {}
    for run in runs:
        by_question.setdefault(run.question, []).append(run)

    def right(run):  # the solver's rule, read off what each run sent it
        return run.question.startswith("Ann") or (run.question.startswith("Tom") and TOTAL in run.subquestions)

    assert all(run.correct == right(run) for run in runs)
    every = sum(1 for rs in by_question.values() if all(r.correct for r in rs))
    none = sum(1 for rs in by_question.values() if not any(r.correct for r in rs))
    record = result.rounds[1]
    assert record["solved_by_all"] == every >= 1 and record["solved_by_none"] == none >= 1  # Ann's, Bob's
    assert record["kept_questions"] == len(NAMES) - none
    assert record["accept_rate"] == pytest.approx(sum(r.correct for r in runs) / len(runs))

    kept = {r["messages"][1]["content"].rsplit("Question: ", 1)[1].split("\n")[0]: r["messages"][2]["content"]
            for r in rows(round_dir / "kept" / "train.jsonl")}
    expected = {}
    for text, rs in by_question.items():
        good = [r for r in rs if r.correct]
        if good:
            cheapest = min(good, key=solver_tokens)
            expected[text] = "\n".join(f"{i}. {q}" for i, q in enumerate(cheapest.subquestions, 1))
    assert kept == expected and not any(text.startswith("Bob") for text in kept)

    manifest = json.loads((round_dir / "adapter" / "divconq_adapter.json").read_text())
    assert manifest["paper_name"] == "S_D-S" and manifest["screen"] == "self"
    assert manifest["provenance"]["round"] == 1 and manifest["provenance"]["sampled_by"] == f"hf:{student_dir}"
    assert manifest["metrics"]["train_examples"] == len(expected)
    assert result.student == f"hf:{student_dir}+adapter={round_dir / 'adapter'}"
    training_ids = (round_dir / "adapter" / "training_ids.txt").read_text().split()
    assert len(training_ids) == len(expected)

    summary = json.loads((out / "improve.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    for r in summary["rounds"]:
        assert {"round", "n", "score", "ci_low", "ci_high", "accept_rate", "decomposer_dollars_per_q", "seconds"} <= set(r)
        assert r["heldout_n"] == 2 and r["paired_n"] == 2 and r["ci_low"] <= r["difference"] <= r["ci_high"]
    assert rows(out / "round_1" / "heldout.jsonl")[0]["decomposer"] == result.student


def test_a_solver_that_never_reaches_gold_stops_the_round_and_retrains_nothing(student_dir, data, tmp_path,
                                                                               tiny_model_dir, capsys):
    train, heldout = data
    out = tmp_path / "run"
    argv = ["improve", "--student", f"hf:{student_dir}", "--solver", f"hf:{tiny_model_dir}", "--dataset", "gsm8k",
            "--data", str(train), "--out", str(out), "--samples", "2", "--draws", "4", "--temperature", "1.0",
            "--questions", "2", "--max-new-tokens", "6", "--concurrency", "1", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("divconq: error")]
    assert len(lines) == 1 and "reached gold with none of the" in lines[0] and "nothing was retrained" in lines[0]
    assert (out / "round_1" / "screen.db").is_file()  # screened through the real tiny solver...
    assert not (out / "round_1" / "kept").exists() and not (out / "round_1" / "adapter").exists()  # ...kept nothing
    stats = json.loads((out / "round_1" / "screening.json").read_text())
    assert stats["correct_samples"] == 0 and stats["solved_by_none"] == 2 and stats["accept_rate"] == 0.0
    assert "nothing was retrained" in json.loads((out / "improve.json").read_text())["stopped"]


# --------------------------------------------------------------------------- resuming


def test_a_stopped_run_resumes_without_redoing_finished_steps(student_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    drawn, stop_at = [], [2]
    real_sample = self_improve.sample_decompositions

    def counted(*args, **kwargs):
        drawn.append(kwargs["question"])
        if len(drawn) == stop_at[0]:
            stop_at[0] = None
            raise KeyboardInterrupt  # stopped while sampling the second question
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(self_improve, "sample_decompositions", counted)
    solver = JudgingSolver(calls=[])
    with pytest.raises(KeyboardInterrupt):
        run_improve(student_dir, data, out, solver)
    assert len(rows(out / "round_1" / "samples.jsonl")) == 1
    round_zero = (out / "round_0" / "heldout.jsonl").read_text()

    # A kill mid-write leaves a torn line: it is cut off and that question drawn again.
    with (out / "round_1" / "samples.jsonl").open("a") as handle:
        handle.write('{"id": "gsm8k-torn", "dra')
    drawn.clear()
    solver.stop_after = len(solver.calls) + 3  # stopped again, now while screening
    with pytest.raises(KeyboardInterrupt):
        run_improve(student_dir, data, out, solver)
    assert len(drawn) == len(NAMES) - 1  # only the questions not sampled before
    assert (out / "round_0" / "heldout.jsonl").read_text() == round_zero  # round 0 not evaluated again
    with TraceStore(out / "round_1" / "screen.db", readonly=True) as store:
        screened_before = store.count(status="ok")
    assert screened_before == 3
    total = sum(len(row["draws"]["samples"]) for row in rows(out / "round_1" / "samples.jsonl"))

    drawn.clear()
    solver.calls.clear()
    solver.stop_after = None
    run_improve(student_dir, data, out, solver)
    assert drawn == []  # nothing sampled again
    screening_calls = [c for c in solver.calls if "has 7 apples" not in c and "has 9 apples" not in c]
    assert len(screening_calls) == total - screened_before  # only the samples not screened before
    manifest = (out / "round_1" / "adapter" / "divconq_adapter.json").read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished round was trained again")

    monkeypatch.setattr("divconq.distill.train.finetune", no_training)
    solver.calls.clear()
    again = run_improve(student_dir, data, out, solver)
    assert solver.calls == [] and drawn == []  # no screening and no evaluation either
    assert (out / "round_1" / "adapter" / "divconq_adapter.json").read_text() == manifest
    assert [r["round"] for r in again.rounds] == [0, 1]


def test_a_run_with_other_settings_is_refused(student_dir, data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "improve.json").write_text(json.dumps({"settings": {"samples": 3, "rounds": 5}, "rounds": []}))
    with pytest.raises(DivconqError, match="holds a run with samples 3, this run has 2"):
        run_improve(student_dir, data, out, JudgingSolver(calls=[]))
    assert sorted(p.name for p in out.iterdir()) == ["improve.json", "improve.json.lock"]


def test_a_round_trains_the_student_on_from_its_adapter_and_another_run_reuses_its_screening(
        student_dir, data, tmp_path, monkeypatch):
    """train_from="student" trains the round's student on; screened_from compares a training
    choice over the same screening: nothing is sampled or screened again, only trained."""
    first = run_improve(student_dir, data, tmp_path / "first", JudgingSolver(calls=[]))
    started_from = first.student.split("+adapter=")[1]
    train, heldout = data
    on = improve(first.student, JudgingSolver(calls=[]), dataset="gsm8k", data=train, out=tmp_path / "on",
                 heldout=HeldOut(heldout), config=replace(CONFIG, train_from="student"),
                 train_config=tiny_training(), progress=False)
    manifest = json.loads((tmp_path / "on" / "round_1" / "adapter" / "divconq_adapter.json").read_text())
    assert manifest["training"]["init_adapter"] == started_from
    assert manifest["provenance"]["train_from"] == "student"

    def no_sampling(*args, **kwargs):
        raise AssertionError("a reused round was sampled again")

    monkeypatch.setattr(self_improve, "sample_decompositions", no_sampling)
    solver = JudgingSolver(calls=[])
    fresh = improve(first.student, solver, dataset="gsm8k", data=train, out=tmp_path / "fresh",
                    heldout=HeldOut(heldout), screened_from=tmp_path / "on", config=CONFIG,
                    train_config=tiny_training(), progress=False)
    assert len(solver.calls) == 2  # the two held-out questions of round 1; round 0's results were copied
    for name in ("samples.jsonl", "screening.json", "kept/train.jsonl"):
        assert (tmp_path / "fresh" / "round_1" / name).read_text() == (tmp_path / "on" / "round_1" / name).read_text()
    with TraceStore(tmp_path / "fresh" / "round_1" / "screen.db", readonly=True) as store:
        assert store.count(status="ok") == sum(len(r["draws"]["samples"]) for r in rows(tmp_path / "on" / "round_1" / "samples.jsonl"))
    assert fresh.rounds[1]["screened_from"] == str((tmp_path / "on" / "round_1").resolve())
    assert on.rounds[1]["screened_from"] is None
    assert json.loads((tmp_path / "fresh" / "round_0" / "screened_from.json").read_text())["source"] == str(
        (tmp_path / "on" / "round_0").resolve())
    assert (tmp_path / "fresh" / "round_0" / "heldout.jsonl").read_text() == (
        tmp_path / "on" / "round_0" / "heldout.jsonl").read_text()
    manifest = json.loads((tmp_path / "fresh" / "round_1" / "adapter" / "divconq_adapter.json").read_text())
    assert manifest["training"]["init_adapter"] is None  # trained from the base this time

    with pytest.raises(DivconqError, match="sampled or screened with temperature 1.0, this run has 0.5"):
        improve(first.student, solver, dataset="gsm8k", data=train, out=tmp_path / "other", heldout=HeldOut(heldout),
                screened_from=tmp_path / "on", config=replace(CONFIG, temperature=0.5),
                train_config=tiny_training(), progress=False)
    assert not (tmp_path / "other" / "round_0").exists()


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_before_any_model_loads(tmp_path, data, capsys, monkeypatch):
    train, _ = data
    qdmr = tmp_path / "qdmr.csv"
    qdmr.write_text("question_id,question_text,decomposition\nb1,What is the tallest tower?,return towers ;return #1 that is tallest\n")

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded for bad input")

    monkeypatch.setattr("divconq.nodes.load_chat_model", no_models)
    base = ["improve", "--solver", "hf:x", "--dataset", "gsm8k", "--data", str(train), "--out", str(tmp_path / "o")]
    cases = {
        "no gold answer": (["improve", "--solver", "hf:x", "--dataset", "break", "--data", str(qdmr),
                            "--out", str(tmp_path / "o")], "have no gold answer"),
        "one sample": (base + ["--samples", "1"], "--samples"),
        "temperature zero": (base + ["--temperature", "0"], "--temperature"),
        "api student": (base + ["--student", "openai:gpt-4o-mini"], "must be a local model"),
        "draws below samples": (base + ["--samples", "4", "--draws", "3"], "draws must be"),
        "slice without eval data": (base + ["--eval-slice", str(train)], "need --eval-data"),
        "no prior data": (base + ["--prior-data", str(tmp_path / "missing")], "holds no train.jsonl"),
    }
    for name, (argv, expected) in cases.items():
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("divconq: error")]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (name, err)
    assert not (tmp_path / "o" / "round_1").exists()
