"""``collect``: run a graph over examples and record each run into a trace store.

The first step of distillation (``divconq collect`` from Python): the teacher's graph
answers every example not yet in the store, with a ``TraceRecorder`` on each run and the
example's gold answers, id and dataset in the run's metadata, so the store can be resumed
and screened on gold (S_D-R) by ``build_sft``. Progress goes to this module's logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
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
    metadata: Callable[[Example], Mapping[str, Any]] | None = None,
    description: str | None = None,
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
        metadata: extra run metadata per example (``example -> {key: value}``), stored with
            each run beside the gold answers, id and dataset, which it may not rename
            (for example the round of a self-improvement loop and the sample a run is for).
        description: the progress bar's label (``collect <dataset>``).

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
    extra = _extra_metadata(examples, metadata)
    with ExitStack() as stack:
        if not isinstance(store, TraceStore):
            store = stack.enter_context(TraceStore(store))
        return _collect_into(store, graph, examples, dataset, metric, settings or RunSettings(), extra,
                             description or f"collect {dataset}")


# The metadata collect itself gives every run: what resuming and screening on gold read back.
RUN_KEYS = ("gold", "example_id", "dataset")


def _extra_metadata(examples: list[Example], metadata: Callable[[Example], Mapping[str, Any]] | None
                    ) -> dict[str, dict[str, Any]]:
    """Each example's extra run metadata, checked before any run: a mapping that renames none of ``RUN_KEYS``."""
    if metadata is None:
        return {}
    if not callable(metadata):
        raise DivconqError(f"collect's metadata must be a function of the example (example -> dict), got {metadata!r}")
    extra = {}
    for example in examples:
        given = metadata(example)
        if not isinstance(given, Mapping):
            raise DivconqError(f"collect's metadata function returned {type(given).__name__} for example "
                               f"{example.id!r}: return a dict of run metadata")
        clash = sorted(set(given) & set(RUN_KEYS))
        if clash:
            raise DivconqError(f"collect's metadata for example {example.id!r} sets {', '.join(clash)}, which collect "
                               f"sets itself ({', '.join(RUN_KEYS)}): use other keys")
        extra[example.id] = dict(given)
    return extra


def _collect_into(store: TraceStore, graph: Any, examples: list[Example], dataset: str, metric: Metric,
                  settings: RunSettings, extra: dict[str, dict[str, Any]], description: str) -> CollectResult:
    done = store.done_example_ids(dataset)
    todo = [e for e in examples if scrub_text(e.id) not in done]  # ids are stored scrubbed
    logger.info("%d questions, %d already in %s, %d to run", len(examples), len(examples) - len(todo), store.path,
                len(todo))
    recorder = TraceRecorder(store, metric=metric)

    def config_for(example: Example) -> RunnableConfig:
        metadata = {**extra.get(example.id, {}), "gold": list(example.answers), "example_id": example.id,
                    "dataset": dataset}
        return {"callbacks": [recorder], "metadata": metadata}

    stats = run_examples(graph, todo, lambda outcome: None, config_for=config_for, total=len(todo),
                         settings=settings, description=description)
    logger.info("collected %d runs (%d failed) into %s", stats.finished, stats.failed, store.path)
    if todo and not stats.finished:
        raise DivconqError(f"all {len(todo)} questions failed (first: {stats.errors[0]}): fix the cause (the model "
                           f"spec, the server, the data) and rerun; {store.path} keeps one error run per question")
    return CollectResult(str(store.path), len(examples), len(examples) - len(todo), stats.finished, stats.failed,
                         stats.errors)
