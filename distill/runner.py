"""Run a compiled graph over a dataset: bounded concurrency, retries, a progress bar.

Shared by ``divconq collect`` (traces) and ``divconq eval`` (scores). Results are
handed to ``on_result`` in the calling thread as each question finishes, so the caller
writes them one at a time and nothing finished is lost if the run stops.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from langchain_core.runnables import RunnableConfig

from divconq.distill.datasets import Example
from divconq.errors import DivconqError
from divconq.nodes.nodes import is_transient_error


@dataclass(frozen=True)
class RunSettings:
    """How hard to push a model server, and when to give up on it."""

    concurrency: int = 4
    retries: int = 1  # whole-question reruns after the nodes' own retries, connection errors only
    backoff_seconds: float = 1.0  # doubled on each retry
    max_consecutive_failures: int = 5  # questions in a row lost to connection errors
    progress: bool = True


@dataclass
class Outcome:
    """One question's run: the graph's output, or the error that stopped it."""

    example: Example
    output: dict[str, Any] | None
    error: str | None
    seconds: float
    transient: bool = False


@dataclass
class RunStats:
    finished: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _run_one(
    graph: Any, example: Example, config: RunnableConfig, settings: RunSettings
) -> Outcome:
    started = time.perf_counter()
    delay = settings.backoff_seconds
    for attempt in range(settings.retries + 1):
        try:
            output = graph.invoke({"question": example.question, "context": example.context}, config)
            return Outcome(example, output, None, time.perf_counter() - started)
        except Exception as exc:  # one bad question must not stop the run
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            if is_transient_error(exc) and attempt < settings.retries:
                time.sleep(delay)
                delay *= 2
                continue
            return Outcome(example, None, message, time.perf_counter() - started, transient=is_transient_error(exc))
    raise AssertionError("unreachable")


def run_examples(
    graph: Any,
    examples: Iterable[Example],
    on_result: Callable[[Outcome], None],
    *,
    config_for: Callable[[Example], RunnableConfig] = lambda e: {},
    settings: RunSettings = RunSettings(),
    total: int | None = None,
    description: str = "questions",
) -> RunStats:
    """Run ``graph`` on each example; stop early only if the server keeps failing.

    Raises ``DivconqError`` after ``max_consecutive_failures`` questions in a row were
    lost to connection errors; every result handed to ``on_result`` before that stays.
    """
    from tqdm import tqdm

    stats = RunStats()
    consecutive = 0
    bar = tqdm(total=total, desc=description, unit="q", disable=not settings.progress)
    pending: set[Future] = set()
    source = iter(examples)
    exhausted = False
    with ThreadPoolExecutor(max_workers=max(1, settings.concurrency)) as pool:
        while True:
            while not exhausted and len(pending) < settings.concurrency:
                example = next(source, None)
                if example is None:
                    exhausted = True
                    break
                pending.add(pool.submit(_run_one, graph, example, config_for(example), settings))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                on_result(outcome)
                bar.update(1)
                if outcome.error is None:
                    stats.finished += 1
                    consecutive = 0
                else:
                    stats.failed += 1
                    stats.errors.append(outcome.error)
                    consecutive = consecutive + 1 if outcome.transient else 0
            if consecutive >= settings.max_consecutive_failures:
                exhausted = True  # stop feeding; let the questions in flight finish
                for future in wait(pending).done:
                    on_result(future.result())
                    bar.update(1)
                bar.close()
                raise DivconqError(
                    f"the model server stopped answering ({stats.errors[-1]}); {stats.finished} questions "
                    "finished and are saved: rerun the same command to resume"
                )
    bar.close()
    return stats
