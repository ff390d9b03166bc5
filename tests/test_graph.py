"""Graph logic on fake chat models: routes, caps, fallbacks, usage, order, checkpointing."""

import re
import sqlite3

import pytest
from fakes import ScriptedChatModel, last_user_text, scripted
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.types import Overwrite

from divconq.errors import DivconqError
from divconq.graph import Context, build_graph

QUESTION = "Natalia sold clips to 48 friends in April, and half as many in May. How many clips did she sell?"
DECOMPOSITION = "1. How many clips did Natalia sell in May?\n2. How many clips did she sell in April and May?"
SUBQUESTIONS = ["How many clips did Natalia sell in May?", "How many clips did she sell in April and May?"]


def run(decomposer, solver, question=QUESTION, config=None, **build):
    return build_graph(decomposer, solver, **build).compile().invoke({"question": question}, config)


def test_static_joint_is_the_papers_two_stage_method():
    solver = scripted("1. She sold 48 / 2 = 24 in May.\n2. 48 + 24 = 72.\n\nThe answer is: 72")
    out = run(scripted(DECOMPOSITION), solver)
    assert out["route"] == "static" and out["mode"] == "static" and out["solve"] == "joint"
    assert out["subquestions"] == SUBQUESTIONS
    assert out["sub_answers"] == ["She sold 48 / 2 = 24 in May.", "48 + 24 = 72."]
    assert out["answer"] == "72"
    assert out["fallback_reason"] is None
    assert out["usage"]["decomposer"]["calls"] == 1 and out["usage"]["solver"]["calls"] == 1


def test_solver_sees_all_subquestions_in_one_call():
    seen = []
    solver = ScriptedChatModel(respond=lambda m: seen.append(last_user_text(m)) or "The answer is: 72")
    run(scripted(DECOMPOSITION), solver)
    assert len(seen) == 1
    assert "1. How many clips did Natalia sell in May?" in seen[0] and QUESTION in seen[0]


def test_static_sequential_passes_earlier_answers_forward():
    seen = []

    def respond(messages):
        seen.append(last_user_text(messages))
        return f"The answer is: {len(seen) * 10}"

    out = run(scripted(DECOMPOSITION), ScriptedChatModel(respond=respond), solve="sequential")
    assert out["sub_answers"] == ["10", "20"] and out["answer"] == "30"
    assert "A1: 10" in seen[1]  # the second sub-question saw the first answer
    assert "Q2: " in seen[2] and "A2: 20" in seen[2]  # the final call saw both
    assert out["usage"]["solver"]["calls"] == 3


def test_parallel_answers_come_back_in_subquestion_order():
    decomposition = "1. What is alpha?\n2. What is beta?\n3. What is gamma?"
    answers = {"alpha": "A", "beta": "B", "gamma": "C"}

    def word(messages):
        found = re.search(r"What is (\w+)\?$", last_user_text(messages))
        return found.group(1) if found else None

    def respond(messages):
        w = word(messages)
        return f"The answer is: {answers[w]}" if w else "The answer is: ABC"

    # The first sub-question finishes last, the last one first.
    delays = {"alpha": 0.3, "beta": 0.15, "gamma": 0.0}
    solver = ScriptedChatModel(respond=respond, delay=lambda m: delays.get(word(m), 0.0))
    out = run(scripted(decomposition), solver, solve="parallel")
    assert out["sub_answers"] == ["A", "B", "C"]
    assert out["subquestions"] == ["What is alpha?", "What is beta?", "What is gamma?"]
    assert out["answer"] == "ABC" and out["usage"]["solver"]["calls"] == 4


def test_dynamic_interleaves_until_the_decomposer_is_done():
    decomposer = scripted("How many clips in May?", "What is 48 plus that?", "No more sub-questions")
    solver = scripted("The answer is: 24", "The answer is: 72", "The answer is: 72")
    out = run(decomposer, solver, mode="dynamic")
    assert out["route"] == "dynamic"
    assert out["subquestions"] == ["How many clips in May?", "What is 48 plus that?"]
    assert out["sub_answers"] == ["24", "72"] and out["answer"] == "72"
    assert out["usage"]["decomposer"]["calls"] == 3 and out["usage"]["solver"]["calls"] == 3


def test_dynamic_rounds_are_capped_without_recursion_errors():
    counter = iter(range(1000))
    decomposer = ScriptedChatModel(respond=lambda m: f"What is fact number {next(counter)}?")
    out = run(decomposer, scripted("The answer is: 1"), mode="dynamic", max_rounds=10)
    assert len(out["subquestions"]) == 10 and len(out["sub_answers"]) == 10
    assert out["usage"]["decomposer"]["calls"] == 10  # the cap check itself calls no model


def test_dynamic_repeated_subquestion_stops_the_loop():
    out = run(scripted("How many clips in May?"), scripted("The answer is: 24"), mode="dynamic")
    assert out["subquestions"] == ["How many clips in May?"]
    assert out["usage"]["decomposer"]["calls"] == 2


def test_static_cap_on_subquestions():
    decomposition = "\n".join(f"{i}. What is part {i} of the problem?" for i in range(1, 8))
    out = run(scripted(decomposition), scripted("The answer is: 1"), max_subquestions=3)
    assert len(out["subquestions"]) == 3


@pytest.mark.parametrize(
    "reply, reason",
    [
        ("No decomposition.", "No decomposition"),
        ("I think this is a nice problem about clips.", "no usable sub-questions"),
        ("", "no usable sub-questions"),
        (QUESTION, "no usable sub-questions"),
    ],
)
def test_unusable_decomposition_falls_back_to_single_stage(reply, reason):
    out = run(scripted(reply), scripted("The answer is: 72"))
    assert out["route"] == "single" and reason in out["fallback_reason"]
    assert out["subquestions"] == [] and out["answer"] == "72"
    assert out["usage"]["decomposer"]["calls"] == 1 and out["usage"]["solver"]["calls"] == 1


def test_dynamic_without_a_first_subquestion_falls_back():
    out = run(scripted("No more sub-questions"), scripted("The answer is: 72"), mode="dynamic")
    assert out["route"] == "single" and "dynamic" in out["fallback_reason"]


def test_single_mode_never_calls_the_decomposer():
    decomposer = ScriptedChatModel(respond=lambda m: pytest.fail("decomposer called"))
    out = run(decomposer, scripted("Step by step... The answer is: 72"), mode="single")
    assert out["route"] == "single" and out["answer"] == "72" and "decomposer" not in out["usage"]


def test_auto_mode_follows_the_policy():
    policy = lambda q, c: "single" if len(q) < 20 else "static"  # noqa: E731
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 5"), mode="auto", policy=policy).compile()
    assert graph.invoke({"question": "What is 2 + 3?"})["route"] == "single"
    assert graph.invoke({"question": QUESTION})["route"] == "static"


def test_mode_is_overridable_per_call_through_the_context():
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72")).compile()
    out = graph.invoke({"question": QUESTION}, context=Context(mode="single"))
    assert out["route"] == "single" and out["mode"] == "single"
    out = graph.invoke({"question": QUESTION}, context={"solve": "sequential"})
    assert out["solve"] == "sequential" and out["usage"]["solver"]["calls"] == 3


def test_configurable_still_works_for_one_release_and_warns():
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72")).compile()
    with pytest.warns(DeprecationWarning, match="pass them as the context") as caught:
        out = graph.invoke({"question": QUESTION}, {"configurable": {"mode": "single"}})
    assert out["route"] == "single" and len(caught) == 1  # once per run, not once per node


def test_context_models_prompts_and_caps_apply_to_this_run_only(monkeypatch):
    import divconq.nodes.models as models

    other = ScriptedChatModel(respond=lambda m: "1. How many clips in May?\n2. How many clips in April?\n3. How many in all?")
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72")).compile()
    loaded = []
    monkeypatch.setattr(models, "load_chat_model", lambda spec, *, role=None, **kw: loaded.append((spec, role)) or other)
    out = graph.invoke({"question": QUESTION}, context=Context(decomposer="openai:other", max_subquestions=2))
    assert loaded == [("openai:other", "decomposer")] and out["subquestions"] == ["How many clips in May?", "How many clips in April?"]
    assert graph.invoke({"question": QUESTION})["subquestions"] == SUBQUESTIONS  # the graph's own again


def test_a_context_task_keeps_the_graph_s_prompt_wording():
    from divconq.nodes.prompts import get_prompts

    seen = []
    solver = ScriptedChatModel(respond=lambda m: seen.append(m[0].content) or "The answer is: 72")
    graph = build_graph(scripted(DECOMPOSITION), solver, mode="single", prompts=get_prompts("math", style="paper")).compile()
    graph.invoke({"question": QUESTION}, context=Context(task="multihop"))
    assert seen == [get_prompts("multihop", style="paper").direct_system]  # the paper's wording, the new task


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"mode": "fast"}, "unknown context mode 'fast': choose one of static, dynamic, single, auto"),
        ({"solve": 1}, "unknown context solve 1: choose one of joint, sequential, parallel"),
        ({"task": "poetry"}, "unknown context task 'poetry': choose one of math, reading, multihop"),
        ({"max_subquestions": 11}, "context max_subquestions must be an integer from 1 to 10"),
        ({"review": True}, "context review=True needs a graph built with review"),
    ],
)
def test_a_context_value_outside_its_choices_names_the_allowed_values(context, message):
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72")).compile()
    with pytest.raises(DivconqError, match=re.escape(message)):
        graph.invoke({"question": QUESTION}, context=context)


def test_usage_totals_add_up_per_role():
    decomposer = scripted(DECOMPOSITION, input_tokens=100, output_tokens=20)
    solver = scripted("The answer is: 1", input_tokens=50, output_tokens=7)
    out = run(decomposer, solver, solve="sequential")
    assert out["usage"]["decomposer"]["input_tokens"] == 100 and out["usage"]["decomposer"]["output_tokens"] == 20
    assert out["usage"]["solver"]["calls"] == 3
    assert out["usage"]["solver"]["input_tokens"] == 150 and out["usage"]["solver"]["output_tokens"] == 21
    assert all(stats["seconds"] >= 0 for stats in out["usage"].values())


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_empty_question_is_refused(bad):
    graph = build_graph(scripted(DECOMPOSITION), scripted("x")).compile()
    with pytest.raises(DivconqError, match="question is empty"):
        graph.invoke({"question": bad})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "fast"}, "unknown mode"),
        ({"solve": "magic"}, "unknown solve strategy"),
        ({"max_subquestions": 0}, "max_subquestions"),
        ({"max_rounds": 50}, "max_rounds"),
    ],
)
def test_bad_build_arguments_fail_early(kwargs, match):
    with pytest.raises(DivconqError, match=match):
        build_graph(scripted("x"), scripted("x"), **kwargs)


def test_config_reaches_every_model_call_with_its_role():
    class Spy(BaseCallbackHandler):
        def __init__(self):
            self.roles = []

        def on_chat_model_start(self, serialized, messages, *, metadata=None, **kwargs):
            self.roles.append((metadata or {}).get("divconq_role"))

    spy = Spy()
    run(scripted(DECOMPOSITION), scripted("The answer is: 1"), solve="sequential", config={"callbacks": [spy]})
    assert spy.roles == ["decomposer", "solver", "solver", "solver"]


def test_state_is_serialisable_and_fresh_per_run_on_one_thread(tmp_path):
    path = tmp_path / "checkpoints.sqlite"
    with SqliteSaver.from_conn_string(str(path)) as saver:
        graph = build_graph(scripted(DECOMPOSITION, "No decomposition"), scripted("The answer is: 72")).compile(
            checkpointer=saver
        )
        config = {"configurable": {"thread_id": "t1"}}
        first = graph.invoke({"question": QUESTION}, config)
        assert first["route"] == "static" and first["subquestions"] == SUBQUESTIONS
        second = graph.invoke({"question": "What is 2 + 3?"}, config)
        # The second question must not inherit the first one's sub-questions or usage.
        assert second["route"] == "single" and second["subquestions"] == [] and second["sub_answers"] == []
        assert second["usage"]["decomposer"]["calls"] == 1 and second["usage"]["solver"]["calls"] == 1
        state = graph.get_state(config)
        assert state.values["question"] == "What is 2 + 3?" and state.values["answer"] == "72"
        history = list(graph.get_state_history(config))
        assert len(history) >= 6
    rows = sqlite3.connect(path).execute("select count(*) from checkpoints where thread_id = 't1'").fetchone()[0]
    assert rows == len(history)


def test_in_memory_checkpointer_round_trip():
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72"), solve="parallel").compile(
        checkpointer=InMemorySaver()
    )
    out = graph.invoke({"question": QUESTION}, {"configurable": {"thread_id": "x"}})
    assert out["answer"] == "72" and len(out["sub_answers"]) == 2


def test_the_first_node_of_a_run_overwrites_totals_with_its_own_usage():
    graph = build_graph(scripted(DECOMPOSITION), scripted("The answer is: 72")).compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "u"}}
    graph.invoke({"question": QUESTION}, config)
    updates = list(graph.stream({"question": QUESTION}, config, stream_mode="updates"))
    first = updates[0]["decompose"]
    # LangGraph's own Overwrite, carrying the real figures, not a private marker.
    assert isinstance(first["usage"], Overwrite) and first["usage"].value["decomposer"]["calls"] == 1
    assert isinstance(first["parallel_answers"], Overwrite) and first["parallel_answers"].value == []
    assert graph.get_state(config).values["usage"]["decomposer"]["calls"] == 1


def test_drawing_puts_a_loop_entry_above_its_body_and_keeps_edges_off_boxes():
    from divconq.graph.draw import BOX_H, BOX_W, _bend, _curve_points, _layers, _positions

    drawable = build_graph(scripted("x"), scripted("x")).compile().get_graph()
    nodes = list(drawable.nodes)
    depth = _layers(nodes, drawable.edges)
    assert depth["__start__"] == 0 and depth["__end__"] == max(depth.values())
    assert depth["propose"] < depth["answer_step"]  # the dynamic loop is entered at propose
    assert depth["decompose"] < depth["solve"] < depth["__end__"]
    position = _positions(nodes, drawable.edges, depth)
    for edge in drawable.edges:
        if edge.source == edge.target or position[edge.target][1] >= position[edge.source][1]:
            continue
        (x1, y1), (x2, y2) = position[edge.source], position[edge.target]
        start, end = (x1, y1 - BOX_H / 2), (x2, y2 + BOX_H / 2)
        others = [p for n, p in position.items() if n not in (edge.source, edge.target)]
        rad = _bend(start, end, others)
        crossed = [p for p in others for x, y in _curve_points(start, end, rad)
                   if abs(x - p[0]) < BOX_W / 2 and abs(y - p[1]) < BOX_H / 2]
        assert not crossed, f"{edge.source} -> {edge.target} crosses a box"
