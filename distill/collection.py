"""``collect``: run a graph over examples and record each run into a trace store.

The first step of distillation (``divconq collect`` from Python): the teacher's graph
answers every example not yet in the store, with a ``TraceRecorder`` on each run and the
example's gold answers, id and dataset in the run's metadata, so the store can be resumed
and screened on gold (S_D-R) by ``build_sft``. Progress goes to this module's logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig

from divconq.distill.datasets import Example
from divconq.distill.metrics import SCORED_DATASETS, Metric, exact_match, metric_for, metric_or_scorer
from divconq.distill.recorder import TraceRecorder
from divconq.distill.runner import RunSettings, run_examples
from divconq.distill.traces import TraceStore
from divconq.errors import DivconqError
from divconq.scrub import scrub_text

__all__ = ["CollectResult", "collect"]

logger = logging.getLogger(__name__)


@dataclass
class CollectResult:
    """What one ``collect`` call did; the store holds the runs."""

    store: str
    examples: int  # given
    skipped: int  # already in the store with a finished run: not run again
    finished: int
    failed: int  # written to the store as error runs, retried by the next collect
    errors: list[str] = field(default_factory=list)


def collect(
    graph: Any,
    examples: Iterable[Example],
    store: TraceStore | str | Path,
    *,
    dataset: str,
    metric: Metric | None = None,
    settings: RunSettings | None = None,
) -> CollectResult:
    """Run ``graph`` on each example not yet in ``store``, recording every run.

    Args:
        graph: a compiled divconq graph (``build_graph(teacher, teacher).compile()``), or a
            zero-argument function that builds one (called once there is work to do).
        examples: ``Example`` objects (``divconq.distill.datasets.load_dataset``).
        store: a ``TraceStore``, or the path of one (created when missing, closed after).
        dataset: the examples' dataset name: runs are keyed by it and the example id, so a
            second call skips what the first finished.
        metric: scores each run against its gold answers; a run is ``correct`` at 1.0. By
            default the dataset's metric (``metric_for``) when divconq scores that dataset,
            else ``exact_match``.
        settings: concurrency, retries and the progress bar (``RunSettings()``).

    Returns:
        the counts; raises ``DivconqError`` when every example run failed (the store keeps
        one error run per example) or the model server stopped answering.
    """
    examples = list(examples)
    if not isinstance(dataset, str) or not dataset.strip():
        raise DivconqError(f"collect needs the examples' dataset name (dataset='gsm8k', ...), got {dataset!r}")
    if not all(isinstance(e, Example) for e in examples):
        raise DivconqError("collect takes divconq.distill.datasets.Example objects (load_dataset gives them)")
    if metric is None:
        metric = metric_for(dataset) if dataset.strip().lower() in SCORED_DATASETS else exact_match
    metric = metric_or_scorer(metric, None, "collect")
    with ExitStack() as stack:
        if not isinstance(store, TraceStore):
            store = stack.enter_context(TraceStore(store))
        return _collect_into(store, graph, examples, dataset, metric, settings or RunSettings())


def _collect_into(store: TraceStore, graph: Any, examples: list[Example], dataset: str, metric: Metric,
                  settings: RunSettings) -> CollectResult:
    done = store.done_example_ids(dataset)
    todo = [e for e in examples if scrub_text(e.id) not in done]  # ids are stored scrubbed
    logger.info("%d questions, %d already in %s, %d to run", len(examples), len(examples) - len(todo), store.path,
                len(todo))
    recorder = TraceRecorder(store, metric=metric)

    def config_for(example: Example) -> RunnableConfig:
        metadata = {"gold": list(example.answers), "example_id": example.id, "dataset": dataset}
        return {"callbacks": [recorder], "metadata": metadata}

    stats = run_examples(graph, todo, lambda outcome: None, config_for=config_for, total=len(todo),
                         settings=settings, description=f"collect {dataset}")
    logger.info("collected %d runs (%d failed) into %s", stats.finished, stats.failed, store.path)
    if todo and not stats.finished:
        raise DivconqError(f"all {len(todo)} questions failed (first: {stats.errors[0]}): fix the cause (the model "
                           f"spec, the server, the data) and rerun; {store.path} keeps one error run per question")
    return CollectResult(str(store.path), len(examples), len(examples) - len(todo), stats.finished, stats.failed,
                         stats.errors)
