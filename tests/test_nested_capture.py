"""Distilling from real traffic: a divconq graph run inside an agent (as_tool) or a parent
graph is recorded as its own run, by the TraceRecorder and by the LangSmith import alike.

The agent is a real ``langchain.agents.create_agent`` over a fake tool-calling model; the
LangSmith records are what the real ``langsmith`` client would send, captured at its HTTP
session (no network), turned into both export shapes with the SDK's own record types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from fakes import ScriptedChatModel, ToolCallingChatModel
from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tracers.langchain import LangChainTracer
from langgraph.graph import END, START, StateGraph
from requests.adapters import BaseAdapter
from typing_extensions import TypedDict

from divconq.cli import main
from divconq.distill.sft import build_sft
from divconq.distill import TraceRecorder, TraceRun, TraceStore, import_langsmith_runs
from divconq.errors import DivconqError
from divconq.graph import as_tool, build_graph

QUESTIONS = {
    "How many legs do 3 cats have?": ("1. How many legs does one cat have?\n2. What is 3 times that?", "12"),
    "How many wheels do 2 bikes have?": ("1. How many wheels does one bike have?\n2. What is 2 times that?", "4"),
}
GOLD = {"gold": ["12"], "dataset": "traffic"}


def _reply(table: dict[str, str]) -> Any:
    def respond(messages: list[BaseMessage]) -> str:
        text = str(messages[-1].content)
        return next(reply for key, reply in table.items() if key in text)

    return respond


def divconq_graph():
    decomposer = ScriptedChatModel(respond=_reply({q: d for q, (d, _) in QUESTIONS.items()}))
    solver = ScriptedChatModel(respond=_reply({q: f"The answer is: {a}" for q, (_, a) in QUESTIONS.items()}))
    return build_graph(decomposer, solver).compile()


def agent_calling_twice():
    """An agent whose model asks both questions in one turn: two tool calls, two graph runs."""
    model = ToolCallingChatModel(tool_args=lambda messages: [{"question": q} for q in QUESTIONS])
    return create_agent(model, [as_tool(divconq_graph())])


def agent_without_the_graph():
    return create_agent(GenericFakeChatModel(messages=iter([AIMessage("I know this one: 12.")])), [])


class ParentState(TypedDict, total=False):
    question: str
    note: str
    answer: str
    subquestions: list[str]


def parent_graph():
    """A parent StateGraph: a node with a model of its own, then the divconq graph as a subgraph node."""
    outside = ScriptedChatModel(respond=lambda messages: "a note from a model outside divconq")
    builder = StateGraph(ParentState)
    builder.add_node("note", lambda state, config: {"note": outside.invoke(state["question"], config).content})
    builder.add_node("divconq", divconq_graph())
    builder.add_edge(START, "note")
    builder.add_edge("note", "divconq")
    builder.add_edge("divconq", END)
    return builder.compile()


def check_divconq_run(run: TraceRun, question: str) -> None:
    decomposition, answer = QUESTIONS[question]
    assert run.question == question and run.answer == answer and run.route == "static"
    assert run.subquestions == [line[3:] for line in decomposition.splitlines()]
    assert run.decomposition == decomposition
    # Its own two calls only: no agent model call, no call of the other question's run.
    assert [(c.role, c.node) for c in run.calls] == [("decomposer", "decompose"), ("solver", "solve")]
    assert all(question in c.messages[-1]["content"] for c in run.calls)
    assert run.calls[0].output == decomposition


# --------------------------------------------------------------------------- the recorder


def test_two_tool_calls_in_one_agent_turn_are_two_divconq_runs(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        recorder = TraceRecorder(store)
        out = agent_calling_twice().invoke(
            {"messages": [HumanMessage("Two questions, please.")]}, {"callbacks": [recorder], "metadata": GOLD}
        )
        runs = {r.question: r for r in store.runs()}
        assert not recorder._open and not recorder._seen
    assert out["messages"][-1].content.startswith("The tool found: Answer: ")
    assert sorted(runs) == sorted(QUESTIONS)
    for question, run in runs.items():
        check_divconq_run(run, question)
        assert run.gold == ["12"] and run.dataset == "traffic"
    assert runs["How many legs do 3 cats have?"].correct is True
    assert runs["How many wheels do 2 bikes have?"].correct is False  # scored against the agent's gold
    # What the issue found broken: sft finds the decomposer output of both runs.
    summary = build_sft(runs.values(), out_dir=tmp_path / "sft", val_fraction=0.0)
    assert summary.kept == 2


def test_divconq_graph_as_a_subgraph_node_is_recorded_without_the_parents_model(tmp_path):
    question = "How many legs do 3 cats have?"
    with TraceStore(tmp_path / "t.db") as store:
        recorder = TraceRecorder(store)
        out = parent_graph().invoke({"question": question}, {"callbacks": [recorder], "metadata": GOLD})
        (run,) = list(store.runs())
    assert out["note"] == "a note from a model outside divconq" and out["answer"] == "12"
    check_divconq_run(run, question)
    assert run.correct is True and "langgraph_node" not in run.metadata


def test_an_agent_trace_without_the_graph_records_nothing(tmp_path):
    with TraceStore(tmp_path / "t.db") as store:
        recorder = TraceRecorder(store)
        agent_without_the_graph().invoke({"messages": [HumanMessage("Legs of 3 cats?")]}, {"callbacks": [recorder]})
        assert store.count(status=None) == 0 and not recorder._open and not recorder._seen


# --------------------------------------------------------------------------- LangSmith


class _KeepPosts(BaseAdapter):
    """An HTTP adapter for the langsmith client's session: keeps each request, answers 200."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, bytes]] = []

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        body = request.body or b""
        self.sent.append((request.method, request.url, body if isinstance(body, bytes) else body.encode()))
        response = requests.Response()
        response.status_code, response._content, response.url, response.request = 200, b"{}", request.url, request
        return response

    def close(self) -> None:
        pass


def traced(run: Any) -> list[dict[str, Any]]:
    """Run ``run(callbacks)`` under a real LangChainTracer; the runs as LangSmith stores them."""
    from langsmith import Client

    adapter = _KeepPosts()
    client = Client(api_url="http://langsmith.invalid", api_key="ls-test", auto_batch_tracing=False)
    client.session.mount("http://", adapter)
    tracer = LangChainTracer(client=client, project_name="traffic")
    run([tracer])
    tracer.wait_for_futures()
    stored: dict[str, dict[str, Any]] = {}
    for method, _, body in adapter.sent:  # POST creates a run, PATCH completes it
        record = json.loads(body)
        into = stored.setdefault(record["id"], {})
        into.update({k: v for k, v in record.items() if v is not None or k not in into})
    assert stored and all(method in ("POST", "PATCH") for method, _, _ in adapter.sent)
    return list(stored.values())


def as_list_runs_lines(stored: list[dict[str, Any]]) -> list[str]:
    """What ``client.list_runs()`` gives, saved with ``Run.model_dump_json()``."""
    from langsmith.schemas import Run

    fields = set(Run.model_fields)
    return [Run(**{k: v for k, v in r.items() if k in fields}).model_dump_json() for r in stored]


def as_runs_query_lines(stored: list[dict[str, Any]]) -> list[str]:
    """What ``client.runs.query()`` gives: the server's view of each run (``langsmith.types.run.Run``)."""
    from langsmith.types.run import Run

    lines = []
    for r in stored:
        ancestors = [part[-36:] for part in r["dotted_order"].split(".")][:-1]  # root first, as the API lists them
        record = Run(
            id=r["id"], trace_id=r["trace_id"], name=r["name"], run_type=r["run_type"].upper(),
            start_time=r["start_time"], end_time=r.get("end_time"), inputs=r.get("inputs"), outputs=r.get("outputs"),
            error=r.get("error"), metadata=(r.get("extra") or {}).get("metadata"), tags=r.get("tags"),
            parent_run_ids=ancestors, is_root=not ancestors, dotted_order=r["dotted_order"],
            status="ERROR" if r.get("error") else "SUCCESS",
        )
        lines.append(record.model_dump_json(exclude_none=True))
    return lines


SHAPES = {"runs.query": as_runs_query_lines, "list_runs": as_list_runs_lines}


@pytest.fixture(scope="module")
def agent_trace() -> tuple[list[dict[str, Any]], dict[str, TraceRun]]:
    """One agent trace, recorded by TraceRecorder and traced to 'LangSmith' at once."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, TraceStore(Path(tmp) / "rec.db") as store:
        recorder = TraceRecorder(store)
        stored = traced(lambda tracers: agent_calling_twice().invoke(
            {"messages": [HumanMessage("Two questions, please.")]},
            {"callbacks": [recorder, *tracers], "metadata": GOLD},
        ))
        return stored, {r.question: r for r in store.runs()}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(reversed(lines)) + "\n")  # an export is in no particular order
    return path


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_langsmith_agent_trace_imports_each_divconq_run_like_the_recorder(tmp_path, agent_trace, shape):
    stored, recorded = agent_trace
    export = _write(tmp_path / "runs.jsonl", SHAPES[shape](stored))
    with TraceStore(tmp_path / "imported.db") as store:
        assert import_langsmith_runs(export, store) == 2
        assert import_langsmith_runs(export, store) == 0  # idempotent
        imported = {r.question: r for r in store.runs()}
    assert sorted(imported) == sorted(QUESTIONS)
    for question, run in imported.items():
        check_divconq_run(run, question)
        mine = recorded[question]
        assert run.source == "langsmith" and run.run_id == mine.run_id
        for name in ("answer", "route", "subquestions", "sub_answers", "solution", "gold", "correct", "dataset"):
            assert getattr(run, name) == getattr(mine, name), name
        same = lambda c: (c.call_id, c.role, c.node, c.messages, c.output, c.input_tokens, c.output_tokens)  # noqa: E731
        assert [same(c) for c in run.calls] == [same(c) for c in mine.calls]


def test_langsmith_subgraph_trace_imports_the_divconq_run(tmp_path):
    question = "How many wheels do 2 bikes have?"
    stored = traced(lambda tracers: parent_graph().invoke({"question": question}, {"callbacks": tracers}))
    export = _write(tmp_path / "runs.jsonl", as_runs_query_lines(stored))
    with TraceStore(tmp_path / "t.db") as store:
        assert import_langsmith_runs(export, store) == 1
        (run,) = list(store.runs())
    check_divconq_run(run, question)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_langsmith_agent_trace_without_the_graph_is_one_line(tmp_path, shape, capsys):
    stored = traced(lambda tracers: agent_without_the_graph().invoke(
        {"messages": [HumanMessage("Legs of 3 cats?")]}, {"callbacks": tracers}
    ))
    export = _write(tmp_path / "runs.jsonl", SHAPES[shape](stored))
    with TraceStore(tmp_path / "t.db") as store, pytest.raises(DivconqError, match="no divconq graph ran in this trace"):
        import_langsmith_runs(export, store)
    assert main(["trace", "import", str(tmp_path / "cli.db"), str(export)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no divconq graph ran in this trace" in err


def test_cli_imports_an_agent_trace(tmp_path, agent_trace, capsys):
    export = _write(tmp_path / "runs.jsonl", as_runs_query_lines(agent_trace[0]))
    assert main(["trace", "import", str(tmp_path / "t.db"), str(export)]) == 0
    assert "imported 2 runs" in capsys.readouterr().err
    with TraceStore(tmp_path / "t.db", readonly=True) as store:
        assert sorted(r.question for r in store.runs()) == sorted(QUESTIONS)


def test_a_file_of_another_shape_names_its_first_bad_line_and_the_fields(tmp_path, agent_trace, capsys):
    good = as_runs_query_lines(agent_trace[0])[:2]
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]})  # a chat-format SFT line, not a run
    export = tmp_path / "runs.jsonl"
    export.write_text("\n".join([*good, chat, chat]) + "\n")
    assert main(["trace", "import", str(tmp_path / "t.db"), str(export)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"runs.jsonl:3: not a LangSmith run" in line
    assert "parent_run_ids" in line and "parent_run_id," in line and "runs.query()" in line and "list_runs()" in line
