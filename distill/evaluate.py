"""Evaluation: score a graph on a dataset, summarise accuracy against cost, compare runs.

``evaluate`` appends one JSON line per question to a results file and skips the ids
already there, so a stopped evaluation resumes where it was. ``summarise`` gives the
paper's figures: the score, tokens per question per role, the dollar cost per role from
a pricing table, and latency percentiles. ``report`` lays several result files out like
the paper's Table 1 and plots score against cost.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

from divconq.contract import ROLES
from divconq.distill.datasets import Example
from divconq.distill.metrics import gsm8k_lenient
from divconq.distill.metrics import score as score_prediction
from divconq.distill.runner import Outcome, RunSettings, compiled_graph, run_examples
from divconq.errors import DivconqError, OutputWriteError
from divconq.safeio import WriterLock, atomic_path, atomic_write, check_writable_target, os_error_line
from divconq.scrub import scrub_text, scrub_value

logger = logging.getLogger(__name__)


# Per-1K-token prices in dollars. The paper's GPT-3.5 prices, and its example of a 13B
# model priced at 13/175 of them (cost scaled by parameter count).
PAPER_PRICING: dict[str, dict[str, float]] = {
    "openai:gpt-3.5-turbo": {"input": 0.001, "output": 0.002},
    "13b-student": {"input": 0.001 * 13 / 175, "output": 0.002 * 13 / 175},
}


def load_pricing(path: str | Path | None) -> dict[str, dict[str, float]]:
    """A pricing table: ``{spec: {"input": $/1K tokens, "output": $/1K tokens}}``."""
    table = dict(PAPER_PRICING)
    if path is None:
        return table
    example = 'pass JSON like {"spec": {"input": 0.001, "output": 0.002}}'
    try:
        loaded = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = os_error_line(exc, path, "read") if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        raise DivconqError(f"cannot read pricing file {path} ({reason}): {example}") from None
    if not isinstance(loaded, dict):
        raise DivconqError(f"pricing file {path} holds a JSON {type(loaded).__name__}, not an object: {example}")
    for spec, prices in loaded.items():
        if not isinstance(prices, dict) or not {"input", "output"} <= set(prices):
            raise DivconqError(f"pricing file {path}: entry {spec!r} needs 'input' and 'output' prices per 1K tokens")
        try:
            table[spec] = {"input": float(prices["input"]), "output": float(prices["output"])}
        except (TypeError, ValueError):
            raise DivconqError(f"pricing file {path}: entry {spec!r} has prices that are not numbers: {example}") from None
        if not all(math.isfinite(v) and v >= 0 for v in table[spec].values()):
            raise DivconqError(f"pricing file {path}: entry {spec!r} needs prices of 0 or more: {example}")
    return table


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """The result lines of a results file; a torn last line (a killed run) is ignored.

    Anything else that is not a row ``divconq eval`` wrote (a JSON list, a row without an
    id, a binary file, a directory) is refused with the file and line, before it is used.
    """
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise DivconqError(f"results file {path} is a directory: pass the .jsonl file divconq eval wrote")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DivconqError(f"{path} is not a divconq results file (not UTF-8 text): pass the .jsonl file divconq eval wrote") from None
    except OSError as exc:
        raise DivconqError(os_error_line(exc, path, "read")) from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break  # the line being written when the run was killed
            raise DivconqError(f"{path} line {number} is not JSON ({exc.msg}): is this a divconq results file?") from None
        rows.append(_check_row(row, path, number))
    return rows


def _check_row(row: Any, path: Path, number: int) -> dict[str, Any]:
    """A results row as ``result_row`` writes it: the fields ``summarise`` reads, typed."""
    problem = None
    if not isinstance(row, dict):
        problem = f"a JSON {type(row).__name__}, not an object"
    elif not isinstance(row.get("id"), str):
        problem = "no 'id'"
    elif not isinstance(row.get("seconds"), (int, float)) or not isinstance(row.get("usage"), dict):
        problem = "no 'seconds' or 'usage'"
    elif not isinstance(row.get("score", 0.0), (int, float)):
        problem = "a 'score' that is not a number"
    if problem:
        raise DivconqError(f"{path} line {number} holds {problem}: is this a divconq results file (divconq eval --out)?")
    return row


def result_row(outcome: Outcome, dataset: str, run_info: dict[str, Any]) -> dict[str, Any]:
    """One results line: prediction, score, sub-questions, tokens and seconds per role."""
    example, output = outcome.example, outcome.output or {}
    prediction = output.get("answer") or ""
    scores = score_prediction(dataset, prediction, list(example.answers)) if example.answers else {"score": 0.0}
    if dataset == "gsm8k" and example.answers:
        # The paper's lenient scorer reads the whole reply's last line, not our extracted answer.
        response = output.get("solution") or prediction
        scores["lenient"] = max(gsm8k_lenient(response, gold) for gold in example.answers)
    if outcome.error:
        scores = {key: 0.0 for key in scores}  # a question the solver never answered is wrong
    return scrub_value({  # the question, the outputs, the specs and the id may all quote a credential
        "id": example.id,
        "question": example.question,
        "gold": list(example.answers),
        "prediction": prediction,
        **scores,
        "route": output.get("route"),
        "subquestions": output.get("subquestions") or [],
        "sub_answers": output.get("sub_answers") or [],
        "usage": output.get("usage") or {},
        "seconds": round(outcome.seconds, 3),
        "error": outcome.error,
        **run_info,
    })


def _repair_tail(path: Path) -> None:
    """End the file at a line boundary before appending to it.

    A torn last line (the run was killed mid-write) is cut off, so the next row does not
    glue onto it and the file stays readable; its question is not in ``done`` and runs
    again. A whole last line that only lacks its newline gets one.
    """
    if not path.exists() or not path.stat().st_size:
        return
    with path.open("rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        handle.seek(end - 1)
        if handle.read(1) == b"\n":
            return
        start, tail = end, b""
        while start > 0:
            step = min(1 << 16, start)
            handle.seek(start - step)
            tail = handle.read(step) + tail
            start -= step
            cut = tail.rfind(b"\n")
            if cut >= 0:
                start, tail = start + cut + 1, tail[cut + 1:]
                break
        try:
            json.loads(tail)
        except ValueError:
            pass
        else:
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            return
    _keep_prefix(path, start)


def _keep_prefix(path: Path, size: int) -> None:
    """Rewrite ``path`` as its first ``size`` bytes, through a temporary file: a failure
    (a full disk) leaves the file as it was, torn line and all, never shorter."""
    import shutil

    with path.open("rb") as source, atomic_path(path, "results file") as scratch:
        with open(scratch, "wb") as target:
            remaining = size
            while remaining:
                chunk = source.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                target.write(chunk)
                remaining -= len(chunk)
            shutil.copymode(path, scratch)


# What makes two runs' rows belong in one results file: the same questions, scored the
# same way, with the same prompts. Model specs may differ (a server on another port).
RUN_IDENTITY = ("dataset", "slice", "prompts", "prompt_version", "mode", "decomposer_engine", "solver_engine")
# Recorded since llama.cpp became an engine: a file written before says nothing of them.
_RECORDED_LATER = ("decomposer_engine", "solver_engine")


def check_same_run(rows: list[dict[str, Any]], run_info: dict[str, Any], out: Path) -> None:
    """Refuse to extend a results file written by a run of another slice, prompt set or mode."""
    if not rows:
        return
    first = rows[0]
    for key in RUN_IDENTITY:
        if key in _RECORDED_LATER and key not in first:
            continue
        if key in run_info and first.get(key) != scrub_value(run_info[key]):  # rows are written scrubbed
            was = first.get(key, "not recorded")
            raise DivconqError(
                f"{out} holds results of {key} {was!r}, this run is {key} {run_info[key]!r}: "
                "pass another --out file (results of different runs cannot be compared row by row)"
            )


def evaluate(
    graph: Any,
    examples: list[Example],
    *,
    dataset: str,
    out: str | Path,
    run_info: dict[str, Any],
    settings: RunSettings = RunSettings(),
    exclude_ids: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Score ``graph`` on ``examples``, appending to ``out``; returns every row in the file.

    ``graph`` is a compiled graph, or a picklable function that builds one, which
    ``settings.processes > 1`` needs (see ``run_examples``); one process builds it only
    after ``out`` is checked against ``run_info``, so a file of another run is refused
    before any model loads. Rows are written by this process only, one whole line each,
    as questions finish.
    """
    out = check_writable_target(out, "results file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DivconqError(os_error_line(exc, out)) from None
    lost: list[str] = []
    with WriterLock(out, "results file"):  # a second eval on this file would duplicate its rows
        existing = read_results(out)
        check_same_run(existing, run_info, out)
        if settings.processes == 1:  # a graph factory builds here: after the run is checked, before the file is touched
            graph = compiled_graph(graph)
        done = {row["id"] for row in existing}
        excluded = set(exclude_ids)
        # Ids are stored scrubbed, so they are compared scrubbed.
        todo = [e for e in examples if scrub_text(e.id) not in done and e.id not in excluded]
        _repair_tail(out)
        try:
            # Unbuffered appends: each row is one write, and a failed one leaves nothing
            # queued to fail again when the file is closed.
            fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DivconqError(os_error_line(exc, out)) from None
        try:

            def write(outcome: Outcome) -> None:
                if outcome.transient:  # the server, not the question: left for the rerun to retry
                    lost.append(outcome.example.id)
                    return
                line = (json.dumps(result_row(outcome, dataset, run_info)) + "\n").encode("utf-8")
                try:
                    while line:
                        line = line[os.write(fd, line):]
                except OSError as exc:  # a full disk: stop now; the rerun cuts a torn last line
                    raise OutputWriteError(os_error_line(exc, out) + "; finished rows are kept, rerun to resume") from None

            run_examples(graph, todo, write, settings=settings, total=len(todo), description=f"eval {dataset}")
        finally:
            os.close(fd)
    if lost:
        logger.warning("%d questions lost to connection errors are not in %s: rerun to retry them", len(lost), out)
    return read_results(out)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def summarise(rows: list[dict[str, Any]], pricing: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Score, tokens and dollars per question per role, latency p50/p95."""
    pricing = pricing or PAPER_PRICING
    n = len(rows)
    if not n:
        raise DivconqError("no results to summarise: run divconq eval first")
    first = rows[0]
    summary: dict[str, Any] = {
        "n": n,
        "dataset": first.get("dataset"),
        "decomposer": first.get("decomposer"),
        "solver": first.get("solver"),
        "mode": first.get("mode"),
        "score": 100 * sum(r.get("score", 0.0) for r in rows) / n,
        "errors": sum(1 for r in rows if r.get("error")),
        "latency_p50": _percentile([r["seconds"] for r in rows], 50),
        "latency_p95": _percentile([r["seconds"] for r in rows], 95),
        "roles": {},
    }
    if any("f1" in r for r in rows):
        summary["f1"] = 100 * sum(r.get("f1", 0.0) for r in rows) / n
    for role in ROLES:
        tokens_in = sum(r["usage"].get(role, {}).get("input_tokens", 0) for r in rows) / n
        tokens_out = sum(r["usage"].get(role, {}).get("output_tokens", 0) for r in rows) / n
        prices = pricing.get(first.get(f"{role}_price_key") or first.get(role) or "")
        cost = None if prices is None else (tokens_in * prices["input"] + tokens_out * prices["output"]) / 1000
        summary["roles"][role] = {
            "input_tokens_per_q": tokens_in,
            "output_tokens_per_q": tokens_out,
            "seconds_per_q": sum(r["usage"].get(role, {}).get("seconds", 0.0) for r in rows) / n,
            "dollars_per_q": cost,
        }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['dataset']}: {summary['n']} questions, decomposer {summary['decomposer']}, solver {summary['solver']}, mode {summary['mode']}",
        f"score {summary['score']:.2f}" + (f"  F1 {summary['f1']:.2f}" if "f1" in summary else "") + f"  errors {summary['errors']}",
        f"latency p50 {summary['latency_p50']:.2f} s  p95 {summary['latency_p95']:.2f} s",
    ]
    for role, stats in summary["roles"].items():
        cost = "n/a (no price)" if stats["dollars_per_q"] is None else f"${stats['dollars_per_q']:.6f}"
        lines.append(
            f"  {role:<10} tokens/q in {stats['input_tokens_per_q']:.1f} out {stats['output_tokens_per_q']:.1f}"
            f"  {stats['seconds_per_q']:.2f} s/q  cost/q {cost}"
        )
    return "\n".join(lines)


def _results_to_report(path: str | Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        raise DivconqError(f"results file {path} does not exist: check the path, or run divconq eval --out {path}")
    rows = read_results(path)
    if not rows:
        raise DivconqError(f"results file {path} holds no results: run divconq eval --out {path} first")
    return rows


def report(paths: list[str | Path], *, pricing: dict[str, dict[str, float]] | None = None,
           markdown_out: str | Path | None = None, png_out: str | Path | None = None) -> str:
    """Table 1 of the paper for several result files, as Markdown; optionally a score-vs-cost PNG."""
    for target, what in ((markdown_out, "--markdown file"), (png_out, "--png file")):
        if target:  # checked before any work, so a bad path costs nothing
            check_writable_target(target, what)
    if png_out:
        plot_format(png_out)
    # Each row is named by its results file ("sd_t.jsonl" -> sd_t): specs with adapter
    # paths and server URLs are too long to tell rows apart at a glance.
    summaries = [{"run": Path(p).stem, **summarise(_results_to_report(p), pricing)} for p in paths]

    def dollars(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.6f}"

    lines = [
        "| run | decomposer | solver | mode | n | score | decomposition cost ($/q) | solving cost ($/q) | decomposer tokens/q | solver tokens/q |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        d, v = s["roles"]["decomposer"], s["roles"]["solver"]
        lines.append(
            f"| {s['run']} | {s['decomposer']} | {s['solver']} | {s['mode']} | {s['n']} | {s['score']:.2f} | "
            f"{dollars(d['dollars_per_q'])} | {dollars(v['dollars_per_q'])} | "
            f"{d['input_tokens_per_q'] + d['output_tokens_per_q']:.0f} | {v['input_tokens_per_q'] + v['output_tokens_per_q']:.0f} |"
        )
    table = scrub_text("\n".join(lines))  # specs can carry credentials (a server URL with a password)
    if markdown_out:
        atomic_write(markdown_out, table + "\n", what="--markdown file")
    if png_out:
        _plot(summaries, Path(png_out))
    return table


def plot_format(path: str | Path) -> str:
    """The image format a plot path asks for (its suffix); refused up front if matplotlib has none."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    suffix = Path(path).suffix.lower().lstrip(".")
    supported = FigureCanvasAgg.get_supported_filetypes()
    if suffix not in supported:
        raise DivconqError(f"cannot plot to {path}: name a file ending in one of .{', .'.join(sorted(supported))}")
    return suffix


def _plot(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in summaries:
        costs = [s["roles"][r]["dollars_per_q"] for r in ROLES]
        tokens = sum(s["roles"][r]["input_tokens_per_q"] + s["roles"][r]["output_tokens_per_q"] for r in ROLES)
        x = sum(costs) if all(c is not None for c in costs) else tokens
        ax.scatter([x], [s["score"]])
        ax.annotate(scrub_text(f"{s['run']} ({s['mode']})"), (x, s["score"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    priced = all(s["roles"][r]["dollars_per_q"] is not None for s in summaries for r in ROLES)
    ax.set_xlabel("cost per question ($)" if priced else "tokens per question")
    ax.set_ylabel("score")
    ax.set_title("Score against cost")
    fig.tight_layout()
    try:
        with atomic_path(path, "--png file") as scratch:  # an earlier plot stays whole if this fails
            fig.savefig(scratch, format=plot_format(path), dpi=120)
    finally:
        plt.close(fig)
