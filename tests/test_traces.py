"""Trace capture: the recorder on real compiled graphs, the SQLite store, LangSmith import."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
from langsmith.schemas import Run

from divconq.distill import TraceRecorder, import_langsmith_runs
from divconq.distill.metrics import exact_match
from divconq.distill.traces import (
    TraceCall,
    TraceRun,
    TraceStore,
    format_run_tree,
    scrub_metadata,
    scrub_text,
)
from divconq.errors import DivconqError
from divconq.graph import build_graph
from divconq.graph.builder import NODE_METADATA
from divconq.nodes import prompts as P

PROMPTS = P.get_prompts("math")
SECRET_KEY = "sk-proj-Zx81QpLm0987abcdEFGHijkl"


def ai(text: str, tokens: tuple[int, int] | None = None) -> AIMessage:
    if tokens is None:
        return AIMessage(text)
    usage = {"input_tokens": tokens[0], "output_tokens": tokens[1], "total_tokens": sum(tokens)}
    return AIMessage(text, usage_metadata=usage)


def fake(*replies: AIMessage | str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([ai(r) if isinstance(r, str) else r for r in replies]))


def as_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": m.content} for m in messages]


class KeyedModel(BaseChatModel):
    """Replies by the first key found in the last message, so concurrent runs stay
    deterministic (a shared reply iterator would hand replies to whichever run asks)."""

    replies: dict[str, str]
    delays: dict[str, float] = {}
    model_name: str = "keyed-1"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        text = str(messages[-1].content)
        for key, reply in self.replies.items():
            if key in text:
                time.sleep(self.delays.get(key, 0.0))
                if reply.startswith("RAISE "):
                    raise RuntimeError(reply.removeprefix("RAISE "))
                message = ai(reply, (len(text), len(reply)))
                return ChatResult(generations=[ChatGeneration(message=message)])
        raise ValueError(f"no reply for {text!r}")

    @property
    def _llm_type(self) -> str:
        return "keyed"


@pytest.fixture
def store(tmp_path: Path):
    with TraceStore(tmp_path / "traces.db") as s:
        yield s


def run_once(graph_builder, store: TraceStore, inputs: dict, metadata: dict | None = None, **rec_kw) -> dict:
    recorder = TraceRecorder(store, **rec_kw)
    out = graph_builder.compile().invoke(inputs, config={"callbacks": [recorder], "metadata": metadata or {}})
    assert not recorder._open and not recorder._seen  # nothing left behind
    return out


# --------------------------------------------------------------------------- recorder on real graphs


def test_static_joint_records_exact_prompts_outputs_and_tokens(store):
    q = "Tom has 3 apples and buys 4 more. How many now?"
    dec = fake(ai("1. How many apples did Tom have?\n2. How many did he buy?", (30, 12)))
    sol = fake(ai("1. 3\n2. 4\nSo 7. The answer is: 7", (40, 9)))
    out = run_once(
        build_graph(dec, sol, mode="static", solve="joint"),
        store,
        {"question": q},
        {"gold": ["7"], "example_id": "ex1", "dataset": "gsm8k"},
    )

    (run,) = list(store.runs())
    assert run.question == q and run.answer == "7" == out["answer"] and run.correct is True
    assert (run.route, run.status, run.source, run.error) == ("static", "ok", "divconq", None)
    assert run.subquestions == ["How many apples did Tom have?", "How many did he buy?"]
    assert run.sub_answers == out["sub_answers"] and run.decomposition == out["decomposition"]
    assert run.solution == "1. 3\n2. 4\nSo 7. The answer is: 7"
    assert (run.dataset, run.example_id, run.gold) == ("gsm8k", "ex1", ["7"])
    assert run.usage["decomposer"]["input_tokens"] == 30 and run.usage["solver"]["output_tokens"] == 9
    assert run.metadata == {"mode": "static", "solve": "joint"}
    assert run.seconds > 0 and abs(run.started_at - time.time()) < 60

    decomposer, solver = run.calls
    assert [c.seq for c in run.calls] == [0, 1]
    assert (decomposer.role, decomposer.node) == ("decomposer", "decompose")
    assert decomposer.messages == as_dicts(P.decompose_messages(PROMPTS, q, None, 3))
    assert decomposer.output == "1. How many apples did Tom have?\n2. How many did he buy?"
    assert (decomposer.input_tokens, decomposer.output_tokens) == (30, 12)
    assert (solver.role, solver.node, solver.input_tokens, solver.output_tokens) == ("solver", "solve", 40, 9)
    assert solver.messages == as_dicts(P.solve_messages(PROMPTS, q, None, run.subquestions))
    assert all(c.run_id == run.run_id and c.seconds >= 0 and c.started_at for c in run.calls)
    assert run.calls_for("decomposer") == [decomposer]
    assert store.get_run(run.run_id) == run


def test_parallel_branches_are_ordered_by_send_index_not_by_timing(store):
    q = "What is a plus b?"
    dec = KeyedModel(replies={q: "1. What is a?\n2. What is b?"}, model_name="dec-model")
    # The first branch answers last: seq must still follow the sub-question order.
    sol = KeyedModel(
        replies={q: "The answer is: 3", "What is a?": "The answer is: 1", "What is b?": "The answer is: 2"},
        delays={"What is a?": 0.2},
        model_name="sol-model",
    )
    run_once(build_graph(dec, sol, solve="parallel"), store, {"question": q}, {"gold": "3"})
    (run,) = list(store.runs())
    assert [(c.seq, c.role, c.node) for c in run.calls] == [
        (0, "decomposer", "decompose"),
        (1, "solver", "solve_one"),
        (2, "solver", "solve_one"),
        (3, "solver", "solve_final"),
    ]
    assert run.calls[1].messages[-1]["content"].endswith("What is a?") and run.calls[1].output.endswith("1")
    assert run.calls[2].messages[-1]["content"].endswith("What is b?") and run.calls[2].output.endswith("2")
    assert [c.model for c in run.calls] == ["dec-model"] + ["sol-model"] * 3
    assert run.sub_answers == ["1", "2"] and run.answer == "3" and run.correct is True and run.gold == ["3"]


def test_seq_follows_step_and_path_even_when_events_arrive_out_of_order(store):
    """Drive the callbacks by hand: branch 1 starts (and ends) before branch 0."""
    rec = TraceRecorder(store)
    root = uuid.uuid4()
    rec.on_chain_start(None, {"question": "q?"}, run_id=root)

    def branch(index: int, step: int, node: str) -> uuid.UUID:
        meta = {"langgraph_step": step, "langgraph_node": node, "langgraph_path": ("__pregel_push", index, False),
                **NODE_METADATA}
        task, call = uuid.uuid4(), uuid.uuid4()
        rec.on_chain_start(None, {}, run_id=task, parent_run_id=root, metadata=meta)
        rec.on_chat_model_start(
            None,
            [[AIMessage(f"branch {index}")]],
            run_id=call,
            parent_run_id=task,
            metadata={**meta, "divconq_role": "solver"},
        )
        return call

    late, early = branch(1, 2, "solve_one"), branch(0, 2, "solve_one")
    first = branch(0, 1, "decompose")
    for call in (late, early, first):
        rec.on_llm_end(_llm_result(f"out {call}"), run_id=call)
    rec.on_chain_end({"answer": "x"}, run_id=root)
    (run,) = list(store.runs())
    assert [c.call_id for c in run.calls] == [str(first), str(early), str(late)]
    assert run.calls[0].role == "solver"  # the metadata role wins over the node name


def _llm_result(text: str):
    from langchain_core.outputs import LLMResult

    return LLMResult(
        generations=[[ChatGeneration(message=AIMessage(text))]],
        llm_output={"token_usage": {"prompt_tokens": 5, "completion_tokens": 2}},
    )


def test_token_usage_falls_back_to_llm_output_and_role_to_node_name(store):
    rec = TraceRecorder(store)
    root, task, call = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rec.on_chain_start(None, {"messages": [{"role": "user", "content": "hi there"}]}, run_id=root)
    task_meta = {"langgraph_node": "my_decomposer", **NODE_METADATA}  # a graph of one's own, marked like ours
    rec.on_chain_start(None, {}, run_id=task, parent_run_id=root, metadata=task_meta)
    rec.on_chat_model_start(
        {"kwargs": {"model": "served-model"}},
        [[AIMessage("x")]],
        run_id=call,
        parent_run_id=task,
        metadata={"langgraph_node": "my_decomposer"},
    )
    rec.on_llm_end(_llm_result("done"), run_id=call)
    rec.on_chain_end({"messages": [AIMessage("final words")]}, run_id=root)
    (run,) = list(store.runs())
    (c,) = run.calls
    assert (c.role, c.model, c.input_tokens, c.output_tokens, c.output) == ("decomposer", "served-model", 5, 2, "done")
    assert run.question == "hi there" and run.answer == "final words" and run.usage["decomposer"]["calls"] == 1
    assert run.route is None and run.subquestions is None and run.correct is None


def test_dynamic_mode_alternates_decomposer_and_solver(store):
    q = "What is 2 times the sum of 1 and 2?"
    dec = fake("What is 1 + 2?", "What is 2 times 3?", "No more sub-questions")
    sol = fake("The answer is: 3", "The answer is: 6", "The answer is: 6")
    out = run_once(build_graph(dec, sol, mode="dynamic"), store, {"question": q}, {"gold": ["6"]})
    (run,) = list(store.runs())
    assert [(c.role, c.node) for c in run.calls] == [
        ("decomposer", "propose"),
        ("solver", "answer_step"),
        ("decomposer", "propose"),
        ("solver", "answer_step"),
        ("decomposer", "propose"),
        ("solver", "solve_final"),
    ]
    assert run.route == "dynamic" and run.subquestions == ["What is 1 + 2?", "What is 2 times 3?"]
    assert run.sub_answers == ["3", "6"] == out["sub_answers"] and run.correct is True
    assert run.calls[2].messages == as_dicts(P.next_subquestion_messages(PROMPTS, q, None, ["What is 1 + 2?"], ["3"]))
    assert run.decomposition == out["decomposition"]


def test_single_mode_and_wrong_answer_and_custom_metric(store):
    sol = fake("The answer is: 41", "The answer is: 42")
    builder = build_graph(fake(), sol, mode="single")
    run_once(builder, store, {"question": "Six times seven?", "context": "Some text."}, {"gold": ["42"]})
    run_once(
        builder,
        store,
        {"question": "Six times seven, again?"},
        {"gold": ["forty-two", "42."]},
        metric=lambda answer, gold: answer == "42",
    )
    wrong, right = store.runs()
    assert (wrong.route, wrong.answer, wrong.correct, wrong.context) == ("single", "41", False, "Some text.")
    assert [c.role for c in wrong.calls] == ["solver"] and wrong.subquestions == [] and wrong.sub_answers == []
    assert wrong.calls[0].messages == as_dicts(P.direct_messages(PROMPTS, "Six times seven?", "Some text."))
    assert right.correct is True and right.gold == ["forty-two", "42."]


def test_a_run_is_correct_only_when_the_metric_gives_full_marks(store):
    builder = build_graph(fake("1. What is six times seven?", "1. What is six times seven?"),
                          fake("The answer is: 42", "The answer is: 42"))
    run_once(builder, store, {"question": "Q one?"}, {"gold": ["42"]}, metric=lambda answer, gold: 0.5)
    run_once(builder, store, {"question": "Q two?"}, {"gold": ["42"]}, metric=lambda answer, gold: 1.0)
    assert [r.correct for r in store.runs()] == [False, True]


def test_scorer_is_the_deprecated_name_of_metric(store):
    with pytest.warns(DeprecationWarning, match=r"scorer=.*metric="):
        recorder = TraceRecorder(store, scorer=lambda answer, gold: True)
    assert recorder.metric("x", ["y"]) is True
    with pytest.raises(DivconqError, match="metric= only"):
        TraceRecorder(store, metric=exact_match, scorer=exact_match)
    with pytest.raises(DivconqError, match="metric must be a function"):
        TraceRecorder(store, metric="gsm8k")


def test_default_metric_normalises():
    assert exact_match(" The Answer!", ["the answer"]) and exact_match("1,000", ["1000"])
    assert exact_match("3.5", ["3.5"]) and not exact_match("3.5", ["35"])
    assert not exact_match(None, ["x"]) and not exact_match("7", ["8", "70"])


def test_batch_and_threads_keep_concurrent_runs_apart(store):
    questions = [f"Question number {i}?" for i in range(6)]
    dec = KeyedModel(
        replies={q: f"1. Sub of {i}?\n2. Other of {i}?" for i, q in enumerate(questions)},
        delays={q: 0.02 * (i % 3) for i, q in enumerate(questions)},
    )
    sol = KeyedModel(replies={f"Sub of {i}?": f"The answer is: {i}" for i in range(6)})
    graph = build_graph(dec, sol, solve="joint").compile()
    rec = TraceRecorder(store)
    configs = [
        {"callbacks": [rec], "metadata": {"example_id": str(i), "dataset": "toy", "gold": [str(i)]}} for i in range(6)
    ]
    outs = graph.batch([{"question": q} for q in questions], config=configs, max_concurrency=6)
    assert [o["answer"] for o in outs] == [str(i) for i in range(6)]
    assert store.count() == 6 and store.done_example_ids("toy") == {str(i) for i in range(6)}
    for run in store.runs():
        i = int(run.example_id)
        assert run.question == questions[i] and run.correct is True
        assert [c.role for c in run.calls] == ["decomposer", "solver"]
        assert all(questions[i] in c.messages[-1]["content"] for c in run.calls)
    assert not rec._open and not rec._seen


def test_async_invocations_in_parallel(store):
    questions = [f"Async question {i}?" for i in range(4)]
    dec = KeyedModel(replies={q: f"1. What is part {i}?\n2. What is the rest of {i}?" for i, q in enumerate(questions)})
    sol = KeyedModel(
        replies={q: f"The answer is: {i}" for i, q in enumerate(questions)}
        | {f"part {i}?": f"The answer is: {i}" for i in range(4)}
        | {f"rest of {i}?": "The answer is: r" for i in range(4)}
    )
    graph = build_graph(dec, sol, solve="parallel").compile()
    rec = TraceRecorder(store)

    async def main():
        return await asyncio.gather(
            *(
                graph.ainvoke({"question": q}, config={"callbacks": [rec], "metadata": {"example_id": f"a{i}"}})
                for i, q in enumerate(questions)
            )
        )

    asyncio.run(main())
    runs = {r.example_id: r for r in store.runs()}
    assert sorted(runs) == [f"a{i}" for i in range(4)]
    for i in range(4):
        run = runs[f"a{i}"]
        assert run.answer == str(i) and run.sub_answers == [str(i), "r"]
        assert [c.node for c in run.calls] == ["decompose", "solve_one", "solve_one", "solve_final"]
        assert run.calls[1].messages[-1]["content"].endswith(f"part {i}?")


def test_failed_run_is_written_with_status_error(store):
    q = "Will this work?"
    dec = KeyedModel(replies={q: "1. Does the first part of this work?"})
    sol = KeyedModel(
        replies={"first part": "RAISE solver exploded with Authorization: Bearer abcdef123456789\nline two"}
    )
    with pytest.raises(RuntimeError, match="solver exploded"):
        run_once(build_graph(dec, sol), store, {"question": q}, {"dataset": "toy", "example_id": "e9", "gold": ["x"]})
    assert list(store.runs()) == []
    (run,) = list(store.runs(status="error"))
    assert run.status == "error" and run.correct is None and run.answer is None
    assert run.error == "RuntimeError: solver exploded with Authorization: [REDACTED]"
    assert [(c.role, c.output is None) for c in run.calls] == [("decomposer", False), ("solver", True)]
    # errors are retried on resume, unless asked otherwise
    assert not store.has_example("toy", "e9") and store.has_example("toy", "e9", status=None)
    assert store.done_example_ids("toy") == set() and store.done_example_ids("toy", status=None) == {"e9"}


def test_model_calls_outside_a_chain_are_ignored(store):
    rec = TraceRecorder(store)
    fake("hello").invoke("hi", config={"callbacks": [rec]})
    assert store.count() == 0 and not rec._open and not rec._seen


# --------------------------------------------------------------------------- store


def _run(
    run_id: str, *, dataset: str | None = "ds", example_id: str | None = None, status: str = "ok", calls: int = 1
) -> TraceRun:
    return TraceRun(
        run_id=run_id,
        question=f"question {run_id}",
        dataset=dataset,
        example_id=example_id,
        status=status,
        answer="a",
        gold=["a"],
        correct=True,
        subquestions=["s?"],
        sub_answers=["t"],
        usage={"solver": {"calls": calls}},
        calls=[
            TraceCall(
                call_id=f"{run_id}-{i}", role="solver", messages=[{"role": "user", "content": "q"}], output="o", seq=i
            )
            for i in range(calls)
        ],
    )


def test_schema_meta_wal_and_reopen(tmp_path):
    path = tmp_path / "t.db"
    with TraceStore(path) as s:
        s.write_run(_run("r1", example_id="1", calls=2))
    with TraceStore(path) as s:  # reopening keeps the data and the schema
        assert s.count() == 1 and [c.seq for c in s.get_run("r1").calls] == [0, 1]
        assert s.get_run("missing") is None
    db = sqlite3.connect(path)
    runs_columns = """run_id example_id dataset question context gold answer correct route subquestions sub_answers
        decomposition solution usage started_at seconds status error source metadata""".split()
    calls_columns = """call_id run_id seq role node model messages output input_tokens output_tokens seconds
        started_at""".split()
    assert [r[1] for r in db.execute("PRAGMA table_info(runs)")] == runs_columns
    assert [r[1] for r in db.execute("PRAGMA table_info(calls)")] == calls_columns
    assert dict(db.execute("SELECT key, value FROM meta")) == {"format": "divconq-traces", "schema_version": "1"}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert any("(dataset, example_id)" in i for i in indexes) and any("(question)" in i for i in indexes)
    row = db.execute("SELECT gold, correct, subquestions, usage FROM runs").fetchone()
    assert (json.loads(row[0]), row[1], json.loads(row[2]), json.loads(row[3])) == (
        ["a"],
        1,
        ["s?"],
        {"solver": {"calls": 2}},
    )
    assert json.loads(db.execute("SELECT messages FROM calls LIMIT 1").fetchone()[0]) == [
        {"role": "user", "content": "q"}
    ]
    db.close()


def test_write_run_replaces_same_run_id(store):
    store.write_run(_run("r1", calls=3))
    store.write_run(_run("r1", calls=1))
    assert store.count() == 1 and len(store.get_run("r1").calls) == 1


def test_runs_pages_through_many(store):
    for i in range(450):
        store.write_run(_run(f"r{i:03d}", example_id=str(i), status="ok" if i % 3 else "error"))
    assert store.count() == 450 and store.count("error") == 150
    ok = list(store.runs())
    assert len(ok) == 300 and [r.run_id for r in ok] == [f"r{i:03d}" for i in range(450) if i % 3]
    assert len(list(store.runs(status=None))) == 450


def test_merge_dedupes_by_run_id_and_example(tmp_path):
    with TraceStore(tmp_path / "a.db") as a, TraceStore(tmp_path / "b.db") as b:
        a.write_run(_run("a1", example_id="1"))
        a.write_run(_run("a2", example_id="2", status="error"))
        b.write_run(_run("b1", example_id="1"))  # example 1 already done in a: skipped
        b.write_run(_run("b2", example_id="2"))  # a only has an error for 2: added
        b.write_run(_run("b3", example_id="3"))  # new: added
        b.write_run(_run("a1", example_id="99"))  # run_id already in a: skipped
        b.write_run(_run("b5", dataset=None))  # no example key: added
        b.write_run(_run("b6", example_id="1", status="error"))  # error for a finished example: not kept
    with TraceStore(tmp_path / "a.db") as a:
        assert a.merge_from(tmp_path / "b.db") == 3
        assert a.merge_from(tmp_path / "b.db") == 0 and a.merge_from(tmp_path / "a.db") == 0
        # One row per question: b's finished run of example 2 replaced a's error run of it.
        assert {r.run_id for r in a.runs(status=None)} == {"a1", "b2", "b3", "b5"}
        assert a.get_run("a1").example_id == "1" and len(a.get_run("b3").calls) == 1
        with pytest.raises(DivconqError, match="no trace store"):
            a.merge_from(tmp_path / "missing.db")


@pytest.mark.parametrize("kind", ["foreign_sqlite", "text", "corrupt", "binary"])
def test_refuses_files_that_are_not_ours_and_leaves_them_alone(tmp_path, kind):
    path = tmp_path / "other.db"
    if kind == "foreign_sqlite":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ann')")
        db.commit()
        db.close()
    elif kind == "text":
        path.write_text("name,age\nann,3\n")
    elif kind == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + bytes(random.Random(0).randrange(256) for _ in range(8000)))
    else:
        path.write_bytes(b"\x00\x01\x02 not sqlite" * 100)
    before = path.read_bytes()
    with pytest.raises(DivconqError) as info:
        TraceStore(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "new file" in message
    assert path.read_bytes() == before


def test_refuses_other_schema_versions_and_formats(tmp_path):
    path = tmp_path / "t.db"
    TraceStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.commit()
    with pytest.raises(DivconqError, match="schema version '2'"):
        TraceStore(path)
    db.execute("UPDATE meta SET value = 'something-else' WHERE key = 'format'")
    db.commit()
    db.close()
    with pytest.raises(DivconqError, match="not a divconq trace store"):
        TraceStore(path)
    with pytest.raises(DivconqError, match="no trace store"):
        TraceStore(tmp_path / "nope.db", readonly=True)


_CRASH_SCRIPT = """
import sys, time
from typing import Any
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from divconq.distill import TraceRecorder, TraceStore
from divconq.graph import build_graph

class Model(BaseChatModel):
    def _generate(self, messages, stop=None, run_manager=None, **kw: Any) -> ChatResult:
        if "BLOCK" in messages[-1].content:
            print("BLOCKED", flush=True)
            time.sleep(120)
        return ChatResult(generations=[ChatGeneration(message=AIMessage("1. Sub?\\nThe answer is: 1"))])
    @property
    def _llm_type(self): return "m"

store = TraceStore(sys.argv[1])
graph = build_graph(Model(), Model()).compile()
rec = TraceRecorder(store)
for i, q in enumerate(["q0?", "q1?", "q2?", "BLOCK q3?"]):
    graph.invoke({"question": q}, config={"callbacks": [rec], "metadata": {"dataset": "d", "example_id": str(i)}})
    print("DONE", i, flush=True)
"""

_HAMMER_SCRIPT = """
import sys
from divconq.distill.traces import TraceCall, TraceRun, TraceStore
store = TraceStore(sys.argv[1])
i = 0
while True:
    calls = [TraceCall(call_id=f"{i}-{k}", role="solver", messages=[{"role": "user", "content": "x" * 5000}], seq=k)
             for k in range(5)]
    store.write_run(TraceRun(run_id=str(i), question="q" * 5000, dataset="d", example_id=str(i), calls=calls))
    print("DONE", i, flush=True)
    i += 1
"""


def _run_and_kill(tmp_path: Path, script: str, until: str) -> list[str]:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.Popen([sys.executable, str(path), str(tmp_path / "traces.db")], stdout=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the collector exited early (rc {proc.poll()}) after {lines}"
            lines.append(line.strip())
            if line.strip() == until:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return lines


def test_killed_collection_keeps_exactly_the_finished_runs(tmp_path):
    lines = _run_and_kill(tmp_path, _CRASH_SCRIPT, "BLOCKED")
    assert lines == ["DONE 0", "DONE 1", "DONE 2", "BLOCKED"]
    db = sqlite3.connect(tmp_path / "traces.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with TraceStore(tmp_path / "traces.db") as s:
        assert s.count() == 3 and s.done_example_ids("d") == {"0", "1", "2"}
        assert all(len(r.calls) == 2 for r in s.runs())


def test_kill_during_writes_leaves_only_whole_runs(tmp_path):
    lines = _run_and_kill(tmp_path, _HAMMER_SCRIPT, "DONE 30")
    db = sqlite3.connect(tmp_path / "traces.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with TraceStore(tmp_path / "traces.db") as s:
        assert s.count() >= len(lines) - 1 >= 30  # every reported run is there
        assert all(len(r.calls) == 5 for r in s.runs())  # and no run is partial


def test_secrets_are_never_written(tmp_path):
    path = tmp_path / "t.db"
    q = f"Use key {SECRET_KEY} to answer: what is 1+1?"
    with TraceStore(path) as s:
        graph = build_graph(fake("1. What is 1?"), fake("The answer is: 2"))
        metadata = {
            "api_key": "plain-secret-value-1",
            "nested": {"accessToken": "plain-secret-value-2", "max_tokens": 5},
            "note": "password=hunter2hunter2",
            "hf": "hf_abcdefghijklmnopqrstuvwxyz123",
        }
        run_once(graph, s, {"question": q}, metadata)
        (run,) = list(s.runs())
        assert "[REDACTED]" in run.question and "[REDACTED]" in run.calls[0].messages[-1]["content"]
        assert run.metadata["nested"] == {"max_tokens": 5} and "api_key" not in run.metadata
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("t.db"))
    for secret in (SECRET_KEY, "plain-secret-value-1", "plain-secret-value-2", "hunter2hunter2", "hf_abcdefghij"):
        assert secret.encode() not in raw


def test_scrub_helpers():
    assert scrub_text("Authorization: Bearer abc.def-ghi_jkl") == "Authorization: [REDACTED]"
    assert scrub_text("header 'Bearer abcdefghijklmnop'") == "header '[REDACTED]'"
    assert scrub_text(f"key={SECRET_KEY}") == "key=[REDACTED]"
    assert scrub_text("api_key: 12345678") == "api_key: [REDACTED]"
    assert scrub_text("Authorization: Token abcdef123") == "Authorization: [REDACTED]"
    assert scrub_text('{"password": "hunter22"}') == '{"password": "[REDACTED]"}'
    kept = "scikit-learn sk-learn-is-a-python-library task-decomposition tokens: 12. The secret: Alice hid coins"
    assert scrub_text(kept) == kept
    assert scrub_metadata(
        {
            "OPENAI_API_KEY": "x",
            "Authorization": "y",
            "client_secret": "z",
            "hf_token": "t",
            "tokenizer": "bpe",
            "input_tokens": 3,
            "list": [{"password": 1, "ok": SECRET_KEY}],
        }
    ) == {"tokenizer": "bpe", "input_tokens": 3, "list": [{"ok": "[REDACTED]"}]}


# --------------------------------------------------------------------------- LangSmith import


def _langsmith_lines(root: Any) -> list[str]:
    """Serialise a traced run tree the way ``Client.list_runs`` records come back."""
    lines: list[str] = []

    def walk(r: Any) -> None:
        as_json = lambda value: json.loads(json.dumps(value, default=repr))  # noqa: E731 - as the client sends it
        record = Run(
            id=r.id,
            trace_id=r.trace_id,
            parent_run_id=r.parent_run_id,
            name=r.name,
            run_type="llm" if r.run_type == "chat_model" else r.run_type,  # what LangChainTracer posts
            start_time=r.start_time,
            end_time=r.end_time,
            inputs=as_json(r.inputs),
            outputs=as_json(r.outputs),
            error=r.error,
            extra=as_json(r.extra),
            tags=r.tags,
            dotted_order=r.dotted_order,
            status="error" if r.error else "success",
        )
        # Both ways people save them: Run.model_dump_json(), or json.dumps(run.dict(), default=str).
        dumped = record.model_dump_json() if len(lines) % 2 else json.dumps(record.model_dump(), default=str)
        lines.append(dumped)
        for child in r.child_runs:
            walk(child)

    walk(root)
    return lines


def test_langsmith_export_imports_like_the_recorder_records(tmp_path):
    q = "What is a plus b?"
    dec = KeyedModel(replies={q: "1. What is a?\n2. What is b?"})
    sol = KeyedModel(
        replies={q: "The answer is: 3", "What is a?": "The answer is: 1", "What is b?": "The answer is: 2"},
        delays={"What is a?": 0.05},
    )
    graph = build_graph(dec, sol, solve="parallel").compile()
    collector = RunCollectorCallbackHandler(_schema_format="original+chat")  # chat messages, as LangChainTracer sends
    with TraceStore(tmp_path / "rec.db") as recorded_store:
        graph.invoke(
            {"question": q},
            config={
                "callbacks": [TraceRecorder(recorded_store), collector],
                "metadata": {"gold": ["3"], "example_id": "e1", "dataset": "toy"},
            },
        )
        (recorded,) = list(recorded_store.runs())
    lines = _langsmith_lines(collector.traced_runs[0])
    random.Random(1).shuffle(lines)  # an export is in no particular order
    export = tmp_path / "runs.jsonl"
    export.write_text("\n".join(lines) + "\n")

    with TraceStore(tmp_path / "imported.db") as s:
        assert import_langsmith_runs(export, s) == 1
        assert import_langsmith_runs(export, s) == 0  # idempotent
        (run,) = list(s.runs())
    assert run.source == "langsmith" and run.run_id == recorded.run_id
    for name in (
        "question",
        "answer",
        "route",
        "subquestions",
        "sub_answers",
        "decomposition",
        "solution",
        "gold",
        "correct",
        "dataset",
        "example_id",
        "status",
    ):
        assert getattr(run, name) == getattr(recorded, name), name
    simplify = lambda c: (
        c.call_id,
        c.seq,
        c.role,
        c.node,
        c.model,
        c.messages,
        c.output,
        c.input_tokens,
        c.output_tokens,
    )  # noqa: E731
    assert [simplify(c) for c in run.calls] == [simplify(c) for c in recorded.calls]
    assert run.calls[1].messages[-1]["content"].endswith("What is a?")


def test_langsmith_plain_messages_tokens_and_errors(tmp_path):
    t0 = "2025-01-01T00:00:00+00:00"
    root, child, root2 = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    records = [
        {
            "id": root,
            "trace_id": root,
            "parent_run_id": None,
            "run_type": "chain",
            "name": "LangGraph",
            "start_time": t0,
            "end_time": "2025-01-01T00:00:02+00:00",
            "inputs": {"question": "Capital of France?"},
            "outputs": {"answer": "Paris"},
            "extra": {"metadata": {"gold": "paris", "example_id": 7, "dataset": "geo"}},
        },
        {
            "id": child,
            "trace_id": root,
            "parent_run_id": root,
            "run_type": "llm",
            "name": "ChatOpenAI",
            "start_time": t0,
            "end_time": "2025-01-01T00:00:01.5+00:00",
            "tags": ["divconq:decomposer"],
            "prompt_tokens": 11,
            "completion_tokens": 3,
            "inputs": {
                "messages": [[{"role": "system", "content": "Be brief."}, {"type": "human", "content": "Capital?"}]]
            },
            "outputs": {
                "generations": [
                    [
                        {
                            "text": "",
                            "message": {
                                "lc": 1,
                                "type": "constructor",
                                "id": ["langchain", "schema", "messages", "AIMessage"],
                                "kwargs": {"content": "Paris."},
                            },
                        }
                    ]
                ]
            },
            "extra": {"metadata": {"langgraph_node": "solve", **NODE_METADATA}, "invocation_params": {"model_name": "gpt-x"}},
        },
        {
            "id": root2,
            "trace_id": root2,
            "run_type": "chain",
            "name": "LangGraph",
            "start_time": t0,
            "inputs": {"question": "Broken?"},
            "extra": {"metadata": NODE_METADATA},  # marked by its run config: the root is the graph run
            "error": "ValueError('bad')\n\nTraceback ...",
        },
    ]
    export = tmp_path / "runs.jsonl"
    export.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    with TraceStore(tmp_path / "t.db") as s:
        assert import_langsmith_runs(export, s) == 2
        (ok,) = list(s.runs())
        (bad,) = list(s.runs(status="error"))
    assert (ok.question, ok.answer, ok.correct, ok.gold, ok.example_id, ok.seconds) == (
        "Capital of France?",
        "Paris",
        True,
        ["paris"],
        "7",
        2.0,
    )
    (call,) = ok.calls
    assert call.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}]
    assert (call.role, call.node, call.model, call.output, call.input_tokens, call.output_tokens, call.seconds) == (
        "decomposer",
        "solve",
        "gpt-x",
        "Paris.",
        11,
        3,
        1.5,
    )
    assert (bad.question, bad.error, bad.correct) == ("Broken?", "ValueError('bad')", None)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", r"runs.jsonl:2: invalid JSON"),
        ('["a list"]', r"runs.jsonl:2: not a LangSmith run \(no 'id' and 'run_type'; got a JSON list\)"),
        (
            '{"id": "5b7c1d2e-0000-4000-8000-000000000000", "run_type": "llm", "name": "n"}',
            r"runs.jsonl:2: field 'start_time'",
        ),
    ],
)
def test_langsmith_malformed_line_names_the_line(tmp_path, line, match):
    good = json.dumps(
        {
            "id": str(uuid.uuid4()),
            "run_type": "chain",
            "name": "g",
            "start_time": "2025-01-01T00:00:00Z",
            "inputs": {"question": "q"},
            "outputs": {"answer": "a"},
        }
    )
    export = tmp_path / "runs.jsonl"
    export.write_text(good + "\n" + line + "\n")
    with TraceStore(tmp_path / "t.db") as s:
        with pytest.raises(DivconqError, match=match):
            import_langsmith_runs(export, s)
        assert s.count() == 0


def test_langsmith_trace_without_its_graph_run_is_refused(tmp_path):
    missing = str(uuid.uuid4())
    orphan = {
        "id": str(uuid.uuid4()),
        "trace_id": str(uuid.uuid4()),
        "parent_run_id": missing,
        "run_type": "llm",
        "name": "m",
        "start_time": "2025-01-01T00:00:00Z",
        "extra": {"metadata": NODE_METADATA},
    }
    export = tmp_path / "runs.jsonl"
    export.write_text(json.dumps(orphan) + "\n")
    with TraceStore(tmp_path / "t.db") as s, pytest.raises(DivconqError, match=f"lacks run {missing}.*export whole traces"):
        import_langsmith_runs(export, s)


# --------------------------------------------------------------------------- display


def test_format_run_tree(store):
    q = "What is a plus b?"
    dec = fake(ai("1. What is a?\n2. What is b?", (20, 8)))
    sol = fake(ai("1. a is 1\n2. b is 2\nThe answer is: 3", (30, 12)))
    run_once(build_graph(dec, sol), store, {"question": q}, {"gold": ["3"], "example_id": "e1", "dataset": "toy"})
    (run,) = list(store.runs())
    tree = format_run_tree(run)
    lines = tree.splitlines()
    assert lines[0].startswith(f"run {run.run_id[:8]} [ok] toy/e1 route=static")
    assert lines[1] == f"Q: {q}"
    assert lines[2:7] == [
        "├─ 1. What is a?",
        "│     -> a is 1",
        "├─ 2. What is b?",
        "│     -> b is 2 The answer is: 3",
        "└─ answer: 3 (correct)  gold: 3",
    ]
    assert any(line.startswith("  #0 decomposer decompose: 20 in / 8 out tok") for line in lines)
    assert any(line.startswith("  #1 solver solve: 30 in / 12 out tok") for line in lines)
    assert any(line.startswith("  decomposer: 1 call(s), 20 in / 8 out tok") for line in lines)
    error = TraceRun(run_id="r", question="q?", status="error", error="Boom: x")
    assert format_run_tree(error).splitlines()[-1] == "└─ error: Boom: x"


def test_interrupted_run_is_written_only_when_resumed_to_the_end(store):
    from typing import TypedDict

    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    class State(TypedDict, total=False):
        question: str
        answer: str

    builder = StateGraph(State)
    builder.add_node("ask", lambda state: {"answer": interrupt("approve?")}, metadata=NODE_METADATA)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    graph = builder.compile(checkpointer=InMemorySaver())
    rec = TraceRecorder(store)
    config = {"callbacks": [rec], "configurable": {"thread_id": "t1"}, "metadata": {"gold": "yes"}}
    assert "__interrupt__" in graph.invoke({"question": "Proceed?"}, config)
    assert store.count() == 0 and not rec._open
    graph.invoke(Command(resume="yes"), config)
    (run,) = list(store.runs())
    assert (run.question, run.answer, run.correct) == ("Proceed?", "yes", True)


@pytest.mark.parametrize("module", ["traces", "records", "recorder", "langsmith_runs"])
def test_each_trace_module_imports_first_and_the_store_needs_neither_writer(module):
    """No import cycle to break lazily: the store's module loads without the recorder or the importer."""
    probe = (f"import sys, divconq.distill.{module}; "
             "print(sorted(m for m in ('divconq.distill.recorder', 'divconq.distill.langsmith_runs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert (out == "[]\n") == (module in ("traces", "records"))
