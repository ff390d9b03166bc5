"""summarise, report and the pricing table: the paper's Table 1 figures from result files
written by a real evaluation (fake models, fixed token counts, so every figure is known)."""

import json

import pytest
from fakes import ScriptedChatModel
from langgraph.types import RetryPolicy

from divconq.cli import main
from divconq.distill.datasets import Example
from divconq.distill.evaluate import PAPER_PRICING, evaluate, load_pricing, read_results, report, summarise
from divconq.distill.runner import RunSettings
from divconq.errors import DivconqError
from divconq.graph import build_graph

QUICK = RunSettings(concurrency=1, retries=0, backoff_seconds=0.0, progress=False)
QUESTIONS = [Example(f"q{i}", f"Question {i}: how many clips?", None, ("72",)) for i in range(4)]


def run(tmp_path, name, decomposer_reply, solver_reply, *, spec="teacher"):
    """Evaluate 4 questions; decomposer calls cost 100 in / 20 out tokens, solver calls 50 / 10."""
    decomposer = ScriptedChatModel(respond=lambda m: decomposer_reply, input_tokens=100, output_tokens=20)
    solver = ScriptedChatModel(respond=lambda m: solver_reply, input_tokens=50, output_tokens=10)
    graph = build_graph(decomposer, solver, retry=RetryPolicy(max_attempts=1)).compile()
    out = tmp_path / f"{name}.jsonl"
    info = {"dataset": "gsm8k", "decomposer": spec, "solver": "teacher", "mode": "static"}
    evaluate(graph, QUESTIONS, dataset="gsm8k", out=out, run_info=info, settings=QUICK)
    return out


def test_summary_counts_tokens_and_prices_each_role(tmp_path):
    out = run(tmp_path, "static", "1. How many in May?\n2. How many in total?", "1. 24\n2. 72\nThe answer is: 72")
    pricing = {"teacher": {"input": 0.001, "output": 0.002}}
    summary = summarise(read_results(out), pricing)
    assert summary["n"] == 4 and summary["score"] == 100.0 and summary["errors"] == 0
    decomposer, solver = summary["roles"]["decomposer"], summary["roles"]["solver"]
    assert (decomposer["input_tokens_per_q"], decomposer["output_tokens_per_q"]) == (100, 20)
    assert decomposer["dollars_per_q"] == pytest.approx((100 * 0.001 + 20 * 0.002) / 1000)
    # Static solving is one call: the sub-questions and the question together.
    assert (solver["input_tokens_per_q"], solver["output_tokens_per_q"]) == (50, 10)
    assert solver["dollars_per_q"] == pytest.approx((50 * 0.001 + 10 * 0.002) / 1000)
    assert summary["latency_p50"] <= summary["latency_p95"]


def test_a_spec_missing_from_the_pricing_table_has_no_cost(tmp_path):
    out = run(tmp_path, "single", "No decomposition", "The answer is: 71", spec="openai:gpt-3.5-turbo")
    summary = summarise(read_results(out), {"openai:gpt-3.5-turbo": PAPER_PRICING["openai:gpt-3.5-turbo"]})
    assert summary["score"] == 0.0
    assert summary["roles"]["decomposer"]["dollars_per_q"] == pytest.approx((100 * 0.001 + 20 * 0.002) / 1000)
    assert summary["roles"]["solver"]["dollars_per_q"] is None  # "teacher" has no price


def test_report_names_rows_by_file_and_writes_markdown_and_png(tmp_path):
    teacher = run(tmp_path, "teacher_static", "1. How many in May?\n2. How many in total?", "The answer is: 72")
    student = run(tmp_path, "sd_t", "1. How many in May?", "The answer is: 70", spec="default+adapter=/long/path/to/adapter")
    pricing = {"teacher": {"input": 0.001, "output": 0.002}, "default+adapter=/long/path/to/adapter": PAPER_PRICING["13b-student"]}
    md, png = tmp_path / "table.md", tmp_path / "table.png"
    table = report([teacher, student], pricing=pricing, markdown_out=md, png_out=png)
    header, rule, *rows = table.splitlines()
    assert header.startswith("| run | decomposer | solver | mode | n | score |")
    assert rows[0].startswith("| teacher_static | teacher | teacher | static | 4 | 100.00 | 0.000140 |")
    student_cost = (100 * 0.001 + 20 * 0.002) * 13 / 175 / 1000
    assert rows[1].startswith(f"| sd_t | default+adapter=/long/path/to/adapter | teacher | static | 4 | 0.00 | {student_cost:.6f} |")
    assert md.read_text() == table + "\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_reads_a_pricing_file(tmp_path, capsys):
    out = run(tmp_path, "static", "No decomposition", "The answer is: 72")
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"teacher": {"input": 0.01, "output": 0.03}}))
    assert main(["report", str(out), "--pricing", str(prices)]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.startswith("| static | teacher | teacher | static | 4 | 100.00 | 0.001600 |")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "cannot read pricing file"),
    (json.dumps({"teacher": {"input": 0.001}}), "entry 'teacher' needs 'input' and 'output'"),
])
def test_a_bad_pricing_file_is_named_with_the_fix(tmp_path, content, problem):
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(DivconqError, match=problem):
        load_pricing(path)


def test_summarising_nothing_says_to_run_eval_first():
    with pytest.raises(DivconqError, match="run divconq eval first"):
        summarise([])
