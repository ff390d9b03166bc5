"""Trace stores and results files in trouble: a second writer, a damaged page, a read-only
folder, an unreadable file, a full disk, a failing model. Each ends in one clear line and
a non-zero exit, with nothing already collected lost; real processes and real SQLite files."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from fakes import ScriptedChatModel
from langgraph.types import RetryPolicy
from unprivileged import run_unprivileged

from divconq.cli import main
from divconq.distill.datasets import Example
from divconq.distill.runner import RunSettings, run_examples
from divconq.distill import TraceRecorder, TraceRun, TraceStore
from divconq.errors import DivconqError, OutputWriteError
from divconq.graph import build_graph

QUICK = RunSettings(concurrency=2, retries=0, backoff_seconds=0.0, progress=False)


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "divconq.cli", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def _one_error_line(result, message):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("divconq: error")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def _fill(path, runs=300, dataset="jsonl"):
    with TraceStore(path) as store:
        for i in range(runs):
            store.write_run(TraceRun(run_id=f"r{i:04d}", question=f"What is {i} plus {i}? " + "x" * 400,
                                     example_id=f"e{i}", dataset=dataset, answer=str(2 * i), gold=[str(2 * i)],
                                     correct=True, route="static", decomposition=f"1. What is {i}?",
                                     subquestions=[f"What is {i}?"]))


def _questions(tmp_path, n):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(n)))
    return data


# --------------------------------------------------------------------------- one writer

HOLD_STORE = textwrap.dedent("""
    import sys, time
    from divconq.distill.traces import TraceStore
    with TraceStore(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.fixture
def held_store(tmp_path):
    """A trace store held open for writing by another live process (like a running collect)."""
    path = tmp_path / "traces.db"
    _fill(path, runs=3)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_STORE, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield path, holder.pid
    holder.kill()
    holder.wait()


def test_a_second_collect_on_a_store_is_refused_naming_the_first(held_store, tmp_path):
    path, pid = held_store
    result = _cli("collect", "--dataset", "jsonl", "--data", str(_questions(tmp_path, 4)), "--store", str(path))
    _one_error_line(result, f"is being written by process {pid}")
    with TraceStore(path, readonly=True) as store:  # readers are never refused
        assert store.count() == 3


@pytest.mark.parametrize("verb", ["merge", "import"])
def test_other_store_writers_are_refused_too(held_store, tmp_path, verb):
    path, pid = held_store
    source = tmp_path / "other.db"
    _fill(source, runs=2, dataset="other")
    langsmith = tmp_path / "runs.jsonl"
    langsmith.write_text(_one_langsmith_run())
    args = ["trace", "merge", str(path), str(source)] if verb == "merge" else ["trace", "import", str(path), str(langsmith)]
    _one_error_line(_cli(*args), f"process {pid}")


def _one_langsmith_run() -> str:
    """One real divconq graph run, traced as LangSmith records it."""
    from langchain_core.tracers.run_collector import RunCollectorCallbackHandler
    from test_traces import _langsmith_lines

    model = ScriptedChatModel(respond=lambda messages: "The answer is: 4")
    graph = build_graph(model, model, mode="single", retry=RetryPolicy(max_attempts=1)).compile()
    collector = RunCollectorCallbackHandler(_schema_format="original+chat")
    graph.invoke({"question": "What is 2+2?"}, config={"callbacks": [collector]})
    return "\n".join(_langsmith_lines(collector.traced_runs[0])) + "\n"


EVAL_HOLDING = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[2])
    from fakes import ScriptedChatModel
    from langgraph.types import RetryPolicy
    from divconq.distill.datasets import Example
    from divconq.distill.evaluate import evaluate
    from divconq.distill.runner import RunSettings
    from divconq.graph import build_graph

    def held(messages):
        # The first answer waits, inside evaluate (its lock held), until the test releases it:
        # so the second eval meets a writer however slowly either process starts.
        if not os.path.exists(sys.argv[3] + ".started"):
            open(sys.argv[3] + ".started", "w").close()
            print("started", flush=True)
            deadline = time.monotonic() + 300
            while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return "The answer is: 4"
    model = ScriptedChatModel(respond=held)
    graph = build_graph(model, model, mode="single", retry=RetryPolicy(max_attempts=1)).compile()
    examples = [Example(f"q{i}", f"What is {i}?", None, ("4",)) for i in range(30)]
    evaluate(graph, examples, dataset="jsonl", out=sys.argv[1], run_info={"dataset": "jsonl"},
             settings=RunSettings(concurrency=1, progress=False))
""")


def test_a_second_eval_on_a_results_file_is_refused_and_nothing_is_duplicated(tmp_path):
    out, release = tmp_path / "results.jsonl", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", EVAL_HOLDING, str(out), os.path.dirname(__file__), str(release)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "started"
        second = _cli("eval", "--dataset", "jsonl", "--data", str(_questions(tmp_path, 30)), "--out", str(out))
    finally:
        release.touch()
    _one_error_line(second, f"results file {out} is being written by process {first.pid}")
    assert first.wait(timeout=120) == 0
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 30 == len(set(ids))


# --------------------------------------------------------------------------- damaged, read-only, unreadable


def _damage(path, page_fraction=0.5):
    page = 4096
    offset = int(path.stat().st_size // page * page_fraction) * page
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(bytes((i * 37 + 11) % 256 for i in range(page)))


@pytest.fixture
def damaged_store(tmp_path):
    path = tmp_path / "traces.db"
    _fill(path)
    _damage(path)
    assert path.read_bytes()[:16] == b"SQLite format 3\x00"  # the header is whole: only a page below it is not
    return path


@pytest.mark.parametrize("args", [
    ["trace", "list", "{store}"],
    ["trace", "show", "{store}"],
    ["sft", "--store", "{store}", "--out", "{tmp}/sft"],
    ["collect", "--dataset", "jsonl", "--data", "{data}", "--store", "{store}"],
    ["trace", "merge", "{tmp}/merged.db", "{store}"],
])
def test_a_damaged_store_is_refused_before_use(damaged_store, tmp_path, args):
    before = damaged_store.read_bytes()
    values = {"store": str(damaged_store), "tmp": str(tmp_path), "data": str(_questions(tmp_path, 3))}
    result = _cli(*[a.format(**values) for a in args])
    _one_error_line(result, "is damaged")
    assert damaged_store.read_bytes() == before  # nothing was written into it
    assert not (tmp_path / "sft").exists() and not (tmp_path / "merged.db").exists()


@pytest.fixture
def read_only_store(tmp_path):
    """A whole store in a folder nobody may write: what a read-only filesystem looks like."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "traces.db"
    _fill(path, runs=5)
    os.chmod(path, 0o444)
    os.chmod(folder, 0o555)
    yield path
    os.chmod(folder, 0o755)


@pytest.mark.parametrize("args, expect", [
    (["trace", "list", "{store}"], "r0004"),
    (["trace", "show", "{store}"], "run r0000"),
    (["sft", "--store", "{store}", "--out", "{tmp}/sft", "--val-fraction", "0"], "S_D-T"),
])
def test_readers_open_a_read_only_store(read_only_store, tmp_path, args, expect):
    result = run_unprivileged([a.format(store=read_only_store, tmp=tmp_path) for a in args])
    assert result.returncode == 0, result.stderr[-2000:]
    assert expect in result.stdout


def test_a_writer_is_told_the_store_is_read_only(read_only_store, tmp_path):
    result = run_unprivileged(["collect", "--dataset", "jsonl", "--data", str(_questions(tmp_path, 2)),
                               "--store", str(read_only_store)])
    _one_error_line(result, "read-only")


def test_an_unreadable_store_is_one_line(tmp_path):
    path = tmp_path / "traces.db"
    _fill(path, runs=2)
    os.chmod(path, 0)
    for args in (["trace", "list", str(path)], ["sft", "--store", str(path), "--out", str(tmp_path / "o")]):
        _one_error_line(run_unprivileged(args), "permission denied")


def test_merge_creates_no_output_when_a_source_is_bad(tmp_path):
    good = tmp_path / "good.db"
    _fill(good, runs=2)
    (tmp_path / "bad.db").write_text("not a database")
    target = tmp_path / "all.db"
    assert main(["trace", "merge", str(target), str(good), str(tmp_path / "bad.db")]) == 2
    assert main(["trace", "merge", str(target), str(good), str(tmp_path / "missing.db")]) == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("all.db")]


def test_the_integrity_check_is_bounded_in_time(tmp_path, caplog):
    from divconq.distill.traces import check_integrity

    path = tmp_path / "traces.db"
    _fill(path)
    db = sqlite3.connect(path)
    check_integrity(db, path, seconds=0.0)  # out of time at once: noted, not refused
    assert "integrity check" in caplog.text
    check_integrity(db, path)  # a whole store passes
    db.close()


# --------------------------------------------------------------------------- failing runs


def _counting_graph(calls, fail=lambda question: False):
    def reply(messages):
        text = str(messages[-1].content)
        calls.append(text)
        if fail(text):
            raise ConnectionError("the server went away")
        return "The answer is: 4"

    model = ScriptedChatModel(respond=reply)
    return build_graph(model, model, mode="single", retry=RetryPolicy(max_attempts=1)).compile()


def test_a_full_store_stops_the_collection_and_keeps_what_it_finished(tmp_path):
    path = tmp_path / "traces.db"
    examples = [Example(f"q{i}", f"What is {i}? " + "y" * 2000, None, ("4",)) for i in range(200)]
    calls: list[str] = []
    with TraceStore(path) as store:
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 40}")  # SQLite's own "database or disk is full"
        recorder = TraceRecorder(store)

        def config_for(example):
            return {"callbacks": [recorder], "metadata": {"example_id": example.id, "dataset": "jsonl", "gold": ["4"]}}

        with pytest.raises(OutputWriteError, match="full"):
            run_examples(_counting_graph(calls), examples, lambda outcome: None, config_for=config_for, settings=QUICK)
        kept = store.count()
    assert 0 < kept < 200
    assert len(calls) <= kept + 4  # stopped at once: not every remaining question went to the model
    with TraceStore(path, readonly=True) as store:
        assert store.count() == kept and all(run.status == "ok" for run in store.runs(status=None))


FULL_DISK_COLLECT = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from divconq.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_collect_on_a_full_disk_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    path = tmp_path / "traces.db"
    _fill(path, runs=3)
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}? " + "z" * 3000, "answer": "4"}) + "\n"
                            for i in range(40)))
    spec = f"hf:{tiny_model_dir}"
    limit = path.stat().st_size + 64 * 1024
    result = subprocess.run([sys.executable, "-c", FULL_DISK_COLLECT, str(limit), "collect", "--dataset", "jsonl",
                             "--data", str(data), "--store", str(path), "--decomposer", spec, "--solver", spec,
                             "--mode", "single", "--max-new-tokens", "2", "--concurrency", "1"],
                            capture_output=True, text=True, timeout=600)
    _one_error_line(result, "cannot write trace store")
    assert "callback" not in result.stderr  # no line per question from LangChain's callback manager
    with TraceStore(path, readonly=True) as store:
        assert 3 <= store.count() < 43


def test_collect_exits_non_zero_when_every_question_fails(tmp_path):
    path = tmp_path / "traces.db"
    spec = "openai:m@http://127.0.0.1:9/v1"  # nothing listens on the discard port: refused at once
    result = _cli("collect", "--dataset", "jsonl", "--data", str(_questions(tmp_path, 2)), "--store", str(path),
                  "--decomposer", spec, "--solver", spec, "--timeout", "2")
    _one_error_line(result, "all 2 questions failed")
    with TraceStore(path, readonly=True) as store:  # one error run per question, not one per attempt
        runs = list(store.runs(status=None))
        assert len(runs) == 2 == len({r.example_id for r in runs}) and {r.status for r in runs} == {"error"}


def test_a_retried_question_keeps_one_row_the_latest(tmp_path):
    path = tmp_path / "traces.db"
    attempts = {"n": 0}

    def flaky(question):
        attempts["n"] += 1
        return attempts["n"] <= 2  # the first two attempts fail, the third works

    calls: list[str] = []
    settings = RunSettings(concurrency=1, retries=2, backoff_seconds=0.0, progress=False)
    with TraceStore(path) as store:
        recorder = TraceRecorder(store)
        config = {"callbacks": [recorder], "metadata": {"example_id": "q1", "dataset": "jsonl", "gold": ["4"]}}
        stats = run_examples(_counting_graph(calls, flaky), [Example("q1", "What is 2+2?", None, ("4",))],
                             lambda outcome: None, config_for=lambda e: config, settings=settings)
        assert stats.finished == 1 and len(calls) == 3
        runs = list(store.runs(status=None))
    assert [(r.example_id, r.status) for r in runs] == [("q1", "ok")]


def test_trace_show_shows_a_finished_run_before_an_error_run(tmp_path, capsys):
    path = tmp_path / "traces.db"
    with TraceStore(path) as store:
        store.write_run(TraceRun(run_id="bad", question="Q1?", example_id="1", dataset="d", status="error", error="boom"))
        store.write_run(TraceRun(run_id="good", question="Q2?", example_id="2", dataset="d", answer="4"))
    assert main(["trace", "show", str(path)]) == 0
    assert capsys.readouterr().out.startswith("run good")


def test_concurrent_threads_of_one_process_share_the_lock(tmp_path):
    # The CLI takes the lock before loading models, then the writer takes it again.
    from divconq.safeio import WriterLock

    target = tmp_path / "r.jsonl"
    with WriterLock(target), WriterLock(target):
        errors = []

        def again():
            try:
                with WriterLock(target):
                    pass
            except DivconqError as exc:
                errors.append(exc)

        thread = threading.Thread(target=again)
        thread.start()
        thread.join()
    assert errors == []


def test_eval_on_a_full_disk_stops_with_whole_rows(tmp_path, tiny_model_dir):
    out = tmp_path / "results.jsonl"
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i}? " + "w" * 3000, "answer": "4"}) + "\n"
                            for i in range(40)))
    spec = f"hf:{tiny_model_dir}"
    result = subprocess.run([sys.executable, "-c", FULL_DISK_COLLECT, str(32 * 1024), "eval", "--dataset", "jsonl",
                             "--data", str(data), "--out", str(out), "--decomposer", spec, "--solver", spec,
                             "--mode", "single", "--max-new-tokens", "2", "--concurrency", "1"],
                            capture_output=True, text=True, timeout=600)
    _one_error_line(result, "cannot write")
    lines = out.read_text().splitlines()
    assert 0 < len(lines) < 40 and all(json.loads(line)["id"] for line in lines[:-1])
    # The rerun (with room) repairs a torn last line and finishes the rest, each id once.
    again = subprocess.run([sys.executable, "-m", "divconq.cli", "eval", "--dataset", "jsonl", "--data", str(data),
                            "--out", str(out), "--decomposer", spec, "--solver", spec, "--mode", "single",
                            "--max-new-tokens", "2", "--concurrency", "1", "--json"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert len(ids) == 40 == len(set(ids))
