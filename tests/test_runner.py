"""The dataset runner and the resumable evaluation, on fake models: resume, torn lines,
failures that cost one question, a server that goes away, exclusions, one line per id
under concurrency, in threads and in worker processes."""

import json
import threading

import pytest
from fakes import ScriptedChatModel, last_user_text
from langgraph.types import RetryPolicy

from divconq.distill.datasets import Example
from divconq.distill.evaluate import evaluate, read_results
from divconq.distill.runner import RunSettings, _context, _feed_and_collect, _no_config, _Tally, _Worker, run_examples
from divconq.errors import DivconqError
from divconq.graph import build_graph

DECOMPOSITION = "1. How many in May?\n2. How many in total?"
SOLUTION = "1. 24\n2. 72\n\nThe answer is: 72"
RUN_INFO = {"dataset": "gsm8k", "decomposer": "fake", "solver": "fake", "mode": "static"}
QUICK = RunSettings(concurrency=1, retries=0, backoff_seconds=0.0, progress=False)


def examples(n, prefix="q"):
    return [Example(f"{prefix}{i}", f"Question number {i}: how many clips?", None, ("72",)) for i in range(n)]


class Counting:
    """A reply function that counts its calls (thread-safe) and may fail on some."""

    def __init__(self, reply, fail=None):
        self.reply, self.fail, self.calls, self.lock = reply, fail, 0, threading.Lock()

    def __call__(self, messages):
        with self.lock:
            self.calls += 1
            number = self.calls
        if self.fail:
            self.fail(number, last_user_text(messages))
        return self.reply


def graph(decomposer=None, solver=None):
    decomposer = decomposer or Counting(DECOMPOSITION)
    solver = solver or Counting(SOLUTION)
    # One attempt per node: the runner's own handling is what is under test, not LangGraph's retries.
    return build_graph(ScriptedChatModel(respond=decomposer), ScriptedChatModel(respond=solver),
                       retry=RetryPolicy(max_attempts=1)).compile()


def run_eval(g, items, out, settings=QUICK, **kw):
    return evaluate(g, items, dataset="gsm8k", out=out, run_info=RUN_INFO, settings=settings, **kw)


def lines_of(path):
    return path.read_text().splitlines()


def test_resume_skips_finished_ids(tmp_path):
    out = tmp_path / "results.jsonl"
    run_eval(graph(), examples(3), out)
    solver = Counting(SOLUTION)
    rows = run_eval(graph(solver=solver), examples(5), out)
    assert solver.calls == 2  # only q3 and q4 ran
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]
    assert all(r["score"] == 1.0 and r["prediction"] == "72" and r["route"] == "static" for r in rows)
    assert len(lines_of(out)) == 5


def test_torn_last_line_is_ignored_and_cut_before_resuming(tmp_path):
    out = tmp_path / "results.jsonl"
    run_eval(graph(), examples(2), out)
    with out.open("a") as handle:
        handle.write('{"id": "q2", "question": "Quest')  # killed mid-write
    assert [r["id"] for r in read_results(out)] == ["q0", "q1"]
    solver = Counting(SOLUTION)
    rows = run_eval(graph(solver=solver), examples(4), out)
    assert solver.calls == 2  # q2 runs again, with q3
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3"]
    assert [json.loads(line)["id"] for line in lines_of(out)] == ["q0", "q1", "q2", "q3"]  # no glued line


def test_whole_last_line_without_newline_is_kept(tmp_path):
    out = tmp_path / "results.jsonl"
    run_eval(graph(), examples(2), out)
    out.write_text(out.read_text().rstrip("\n"))
    rows = run_eval(graph(), examples(3), out)
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"]


def test_a_question_whose_solver_raises_scores_zero_is_recorded_and_the_run_goes_on(tmp_path):
    def fail(number, text):
        if "number 1:" in text:
            raise ValueError("the solver choked on this one")

    out = tmp_path / "results.jsonl"
    rows = {r["id"]: r for r in run_eval(graph(solver=Counting(SOLUTION, fail)), examples(4), out)}
    assert set(rows) == {"q0", "q1", "q2", "q3"}
    assert rows["q1"]["score"] == 0.0 and rows["q1"]["error"].startswith("ValueError: the solver choked")
    assert all(rows[i]["score"] == 1.0 and rows[i]["error"] is None for i in ("q0", "q2", "q3"))


def test_a_server_that_goes_away_stops_the_run_and_keeps_what_finished(tmp_path):
    def fail(number, text):
        if number > 3:  # three questions answered, then nothing
            raise ConnectionError("Connection refused")

    decomposer = Counting(DECOMPOSITION, fail)
    out = tmp_path / "results.jsonl"
    settings = RunSettings(concurrency=1, retries=1, backoff_seconds=0.0, max_consecutive_failures=3, progress=False)
    with pytest.raises(DivconqError, match="stopped answering.*3 questions finished"):
        run_eval(graph(decomposer=decomposer), examples(20), out, settings=settings)
    rows = read_results(out)
    # Only what finished is on file: questions lost to the server are left for the rerun.
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and all(r["score"] == 1.0 for r in rows)
    lost = (decomposer.calls - 3) // 2  # each lost question was tried twice (one retry)
    assert lost in (3, 4)  # three in a row stop the run; the one already started may be lost too
    # The server is back: a rerun retries the lost questions and finishes the rest.
    rows = run_eval(graph(), examples(20), out, settings=settings)
    assert [r["id"] for r in rows][:3] == ["q0", "q1", "q2"] and len(rows) == 20
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}" for i in range(20))


def test_isolated_connection_errors_do_not_stop_the_run(tmp_path):
    def fail(number, text):
        if number % 3 == 0:
            raise ConnectionError("reset by peer")

    settings = RunSettings(concurrency=1, retries=0, backoff_seconds=0.0, max_consecutive_failures=2, progress=False)
    out = tmp_path / "r.jsonl"
    rows = run_eval(graph(decomposer=Counting(DECOMPOSITION, fail)), examples(9), out, settings=settings)
    assert len(rows) == 6 and not any(r["error"] for r in rows)  # the 3 lost ones wait for a rerun
    assert len(run_eval(graph(), examples(9), out, settings=settings)) == 9


def test_excluded_ids_are_skipped(tmp_path):
    solver = Counting(SOLUTION)
    rows = run_eval(graph(solver=solver), examples(5), tmp_path / "r.jsonl", exclude_ids={"q1", "q3"})
    assert [r["id"] for r in rows] == ["q0", "q2", "q4"] and solver.calls == 3


def test_one_line_per_id_under_concurrency(tmp_path):
    out = tmp_path / "results.jsonl"
    solver = ScriptedChatModel(respond=Counting(SOLUTION), delay=lambda m: (len(last_user_text(m)) % 7) / 1000)
    settings = RunSettings(concurrency=8, retries=0, progress=False)
    rows = run_eval(build_graph(ScriptedChatModel(respond=Counting(DECOMPOSITION)), solver).compile(),
                    examples(60), out, settings=settings)
    ids = [json.loads(line)["id"] for line in lines_of(out)]
    assert len(ids) == 60 and set(ids) == {f"q{i}" for i in range(60)}
    assert len(rows) == 60 and all(r["score"] == 1.0 for r in rows)
    again = Counting(SOLUTION)
    run_eval(graph(solver=again), examples(60), out, settings=settings)
    assert again.calls == 0 and len(lines_of(out)) == 60


def test_run_examples_hands_every_outcome_to_the_caller_once():
    seen = []
    stats = run_examples(graph(), examples(12), seen.append,
                         settings=RunSettings(concurrency=5, progress=False), total=12)
    assert stats.finished == 12 and stats.failed == 0
    assert sorted(o.example.id for o in seen) == sorted(e.id for e in examples(12))
    assert all(o.output["answer"] == "72" and o.error is None for o in seen)


# --------------------------------------------------------------------------- worker processes
# Factories must be module-level so they pickle: each worker process builds its own graph.


def fake_graph():
    return graph()


def fake_graph_failing_on_question_3():
    def fail(number, text):
        if "number 3:" in text:
            raise ValueError("bad question")

    return graph(solver=Counting(SOLUTION, fail))


def fake_graph_dying_on_question_5():
    import os

    def fail(number, text):
        if "number 5:" in text:
            os._exit(3)  # the worker process is killed mid-question

    return graph(solver=Counting(SOLUTION, fail))


def fake_graph_logging_calls(log):
    import os
    import time

    def solve(messages):
        with open(log, "a") as handle:
            handle.write(f"start {time.monotonic()} {os.getpid()}\n")
        time.sleep(0.02)
        with open(log, "a") as handle:
            handle.write(f"end {time.monotonic()} {os.getpid()}\n")
        return SOLUTION

    return graph(solver=solve)


def most_at_once(log):
    events = sorted((float(t), kind == "start", pid) for kind, t, pid in (line.split() for line in open(log)))
    now = peak = 0
    for _, starting, _ in events:
        now += 1 if starting else -1
        peak = max(peak, now)
    return peak, {pid for _, _, pid in events}


def broken_factory():
    raise RuntimeError("cannot reach the model spec")


def test_processes_write_one_line_per_id_and_resume(tmp_path):
    out = tmp_path / "results.jsonl"
    settings = RunSettings(concurrency=6, processes=2, retries=0, progress=False)
    rows = run_eval(fake_graph_failing_on_question_3, examples(40), out, settings=settings)
    ids = [json.loads(line)["id"] for line in lines_of(out)]
    assert len(ids) == 40 and set(ids) == {f"q{i}" for i in range(40)}
    by_id = {r["id"]: r for r in rows}
    assert by_id["q3"]["score"] == 0.0 and by_id["q3"]["error"].startswith("ValueError: bad question")
    assert sum(r["score"] for r in rows) == 39
    rows = run_eval(fake_graph, examples(45), out, settings=settings)  # resume: five more
    assert len(rows) == 45 and len(lines_of(out)) == 45


def test_processes_need_a_factory_and_report_one_that_fails(tmp_path):
    settings = RunSettings(concurrency=2, processes=2, progress=False)
    with pytest.raises(DivconqError, match="not a compiled graph"):
        run_examples(graph(), examples(2), lambda o: None, settings=settings)
    with pytest.raises(DivconqError, match="could not build the graph: RuntimeError: cannot reach the model spec"):
        run_examples(broken_factory, examples(2), lambda o: None, settings=settings)
    seen = []
    run_examples(broken_factory, [], seen.append, settings=settings)  # nothing to do: no worker starts
    assert seen == []


def test_a_worker_that_dies_stops_the_run_and_keeps_what_finished(tmp_path):
    out = tmp_path / "results.jsonl"
    settings = RunSettings(concurrency=2, processes=2, retries=0, progress=False)
    with pytest.raises(DivconqError, match=r"worker process exited \(code 3\).*rerun the same command to resume"):
        run_eval(fake_graph_dying_on_question_5, examples(30), out, settings=settings)
    ids = [json.loads(line)["id"] for line in lines_of(out)]
    assert "q5" not in ids and len(ids) == len(set(ids)) and {"q0", "q1", "q2", "q3"} <= set(ids)


@pytest.mark.parametrize("processes", [1, 2])
def test_concurrency_bounds_the_questions_in_flight(tmp_path, processes):
    import functools

    log = tmp_path / "calls.log"
    settings = RunSettings(concurrency=3, processes=processes, progress=False)
    factory = functools.partial(fake_graph_logging_calls, str(log))
    rows = run_eval(factory, examples(24), tmp_path / "r.jsonl", settings=settings)
    assert len(rows) == 24
    peak, pids = most_at_once(log)
    assert 2 <= peak <= 3  # in flight together, never more than asked (3 over 2 workers, not 2 + 2)
    assert len(pids) == processes


# The feeding loop itself, with workers that are already dead when it sends them a question
# (a race the end-to-end test above only hits now and then).

def _exit_with_code_3(conn):
    import os

    os._exit(3)


def _finish_question_0_then_exit(conn):
    conn.send(("outcome", (0, {"answer": "72"}, None, 0.1, False)))
    conn.close()


def _dead_worker(target):
    ctx = _context()
    here, there = ctx.Pipe()
    process = ctx.Process(target=target, args=(there,))
    process.start()
    there.close()
    process.join(60)
    assert process.exitcode is not None, "the stand-in worker did not exit"
    return _Worker(process, here, threads=1)


def _feed(worker, source):
    seen = []
    tally = _Tally(seen.append, RunSettings(progress=False), None, "test")
    with pytest.raises(DivconqError) as raised:
        _feed_and_collect([worker], iter(source), _no_config, tally)
    return str(raised.value), seen


def test_a_worker_dead_before_its_first_question_stops_the_run_with_the_resume_message():
    message, seen = _feed(_dead_worker(_exit_with_code_3), examples(3))
    assert message.startswith("a worker process exited (code 3); 0 questions finished")
    assert message.endswith("rerun the same command to resume")
    assert seen == []


def test_a_worker_that_finished_a_question_and_died_keeps_it_and_still_stops_the_run():
    worker = _dead_worker(_finish_question_0_then_exit)
    first, *rest = examples(3)
    worker.in_flight[0] = first  # sent before it died; its outcome waits in the pipe
    message, seen = _feed(worker, rest)
    assert [(o.example.id, o.output) for o in seen] == [("q0", {"answer": "72"})]
    assert message.startswith("a worker process exited (code 0); 1 questions finished and are saved")


@pytest.mark.parametrize("field, value", [("concurrency", 0), ("concurrency", -5), ("processes", 0),
                                          ("max_consecutive_failures", 0), ("retries", -1), ("backoff_seconds", -1.0)])
def test_bad_run_settings_are_refused_not_raised_to_one(field, value):
    from divconq.errors import DivconqError

    with pytest.raises(DivconqError, match=f"RunSettings.{field} must be"):
        RunSettings(**{field: value})
