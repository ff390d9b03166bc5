"""``TraceRecorder``: a LangChain callback handler that records divconq graph runs into a ``TraceStore``.

Add it to the run config of a divconq graph, or of an agent or parent graph that runs
one, and each invocation of the divconq graph becomes one ``TraceRun``: its model calls
in task order, the question and answer read off the graph run's inputs and outputs, and
``correct`` from a :data:`~divconq.distill.metrics.Metric` (``exact_match`` by default).
LangChain messages, metadata and usage become records through ``distill.records``, which
``langsmith_runs.import_langsmith_runs`` uses too, so an imported run looks like a recorded one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from divconq.distill.records import (
    call_role,
    fill_run,
    is_divconq_task,
    llm_output_usage,
    message_dict,
    model_name,
    one_line,
    order_key,
    token_counts,
)
from divconq.distill.metrics import Metric, metric_or_scorer
from divconq.distill.traces import TraceCall, TraceRun, TraceStore

__all__ = ["TraceRecorder"]


class _OwnWriteErrors(logging.Filter):
    """LangChain logs every callback error before re-raising it; a store that cannot be
    written is reported once, by the command that stops on it, not once per question."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(isinstance(arg, str) and arg.startswith("OutputWriteError(") for arg in record.args or ())


logging.getLogger("langchain_core.callbacks.manager").addFilter(_OwnWriteErrors())


# --------------------------------------------------------------------------- recorder


@dataclass
class _Seen:
    """A run in flight (chain, tool, retriever or model call) and the divconq run it belongs to."""

    parent: UUID | None
    marked: bool  # carries the divconq node metadata
    owner: UUID | None  # the divconq graph run it is part of, if any
    key: tuple[Any, ...]  # its task's order inside that run
    inputs: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    t0: float = 0.0
    started_at: float = 0.0


@dataclass
class _OpenCall:
    call: TraceCall
    t0: float
    key: tuple[Any, ...]


@dataclass
class _OpenRun:
    run: TraceRun
    t0: float
    inputs: Any
    metadata: dict[str, Any]
    calls: dict[UUID, _OpenCall] = field(default_factory=dict)
    counter: int = 0
    paused: bool = False  # a node raised GraphInterrupt: the run waits for a human, not finished


def _is_interrupt(error: BaseException) -> bool:
    """A node paused for human input (``interrupt``): the run is not finished."""
    try:
        from langgraph.errors import GraphInterrupt
    except ImportError:  # pragma: no cover - langgraph is a dependency
        return False
    return isinstance(error, GraphInterrupt)


class TraceRecorder(BaseCallbackHandler):
    """Records each run of a divconq graph, at any nesting level, with its model calls.

    Add it to the run config of the graph, or of anything that runs it: an agent that
    calls it through ``as_tool`` (each tool call is one run), or a parent graph that
    has it as a subgraph node. ``graph.invoke(inputs, config={"callbacks": [recorder],
    "metadata": {"gold": [...], "example_id": ..., "dataset": ...}})``.

    A divconq graph run is the run whose tasks carry ``{"divconq_graph": ...}`` metadata,
    which every node of ``build_graph`` sets; a graph of your own is recorded the same
    way when its nodes (``add_node(..., metadata=...)``) or its run config carry it.
    Model calls outside such a run (an agent's own model) are never recorded, and a
    trace in which no divconq graph ran writes nothing. Everything is keyed by run
    ids under a lock, so one recorder serves ``batch``, threads, ``ainvoke`` and
    parallel ``Send`` branches. A run is written when it ends (status 'ok') or fails
    (status 'error'); a run paused by ``interrupt`` is not written. ``raise_error``
    (default True) makes a failed write fail the invocation, so a collection never
    silently loses traces. A run with gold answers is ``correct`` when ``metric`` gives
    it 1.0 (``scorer=`` is the deprecated name of ``metric=``).
    """

    run_inline = True  # handle events in order on the caller's thread, also under asyncio

    def __init__(self, store: TraceStore, *, metric: Metric | None = None, raise_error: bool = True,
                 scorer: Metric | None = None) -> None:
        super().__init__()
        self.store = store
        self.metric: Metric = metric_or_scorer(metric, scorer, "TraceRecorder")
        self.raise_error = raise_error
        self._lock = threading.Lock()
        self._open: dict[UUID, _OpenRun] = {}  # divconq graph runs in flight
        self._seen: dict[UUID, _Seen] = {}  # every run in flight under this recorder

    # -- run tree bookkeeping (callers hold the lock)

    def _register(
        self, run_id: UUID, parent_run_id: UUID | None, metadata: Mapping[str, Any] | None, inputs: Any = None
    ) -> _Seen:
        parent = self._seen.get(parent_run_id) if parent_run_id is not None else None
        owner = parent.owner if parent else None
        # A task of the divconq run itself orders by its step and path; deeper runs inherit it.
        key = order_key(metadata) if owner is not None and owner == parent_run_id else (parent.key if parent else ())
        seen = _Seen(
            parent_run_id, is_divconq_task(metadata), owner, key, inputs, dict(metadata or {}),
            time.perf_counter(), time.time(),
        )
        self._seen[run_id] = seen
        return seen

    def _open_run(self, graph_id: UUID) -> None:
        """Start recording ``graph_id``: the first divconq task under it showed it is a divconq graph."""
        graph = self._seen[graph_id]
        graph.owner = graph_id
        run = TraceRun(run_id=str(graph_id), question="", started_at=graph.started_at)
        self._open[graph_id] = _OpenRun(run, graph.t0, graph.inputs, graph.metadata)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            seen = self._register(run_id, parent_run_id, metadata, inputs)
            parent = self._seen.get(parent_run_id) if parent_run_id is not None else None
            if not seen.marked or (parent is not None and parent.marked):
                return
            # The outermost marked run: a task of a divconq graph (its parent is the graph
            # run), or a root whose run config carries the marker (it is the graph run).
            graph_id = parent_run_id if parent is not None else run_id
            if graph_id not in self._open:
                self._open_run(graph_id)
            if graph_id != run_id:
                seen.owner, seen.key = graph_id, order_key(metadata)

    def _start_call(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        messages: list[dict[str, str]],
        serialized: dict[str, Any] | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            seen = self._register(run_id, parent_run_id, metadata)
            open_run = self._open.get(seen.owner) if seen.owner is not None else None
            if open_run is None:  # a model call outside any divconq graph run
                self._seen.pop(run_id)
                return
            metadata = metadata or {}
            node = metadata.get("langgraph_node")
            call = TraceCall(
                call_id=str(run_id),
                role=call_role(metadata, tags, node),
                messages=messages,
                node=node,
                model=model_name(metadata, invocation_params, (serialized or {}).get("kwargs")),
                started_at=time.time(),
                run_id=str(seen.owner),
            )
            open_run.calls[run_id] = _OpenCall(call, time.perf_counter(), seen.key + (open_run.counter,))
            open_run.counter += 1

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        sent = [message_dict(m) for m in (messages[0] if messages else [])]
        self._start_call(run_id, parent_run_id, sent, serialized, tags, metadata, kwargs.get("invocation_params"))

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        sent = [{"role": "user", "content": prompts[0]}] if prompts else []
        self._start_call(run_id, parent_run_id, sent, serialized, tags, metadata, kwargs.get("invocation_params"))

    def _pop_call(self, run_id: UUID) -> _OpenCall | None:
        seen = self._seen.pop(run_id, None)
        open_run = self._open.get(seen.owner) if seen and seen.owner is not None else None
        return open_run.calls.get(run_id) if open_run else None

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            open_call = self._pop_call(run_id)
            if open_call is None:
                return
            call = open_call.call
            call.seconds = time.perf_counter() - open_call.t0
            generation = response.generations[0][0] if response.generations and response.generations[0] else None
            if generation is None:
                return
            call.output = generation.text
            message = getattr(generation, "message", None)
            call.input_tokens, call.output_tokens = token_counts(
                getattr(message, "usage_metadata", None), llm_output_usage(response.llm_output)
            )
            if call.model is None:
                call.model = model_name(getattr(message, "response_metadata", None), response.llm_output)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            open_call = self._pop_call(run_id)
            if open_call is not None:
                open_call.call.seconds = time.perf_counter() - open_call.t0

    # -- tool and retriever runs only need registering, so the runs under them find their owner

    def on_tool_start(
        self,
        serialized: Any,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            self._register(run_id, parent_run_id, metadata)

    on_retriever_start = on_tool_start  # LangChain calls it the same way: (serialized, query, *, run_id, ...)

    def _forget(self, run_id: UUID, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._seen.pop(run_id, None)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._forget(run_id)

    on_retriever_end = on_tool_end
    on_retriever_error = on_tool_error

    # -- the end of a divconq graph run writes it

    def _end(self, run_id: UUID, error: BaseException | None) -> _OpenRun | None:
        """Forget ``run_id``; return its divconq run if it was one and is finished."""
        with self._lock:
            seen = self._seen.pop(run_id, None)
            if error is not None and _is_interrupt(error) and seen is not None and seen.owner in self._open:
                self._open[seen.owner].paused = True
            open_run = self._open.pop(run_id, None)
        if open_run is None or open_run.paused:
            return None
        return open_run

    def _finish(self, open_run: _OpenRun, outputs: Any) -> None:
        run = open_run.run
        run.seconds = time.perf_counter() - open_run.t0
        ordered = sorted(open_run.calls.values(), key=lambda c: c.key)
        run.calls = [replace(c.call, seq=i) for i, c in enumerate(ordered)]
        fill_run(run, open_run.inputs, outputs, open_run.metadata, self.metric)
        self.store.write_run(run)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        open_run = self._end(run_id, None)
        if open_run is None or (isinstance(outputs, Mapping) and "__interrupt__" in outputs):
            return
        self._finish(open_run, outputs)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        open_run = self._end(run_id, error)
        if open_run is None:
            return
        open_run.run.status, open_run.run.error = "error", one_line(error)
        self._finish(open_run, None)
