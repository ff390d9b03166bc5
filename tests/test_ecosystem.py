"""The graph in the LangChain ecosystem: as an agent tool, as a subgraph, in Studio
(langgraph.json), streamed, async and batched, checkpointed, paused for review,
retried and cached. Offline and fast: fake chat models drive the real graph."""

import asyncio
import contextlib
import importlib.util
import json
import re
import time
from pathlib import Path

import pytest
from fakes import ScriptedChatModel, ToolCallingChatModel, last_user_text, scripted
from langgraph_json import load_langgraph_json_graph
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.cache.memory import InMemoryCache
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from divconq.errors import DivconqError
from divconq.graph import Context, build_graph
from divconq.graph.tools import DivideAndConquerInput, as_tool, format_result

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "Natalia sold clips to 48 friends in April, and half as many in May. How many clips did she sell?"
DECOMPOSITION = "1. How many clips did Natalia sell in May?\n2. How many clips did she sell in April and May?"
SUBQUESTIONS = ["How many clips did Natalia sell in May?", "How many clips did she sell in April and May?"]
JOINT = "1. She sold 48 / 2 = 24 in May.\n2. 48 + 24 = 72.\n\nThe answer is: 72"


def load_example(name):
    """examples/ is a folder of scripts: load one by path, as `python examples/x.py` would."""
    spec = importlib.util.spec_from_file_location(f"divconq_example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- question-aware fakes
# Every question names an item number; every model reply is derived from the item number
# in its own prompt, so an answer that lands on the wrong question is caught.


def item_question(n):
    return f"A crate holds item {n} and seven copies of it. How many things are in crate {n}?"


def item_answer(n):
    return str(n * 8)


def _item(text):
    found = re.search(r"(?:item|crate) (\d+)", text)
    return int(found.group(1)) if found else None


def item_decomposer(delay=0.0):
    def respond(messages):
        text = last_user_text(messages)
        n = _item(text)
        if "Answered so far" in text:  # dynamic: one sub-question, then done
            return "No more sub-questions" if "Q1:" in text else f"How many copies of item {n} are there?"
        return f"1. How many copies of item {n} are there?\n2. How many things are in crate {n} in total?"

    return ScriptedChatModel(respond=respond, delay=(lambda m: delay) if delay else None)


def item_solver(delay=0.0):
    return ScriptedChatModel(
        respond=lambda messages: f"The answer is: {item_answer(_item(last_user_text(messages)))}",
        delay=(lambda m: delay) if delay else None,
    )


ROUTES = {
    "static-joint": {"mode": "static", "solve": "joint"},
    "static-sequential": {"mode": "static", "solve": "sequential"},
    "static-parallel": {"mode": "static", "solve": "parallel"},
    "dynamic": {"mode": "dynamic"},
    "single": {"mode": "single"},
}
EXPECTED_ROUTE = {"static-joint": "static", "static-sequential": "static", "static-parallel": "static",
                  "dynamic": "dynamic", "single": "single"}


def check_item_output(out, n, route):
    assert out["question"] == item_question(n)
    assert out["answer"] == item_answer(n)
    assert out["route"] == EXPECTED_ROUTE[route]
    assert all(f"item {n}" in q or f"crate {n}" in q for q in out["subquestions"])
    if route != "single":
        assert out["subquestions"]


# --------------------------------------------------------------------------- the tool and the agent


def test_tool_name_description_and_argument_schema():
    tool = as_tool(build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile())
    assert isinstance(tool, BaseTool)
    assert tool.name == "divide_and_conquer"
    assert "sub-questions" in tool.description and "question" in tool.description
    assert tool.args_schema is DivideAndConquerInput
    schema = tool.tool_call_schema.model_json_schema()
    assert schema["required"] == ["question"]
    assert schema["properties"]["question"]["type"] == "string"
    assert {"type": "null"} in schema["properties"]["context"]["anyOf"]
    graph = build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile()
    custom = as_tool(graph, name="solve_math", description="x")
    assert custom.name == "solve_math" and custom.description == "x"


def test_tool_returns_the_answer_first_then_the_subquestions():
    tool = as_tool(build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile())
    text = tool.invoke({"question": QUESTION})
    lines = text.splitlines()
    assert lines[0] == "Answer: 72"
    assert "1. How many clips did Natalia sell in May? -> She sold 48 / 2 = 24 in May." in lines
    # As a tool call, the message also carries the full output state as its artifact.
    message = tool.invoke({"type": "tool_call", "id": "c1", "name": tool.name, "args": {"question": QUESTION}})
    assert isinstance(message, ToolMessage) and message.content == text
    assert message.artifact["subquestions"] == SUBQUESTIONS and message.artifact["answer"] == "72"


def test_tool_passes_context_and_reports_a_direct_answer():
    seen = []
    solver = ScriptedChatModel(respond=lambda m: seen.append(last_user_text(m)) or "The answer is: 5")
    tool = as_tool(build_graph(scripted("No decomposition"), solver).compile())
    text = tool.invoke({"question": "What is 2 + 3?", "context": "Counting apples."})
    assert text.splitlines()[0] == "Answer: 5"
    assert "without sub-questions" in text and "No decomposition" in text
    assert "Context: Counting apples." in seen[0]


def test_format_result_falls_back_to_solver_text_without_an_answer():
    text = format_result({"answer": "", "solution": "I could not decide.", "subquestions": [], "route": "single"})
    assert text.startswith("Answer: (the solver gave no final answer") and "I could not decide." in text


def test_bad_tool_input_comes_back_as_an_error_message_not_an_exception():
    tool = as_tool(build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile())
    message = tool.invoke({"type": "tool_call", "id": "c1", "name": tool.name, "args": {"question": "  "}})
    assert message.status == "error" and "question is empty" in message.content


def test_as_tool_wants_the_compiled_graph():
    with pytest.raises(DivconqError, match=r"compile\(\)"):
        as_tool(build_graph(scripted(DECOMPOSITION), scripted(JOINT)))


def test_agent_calls_the_real_graph_through_the_tool():
    decomposer = scripted(DECOMPOSITION)
    graph = build_graph(decomposer, scripted(JOINT)).compile()
    model = ToolCallingChatModel()
    agent = create_agent(model, tools=[as_tool(graph)])
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    messages = result["messages"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[1].tool_calls[0]["name"] == "divide_and_conquer"
    assert messages[1].tool_calls[0]["args"] == {"question": QUESTION}
    assert messages[2].artifact["subquestions"] == SUBQUESTIONS  # the real graph ran
    assert messages[2].artifact["usage"]["decomposer"]["calls"] == 1
    assert "72" in messages[-1].content and messages[-1].content.startswith("The tool found: Answer: 72")
    # The agent's model was shown the tool's name, description and argument schema.
    bound = model.bound[0]["function"]
    assert bound["name"] == "divide_and_conquer" and "sub-questions" in bound["description"]
    assert set(bound["parameters"]["properties"]) == {"question", "context"}


def test_agent_runs_the_tool_async_with_the_context_argument():
    seen = []
    solver = ScriptedChatModel(respond=lambda m: seen.append(last_user_text(m)) or JOINT)
    graph = build_graph(scripted(DECOMPOSITION), solver).compile()
    model = ToolCallingChatModel(tool_args=lambda m: {"question": QUESTION, "context": "A shop ledger."})
    agent = create_agent(model, tools=[as_tool(graph)])
    result = asyncio.run(agent.ainvoke({"messages": [HumanMessage(QUESTION)]}))
    assert "Answer: 72" in result["messages"][-1].content
    assert "Context: A shop ledger." in seen[0]


def test_agent_with_a_checkpointer_answers_two_turns_on_one_thread():
    graph = build_graph(item_decomposer(), item_solver()).compile()
    agent = create_agent(ToolCallingChatModel(), tools=[as_tool(graph)], checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "chat"}}
    for n in (1, 2):
        result = agent.invoke({"messages": [HumanMessage(item_question(n))]}, config)
        assert result["messages"][-1].content == f"The tool found: Answer: {item_answer(n)}"
        assert result["messages"][-2].artifact["question"] == item_question(n)
    assert len(result["messages"]) == 8  # both turns are kept on the thread


# --------------------------------------------------------------------------- subgraph example


def test_subgraph_example_maps_state_in_and_out():
    example = load_example("subgraph")
    seen = []
    solver = ScriptedChatModel(respond=lambda m: seen.append(last_user_text(m)) or JOINT)
    graph = example.build_report_graph(scripted(DECOMPOSITION), solver).compile()
    out = graph.invoke({"user_request": QUESTION + "\n\nContext: Natalia runs a small shop."})
    assert out["question"] == QUESTION and out["notes"] == "Natalia runs a small shop."  # the user's own state
    assert "subquestions" not in out and "usage" not in out  # divconq's state stays inside its node
    assert "user_request" in graph.get_input_jsonschema()["properties"]  # Studio can draw its input form
    report = out["final_report"]
    assert "Answer: 72" in report
    assert "How many clips did Natalia sell in May? -> She sold 48 / 2 = 24 in May." in report
    assert "Context: Natalia runs a small shop." in seen[0]  # notes mapped to the divconq context


def test_subgraph_example_streams_the_inner_steps_and_draws_them():
    example = load_example("subgraph")
    graph = example.build_report_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile()
    seen = [(ns, node) for ns, update in graph.stream({"user_request": QUESTION}, stream_mode="updates", subgraphs=True)
            for node in update]
    assert [node for ns, node in seen if not ns] == ["prepare", "divide_and_conquer", "report"]
    inner = [node for ns, node in seen if ns and ns[0].startswith("divide_and_conquer:")]
    assert inner == ["decompose", "solve"]
    mermaid = graph.get_graph(xray=True).draw_mermaid()
    assert "divide_and_conquer\\3adecompose" in mermaid and "subgraph divide_and_conquer" in mermaid


def test_xray_example_draws_both_graphs_without_models():
    diagrams = load_example("xray").diagrams()
    assert len(diagrams) == 2
    ours, report = diagrams.values()
    assert "decompose" in ours and "solve_final" in ours
    assert "divide_and_conquer\\3asolve_one" in report


def test_agent_example_builds_an_agent_around_the_tool():
    example = load_example("agent_tool")
    agent = example.build_agent(ToolCallingChatModel(), scripted(DECOMPOSITION), scripted(JOINT))
    result = agent.invoke({"messages": [HumanMessage(QUESTION)]})
    assert "Answer: 72" in result["messages"][-1].content
    # The script's offline stand-in agent model delegates to the tool the same way.
    agent = example.build_agent(example.DelegatingChatModel(), scripted(DECOMPOSITION), scripted(JOINT))
    assert agent.invoke({"messages": [HumanMessage(QUESTION)]})["messages"][-1].content == "Answer: 72"


# --------------------------------------------------------------------------- langgraph.json (Studio)


def test_langgraph_json_names_the_studio_factory():
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["dependencies"] == ["."]
    assert config["graphs"]["divconq"] == "./graph/studio.py:make_graph"


@pytest.mark.parametrize("adapter_shipped", [False, True])
def test_langgraph_json_graph_builds_on_the_default_specs(monkeypatch, tmp_path, adapter_shipped):
    import divconq.graph.studio as studio
    import divconq.nodes.models as models

    requested, prompts_seen = [], []

    def fake_load(spec, *, role=None, **kwargs):
        requested.append((spec, role))
        if role == "decomposer":
            return ScriptedChatModel(respond=lambda m: prompts_seen.append(m) or DECOMPOSITION)
        return scripted(JOINT)

    adapter_dir = tmp_path / "default_adapter"
    adapter_dir.mkdir()
    if adapter_shipped:
        (adapter_dir / "adapter_config.json").write_text("{}")
    monkeypatch.setattr(models, "load_chat_model", fake_load)  # no model loads here
    monkeypatch.setattr(models, "DEFAULT_ADAPTER_DIR", adapter_dir)
    studio.studio_graph.cache_clear()
    try:
        graph = load_langgraph_json_graph(ROOT / "langgraph.json")
        assert isinstance(graph, CompiledStateGraph) and graph.name == "divconq"
        assert requested == []  # the factory loads no model: the first run does
        assert {"decompose", "solve", "solve_direct"} <= set(graph.get_graph().nodes)
        assert graph.invoke({"question": QUESTION})["answer"] == "72"
        assert requested == [("default", "decomposer"), ("default", "solver")]
        graph.invoke({"question": QUESTION})
        assert len(requested) == 2  # loaded once
    finally:
        studio.studio_graph.cache_clear()
    # The untrained default decomposer gets the one-shot example; a distilled one does not.
    shown_example = any(isinstance(m, AIMessage) for m in prompts_seen[0])
    assert shown_example is (not adapter_shipped)


def test_studio_factory_reads_settings_through_the_context_class_and_caches(monkeypatch):
    import divconq.graph.studio as studio
    import divconq.nodes.models as models

    requested = []

    def fake_load(spec, *, role=None, **kwargs):
        requested.append((spec, role))
        return scripted(DECOMPOSITION) if role == "decomposer" else scripted(JOINT)

    monkeypatch.setattr(models, "load_chat_model", fake_load)
    studio.studio_graph.cache_clear()
    try:
        config = {"configurable": {"decomposer": "openai:gpt-4o-mini", "solver": "hf:/models/x", "task": "reading"}}
        # The server awaits the factory on its event loop; building runs in a worker thread.
        graph = asyncio.run(studio.make_graph(config))
        assert requested == []
        assert asyncio.run(studio.make_graph(config)) is graph  # called per run: cached
        graph.invoke({"question": QUESTION, "context": "A passage."})
        assert requested == [("openai:gpt-4o-mini", "decomposer"), ("hf:/models/x", "solver")]
        with pytest.raises(DivconqError, match="unknown context task 3: choose one of math, reading, multihop"):
            asyncio.run(studio.make_graph({"configurable": {"task": 3}}))
        reviewed = asyncio.run(studio.make_graph({"configurable": {"review": True}}))
        assert "review" in reviewed.get_graph().nodes and "review" not in graph.get_graph().nodes
        with pytest.raises(DivconqError, match="context review must be true or false"):
            asyncio.run(studio.make_graph({"configurable": {"review": "yes"}}))
        with pytest.raises(DivconqError, match="model spec"):
            asyncio.run(studio.make_graph({"configurable": {"solver": "nonsense"}}))  # checked without loading
    finally:
        studio.studio_graph.cache_clear()


def test_studio_shows_the_run_settings_as_context_fields():
    graph = build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile()
    schema = graph.get_context_jsonschema()
    assert list(schema["properties"]) == ["mode", "solve", "task", "decomposer", "solver", "review", "max_subquestions"]
    mode = schema["properties"]["mode"]
    assert {"enum": ["static", "dynamic", "single", "auto"], "type": "string"} in mode["anyOf"]
    assert "self-ask" in mode["description"]


def test_studio_gets_input_and_output_json_schemas():
    graph = build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile()
    assert list(graph.get_input_jsonschema()["properties"]) == ["question", "context"]
    assert "answer" in graph.get_output_jsonschema()["properties"]


@pytest.mark.default_model
def test_langgraph_json_graph_builds_on_the_real_default_model():
    graph = load_langgraph_json_graph(ROOT / "langgraph.json")
    assert isinstance(graph, CompiledStateGraph)
    assert "decompose" in graph.get_graph().nodes  # built only: no generation here


@pytest.mark.parametrize(
    "entry, match",
    [
        ("./graph/missing.py:make_graph", "does not exist"),
        ("./broken.py:make_graph", r"does not import \(ModuleNotFoundError: No module named 'no_such_module_xyz'\)"),
        ("./graph/studio.py:no_such_graph", "has no attribute 'no_such_graph'"),
        ("./graph/studio.py", "is not of the form"),
        ("no_such_package_xyz.module:graph", "does not import"),
    ],
)
def test_broken_langgraph_json_entry_is_a_one_line_error(tmp_path, entry, match):
    (tmp_path / "broken.py").write_text("import no_such_module_xyz\n")
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "studio.py").write_text((ROOT / "graph" / "studio.py").read_text())
    path = tmp_path / "langgraph.json"
    path.write_text(json.dumps({"dependencies": ["."], "graphs": {"divconq": entry}}))
    with pytest.raises(DivconqError, match=match) as caught:
        load_langgraph_json_graph(path)
    assert "\n" not in str(caught.value)


def test_langgraph_json_file_and_name_errors(tmp_path):
    with pytest.raises(DivconqError, match="does not exist"):
        load_langgraph_json_graph(tmp_path / "langgraph.json")
    (tmp_path / "langgraph.json").write_text("{not json")
    with pytest.raises(DivconqError, match="not readable JSON"):
        load_langgraph_json_graph(tmp_path / "langgraph.json")
    with pytest.raises(DivconqError, match="defines no graph 'other'.*'divconq'"):
        load_langgraph_json_graph(ROOT / "langgraph.json", name="other")


# --------------------------------------------------------------------------- streaming


def test_stream_updates_sends_subquestions_first_then_each_answer_as_it_comes():
    calls = []
    solver = ScriptedChatModel(respond=lambda m: calls.append(1) or f"The answer is: {len(calls)}")
    graph = build_graph(scripted(DECOMPOSITION), solver, solve="sequential").compile()
    received = []
    for update in graph.stream({"question": QUESTION}, stream_mode="updates"):
        (node, values), = update.items()
        received.append((node, values, len(calls)))
    assert [node for node, _, _ in received] == ["decompose", "answer_step", "answer_step", "solve_final"]
    node, values, solver_calls = received[0]
    assert values["subquestions"] == SUBQUESTIONS and solver_calls == 0  # before any solving
    # Each sub-answer arrives on its own, before the next one is asked for.
    assert [(v["sub_answers"], c) for _, v, c in received[1:3]] == [(["1"], 1), (["1", "2"], 2)]
    assert received[3][1]["answer"] == "3"


def test_stream_custom_sends_route_and_subquestion_events():
    graph = build_graph(scripted(DECOMPOSITION), scripted(JOINT)).compile()
    events = list(graph.stream({"question": QUESTION}, stream_mode="custom"))
    assert events == [
        {"event": "route", "mode": "static", "route": "static", "question": QUESTION},
        {"event": "subquestions", "subquestions": SUBQUESTIONS},
    ]
    fallback = build_graph(scripted("No decomposition"), scripted(JOINT)).compile()
    events = list(fallback.stream({"question": QUESTION}, stream_mode="custom"))
    routes = [e for e in events if e["event"] == "route"]
    assert [e["route"] for e in routes] == ["static", "single"] and "No decomposition" in routes[1]["reason"]


def test_stream_messages_yields_solver_tokens_as_the_model_streams():
    text = "She sold 24 in May, so 48 + 24 = 72 in all. The answer is: 72"
    solver = GenericFakeChatModel(messages=iter([text]))  # streams by splitting on whitespace
    graph = build_graph(scripted(DECOMPOSITION), solver).compile()
    chunks = []
    for mode, item in graph.stream({"question": QUESTION}, stream_mode=["messages", "values"]):
        if mode == "messages":
            chunks.append(item)
        else:
            final = item
    solver_chunks = [m for m, meta in chunks if meta["langgraph_node"] == "solve"]
    assert len(solver_chunks) > 10 and all(isinstance(m, AIMessageChunk) for m in solver_chunks)
    assert "".join(m.content for m in solver_chunks) == text
    assert all(meta["divconq_role"] == "solver" for m, meta in chunks if meta["langgraph_node"] == "solve")
    # A model that does not stream still shows up, as one whole message.
    decomposer = [m for m, meta in chunks if meta["langgraph_node"] == "decompose"]
    assert [m.content for m in decomposer] == [DECOMPOSITION]
    assert final["solution"] == text and final["answer"] == "72"


# --------------------------------------------------------------------------- async and batch


@pytest.fixture(scope="module")
def item_graph():
    return build_graph(item_decomposer(), item_solver()).compile()


@pytest.mark.parametrize("route", list(ROUTES))
def test_ainvoke_abatch_and_astream_on_every_route(item_graph, route):
    context = ROUTES[route]  # a dict: LangGraph makes it a Context

    async def main():
        single = await item_graph.ainvoke({"question": item_question(1)}, context=context)
        batch = await item_graph.abatch([{"question": item_question(n)} for n in (2, 3, 4)], context=context)
        nodes, last = [], None
        stream = item_graph.astream({"question": item_question(5)}, context=context, stream_mode=["updates", "values"])
        async for mode, item in stream:
            if mode == "updates":
                nodes.extend(item)
            else:
                last = item
        return single, batch, nodes, last

    single, batch, nodes, last = asyncio.run(main())
    check_item_output(single, 1, route)
    for n, out in zip((2, 3, 4), batch):
        check_item_output(out, n, route)
    check_item_output(last, 5, route)
    first = {"single": "solve_direct", "dynamic": "propose"}.get(route, "decompose")
    assert nodes[0] == first and nodes[-1] in ("solve", "solve_final", "solve_direct")


def test_batch_sync_matches_questions(item_graph):
    inputs = [{"question": item_question(n)} for n in range(6)]
    outs = item_graph.batch(inputs, context=Context(**ROUTES["static-parallel"]))
    for n, out in enumerate(outs):
        check_item_output(out, n, "static-parallel")


@pytest.mark.parametrize("route", ["static-parallel", "dynamic"])
def test_twenty_concurrent_questions_each_get_their_own_answer(route):
    graph = build_graph(item_decomposer(delay=0.01), item_solver(delay=0.02)).compile()
    context = Context(**ROUTES[route])
    numbers = list(range(100, 120))

    async def main():
        questions = [{"question": item_question(n)} for n in numbers]
        batch = graph.abatch(questions, {"max_concurrency": 20}, context=context)
        gathered = asyncio.gather(*(graph.ainvoke(q, context=context) for q in reversed(questions)))
        return await asyncio.gather(batch, gathered)

    started = time.perf_counter()
    batch, gathered = asyncio.run(main())
    for n, out in zip(numbers, batch):
        check_item_output(out, n, route)
    for n, out in zip(reversed(numbers), gathered):
        check_item_output(out, n, route)
    assert time.perf_counter() - started < 20


def test_async_sqlite_checkpointer(tmp_path):
    aio = pytest.importorskip("langgraph.checkpoint.sqlite.aio")

    async def main():
        async with aio.AsyncSqliteSaver.from_conn_string(str(tmp_path / "async.sqlite")) as saver:
            graph = build_graph(item_decomposer(), item_solver(), solve="parallel").compile(checkpointer=saver)
            config = {"configurable": {"thread_id": "a"}}
            out = await graph.ainvoke({"question": item_question(7)}, config)
            state = await graph.aget_state(config)
            return out, state

    out, state = asyncio.run(main())
    check_item_output(out, 7, "static-parallel")
    assert state.values["answer"] == item_answer(7) and state.next == ()


# --------------------------------------------------------------------------- checkpointers


@pytest.fixture(params=["memory", "sqlite"])
def saver(request, tmp_path):
    if request.param == "memory":
        yield InMemorySaver()
    else:
        with SqliteSaver.from_conn_string(str(tmp_path / "checkpoints.sqlite")) as sqlite_saver:
            yield sqlite_saver


def test_checkpointer_history_shows_each_step(saver):
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 24", "The answer is: 72"),
                        solve="sequential").compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "steps"}}
    out = graph.invoke({"question": QUESTION}, config)
    assert out["answer"] == "72"
    state = graph.get_state(config)
    assert state.next == () and state.values["sub_answers"] == ["24", "72"]
    history = list(graph.get_state_history(config))  # newest first
    assert [s.next for s in reversed(history)] == [
        ("__start__",), ("decompose",), ("answer_step",), ("answer_step",), ("solve_final",), (),
    ]
    assert [s.metadata["step"] for s in reversed(history)] == [-1, 0, 1, 2, 3, 4]
    by_step = {s.metadata["step"]: s.values for s in history}
    assert by_step[1]["subquestions"] == SUBQUESTIONS and by_step[1]["sub_answers"] == []
    assert by_step[2]["sub_answers"] == ["24"] and by_step[3]["sub_answers"] == ["24", "72"]
    # Any earlier step can be replayed from its checkpoint.
    replayed = graph.invoke(None, history[2].config)  # from just before solve_final
    assert replayed["answer"] == "72"


# --------------------------------------------------------------------------- human in the loop


def review_graph(saver=None, solver=None):
    solver = solver or scripted(JOINT)
    return build_graph(scripted(DECOMPOSITION), solver, review=True).compile(checkpointer=saver or InMemorySaver())


def test_review_pauses_after_decomposition(saver):
    graph = review_graph(saver)
    config = {"configurable": {"thread_id": "review"}}
    paused = graph.invoke({"question": QUESTION}, config)
    assert "__interrupt__" in paused and paused.get("answer") is None
    (interrupt,) = paused["__interrupt__"]
    assert interrupt.value["subquestions"] == SUBQUESTIONS and interrupt.value["question"] == QUESTION
    assert graph.get_state(config).next == ("review",)


def test_resume_with_edited_subquestions_solves_those():
    seen = []
    graph = review_graph(solver=ScriptedChatModel(respond=lambda m: seen.append(last_user_text(m)) or JOINT))
    config = {"configurable": {"thread_id": "edit"}}
    graph.invoke({"question": QUESTION}, config)
    out = graph.invoke(Command(resume=["edited sub-question?"]), config)
    assert out["subquestions"] == ["edited sub-question?"] and out["answer"] == "72"
    assert "1. edited sub-question?" in seen[0] and "Natalia sell in May" not in seen[0]
    assert graph.get_state(config).next == ()


def test_resume_with_the_interrupted_list_keeps_it():
    graph = review_graph()
    config = {"configurable": {"thread_id": "keep"}}
    (interrupt,) = graph.invoke({"question": QUESTION}, config)["__interrupt__"]
    out = graph.invoke(Command(resume=interrupt.value["subquestions"]), config)
    assert out["subquestions"] == SUBQUESTIONS and out["answer"] == "72"


def test_resume_with_an_empty_list_answers_single_stage():
    graph = review_graph()
    config = {"configurable": {"thread_id": "empty"}}
    graph.invoke({"question": QUESTION}, config)
    out = graph.invoke(Command(resume=[]), config)
    assert out["route"] == "single" and out["subquestions"] == [] and "reviewer" in out["fallback_reason"]


def test_resume_none_leaves_the_review_pending_and_resumable():
    # LangGraph reads Command(resume=None) as "no resume value", so it cannot mean "keep":
    # depending on the version it raises (1.2.22: UnboundLocalError) or runs nothing. What
    # we promise is that either way the decomposition is not lost: the run stays paused at
    # review, and a real resume value still finishes it.
    graph = review_graph()
    config = {"configurable": {"thread_id": "none"}}
    graph.invoke({"question": QUESTION}, config)
    with contextlib.suppress(Exception):
        graph.invoke(Command(resume=None), config)
    state = graph.get_state(config)
    assert state.next == ("review",) and state.values["subquestions"] == SUBQUESTIONS
    out = graph.invoke(Command(resume="keep"), config)
    assert out["subquestions"] == SUBQUESTIONS and out["answer"] == "72"


def test_resume_keep_keeps_the_subquestions():
    graph = review_graph()
    config = {"configurable": {"thread_id": "keep-marker"}}
    graph.invoke({"question": QUESTION}, config)
    out = graph.invoke(Command(resume="keep"), config)
    assert out["subquestions"] == SUBQUESTIONS and out["answer"] == "72"


@pytest.mark.parametrize("bad, problem", [(42, "got int"), (["ok", 3], "item 2 is int"), ("a string", "got str")])
def test_bad_resume_value_pauses_again_with_a_clear_message(bad, problem):
    graph = review_graph()
    config = {"configurable": {"thread_id": "bad"}}
    graph.invoke({"question": QUESTION}, config)
    (again,) = graph.invoke(Command(resume=bad), config)["__interrupt__"]
    assert "resume value must be a list of sub-question strings" in again.value["error"]
    assert problem in again.value["error"] and "Command(resume=" in again.value["error"]
    assert graph.get_state(config).next == ("review",)


def test_a_good_resume_after_a_bad_one_goes_through():
    graph = review_graph()
    config = {"configurable": {"thread_id": "retry"}}
    graph.invoke({"question": QUESTION}, config)
    graph.invoke(Command(resume=42), config)
    assert graph.invoke(Command(resume=["fixed sub-question?"]), config)["subquestions"] == ["fixed sub-question?"]


# --------------------------------------------------------------------------- retry policy


def flaky(error, times, reply):
    calls = []

    def respond(messages):
        calls.append(1)
        if len(calls) <= times:
            raise error
        return reply

    return ScriptedChatModel(respond=respond), calls


def test_transient_model_error_is_retried_by_the_default_policy():
    decomposer, calls = flaky(ConnectionError("connection reset"), 1, DECOMPOSITION)
    out = build_graph(decomposer, scripted(JOINT)).compile().invoke({"question": QUESTION})
    assert len(calls) == 2 and out["answer"] == "72" and out["subquestions"] == SUBQUESTIONS


def test_other_errors_are_not_retried():
    decomposer, calls = flaky(ValueError("bad request"), 5, DECOMPOSITION)
    with pytest.raises(ValueError, match="bad request"):
        build_graph(decomposer, scripted(JOINT)).compile().invoke({"question": QUESTION})
    assert len(calls) == 1


def test_solver_nodes_retry_too_in_parallel_branches():
    from langgraph.types import RetryPolicy

    from divconq.nodes.graph_nodes import is_transient_error

    solver, calls = flaky(TimeoutError("slow"), 1, "The answer is: 1")
    retry = RetryPolicy(max_attempts=2, initial_interval=0.01, jitter=False, retry_on=is_transient_error)
    out = build_graph(scripted(DECOMPOSITION), solver, solve="parallel", retry=retry).compile().invoke(
        {"question": QUESTION}
    )
    assert out["answer"] == "1" and len(calls) == 4  # 3 calls, one of them twice


# --------------------------------------------------------------------------- decomposer cache


def counting(reply):
    calls = []
    return ScriptedChatModel(respond=lambda m: calls.append(1) or reply), calls


def test_cached_decomposer_is_called_once_per_question():
    decomposer, decomposer_calls = counting(DECOMPOSITION)
    solver, solver_calls = counting(JOINT)
    graph = build_graph(decomposer, solver, cache_decomposer=True).compile(cache=InMemoryCache())
    first = graph.invoke({"question": QUESTION})
    second = graph.invoke({"question": QUESTION})
    assert len(decomposer_calls) == 1 and len(solver_calls) == 2
    assert first["subquestions"] == second["subquestions"] == SUBQUESTIONS and second["answer"] == "72"
    graph.invoke({"question": "Another question about 3 apples and 4 pears?"})
    assert len(decomposer_calls) == 2  # a new question is decomposed
    graph.invoke({"question": QUESTION}, context=Context(solve="sequential"))
    assert len(decomposer_calls) == 3  # the run settings are part of the key
    graph.invoke({"question": QUESTION}, context=Context(max_subquestions=2))
    assert len(decomposer_calls) == 4  # and so are the context's prompt and model overrides


def test_without_cache_the_decomposer_runs_every_time():
    decomposer, calls = counting(DECOMPOSITION)
    graph = build_graph(decomposer, scripted(JOINT)).compile(cache=InMemoryCache())
    graph.invoke({"question": QUESTION})
    graph.invoke({"question": QUESTION})
    assert len(calls) == 2


def test_graphs_with_different_decomposers_do_not_share_cached_decompositions():
    cache = InMemoryCache()
    teacher = build_graph(scripted(DECOMPOSITION), scripted(JOINT), cache_decomposer=True).compile(cache=cache)
    student = build_graph(scripted("1. What is half of 48 clips?\n2. What is 48 plus that?"), scripted(JOINT),
                          cache_decomposer=True).compile(cache=cache)
    assert teacher.invoke({"question": QUESTION})["subquestions"] == SUBQUESTIONS
    expected = ["What is half of 48 clips?", "What is 48 plus that?"]
    assert student.invoke({"question": QUESTION})["subquestions"] == expected
