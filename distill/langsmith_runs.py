"""Import runs traced to LangSmith into a ``TraceStore``, as if ``TraceRecorder`` had recorded them.

The input is one LangSmith run per JSON line, in either record shape the SDK returns:

- ``client.runs.query(...)`` (``langsmith.types.run.Run``): ``parent_run_ids`` (root
  first) and ``is_root``, an uppercase ``run_type``, ``metadata`` at the top level;
- ``client.list_runs(...)`` (``langsmith.schemas.Run``, e.g. ``Run.model_dump_json()``):
  ``parent_run_id``, a lowercase ``run_type``, ``extra["metadata"]``.

Both are read into one ``_LsRun`` and grouped by trace. In each trace every run of a
divconq graph becomes one ``TraceRun``, found as the recorder finds it: the parent of the
outermost runs carrying the divconq node metadata. So an agent trace that called the
graph twice through ``as_tool`` gives two runs, and the agent's own model calls none.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from divconq.distill.records import (
    call_role,
    content_text,
    fill_run,
    is_divconq_task,
    llm_output_usage,
    model_name,
    one_line,
    order_key,
    serialized_message,
    token_counts,
)
from divconq.distill.metrics import Metric, metric_or_scorer
from divconq.distill.traces import TraceCall, TraceRun, TraceStore
from divconq.errors import DivconqError
from divconq.safeio import os_error_line

__all__ = ["import_langsmith_runs", "read_langsmith_runs"]

log = logging.getLogger(__name__)

NO_DIVCONQ_RUN = "no divconq graph ran in this trace"
_QUERY_FIELDS = "id, trace_id, run_type, start_time, is_root, parent_run_ids, inputs, outputs, metadata"
_LIST_FIELDS = "id, trace_id, run_type, start_time, parent_run_id, inputs, outputs, extra"
_EXPECTED = (
    f"one LangSmith run per line: client.runs.query() records ({_QUERY_FIELDS}) "
    f"or list_runs() / Run.model_dump_json() records ({_LIST_FIELDS})"
)


@dataclass
class _LsRun:
    """One LangSmith run, whichever shape it came in."""

    id: str
    trace_id: str
    parent_id: str | None
    run_type: str  # lowercase: chain, llm, tool, ...
    start_time: datetime
    latency: float | None = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, Any] | None = None
    error: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# --------------------------------------------------------------------------- reading


def _is_query_shape(record: Mapping[str, Any]) -> bool:
    run_type = record.get("run_type")
    return "is_root" in record or "latency_seconds" in record or (isinstance(run_type, str) and run_type.isupper())


def _validated(model: Any, record: dict[str, Any], where: str) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise DivconqError(f"{where}: field {name!r}: {first['msg']}; expected {_EXPECTED}") from exc


def _from_query(record: dict[str, Any], where: str) -> _LsRun:
    from langsmith.types.run import Run

    run = _validated(Run, record, where)
    missing = [name for name in ("id", "trace_id", "run_type", "start_time") if getattr(run, name) is None]
    if run.is_root is None and run.parent_run_ids is None:
        missing.append("is_root or parent_run_ids")
    if missing:
        raise DivconqError(
            f"{where}: a runs.query() record without {', '.join(missing)}: select them "
            f"(selects=[...]) so each line has {_QUERY_FIELDS}"
        )
    extra = run.extra or {}
    metadata = run.metadata if run.metadata is not None else extra.get("metadata") or {}
    parent = None if run.is_root or not run.parent_run_ids else str(run.parent_run_ids[-1])
    return _LsRun(
        id=str(run.id), trace_id=str(run.trace_id), parent_id=parent, run_type=run.run_type.lower(),
        start_time=run.start_time, latency=run.latency_seconds, inputs=run.inputs or {}, outputs=run.outputs,
        error=run.error, metadata=metadata, extra=extra, tags=list(run.tags or []),
        prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
    )


def _from_list(record: dict[str, Any], where: str) -> _LsRun:
    from langsmith.schemas import Run

    run = _validated(Run, record, where)
    parent = run.parent_run_id or (run.parent_run_ids[-1] if run.parent_run_ids else None)
    return _LsRun(
        id=str(run.id), trace_id=str(run.trace_id or run.id), parent_id=None if parent is None else str(parent),
        run_type=run.run_type.lower(), start_time=run.start_time, latency=run.latency, inputs=run.inputs or {},
        outputs=run.outputs, error=run.error, metadata=run.metadata or {}, extra=run.extra or {},
        tags=list(run.tags or []), prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens,
    )


def read_langsmith_runs(path: str | Path) -> list[_LsRun]:
    """The runs of a LangSmith JSONL export, in either record shape; bad input names its line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DivconqError(f"{path} is not a LangSmith export (not UTF-8 text): expected {_EXPECTED}") from None
    except OSError as exc:
        raise DivconqError(os_error_line(exc, path, "read")) from None
    runs = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DivconqError(f"{where}: invalid JSON ({exc.msg}): expected {_EXPECTED}") from exc
        if not isinstance(record, dict) or "id" not in record or "run_type" not in record:
            got = f"keys {sorted(record)[:8]}" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
            raise DivconqError(f"{where}: not a LangSmith run (no 'id' and 'run_type'; got {got}): expected {_EXPECTED}")
        runs.append(_from_query(record, where) if _is_query_shape(record) else _from_list(record, where))
    return runs


# --------------------------------------------------------------------------- one run


def _ls_messages(inputs: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = inputs.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], list):
        messages = messages[0]  # a batch of prompts: the first (a graph call sends one)
    if isinstance(messages, list):
        converted = [serialized_message(m) for m in messages if isinstance(m, Mapping)]
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
        text = content_text(kwargs.get("content"))
    return text, kwargs.get("usage_metadata")


def _ls_call(run: _LsRun, graph_id: str) -> TraceCall:
    outputs = run.outputs or {}
    text, usage = _ls_output(outputs)
    counted = {"input_tokens": run.prompt_tokens, "output_tokens": run.completion_tokens}  # LangSmith's own
    tokens = token_counts(counted, usage, llm_output_usage(outputs.get("llm_output")))
    return TraceCall(
        call_id=run.id,
        role=call_role(run.metadata, run.tags, run.metadata.get("langgraph_node")),
        messages=_ls_messages(run.inputs),
        output=text,
        node=run.metadata.get("langgraph_node"),
        model=model_name(run.metadata, run.extra.get("invocation_params"), outputs.get("llm_output")),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        seconds=run.latency,
        started_at=run.start_time.timestamp(),
        run_id=graph_id,
    )


def _ls_trace_run(graph: _LsRun, llm_runs: list[tuple[tuple[Any, ...], _LsRun]], metric: Metric) -> TraceRun:
    ordered = sorted(llm_runs, key=lambda item: (item[0], item[1].start_time))
    run = TraceRun(
        run_id=graph.id,
        question="",
        started_at=graph.start_time.timestamp(),
        seconds=graph.latency,
        source="langsmith",
        calls=[replace(_ls_call(r, graph.id), seq=i) for i, (_, r) in enumerate(ordered)],
    )
    if graph.error or graph.outputs is None:
        run.status = "error"
        run.error = one_line(graph.error or "the run had not finished when it was exported")
    fill_run(run, graph.inputs, graph.outputs, graph.metadata, metric)
    return run


# --------------------------------------------------------------------------- one trace


def _graph_runs(trace_id: str, members: list[_LsRun], path: Path) -> set[str]:
    """The ids of the divconq graph runs of one trace (the recorder's rule)."""
    by_id = {r.id: r for r in members}
    graphs = set()
    for run in members:
        parent = by_id.get(run.parent_id) if run.parent_id else None
        if not is_divconq_task(run.metadata) or (parent is not None and is_divconq_task(parent.metadata)):
            continue
        if run.parent_id is not None and parent is None:
            raise DivconqError(
                f"{path}: trace {trace_id} lacks run {run.parent_id}, the divconq graph run above {run.id}: "
                "export whole traces, e.g. client.runs.query(trace_id=...) for each trace"
            )
        graphs.add(run.parent_id or run.id)
    return graphs


def _trace_runs(trace_id: str, members: list[_LsRun], path: Path, metric: Metric) -> list[TraceRun]:
    by_id = {r.id: r for r in members}
    graphs = _graph_runs(trace_id, members, path)
    calls: dict[str, list[tuple[tuple[Any, ...], _LsRun]]] = {g: [] for g in graphs}
    for run in members:
        if run.run_type not in ("llm", "chat_model"):
            continue
        # Up to the nearest divconq graph run; the task just below it orders the call.
        task, above = run, by_id.get(run.parent_id) if run.parent_id else None
        while above is not None and above.id not in graphs:
            task, above = above, by_id.get(above.parent_id) if above.parent_id else None
        if above is not None:
            calls[above.id].append((order_key(task.metadata), run))
    return [_ls_trace_run(by_id[g], calls[g], metric) for g in sorted(graphs, key=lambda g: by_id[g].start_time)]


def import_langsmith_runs(
    jsonl_path: str | Path, store: TraceStore | str | Path, *, metric: Metric | None = None,
    scorer: Metric | None = None,
) -> int:
    """Add the divconq graph runs of a LangSmith export (one run per JSON line, either shape).

    Runs are grouped by trace; each divconq graph run in a trace, at any depth, becomes
    one ``TraceRun`` with its decomposer and solver calls. Traces where no divconq graph
    ran are skipped (and logged); a file where none ran is refused with
    "no divconq graph ran in this trace". Re-importing is a no-op (dedupe as in
    ``TraceStore.add_new_runs``). Returns how many runs were added. ``store`` may be a
    path: the store is then opened (or created) only once the whole export has been read
    and checked, so a bad export leaves no new file behind. ``metric`` scores the runs with
    gold answers as the recorder does (``scorer=`` is its deprecated name).
    """
    metric = metric_or_scorer(metric, scorer, "import_langsmith_runs")
    path = Path(jsonl_path)
    by_trace: dict[str, list[_LsRun]] = {}
    runs = read_langsmith_runs(path)
    if not runs:
        raise DivconqError(f"{path} holds no runs: expected {_EXPECTED}")
    for run in runs:
        by_trace.setdefault(run.trace_id, []).append(run)
    found, empty = [], []
    for trace_id, members in by_trace.items():
        runs = _trace_runs(trace_id, members, path, metric)
        found.extend(runs)
        if not runs:
            empty.append(trace_id)
    if not found:
        what = "this trace" if len(by_trace) == 1 else f"any of the {len(by_trace)} traces"
        raise DivconqError(
            f"{path}: {NO_DIVCONQ_RUN.replace('this trace', what)}: export traces in which the graph ran "
            "(directly, through as_tool in an agent, or as a subgraph)"
        )
    if empty:
        log.warning("%s: skipped %d of %d traces in which no divconq graph ran", path, len(empty), len(by_trace))
    if isinstance(store, TraceStore):
        return store.add_new_runs(found)
    with TraceStore(store) as opened:
        return opened.add_new_runs(found)
