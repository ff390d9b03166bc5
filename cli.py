"""The `divconq` command line: ask, draw, and the distillation workflow.

Bad input ends in one line on stderr naming the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import logging
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from divconq.argcheck import OneLineParser, fraction, int_between, positive_float, positive_int
from divconq.contract import (
    ANSWER_SOURCES,
    ANSWER_STEP_NODE,
    DEFAULT_TIMEOUT_SECONDS,
    ENGINES,
    MAX_CAP,
    MODES,
    QUANTS,
    ROLE_METADATA_KEY,
    ROLES,
    SCREENS,
    SHOTS,
    SOLVE_ONE_NODE,
    SOLVE_STRATEGIES,
    SOLVER,
    TASKS,
    TRAIN_FROM,
    VARIANTS,
)
from divconq.errors import DivconqError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


def _check_text(text: str, what: str) -> None:
    """Refuse text that cannot be sent anywhere: bytes that were not UTF-8 (kept by Python as
    lone surrogates) fail in the tokenizer or the HTTP client, far from their cause."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DivconqError(f"{what} holds characters that are not valid UTF-8 (at position {exc.start}): "
                           "pass it as UTF-8 text") from None


def _read_context(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DivconqError(f"cannot read context file {path!r} ({reason}): pass a readable UTF-8 text file") from exc


def graph_for_cli(args: argparse.Namespace) -> Any:
    """The compiled graph for the chosen specs and prompts."""
    from divconq.graph import build_graph
    from divconq.nodes import load_chat_model

    decomposer = load_chat_model(args.decomposer, role="decomposer", max_new_tokens=args.max_new_tokens,
                                 timeout=args.timeout, engine=args.engine)
    solver = load_chat_model(args.solver, role="solver", max_new_tokens=args.max_new_tokens, timeout=args.timeout,
                             engine=args.engine)
    return build_graph(
        decomposer, solver, mode=args.mode, solve=args.solve, prompts=prompts_for_cli(args),
        max_subquestions=args.max_subquestions,
    ).compile()


def prompts_for_cli(args: argparse.Namespace) -> Any:
    """The task's prompts; ``--shots auto`` shows one worked example to the bare embedded
    model only, because small base models write no usable sub-questions zero-shot."""
    from divconq.nodes.models import needs_one_shot
    from divconq.nodes.prompts import PROMPT_STYLES, example_for, get_prompts, load_prompt_set, with_example

    one_shot = {"auto": needs_one_shot(args.decomposer), "zero": False, "one": True}[args.shots]
    style = getattr(args, "prompts", "divconq")
    if style in PROMPT_STYLES:
        return get_prompts(args.task, one_shot=one_shot, style=style)
    prompts = load_prompt_set(style)
    return with_example(prompts, example_for(args.task)) if one_shot and prompts.example is None else prompts


def format_result(result: dict[str, Any]) -> str:
    """The human-readable answer: route, sub-questions with answers, answer, usage."""
    lines = [f"Route: {result.get('route')}" + (f"  ({result['fallback_reason']})" if result.get("fallback_reason") else "")]
    subquestions, answers = result.get("subquestions") or [], result.get("sub_answers") or []
    if subquestions:
        lines.append("Sub-questions:")
        for i, q in enumerate(subquestions):
            lines.append(f"  {i + 1}. {q}")
            if i < len(answers):
                lines.append(f"     -> {answers[i]}")
    lines.append(f"Answer: {result.get('answer')}")
    lines.append("Usage:")
    for role, stats in (result.get("usage") or {}).items():
        lines.append(
            f"  {role:<10} calls {stats['calls']:>2}  tokens in {stats['input_tokens']:>5} out {stats['output_tokens']:>5}"
            f"  {stats['seconds']:.1f} s"
        )
    return "\n".join(lines)


@command("ask")
def cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise DivconqError('the question is empty: run divconq ask "<your question>"')
    _check_text(args.question, "the question")
    context = _read_context(args.context)
    graph = graph_for_cli(args)
    inputs = {"question": args.question, "context": context}
    if args.stream:  # the run is shown as it happens (stderr); stdout gets the answer once
        result = stream_answer(graph, inputs)
        print(json.dumps(result, indent=2) if args.json else f"Answer: {result.get('answer')}")
        return 0
    with spinner("thinking", enabled=not args.json):
        result = graph.invoke(inputs)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


@contextlib.contextmanager
def spinner(label: str, *, enabled: bool = True) -> Any:
    """A one-line spinner with the elapsed time on stderr while a local model generates
    (a terminal only: logs and pipes get nothing)."""
    if not (enabled and sys.stderr.isatty()):
        yield
        return
    done = threading.Event()

    def spin() -> None:
        started = time.monotonic()
        for frame in itertools.cycle("|/-\\"):
            if done.wait(0.2):
                break
            print(f"\r{frame} {label} {time.monotonic() - started:4.0f} s", end="", file=sys.stderr, flush=True)
        print("\r" + " " * (len(label) + 12) + "\r", end="", file=sys.stderr, flush=True)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def stream_answer(graph: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    """Show the run as it happens: the route, the sub-questions, each answer, solver tokens."""
    final: dict[str, Any] = {}
    for mode, chunk in graph.stream(inputs, stream_mode=["custom", "updates", "messages", "values"]):
        if mode == "custom" and chunk.get("event") == "route":
            reason = f" ({chunk['reason']})" if chunk.get("reason") else ""
            print(f"[route] {chunk['route']}{reason}", file=sys.stderr)
        elif mode == "custom" and chunk.get("event") == "subquestions":
            for i, q in enumerate(chunk["subquestions"], 1):
                print(f"[sub-question {i}] {q}", file=sys.stderr)
        elif mode == "messages":
            message, metadata = chunk
            if metadata.get(ROLE_METADATA_KEY) == SOLVER and message.content:
                print(message.content, end="", flush=True, file=sys.stderr)
        elif mode == "updates":
            for node, update in chunk.items():
                if node in (ANSWER_STEP_NODE, SOLVE_ONE_NODE) and update:
                    answers = update.get("sub_answers") or [a["answer"] for a in update.get("parallel_answers", [])]
                    if answers:
                        print(f"\n[answer] {answers[-1]}", file=sys.stderr)
        elif mode == "values":
            final = chunk
    print(file=sys.stderr)
    return {key: final.get(key) for key in OUTPUT_KEYS}


OUTPUT_KEYS = ("question", "context", "mode", "solve", "route", "fallback_reason", "decomposition",
               "subquestions", "sub_answers", "solution", "answer", "usage")


@command("draw")
def cmd_draw(args: argparse.Namespace) -> int:
    from divconq.graph import assemble_graph
    from divconq.graph.draw import draw_png
    from divconq.safeio import atomic_write, check_writable_target

    out = check_writable_target(args.out, "--out")
    if out.suffix.lower() != ".png":
        raise DivconqError(f"--out {args.out!r} must name a .png file: the Mermaid text goes beside it as .mmd")
    drawable = assemble_graph(None).compile().get_graph()
    mermaid = drawable.draw_mermaid()
    mermaid_path = out.with_suffix(".mmd")
    atomic_write(mermaid_path, mermaid, what="Mermaid file")
    draw_png(drawable, out)
    print(mermaid)
    print(f"wrote {mermaid_path} and {out}", file=sys.stderr)
    return 0


def _load_examples(args: argparse.Namespace) -> list:
    from divconq.distill.datasets import load_dataset

    examples = load_dataset(args.dataset, args.data)
    return examples[: args.limit] if args.limit else examples


def _training_ids(path: str | None) -> set[str]:
    """Question ids a shipped or given adapter was trained on: evaluations leave them out."""
    from divconq.nodes.models import DEFAULT_ADAPTER_DIR

    source = Path(path) if path else DEFAULT_ADAPTER_DIR / "training_ids.txt"
    if not source.is_file():
        if path:
            raise DivconqError(f"cannot read --exclude-ids file {path} (no such file): pass a text file with one id per line")
        return set()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else (exc.strerror or type(exc).__name__)
        raise DivconqError(f"cannot read --exclude-ids file {source} ({reason}): pass a text file with one id per line") from None
    return {line.strip() for line in text.splitlines() if line.strip()}


def _engines(args: argparse.Namespace) -> dict[str, str]:
    """The engine each local model of the run is on, so a results file says how its rows were decoded."""
    from divconq.nodes.models import engine_of

    engines = {f"{role}_engine": engine_of(getattr(args, role), args.engine) for role in ROLES}
    return {key: value for key, value in engines.items() if value is not None}


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from divconq.distill.datasets import load_dataset
    from divconq.distill.evaluate import evaluate, format_summary, load_pricing, summarise
    from divconq.distill.runner import RunSettings
    from divconq.distill.slices import check_disjoint, read_slice, select
    from divconq.safeio import WriterLock, check_writable_target
    from divconq.scrub import scrub_text

    # Training ids go first, then the limit: --limit N scores N questions no adapter saw.
    excluded = _training_ids(args.exclude_ids)
    prompts = prompts_for_cli(args)  # checked before any model loads
    run_info = {"dataset": args.dataset, "decomposer": args.decomposer, "solver": args.solver, "mode": args.mode,
                "prompts": prompts.name, "prompt_version": prompts.version, **_engines(args)}
    every = load_dataset(args.dataset, args.data)
    if args.slice:
        # A fixed slice: the same questions for every row, so rows compare question by question.
        slice_ = read_slice(args.slice)
        check_disjoint(slice_, excluded, args.exclude_ids or "the shipped default adapter")
        examples = select(every, slice_)
        run_info["slice"] = slice_.key
    else:
        # An id file holds ids as written (scrubbed, like every file divconq writes).
        examples = [e for e in every if e.id not in excluded and scrub_text(e.id) not in excluded]
    if every and not examples:
        raise DivconqError(f"every question of {args.data} is excluded ({len(excluded)} ids from "
                           f"{args.exclude_ids or 'the shipped adapter training_ids.txt'}): pass another --data or --exclude-ids")
    examples = examples[: args.limit] if args.limit else examples
    pricing = load_pricing(args.pricing)
    for item in args.price_as or []:
        role, _, key = item.partition("=")
        if role not in ROLES or key not in pricing:
            raise DivconqError(f"--price-as {item!r}: use decomposer=KEY or solver=KEY with a key of the pricing table")
        run_info[f"{role}_price_key"] = key
    settings = RunSettings(concurrency=args.concurrency, processes=args.processes, progress=not args.json)
    # A second eval on this results file is refused now, before any model is loaded.
    lock = WriterLock(check_writable_target(args.out, "--out"), "results file")
    with lock, log_lines("divconq.distill.evaluate"):
        # evaluate builds the graph once it has checked the results file against this run (each
        # worker process builds its own: a compiled graph cannot cross a process).
        rows = evaluate(functools.partial(graph_for_cli, args), examples, dataset=args.dataset, out=args.out, run_info=run_info, settings=settings,
                        exclude_ids=excluded)
    summary = summarise(rows, pricing)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``i/n`` (1-based) -> (i, n); this machine takes the questions whose id hashes to shard i."""
    if spec is None:
        return None
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        index = count = 0
    if not (count >= 1 and 1 <= index <= count):
        raise DivconqError(f"bad shard {spec!r}: use i/n with 1 <= i <= n, e.g. --shard 1/4")
    return index, count


def in_shard(example_id: str, shard: tuple[int, int] | None) -> bool:
    import hashlib

    if shard is None:
        return True
    index, count = shard
    return int(hashlib.sha1(example_id.encode()).hexdigest(), 16) % count == index - 1


@command("collect")
def cmd_collect(args: argparse.Namespace) -> int:
    from divconq.distill.collection import collect
    from divconq.distill.runner import RunSettings
    from divconq.distill.traces import TraceStore

    shard = parse_shard(args.shard)
    examples = [e for e in _load_examples(args) if in_shard(e.id, shard)]
    with TraceStore(args.store) as store, log_lines("divconq.distill.collection"):
        # The graph is built once the store is checked and the questions to run are counted.
        collect(functools.partial(graph_for_cli, args), examples, store, dataset=args.dataset,
                settings=RunSettings(concurrency=args.concurrency))
    return 0


@contextlib.contextmanager
def log_lines(logger_name: str) -> Any:
    """A library module's INFO lines on stderr as they are, for the length of a command."""
    logger = logging.getLogger(logger_name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # not again through the root's "divconq: " handler
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


@command("trace")
def cmd_trace(args: argparse.Namespace) -> int:
    from divconq.distill.langsmith_runs import import_langsmith_runs
    from divconq.distill.traces import TraceStore, format_run_tree

    if args.trace_command == "show":
        with TraceStore(args.store, readonly=True) as store:  # a finished run first, an error run if none
            run = store.get_run(args.id) if args.id else next(store.runs(), None) or next(store.runs(status=None), None)
            if run is None:
                raise DivconqError(f"no run {args.id or ''} in {args.store}: list the run ids with divconq trace list {args.store}".replace("  ", " "))
            print(format_run_tree(run))
        return 0
    if args.trace_command == "list":
        with TraceStore(args.store, readonly=True) as store:
            for run in store.runs(status=None):
                print(f"{run.run_id}  {run.status:<5} {run.dataset or '-'}:{run.example_id or '-'}  {run.question[:70]}")
        return 0
    if args.trace_command == "merge":
        for other in args.sources:  # every source is opened and checked before the target is created
            TraceStore(other, readonly=True).close()
        with TraceStore(args.store) as store:
            for other in args.sources:
                added = store.merge_from(other)
                print(f"{other}: {added} runs added", file=sys.stderr)
            print(f"{args.store}: {store.count()} runs", file=sys.stderr)
        return 0
    if not Path(args.jsonl).is_file():
        raise DivconqError(f"no LangSmith export at {args.jsonl}: pass a file of runs saved one JSON object a line")
    added = import_langsmith_runs(args.jsonl, args.store)  # the store is opened once the export is read
    print(f"imported {added} runs from {args.jsonl} into {args.store}", file=sys.stderr)
    return 0


@command("sft")
def cmd_sft(args: argparse.Namespace) -> int:
    from divconq.distill.sft import build_sft, build_sft_from_gold

    common = dict(out_dir=args.out, task=args.task, max_subquestions=args.max_subquestions,
                  val_fraction=args.val_fraction, overwrite=args.overwrite)
    if args.gold_data:
        from divconq.distill.datasets import load_dataset

        summary = build_sft_from_gold(load_dataset(args.gold_dataset, args.gold_data), **common)
    else:
        if not args.store:
            raise DivconqError("pass --store TRACES.db (or --gold-data FILE --gold-dataset NAME for gold decompositions)")
        summary = build_sft(Path(args.store), variant=args.variant, screen=args.screen, answer=args.answer,
                            keep_no_decomposition=not args.drop_no_decomposition, **common)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.format())
    return 0


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from divconq.distill.train import config_from_cli, finetune, read_result

    # Progress and losses are INFO lines of the training module: shown, through the
    # "divconq: ..." handler quiet_libraries sets up.
    logging.getLogger("divconq.distill.train").setLevel(logging.INFO)
    # --json keeps stdout for the result: no progress bar unless asked for.
    config = config_from_cli(args, config_file=args.config, **({"disable_tqdm": True} if args.json else {}))
    finetune(args.data, out=args.out, config=config, resume=args.resume, overwrite=args.overwrite,
             merge_to=args.merge_to)
    result = read_result(args.out)
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else result.format())
    return 0


@command("improve")
def cmd_improve(args: argparse.Namespace) -> int:
    from divconq.distill.self_improve import HeldOut, ImproveConfig, format_rounds, improve
    from divconq.distill.train import config_from_cli

    config = ImproveConfig(samples=args.samples, temperature=args.temperature, rounds=args.rounds,
                           questions=args.questions, draws=args.draws, task=args.task,
                           max_subquestions=args.max_subquestions, max_new_tokens=args.max_new_tokens,
                           concurrency=args.concurrency, val_fraction=args.val_fraction, seed=args.seed,
                           train_from=args.train_from)
    if args.eval_data is None and (args.eval_slice or args.eval_limit):
        raise DivconqError("--eval-slice and --eval-limit need --eval-data FILE, the held-out questions")
    heldout = HeldOut(args.eval_data, args.eval_slice, args.eval_limit) if args.eval_data else None
    train_config = config_from_cli(argparse.Namespace(), config_file=args.config,
                                   **({"disable_tqdm": True} if args.json else {}))
    for name in ("divconq.distill.self_improve", "divconq.distill.train"):  # progress lines on stderr
        logging.getLogger(name).setLevel(logging.INFO)
    result = improve(args.student, args.solver, dataset=args.dataset, data=args.data, out=args.out,
                     screen_solver=args.screen_solver, heldout=heldout, prior_data=args.prior_data,
                     screened_from=args.screened_from, config=config,
                     train_config=train_config, timeout=args.timeout, progress=not args.json)
    print(json.dumps(result.to_dict(), indent=2, default=str) if args.json else format_rounds(result.rounds))
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    from divconq.distill.evaluate import load_pricing, report

    print(report(args.results, pricing=load_pricing(args.pricing), markdown_out=args.markdown, png_out=args.png))
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from divconq.nodes.gguf_files import export_gguf

    result = export_gguf(args.adapter, args.gguf, base=args.base, quant=args.quant, lora_gguf=args.lora_gguf,
                         overwrite=args.overwrite, trust_adapter=args.trust_adapter, progress=not args.json)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


@command("llamacpp")
def cmd_llamacpp(args: argparse.Namespace) -> int:
    from divconq.nodes import llamacpp

    if args.llamacpp_command == "build":
        server = llamacpp.build(jobs=args.jobs, force=args.force)
    else:
        server = llamacpp.require_tool("llama-server", "this")
    info = {"llama_server": str(server), "llama_quantize": str(llamacpp.tool_path("llama-quantize") or ""),
            "source": str(llamacpp.source_dir()), "llama_cpp_python_version": llamacpp.LLAMA_CPP_PYTHON_VERSION}
    print(json.dumps(info, indent=2) if args.json else server)
    return 0


SPEC_HELP = """model specs (--decomposer, --solver, --base):
  default                            the embedded SmolLM2-135M-Instruct (as decomposer: with the shipped adapter)
  default+adapter=none               the embedded model without any adapter
  default+adapter=DIR                the embedded model with your trained adapter
  hf:DIR_OR_HUB_ID[+adapter=DIR]     a transformers causal LM, optionally with a LoRA adapter
  PROVIDER:MODEL                     anything init_chat_model accepts, e.g. openai:gpt-4o-mini
  openai:MODEL@http://HOST:PORT/v1   an OpenAI-compatible server (vLLM, llama.cpp, Ollama)
  llamacpp:FILE.gguf[+lora=A.gguf]   a GGUF on a llama-server child (divconq llamacpp build; divconq export)

engines (--engine): how default and hf: specs run; auto takes llama.cpp for default once it is built

modes (--mode): static (all sub-questions first, the paper), dynamic (one at a time),
  single (the solver alone), auto (decompose; single-stage on 'No decomposition')"""
DESCRIPTION = __doc__.splitlines()[0] + "\n\n" + SPEC_HELP


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("divconq")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def quiet_libraries(verbose: bool, command: str | None) -> None:
    """Library warnings and transformers' weight-loading bars only with -v; divconq's own
    log lines (warnings) always, as ``divconq: ...`` on stderr."""
    logging.basicConfig(format="divconq: %(message)s", level=logging.WARNING)
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if command != "train":  # training keeps its progress bar
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decomposer", default="default", metavar="SPEC",
                        help="model spec of the decomposer, see divconq --help (default: %(default)s)")
    parser.add_argument("--solver", default="default", metavar="SPEC",
                        help="model spec of the solver, e.g. openai:gpt-4o-mini (default: %(default)s)")
    parser.add_argument("--mode", default="static", choices=MODES,
                        help="static: the decomposer writes all sub-questions first (the paper); dynamic: it "
                        "proposes one at a time given the answers so far; single: the solver alone; auto: "
                        "decompose, and answer single-stage when the decomposer says 'No decomposition' "
                        "(default: %(default)s)")
    parser.add_argument("--solve", default="joint", choices=SOLVE_STRATEGIES,
                        help="static mode: joint answers all sub-questions in one solver call (the paper); "
                        "sequential and parallel make one call per sub-question (default: %(default)s)")
    parser.add_argument("--task", default="math", choices=TASKS,
                        help="prompt variant: math, reading (a passage via --context) or multihop (default: %(default)s)")
    parser.add_argument("--shots", default="auto", choices=SHOTS,
                        help="decomposer prompt: the paper's zero-shot one, or one worked example "
                        "(auto: one-shot only for the bare embedded model)")
    parser.add_argument("--prompts", default="divconq", metavar="divconq|paper|FILE.json",
                        help="prompt wording: ours (step-by-step single stage), the paper's (direct answer of at "
                        "most five words single stage, its decomposition and solver prompts), or a JSON file "
                        "with every PromptSet field (default: %(default)s)")
    parser.add_argument("--max-subquestions", type=int_between(1, MAX_CAP), default=3, metavar="N",
                        help=f"cap on static sub-questions, 1 to {MAX_CAP} (default: %(default)s, the paper's best)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N",
                        help="cap on tokens per model reply (default: %(default)s)")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help="seconds an API model may take per request before it is retried (default: %(default)s)")
    parser.add_argument("--engine", default="auto", choices=ENGINES,
                        help="how default and hf: specs run: transformers, or llama.cpp on GGUF copies made once; "
                        "auto: llama.cpp for default when it is built (divconq llamacpp build), else transformers "
                        "(default: %(default)s)")


class _Parser(OneLineParser):
    """A subcommand parser that may add some arguments on first use (parse or help):
    `train` generates its flags from TRL's config class, an import of seconds that the
    other commands should not pay for."""

    def __init__(self, *args: Any, lazy_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lazy_arguments = lazy_arguments

    def _add_lazy_arguments(self) -> None:
        add, self._lazy_arguments = self._lazy_arguments, None
        if add is not None:
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._add_lazy_arguments()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_lazy_arguments()
        return super().format_help()


def _train_settings_arguments(parser: argparse.ArgumentParser) -> None:
    from divconq.distill.train import add_config_arguments

    add_config_arguments(parser)


def _add_improve_parser(sub: Any) -> None:
    imp = sub.add_parser("improve", help="the student improves itself from the solver's feedback (resumable)",
                         description="Each round the student samples K distinct decompositions per training "
                         "question, the screening solver answers with each through the graph, the ones that reached "
                         "gold are kept (per question the fewest solver tokens: S_D-S) and a new student is trained "
                         "on them with the prior data; the held-out score is measured each round.")
    imp.add_argument("--student", default="default", metavar="SPEC",
                     help="the starting decomposer, a local model: default, default+adapter=DIR, hf:DIR[+adapter=DIR] "
                     "(default: %(default)s)")
    imp.add_argument("--solver", required=True, metavar="SPEC", help="the solver of the held-out evaluation")
    imp.add_argument("--screen-solver", metavar="SPEC",
                     help="a (cheaper) solver that screens the samples (default: --solver)")
    imp.add_argument("--dataset", required=True, help=_scored_datasets())
    imp.add_argument("--data", required=True, metavar="FILE", help="training questions with gold answers")
    imp.add_argument("--out", required=True, metavar="DIR", help="the run's directory; rerun with it to resume")
    imp.add_argument("--samples", type=int_between(2), default=4, metavar="K",
                     help="distinct decompositions sampled per question, at least 2 (default: %(default)s)")
    imp.add_argument("--temperature", type=positive_float, default=0.8, help="sampling temperature (default: %(default)s)")
    imp.add_argument("--draws", type=positive_int, metavar="M",
                     help="decompositions drawn per question to find K distinct ones (default: 2K)")
    imp.add_argument("--rounds", type=positive_int, default=1, metavar="R", help="rounds to run (default: %(default)s)")
    imp.add_argument("--questions", type=positive_int, metavar="N",
                     help="question budget of a round: the first N training questions no earlier round kept")
    imp.add_argument("--eval-data", metavar="FILE", help="held-out questions scored each round (same --dataset)")
    imp.add_argument("--eval-slice", metavar="FILE", help="score exactly these ids of --eval-data, e.g. "
                     "bench/results/gsm8k_heldout.txt")
    imp.add_argument("--eval-limit", type=positive_int, metavar="N", help="score the first N held-out questions")
    imp.add_argument("--prior-data", metavar="DIR", help="an SFT dir the student was trained on, trained on again "
                     "with the kept set (without it each round trains on the kept sets alone)")
    imp.add_argument("--train-from", choices=TRAIN_FROM, default="base",
                     help="each round trains a new adapter on the base, or the round's student on from its adapter "
                     "(default: %(default)s)")
    imp.add_argument("--screened-from", metavar="DIR", help="another run's --out, of the same student, solvers, data "
                     "and sampling: start from its round 0 and round 1 screening, so only the training differs")
    imp.add_argument("--config", metavar="FILE", help="training settings as YAML or JSON (the keys of divconq train)")
    imp.add_argument("--concurrency", type=positive_int, default=2, metavar="K",
                     help="screening and evaluation questions in flight (default: %(default)s)")
    imp.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                     help="share of kept questions in the validation split (default: %(default)s)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: %(default)s)")
    imp.add_argument("--task", default="math", choices=TASKS, help="prompt variant (default: %(default)s)")
    imp.add_argument("--max-subquestions", type=int_between(1, MAX_CAP), default=3, metavar="N",
                     help="cap on sub-questions (default: %(default)s)")
    imp.add_argument("--max-new-tokens", type=positive_int, default=256, metavar="N",
                     help="cap on tokens per model reply (default: %(default)s)")
    imp.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                     help="seconds an API model may take per request (default: %(default)s)")
    imp.add_argument("--json", action="store_true", help="print every round's figures as JSON")


def _scored_datasets() -> str:
    """"gsm8k, drop, ... or jsonl": the datasets divconq scores, for the --dataset help."""
    from divconq.distill.metrics import SCORED_DATASETS

    return ", ".join(SCORED_DATASETS[:-1]) + f" or {SCORED_DATASETS[-1]}"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="divconq", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' warnings and weight-loading bars (quiet by default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    ask = sub.add_parser("ask", help="answer a question through the graph")
    ask.add_argument("question", help="the question, quoted")
    ask.add_argument("--context", metavar="FILE", help="a text file with the passage the question is about")
    ask.add_argument("--json", action="store_true", help="print the full result as JSON")
    ask.add_argument("--stream", action="store_true", help="show sub-questions, answers and solver tokens as they come")
    _add_model_args(ask)

    draw = sub.add_parser("draw", help="write the graph as Mermaid text and a PNG (offline)")
    draw.add_argument("--out", default="graph.png", help="PNG path; the Mermaid text goes beside it as .mmd")

    evaluate = sub.add_parser("eval", help="score the graph on a dataset (resumable)")
    evaluate.add_argument("--dataset", required=True, help=_scored_datasets())
    evaluate.add_argument("--data", required=True, metavar="FILE", help="the dataset's JSONL file")
    evaluate.add_argument("--out", required=True, metavar="RESULTS.jsonl", help="appended to; finished ids are skipped")
    evaluate.add_argument("--limit", type=positive_int, metavar="N",
                          help="score the first N questions (after leaving out training ids)")
    evaluate.add_argument("--concurrency", type=positive_int, default=4, metavar="K",
                          help="questions in flight (default: %(default)s)")
    evaluate.add_argument("--processes", type=positive_int, default=1,
                          help="worker processes sharing the concurrency (API models only: spreads client work over cores)")
    evaluate.add_argument("--pricing", metavar="FILE", help='JSON {"spec": {"input": $/1K, "output": $/1K}}')
    evaluate.add_argument("--price-as", action="append", metavar="ROLE=KEY", help="price a role as a pricing-table key")
    evaluate.add_argument("--exclude-ids", metavar="FILE", help="ids to leave out (default: the shipped adapter's training ids)")
    evaluate.add_argument("--slice", metavar="FILE",
                          help="score exactly these question ids (one per line, in order; e.g. "
                          "bench/results/gsm8k_heldout.txt); refused if it overlaps the training ids")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_model_args(evaluate)

    collect = sub.add_parser("collect", help="run the graph over a dataset and record traces (resumable)")
    collect.add_argument("--dataset", required=True, help=_scored_datasets())
    collect.add_argument("--data", required=True, metavar="FILE", help="the dataset's JSONL file")
    collect.add_argument("--store", required=True, metavar="TRACES.db", help="SQLite trace store (created, or resumed)")
    collect.add_argument("--limit", type=positive_int, metavar="N", help="run the first N questions")
    collect.add_argument("--concurrency", type=positive_int, default=4, metavar="K",
                         help="questions in flight (default: %(default)s)")
    collect.add_argument("--shard", metavar="I/N", help="take only shard I of N (by a hash of the question id)")
    _add_model_args(collect)

    sft = sub.add_parser("sft", help="turn traces (or gold decompositions) into SFT data")
    sft.add_argument("--store", metavar="TRACES.db", help="the trace store of divconq collect or trace import")
    sft.add_argument("--variant", default="decomposer", choices=VARIANTS,
                     help="what the student learns: the decomposer's sub-questions, or the solver's answers")
    sft.add_argument("--screen", default="none", choices=SCREENS,
                     help="gold: keep runs whose answer matched (S_D-R); self: of the sampled decompositions of "
                     "a question that led the solver to gold, the one with the fewest solver tokens (S_D-S, "
                     "the stores of divconq improve)")
    sft.add_argument("--answer", default="teacher", choices=ANSWER_SOURCES, help="solver only: gold gives S_E-A")
    sft.add_argument("--gold-data", metavar="FILE", help="build decomposer data from a dataset's gold sub-questions")
    sft.add_argument("--gold-dataset", default="gsm8k", help="the dataset name of --gold-data")
    sft.add_argument("--out", required=True, metavar="DIR", help="output dir; loads with datasets.load_dataset(DIR)")
    sft.add_argument("--task", default="math", choices=TASKS, help="prompt variant the examples are written in")
    sft.add_argument("--max-subquestions", type=int_between(1, MAX_CAP), default=3, metavar="N",
                     help="the cap the prompts promise (default: %(default)s)")
    sft.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F",
                     help="share of questions in the validation split, by a hash of the question (default: %(default)s)")
    sft.add_argument("--drop-no-decomposition", action="store_true",
                     help="leave out runs whose decomposer answered 'No decomposition'")
    sft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out dir")
    sft.add_argument("--json", action="store_true", help="print the summary as JSON")

    tr = sub.add_parser("train", help="train a LoRA student on SFT data (TRL's SFTTrainer)",
                        usage="%(prog)s --data DIR --out ADAPTER_DIR [--config FILE] [--resume] [--overwrite] "
                        "[--merge-to DIR] [--json] [settings...]", lazy_arguments=_train_settings_arguments)
    tr.add_argument("--data", required=True, metavar="DIR", help="an SFT data dir from `divconq sft`")
    tr.add_argument("--out", required=True, metavar="ADAPTER_DIR", help="where the adapter, its manifest and checkpoints go")
    tr.add_argument("--config", metavar="FILE", help="training settings as YAML or JSON (keys: the settings below); "
                    "flags given override it")
    tr.add_argument("--resume", action="store_true",
                    help="continue from the last complete checkpoint in ADAPTER_DIR; a finished run is left as it is")
    tr.add_argument("--overwrite", action="store_true", help="start over in an ADAPTER_DIR that holds a run")
    tr.add_argument("--merge-to", metavar="DIR", help="also save a standalone model with the adapter merged")
    tr.add_argument("--json", action="store_true", help="print the result as JSON")

    _add_improve_parser(sub)

    trace = sub.add_parser("trace", help="inspect, merge and import trace stores")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True)
    show = trace_sub.add_parser("show", help="print one captured run as a tree")
    show.add_argument("store", metavar="STORE", help="a trace store (SQLite)")
    show.add_argument("--id", help="run id (default: the first run)")
    listing = trace_sub.add_parser("list", help="one line per captured run")
    listing.add_argument("store", metavar="STORE", help="a trace store (SQLite)")
    merge = trace_sub.add_parser("merge", help="add the runs of other stores, without duplicates")
    merge.add_argument("store", metavar="STORE", help="the store to merge into (created if missing)")
    merge.add_argument("sources", nargs="+", metavar="OTHER", help="stores to read (left unchanged)")
    imp = trace_sub.add_parser("import", help="import LangSmith runs saved as JSON lines")
    imp.add_argument("store", metavar="STORE", help="the store to import into (created if missing)")
    imp.add_argument("jsonl", metavar="RUNS.jsonl",
                     help="LangSmith runs, one per line: client.runs.query() or list_runs() records (see README)")

    rep = sub.add_parser("report", help="compare result files like the paper's Table 1")
    rep.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="files of divconq eval; each is one row")
    rep.add_argument("--pricing", metavar="FILE", help='JSON {"spec": {"input": $/1K, "output": $/1K}} (default: the paper\'s GPT-3.5 prices)')
    rep.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    rep.add_argument("--png", metavar="FILE", help="also plot score against cost per question as a PNG")

    export = sub.add_parser("export", help="write a trained student as a GGUF file for llama.cpp")
    export.add_argument("--adapter", metavar="DIR", help="the adapter dir of divconq train (its manifest names the base)")
    export.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    export.add_argument("--base", metavar="SPEC", help="the base model, default or hf:DIR (default: the adapter "
                        "manifest's; alone, without --adapter, exports the base)")
    export.add_argument("--quant", choices=QUANTS,
                        help="weight format: q8_0 near-lossless, q4_k_m smaller and faster, f16 or f32 unquantized "
                        "(default: q8_0; a --lora-gguf is f32 by default, or f16 or q8_0)")
    export.add_argument("--lora-gguf", action="store_true",
                        help="write the adapter unmerged, for llamacpp:<base.gguf>+lora=OUT.gguf")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT.gguf")
    export.add_argument("--trust-adapter", action="store_true",
                        help="export an adapter without a divconq manifest or with pickled weights")
    export.add_argument("--json", action="store_true", help="print the result as JSON")

    lcpp = sub.add_parser("llamacpp", help="build llama.cpp's llama-server, or show where it is")
    lcpp_sub = lcpp.add_subparsers(dest="llamacpp_command", required=True)
    lbuild = lcpp_sub.add_parser("build", help="compile llama-server and llama-quantize from the llama-cpp-python "
                                 "sdist on PyPI into the divconq cache (about 10 min on 2 cores)")
    lbuild.add_argument("--jobs", type=positive_int, metavar="N", help="parallel compile jobs (default: every core)")
    lbuild.add_argument("--force", action="store_true", help="rebuild even when a build is there")
    lbuild.add_argument("--json", action="store_true", help="print the paths as JSON")
    where = lcpp_sub.add_parser("where", help="print the llama-server path (exit 2 when it is not built)")
    where.add_argument("--json", action="store_true", help="print the paths as JSON")

    for extend in EXTENSIONS:
        extend(sub)
    return parser


# Subcommands registered by other modules (distillation, evaluation) add themselves here.
EXTENSIONS: list[Callable[[Any], None]] = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose, args.command)
    try:
        return COMMANDS[args.command](args)
    except DivconqError as exc:
        print(f"divconq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("divconq: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = _error_line(exc, args)
        if line is None:
            raise  # a bug: the traceback is what a report needs
        print(f"divconq: error: {line}", file=sys.stderr)
        return 2


def _error_line(exc: Exception, args: argparse.Namespace) -> str | None:
    """One line for a failure that is not a bug: a model call that failed after its retries
    (a hung or unreachable server, a refused key), or a path that cannot be used."""
    from divconq.nodes.models import describe_model_error
    from divconq.safeio import os_error_line

    line = describe_model_error(exc, getattr(args, "timeout", None))
    if line is None and isinstance(exc, OSError):
        line = os_error_line(exc, doing="use")
    return line


def run_step(argv: list[str]) -> None:
    """One divconq command in-process, for scripts that chain steps: a failed step stops
    the script with its exit code (what earlier steps wrote stays, and reruns resume)."""
    code = main(argv)
    if code:
        raise SystemExit(f"stopped: 'divconq {argv[0]}' exited with {code}; fix the cause and rerun to resume")


if __name__ == "__main__":
    sys.exit(main())
