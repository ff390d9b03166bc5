"""The command line: bad input gives one clear line and exit code 2; draw works offline."""

import subprocess
import sys

import pytest

from divconq.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "divconq.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", ""], "the question is empty"),
        (["ask", "What is 2+3?", "--context", "/nonexistent/passage.txt"], "cannot read context file"),
        (["ask", "What is 2+3?", "--decomposer", "nonsense"], "unknown model spec"),
        (["ask", "What is 2+3?", "--decomposer", "hf:/nonexistent/model"], "cannot load model"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("divconq: error")]) == 1


def test_missing_adapter_dir(tiny_model_dir, capsys):
    assert main(["ask", "What is 2+3?", "--decomposer", f"hf:{tiny_model_dir}+adapter=/nonexistent/adapter"]) == 2
    assert "holds no adapter_config.json" in capsys.readouterr().err


def test_ask_on_a_local_model_prints_route_answer_and_usage(tiny_model_dir, capsys):
    spec = f"hf:{tiny_model_dir}"
    assert main(["ask", "What is 2 + 3?", "--decomposer", spec, "--solver", spec, "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "Route: single" in out and "Answer:" in out and "decomposer calls  1" in out


def test_ask_json(tiny_model_dir, capsys):
    import json

    spec = f"hf:{tiny_model_dir}"
    assert main(["ask", "What is 2 + 3?", "--decomposer", spec, "--solver", spec, "--max-new-tokens", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"answer", "subquestions", "sub_answers", "route", "usage"} <= set(result)


def test_draw_writes_mermaid_and_png(tmp_path, capsys):
    out = tmp_path / "graph.png"
    assert main(["draw", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    mermaid = (tmp_path / "graph.mmd").read_text()
    for node in ("decompose", "propose", "answer_step", "solve_one", "solve_final", "solve_direct"):
        assert node in mermaid
    assert "__start__ -.-> decompose" in capsys.readouterr().out


@pytest.mark.parametrize("spec", ["3/2", "0/4", "1/0", "a/b", "2"])
def test_bad_shard_spec(spec, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "What is 2+3?", "answer": "5"}\n')
    args = ["collect", "--dataset", "jsonl", "--data", str(data), "--store", str(tmp_path / "t.db"), "--shard", spec]
    assert main(args) == 2
    assert "bad shard" in capsys.readouterr().err
    assert not (tmp_path / "t.db").exists()  # nothing is created before the input is checked


def test_shards_partition_the_questions():
    from divconq.cli import in_shard, parse_shard

    ids = [f"gsm8k-{i:04d}" for i in range(200)]
    shards = [{i for i in ids if in_shard(i, parse_shard(f"{k}/3"))} for k in (1, 2, 3)]
    assert set().union(*shards) == set(ids)
    assert sum(len(s) for s in shards) == len(ids)  # disjoint
    assert all(len(s) > 40 for s in shards)


def test_eval_leaves_out_training_ids_before_the_limit(tiny_model_dir, tmp_path, capsys):
    import json

    from divconq.distill.datasets import question_id

    data = tmp_path / "q.jsonl"
    questions = [f"What is {i} plus {i}?" for i in range(4)]
    data.write_text("".join(json.dumps({"question": q, "answer": str(2 * i)}) + "\n" for i, q in enumerate(questions)))
    excluded = tmp_path / "ids.txt"
    excluded.write_text(question_id("jsonl", questions[0]) + "\n")
    out = tmp_path / "results.jsonl"
    spec = f"hf:{tiny_model_dir}"
    args = ["eval", "--dataset", "jsonl", "--data", str(data), "--out", str(out), "--limit", "2", "--exclude-ids",
            str(excluded), "--decomposer", spec, "--solver", spec, "--max-new-tokens", "4", "--concurrency", "1", "--json"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question"] for r in rows] == questions[1:3]  # the excluded one is gone, then two are taken
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 2 and summary["roles"]["solver"]["input_tokens_per_q"] > 0


@pytest.mark.parametrize(
    "decomposer, shots, one_shot",
    [
        ("default+adapter=none", "auto", True),  # the bare embedded model gets a worked example
        ("default", "auto", False),  # the shipped distilled adapter does not need one
        ("openai:teacher@http://127.0.0.1:9/v1", "auto", False),
        ("default+adapter=none", "zero", False),  # the paper's untrained student: zero-shot
        ("openai:teacher@http://127.0.0.1:9/v1", "one", True),
    ],
)
def test_shots_choose_the_decomposer_prompt(decomposer, shots, one_shot):
    from divconq.cli import build_parser, prompts_for_cli

    args = build_parser().parse_args(["eval", "--dataset", "gsm8k", "--data", "x.jsonl", "--out", "r.jsonl",
                                      "--decomposer", decomposer, "--shots", shots])
    assert (prompts_for_cli(args).example is not None) is one_shot


def test_run_step_stops_a_script_on_a_failed_command(tmp_path, capsys):
    from divconq.cli import run_step

    with pytest.raises(SystemExit, match="'divconq sft' exited with 2"):
        run_step(["sft", "--store", str(tmp_path / "missing.db"), "--out", str(tmp_path / "out")])
    assert "does not exist" in capsys.readouterr().err


def test_version_and_verbose_flag_and_help_explain_specs_and_modes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("divconq ")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "openai:MODEL@http://HOST:PORT/v1" in text and "dynamic (one at a time)" in text and "-v, --verbose" in text


def test_trace_show_on_an_empty_store_names_the_list_command(tmp_path, capsys):
    from divconq.distill.traces import TraceStore

    with TraceStore(tmp_path / "empty.db"):
        pass
    assert main(["trace", "show", str(tmp_path / "empty.db")]) == 2
    err = capsys.readouterr().err
    assert "divconq trace list" in err and "--list" not in err
