"""Import runs traced to LangSmith into a ``TraceStore``, as if ``TraceRecorder`` had recorded them.

The input is what ``langsmith.Client.list_runs`` returns, one ``Run`` per JSON line. Runs
are grouped by trace: the root run gives the question and answer, its ``llm`` runs the
calls, ordered by the graph task they ran in as the recorder orders them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from divconq.distill.recorder import (
    _content_text,
    _fill_run,
    _llm_output_usage,
    _model_name,
    _one_line,
    _order_key,
    _role,
    _serialized_message,
    _token_counts,
    exact_match,
)
from divconq.distill.traces import Scorer, TraceCall, TraceRun, TraceStore
from divconq.errors import DivconqError

__all__ = ["import_langsmith_runs"]


def _ls_messages(inputs: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = inputs.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], list):
        messages = messages[0]  # a batch of prompts: the first (a graph call sends one)
    if isinstance(messages, list):
        converted = [_serialized_message(m) for m in messages if isinstance(m, Mapping)]
        return [m for m in converted if m is not None]
    prompts = inputs.get("prompts")
    if isinstance(prompts, list) and prompts:
        return [{"role": "user", "content": str(prompts[0])}]
    return []


def _ls_output(outputs: Mapping[str, Any] | None) -> tuple[str | None, Mapping[str, Any] | None]:
    """Output text and usage_metadata of a LangSmith llm run."""
    try:
        generation = (outputs or {})["generations"][0][0]
    except (KeyError, IndexError, TypeError):
        return None, None
    message = generation.get("message") if isinstance(generation, Mapping) else None
    kwargs = (message.get("kwargs") or message) if isinstance(message, Mapping) else {}
    text = generation.get("text") if isinstance(generation, Mapping) else None
    if not text and kwargs.get("content") is not None:
        text = _content_text(kwargs.get("content"))
    return text, kwargs.get("usage_metadata")


def _ls_call(run: Any, root_id: str) -> TraceCall:
    metadata = run.metadata or {}
    extra = run.extra or {}
    outputs = run.outputs or {}
    text, usage = _ls_output(outputs)
    counted = {"input_tokens": run.prompt_tokens, "output_tokens": run.completion_tokens}  # LangSmith's own
    tokens = _token_counts(counted, usage, _llm_output_usage(outputs.get("llm_output")))
    return TraceCall(
        call_id=str(run.id),
        role=_role(metadata, run.tags, metadata.get("langgraph_node")),
        messages=_ls_messages(run.inputs or {}),
        output=text,
        node=metadata.get("langgraph_node"),
        model=_model_name(metadata, extra.get("invocation_params"), outputs.get("llm_output")),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        seconds=run.latency,
        started_at=run.start_time.timestamp(),
        run_id=root_id,
    )


def _ls_trace(root: Any, members: list[Any], scorer: Scorer) -> TraceRun:
    by_id = {r.id: r for r in members}

    def task_key(run: Any) -> tuple[Any, ...]:
        while run.parent_run_id is not None and run.parent_run_id != root.id and run.parent_run_id in by_id:
            run = by_id[run.parent_run_id]
        return _order_key(run.metadata)

    llm_runs = sorted(
        (r for r in members if r.run_type in ("llm", "chat_model")), key=lambda r: (task_key(r), r.start_time)
    )
    calls = [replace(_ls_call(r, str(root.id)), seq=i) for i, r in enumerate(llm_runs)]
    run = TraceRun(
        run_id=str(root.id),
        question="",
        started_at=root.start_time.timestamp(),
        seconds=root.latency,
        source="langsmith",
        calls=calls,
    )
    if root.error or root.outputs is None:
        run.status = "error"
        run.error = _one_line(root.error or "the run had not finished when it was exported")
    _fill_run(run, root.inputs, root.outputs, root.metadata or {}, scorer)
    return run


def _read_langsmith_jsonl(path: Path) -> list[Any]:
    from langsmith.schemas import Run
    from pydantic import ValidationError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DivconqError(f"cannot read {path}: {exc}") from exc
    runs = []
    expected = "one LangSmith Run per line, as JSON (Run.model_dump_json())"
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DivconqError(f"{path}:{lineno}: invalid JSON ({exc.msg}): expected {expected}") from exc
        if not isinstance(record, dict) or "id" not in record or "run_type" not in record:
            got = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
            raise DivconqError(f"{path}:{lineno}: expected {expected} with 'id' and 'run_type', got {got}")
        try:
            runs.append(Run(**record))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DivconqError(f"{path}:{lineno}: field {where!r}: {first['msg']}; expected {expected}") from exc
    return runs


def import_langsmith_runs(jsonl_path: str | Path, store: TraceStore, *, scorer: Scorer | None = None) -> int:
    """Add runs exported from LangSmith (``Client.list_runs`` records, one JSON per line).

    Runs are grouped by trace; the root run (no parent) gives the question and answer,
    its ``llm`` runs the calls. Every trace must hold its root. Re-importing is a no-op
    (dedupe as in ``TraceStore.add_new_runs``). Returns how many runs were added.
    """
    path = Path(jsonl_path)
    by_trace: dict[str, list[Any]] = {}
    for run in _read_langsmith_jsonl(path):
        by_trace.setdefault(str(run.trace_id), []).append(run)
    traces = []
    for trace_id, members in by_trace.items():
        roots = [r for r in members if r.parent_run_id is None]
        if len(roots) != 1:
            raise DivconqError(
                f"{path}: trace {trace_id} has {len(roots)} root runs (parent_run_id null), expected 1: "
                "export whole traces, e.g. list_runs(trace_id=...) for each trace"
            )
        traces.append(_ls_trace(roots[0], members, scorer or exact_match))
    return store.add_new_runs(traces)
