"""Run a compiled graph over a dataset: bounded concurrency, retries, a progress bar.

Shared by ``divconq collect`` (traces) and ``divconq eval`` (scores). Results are
handed to ``on_result`` in the calling thread as each question finishes, so the caller
writes them one at a time and nothing finished is lost if the run stops.

With ``processes > 1`` the questions run in that many worker processes (each with its
share of the concurrency, in threads), so the client work of talking to a fast server
(LangGraph, LangChain, the OpenAI client, HTTP) is spread over the cores instead of
queuing on one interpreter lock. Workers get questions over a pipe (one more than they
run at once, so none waits for the next) and send back each output; the calling
process stays the only writer of results. Each
worker builds its own graph (and so its own HTTP connections) from a picklable
zero-argument factory, e.g. ``functools.partial(build, spec)``; a compiled graph cannot
cross a process boundary.
"""

from __future__ import annotations

import itertools
import multiprocessing
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_connections
from typing import Any, Callable, Iterable, Iterator

from langchain_core.runnables import RunnableConfig

from divconq.distill.datasets import Example
from divconq.errors import DivconqError, OutputWriteError
from divconq.nodes.graph_nodes import is_transient_error


@dataclass(frozen=True)
class RunSettings:
    """How hard to push a model server, and when to give up on it.

    ``concurrency`` questions are in flight at once. With ``processes > 1`` they are
    shared out over that many worker processes (threads inside each), which lets a fast
    server be driven from every core; it pays only with an API model (each worker would
    load its own copy of a local model) and needs a graph factory (see ``run_examples``).
    """

    concurrency: int = 4
    retries: int = 1  # whole-question reruns after the nodes' own retries, connection errors only
    backoff_seconds: float = 1.0  # doubled on each retry
    max_consecutive_failures: int = 5  # questions in a row lost to connection errors
    progress: bool = True
    processes: int = 1  # worker processes sharing the concurrency; > 1 needs a graph factory

    def __post_init__(self) -> None:
        # Checked here, not quietly raised to 1: concurrency 0 is a mistake, not a wish.
        for name in ("concurrency", "processes", "max_consecutive_failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DivconqError(f"RunSettings.{name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise DivconqError(f"RunSettings.retries must be a whole number of 0 or more, got {self.retries!r}")
        if not isinstance(self.backoff_seconds, (int, float)) or not self.backoff_seconds >= 0:
            raise DivconqError(f"RunSettings.backoff_seconds must be 0 or more, got {self.backoff_seconds!r}")


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
        except OutputWriteError:
            raise  # the store or results file cannot be written: no later question could be saved
        except Exception as exc:  # one bad question must not stop the run
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            if is_transient_error(exc) and attempt < settings.retries:
                time.sleep(delay)
                delay *= 2
                continue
            return Outcome(example, None, message, time.perf_counter() - started, transient=is_transient_error(exc))
    raise AssertionError("unreachable")


def _no_config(example: Example) -> RunnableConfig:
    return {}


class _Tally:
    """Hands outcomes to ``on_result`` and counts them; knows when the server is gone."""

    def __init__(self, on_result: Callable[[Outcome], None], settings: RunSettings, total: int | None,
                 description: str) -> None:
        from tqdm import tqdm

        self.on_result = on_result
        self.settings = settings
        self.stats = RunStats()
        self.consecutive = 0
        self.bar = tqdm(total=total, desc=description, unit="q", disable=not settings.progress)

    def add(self, outcome: Outcome) -> None:
        self.on_result(outcome)
        self.bar.update(1)
        if outcome.error is None:
            self.stats.finished += 1
            self.consecutive = 0
        else:
            self.stats.failed += 1
            self.stats.errors.append(outcome.error)
            self.consecutive = self.consecutive + 1 if outcome.transient else 0

    @property
    def server_gone(self) -> bool:
        return self.consecutive >= self.settings.max_consecutive_failures

    def server_gone_error(self) -> DivconqError:
        return DivconqError(
            f"the model server stopped answering ({self.stats.errors[-1]}); {self.stats.finished} questions "
            "finished and are saved: rerun the same command to resume"
        )


def compiled_graph(graph: Any) -> Any:
    """A compiled graph, or what a graph factory builds."""
    if hasattr(graph, "invoke"):
        return graph
    if callable(graph):
        return graph()
    raise DivconqError(f"run_examples needs a compiled graph or a function that builds one, got {graph!r}")


def run_examples(
    graph: Any,
    examples: Iterable[Example],
    on_result: Callable[[Outcome], None],
    *,
    config_for: Callable[[Example], RunnableConfig] = _no_config,
    settings: RunSettings = RunSettings(),
    total: int | None = None,
    description: str = "questions",
) -> RunStats:
    """Run ``graph`` on each example; stop early only if the server keeps failing.

    ``graph`` is a compiled graph or a zero-argument function that builds one; with
    ``settings.processes > 1`` it must be such a function, picklable (a module-level
    function or a ``functools.partial`` of one), since each worker process builds its
    own, and the configs from ``config_for`` must be picklable and carry no callbacks.

    Raises ``DivconqError`` after ``max_consecutive_failures`` questions in a row were
    lost to connection errors; every result handed to ``on_result`` before that stays.
    """
    tally = _Tally(on_result, settings, total, description)
    try:
        if settings.processes > 1:
            _run_in_processes(graph, iter(examples), config_for, settings, tally)
        else:
            _run_in_threads(compiled_graph(graph), iter(examples), config_for, settings, tally)
    finally:
        tally.bar.close()
    return tally.stats


def _run_in_threads(graph: Any, source: Iterator[Example], config_for: Callable[[Example], RunnableConfig],
                    settings: RunSettings, tally: _Tally) -> None:
    # Finished futures arrive on a queue: O(1) per question, whatever the concurrency
    # (waiting on the whole pending set costs O(concurrency) per question).
    finished: queue.SimpleQueue[Future] = queue.SimpleQueue()
    pending: set[Future] = set()
    exhausted = False
    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        while True:
            # One more than run at once waits in the pool's queue, so a thread that
            # finishes starts the next question without waiting for this thread.
            while not exhausted and len(pending) <= settings.concurrency:
                example = next(source, None)
                if example is None:
                    exhausted = True
                    break
                future = pool.submit(_run_one, graph, example, config_for(example), settings)
                pending.add(future)
                future.add_done_callback(finished.put)
            if not pending:
                break
            future = finished.get()
            pending.discard(future)
            try:
                tally.add(future.result())
            except OutputWriteError:
                for waiting in pending:  # nothing more can be saved: start no other question
                    waiting.cancel()
                raise
            if tally.server_gone:
                # Stop feeding; drop what has not started; keep what is in flight.
                for future in list(pending):
                    if future.cancel():
                        pending.discard(future)
                while pending:
                    future = finished.get()
                    if future in pending:
                        pending.discard(future)
                        tally.add(future.result())
                raise tally.server_gone_error()


# --------------------------------------------------------------------------- worker processes

# Imported once by the fork server, so each worker starts in milliseconds, not seconds.
# The OpenAI client and its HTTP stack import much of themselves lazily, on the first
# client built; names missing from this environment are skipped.
_PRELOAD = [
    "divconq.distill.runner", "divconq.distill.evaluate", "divconq.graph", "divconq.nodes.models",
    "langchain.chat_models", "langchain_openai", "openai.resources.chat.completions.completions",
    "openai.lib.streaming.chat", "httpx", "httpcore", "httpcore2", "h11", "truststore", "jiter",
]


def _context() -> Any:
    """A fork server: workers fork from a clean process that has made no HTTP connection
    and runs no thread, so nothing half-locked or half-used is inherited."""
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if ctx.get_start_method() == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _worker(conn: Any, factory: Any, settings: RunSettings, threads: int) -> None:
    """One worker process: build the graph, then run each question it is sent in its threads.

    Messages out: ("ready", None) | ("failed", message) | ("outcome", (index, output, error, seconds, transient)).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        graph = compiled_graph(factory)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    lock = threading.Lock()

    def run(index: int, example: Example, config: RunnableConfig) -> None:
        try:
            outcome = _run_one(graph, example, config, settings)
            reply = (index, outcome.output, outcome.error, outcome.seconds, outcome.transient)
        except BaseException as exc:  # noqa: BLE001 - the parent must hear back about every question
            reply = (index, None, f"{type(exc).__name__}: {exc}"[:300], 0.0, False)
        with lock:
            try:
                conn.send(("outcome", reply))
            except (OSError, ValueError):
                return  # the parent is gone
            except Exception as exc:  # noqa: BLE001 - an output that does not pickle
                conn.send(("outcome", (index, None, f"the output could not be sent back: {exc}"[:300],
                                       reply[3], False)))

    # The main thread only reads the pipe, so the parent never blocks sending a question.
    with ThreadPoolExecutor(max_workers=threads) as pool:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                break
            if task is None:
                break
            pool.submit(run, *task)
    conn.close()


@dataclass
class _Worker:
    process: Any
    conn: Any
    threads: int  # questions it runs at once; it is sent one more, queued, so it never waits for the next
    in_flight: dict[int, Example] = field(default_factory=dict)


def _run_in_processes(factory: Any, source: Iterator[Example], config_for: Callable[[Example], RunnableConfig],
                      settings: RunSettings, tally: _Tally) -> None:
    if hasattr(factory, "invoke"):
        raise DivconqError(
            "processes > 1 builds one graph per worker process: pass a picklable function that builds the graph "
            "(e.g. functools.partial of a module-level function), not a compiled graph"
        )
    first = next(source, None)
    if first is None:
        return  # nothing to do: start no workers
    source = itertools.chain([first], source)
    count = min(settings.processes, settings.concurrency)
    # The concurrency split exactly: 5 over 2 workers is 3 + 2, so the server sees 5 at most.
    shares = [settings.concurrency // count + (i < settings.concurrency % count) for i in range(count)]
    ctx = _context()
    workers: list[_Worker] = []
    try:
        for threads in shares:
            here, there = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(there, factory, settings, threads), daemon=True)
            process.start()
            there.close()
            workers.append(_Worker(process, here, threads))
        for worker in workers:
            try:
                kind, payload = worker.conn.recv()
            except EOFError:
                worker.process.join(5)
                kind, payload = "failed", (
                    f"the worker process exited with code {worker.process.exitcode} (a script that runs an "
                    "evaluation must guard its entry point with `if __name__ == \"__main__\":`)")
            if kind != "ready":
                raise DivconqError(f"a worker process could not build the graph: {payload}")
        _feed_and_collect(workers, source, config_for, tally)
    except BaseException:
        for worker in workers:  # nothing they still hold would be saved: stop them now
            worker.process.terminate()
        raise
    finally:
        for worker in workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


def _feed_and_collect(workers: list[_Worker], source: Iterator[Example],
                      config_for: Callable[[Example], RunnableConfig], tally: _Tally) -> None:
    index = 0
    exhausted = stopping = False
    lost: str | None = None
    live = list(workers)

    dead: list[_Worker] = []  # refused a question: lost once what it finished is read

    def lose(worker: _Worker) -> None:
        nonlocal lost, stopping
        if worker not in live:
            return
        worker.process.join(5)
        lost = f"a worker process exited (code {worker.process.exitcode})"
        if worker.in_flight:
            lost += f" with {len(worker.in_flight)} questions in flight, which are not saved"
        live.remove(worker)
        stopping = True

    while True:
        while not (exhausted or stopping):
            worker = min(live, key=lambda w: len(w.in_flight) - w.threads)
            if len(worker.in_flight) > worker.threads:
                break
            example = next(source, None)
            if example is None:
                exhausted = True
                break
            config = config_for(example)
            if config.get("callbacks"):
                raise DivconqError("callbacks cannot follow a question into a worker process: use processes=1")
            try:
                worker.conn.send((index, example, config))
            except OSError:  # it died: this question was never sent. Stop feeding, read what
                dead.append(worker)  # it finished before dying, then report it lost (below)
                stopping = True
                break
            worker.in_flight[index] = example
            index += 1
        busy = [w for w in live if w.in_flight]
        if not busy:
            break
        for conn in wait_connections([w.conn for w in busy]):
            worker = next(w for w in busy if w.conn is conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                lose(worker)
                continue
            number, output, error, seconds, transient = payload
            tally.add(Outcome(worker.in_flight.pop(number), output, error, seconds, transient))
        if tally.server_gone:
            stopping = True  # stop feeding; the questions in flight finish and are kept
        if stopping and not any(w.in_flight for w in live):
            break
    for worker in dead:  # its pipe may have held only finished outcomes, never an EOF
        lose(worker)
    if lost:
        raise DivconqError(f"{lost}; {tally.stats.finished} questions finished and are saved: "
                           "rerun the same command to resume")
    if tally.server_gone:
        raise tally.server_gone_error()
