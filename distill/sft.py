"""Supervised fine-tuning data from teacher traces, after arXiv 2402.15000.

The paper distils either part of a two-stage (decompose, then solve) pipeline:

=========  ==========  ==========  ===================================================
variant    screen      answer      paper name: what the student learns
=========  ==========  ==========  ===================================================
decomposer none        -           S_D-T: every usable teacher decomposition
decomposer gold        -           S_D-R: decompositions of runs whose answer was right
decomposer self        -           S_D-S: the student's own sampled decompositions that led
                                   the solver to gold, per question the one with the fewest
                                   solver tokens (``divconq improve``)
solver     none|gold   teacher     S_E-T: the teacher's sub-answers and final answer
solver     none|gold   gold        S_E-A: the same with the final answer set to gold
=========  ==========  ==========  ===================================================

Every prompt is *rebuilt* with the ``*_messages`` functions of
:mod:`divconq.nodes.prompts` (zero-shot, exactly what the student sees at inference),
never copied from the trace, so a teacher run with a one-shot example still teaches
the zero-shot prompt. Decomposer completions are a canonical rendering of the parsed
sub-questions ("1. ...\\n2. ..."), or exactly ``"No decomposition"``.

Output (``out_dir``)::

    train.jsonl, validation.jsonl                     {"messages": [system, user, assistant]}
    train_prompt_completion.jsonl, validation_...    {"prompt": [...], "completion": [assistant]}
    README.md                                         dataset card: the two configs and their splits
    summary.json                                      counts, drop reasons, settings

Both formats are TRL conversational formats; ``divconq.distill.train`` reads
``train.jsonl``. ``datasets.load_dataset(out_dir)`` reads the card and gives the
``messages`` config as ``train`` and ``validation`` splits (``name="prompt_completion"``
the other format). A split with no example is not written, and not in the card. The train/validation split hashes the normalised question (and its
context), so adding traces later never moves a question across the split.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from divconq.argcheck import check_choice
from divconq.contract import (
    ANSWER_LEAD,
    ANSWER_RE,
    ANSWER_SOURCES,
    DROP_SPAN_SEP,
    JOINT_SOLVE_NODE,
    PROPOSE_NODE,
    SCREENS,
    STEPWISE_NODES,
    VARIANTS,
    AnswerSource,
    Screen,
    Task,
    Variant,
)
from divconq.distill.datasets import normalise_question
from divconq.distill.traces import TraceStore
from divconq.errors import DivconqError
from divconq.nodes.parsing import NO_DECOMPOSITION, is_no_decomposition, parse_subquestions
from divconq.nodes.prompts import PromptSet, decompose_messages, get_prompts, solve_messages
from divconq.safeio import atomic_dir, atomic_write, dir_holds_files
from divconq.scrub import scrub_text, scrub_value

__all__ = [
    "SFT_FILES",
    "SftSummary",
    "append_sft_files",
    "build_sft",
    "build_sft_from_gold",
    "normalise_question",
    "paper_name",
    "sft_from_store",
    "split_of",
]

SPLITS = ("train", "validation")
# One file per (config, split); the dataset card names them for `datasets.load_dataset`.
CONFIG_FILES = {"messages": "{split}.jsonl", "prompt_completion": "{split}_prompt_completion.jsonl"}
SFT_FILES = (
    "train.jsonl",
    "validation.jsonl",
    "train_prompt_completion.jsonl",
    "validation_prompt_completion.jsonl",
    "README.md",
    "summary.json",
)
SUMMARY_FILE = "summary.json"
CARD_FILE = "README.md"


# --------------------------------------------------------------------------- summary


@dataclass
class SftSummary:
    """What a build kept and dropped; also written to ``summary.json``."""

    variant: str
    screen: str
    answer: str | None
    task: str
    paper_name: str
    source: str  # "traces" or "gold"
    prompt_version: str
    max_subquestions: int
    val_fraction: float
    out_dir: str
    seen: int = 0
    kept: int = 0
    train: int = 0
    validation: int = 0
    no_decomposition: int = 0  # kept decomposer examples whose completion is "No decomposition"
    answer_appended: int = 0  # S_E-A solutions that had no "The answer is:" (gold appended)
    dropped: dict[str, int] = field(default_factory=dict)
    created_at: str = ""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def __fspath__(self) -> str:
        """The SFT dir, so the summary passes where its path does: ``finetune(build_sft(...), ...)``."""
        return self.out_dir

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A short human-readable report (the CLI prints it)."""
        answer = f", answer={self.answer}" if self.answer else ""
        lines = [
            f"SFT data {self.paper_name} ({self.variant}, screen={self.screen}{answer}, task={self.task}, "
            f"prompts v{self.prompt_version}, source={self.source}) -> {self.out_dir}",
            f"  seen {self.seen}, kept {self.kept} (train {self.train}, validation {self.validation}), "
            f"dropped {self.dropped_total}",
        ]
        if self.no_decomposition:
            lines.append(f"  'No decomposition' examples: {self.no_decomposition}")
        if self.answer_appended:
            lines.append(f"  solutions without 'The answer is:' (gold appended): {self.answer_appended}")
        for reason, count in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  dropped {count:>5}  {reason}")
        return "\n".join(lines)


def paper_name(variant: str, screen: str = "none", answer: str = "teacher") -> str:
    """The paper's name for a variant: S_D-T, S_D-R, S_E-T or S_E-A (with "+R" when a
    solver set is also screened on gold)."""
    if variant == "decomposer":
        return {"gold": "S_D-R", "self": "S_D-S"}.get(screen, "S_D-T")
    name = "S_E-A" if answer == "gold" else "S_E-T"
    return name + ("+R" if screen == "gold" else "")


# --------------------------------------------------------------------------- helpers


def split_of(key: str, val_fraction: float) -> str:
    """"validation" or "train" for a normalised key: sha1 bucket in [0, 1000)."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 1000
    return "validation" if bucket < round(val_fraction * 1000) else "train"


def _message_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant"}
    out = []
    for message in messages:
        role = next((r for cls, r in roles.items() if isinstance(message, cls)), None)
        if role is None:
            raise TypeError(f"unexpected message type {type(message).__name__} in a prompt")
        out.append({"role": role, "content": str(message.content)})
    return out


def _canonical_decomposition(subquestions: list[str]) -> str:
    return "\n".join(f"{i}. {q}" for i, q in enumerate(subquestions, 1))


def _gold_display(gold: Any) -> str | None:
    """The first gold answer as solver output writes it (multi-span DROP: comma-joined)."""
    if isinstance(gold, str):
        golds = [gold]
    else:
        golds = [g for g in (gold or []) if isinstance(g, str) and g.strip()]
    if not golds:
        return None
    return ", ".join(s.strip() for s in golds[0].split(DROP_SPAN_SEP) if s.strip()) or None


def with_gold_answer(solution: str, gold: str) -> tuple[str, bool]:
    """``solution`` with what follows its last answer marker (``contract.ANSWER_RE``, what
    the parser reads the answer after) replaced by ``gold``.

    Returns (text, appended): without any marker the gold answer is appended on a new
    line, as the solver prompt asks every response to end.
    """
    matches = list(ANSWER_RE.finditer(solution))
    if not matches:
        return f"{solution.rstrip()}\n{ANSWER_LEAD}{gold}", True
    last = matches[-1]
    marker = last.group(0).rstrip()
    if not marker.endswith((":", "：")):
        marker += ":"
    return f"{solution[: last.start()]}{marker} {gold}", False


def _nodes(run: Any) -> set[str]:
    return {str(getattr(call, "node", "")) for call in (getattr(run, "calls", None) or [])}


def _check_common(task: str, max_subquestions: int, val_fraction: float) -> None:
    try:
        get_prompts(task)
    except ValueError as exc:
        raise DivconqError(str(exc)) from None
    if not isinstance(max_subquestions, int) or max_subquestions < 1:
        raise DivconqError(f"max_subquestions must be a positive integer; got {max_subquestions!r}")
    if not (0.0 <= float(val_fraction) < 1.0):
        raise DivconqError(f"val_fraction must be in [0, 1); got {val_fraction!r}")


def _begin(out_dir: str | Path, overwrite: bool, task: str, max_subquestions: int, val_fraction: float,
           **labels: Any) -> tuple[Path, PromptSet, SftSummary]:
    """Check the shared settings and the output dir; the prompts and an empty summary."""
    _check_common(task, max_subquestions, val_fraction)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    prompts = get_prompts(task)  # zero-shot: what the student sees at inference
    summary = SftSummary(task=task, prompt_version=prompts.version, max_subquestions=max_subquestions,
                         val_fraction=float(val_fraction), out_dir=str(out_dir), **labels)
    return out_dir, prompts, summary


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty SFT dir unless overwriting (the adapter dir of training has its own rules)."""
    if dir_holds_files(out_dir) and not overwrite:
        raise DivconqError(f"output dir {out_dir} already exists and is not empty: choose another dir or pass overwrite")


# --------------------------------------------------------------------------- example builders


def _decomposer_example(
    run: Any, prompts: Any, max_subquestions: int
) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(example, drop reason, is_no_decomposition) for one run."""
    question, context = run.question, getattr(run, "context", None)
    nodes = _nodes(run)
    if PROPOSE_NODE in nodes or getattr(run, "route", None) == "dynamic":
        return None, "dynamic run (no static decomposition to learn)", False
    text = getattr(run, "decomposition", None) or ""
    if not text.strip():
        return None, "no decomposer output (single-stage run)", False
    if is_no_decomposition(text):
        completion, no_decomp = NO_DECOMPOSITION, True
    else:
        subquestions = parse_subquestions(text, max_subquestions, question)
        if not subquestions:
            return None, "decomposition held no usable sub-questions", False
        completion, no_decomp = _canonical_decomposition(subquestions), False
    prompt = _message_dicts(decompose_messages(prompts, question, context, max_subquestions))
    return {"prompt": prompt, "completion": completion}, None, no_decomp


def _solver_example(run: Any, prompts: Any, answer: str) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(example, drop reason, answer_appended) for one run."""
    nodes = _nodes(run)
    route = getattr(run, "route", None)
    metadata = getattr(run, "metadata", None)
    solve_mode = metadata.get("solve") if isinstance(metadata, dict) else None
    if route != "static" or nodes & (STEPWISE_NODES | {PROPOSE_NODE}) or solve_mode not in (None, "joint"):
        if route == "dynamic" or PROPOSE_NODE in nodes:
            how = "dynamic"
        elif route == "static":
            how = f"static/{solve_mode if solve_mode not in (None, 'joint') else 'stepwise'}"
        else:
            how = route or "unknown route"
        return None, f"not a static joint run ({how})", False
    if nodes and JOINT_SOLVE_NODE not in nodes:
        return None, "no joint solver call in the trace", False
    subquestions = [q for q in (getattr(run, "subquestions", None) or []) if isinstance(q, str) and q.strip()]
    if not subquestions:
        return None, "no sub-questions", False
    solution = getattr(run, "solution", None) or ""
    if not solution.strip():
        return None, "no solver output", False
    appended = False
    if answer == "gold":
        gold = _gold_display(getattr(run, "gold", None))
        if gold is None:
            return None, "no gold answer to put in the solution", False
        solution, appended = with_gold_answer(solution, gold)
    prompt = _message_dicts(solve_messages(prompts, run.question, getattr(run, "context", None), subquestions))
    return {"prompt": prompt, "completion": solution.strip()}, None, appended


# --------------------------------------------------------------------------- writing


def dataset_card(title: str, splits: Iterable[str], description: str = "") -> str:
    """A Hugging Face dataset card whose YAML lists each config's files per split.

    ``datasets.load_dataset(dir)`` reads it: the ``messages`` config is the default, and
    only the files of ``splits`` are named, so an empty split is never loaded.
    """
    lines = ["---", "configs:"]
    for config, pattern in CONFIG_FILES.items():
        lines.append(f"- config_name: {config}")
        if config == "messages":
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {pattern.format(split=split)}"]
    lines += ["---", "", f"# {title}", "", description.strip(), ""]
    return "\n".join(lines)


def write_card(out_dir: Path, title: str, description: str = "") -> None:
    """Write the dataset card of an SFT dir, naming the splits whose files exist."""
    splits = [split for split in SPLITS if (out_dir / CONFIG_FILES["messages"].format(split=split)).is_file()]
    atomic_write(out_dir / CARD_FILE, scrub_text(dataset_card(title, splits, description)), what="dataset card")


def _card_description(summary: SftSummary) -> str:
    return (
        f"divconq SFT data, {summary.paper_name} (variant {summary.variant}, screen {summary.screen}, "
        f"task {summary.task}, prompts v{summary.prompt_version}): {summary.train} train and "
        f"{summary.validation} validation examples. Two TRL conversational formats of the same examples: "
        "`messages` (the default config) and `prompt_completion`. `summary.json` has the counts and drop reasons.\n\n"
        "```python\nfrom datasets import load_dataset\n\n"
        f'data = load_dataset("{Path(summary.out_dir).as_posix()}")  # train and validation splits\n```'
    )


def _write(
    examples: list[tuple[str, dict[str, Any]]], summary: SftSummary, out_dir: Path, overwrite: bool
) -> SftSummary:
    """Write the jsonl files of the non-empty splits, the card and summary.json into a scratch
    dir, then move it into place.

    Every text is scrubbed of credentials on the way out (a teacher prompt may quote one).
    """
    _check_out_dir(out_dir, overwrite)  # again: it may have appeared meanwhile
    with atomic_dir(out_dir, replace_existing=overwrite, what="SFT output dir") as scratch:
        splits = sorted({split for split, _ in examples}, key=SPLITS.index)
        handles = {
            (split, config): open(scratch / pattern.format(split=split), "w", encoding="utf-8")
            for split in splits
            for config, pattern in CONFIG_FILES.items()
        }
        try:
            for split, example in examples:
                example = scrub_value(example)
                assistant = {"role": "assistant", "content": example["completion"]}
                messages = {"messages": example["prompt"] + [assistant]}
                pc = {"prompt": example["prompt"], "completion": [assistant]}
                handles[(split, "messages")].write(json.dumps(messages, ensure_ascii=False) + "\n")
                handles[(split, "prompt_completion")].write(json.dumps(pc, ensure_ascii=False) + "\n")
        finally:
            for handle in handles.values():
                handle.close()
        write_card(scratch, f"divconq SFT data: {summary.paper_name}", _card_description(summary))
        text = json.dumps(scrub_value(summary.to_dict()), indent=2, ensure_ascii=False) + "\n"
        (scratch / SUMMARY_FILE).write_text(text, encoding="utf-8")
    return summary


def _finish(
    kept: list[tuple[str, dict[str, Any]]],
    summary: SftSummary,
    dropped: Counter,
    out_dir: Path,
    overwrite: bool,
    empty_hint: str,
) -> SftSummary:
    summary.dropped = dict(sorted(dropped.items()))
    summary.kept = len(kept)
    summary.train = sum(1 for split, _ in kept if split == "train")
    summary.validation = summary.kept - summary.train
    summary.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not kept:
        reasons = "; ".join(f"{n} {r}" for r, n in dropped.most_common(3)) or "no runs given"
        raise DivconqError(f"no {summary.paper_name} examples left from {summary.seen} input(s) ({reasons}): {empty_hint}")
    if summary.train == 0:
        raise DivconqError(
            f"all {summary.kept} {summary.paper_name} examples fell in the validation split: "
            "collect more traces or lower val_fraction"
        )
    return _write(kept, summary, out_dir, overwrite)


@contextmanager
def _runs_of(source: TraceStore | str | os.PathLike | Iterable[Any]) -> Iterator[Iterable[Any]]:
    """The runs to build from: a store's finished runs (a path is opened read-only), or the runs given."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DivconqError(f"trace store {path} does not exist: collect traces first (divconq collect)")
        with TraceStore(path, readonly=True) as store:
            yield store.runs(status="ok")
    elif isinstance(source, TraceStore):
        yield source.runs(status="ok")
    else:
        yield source


def build_sft(
    source: TraceStore | str | os.PathLike | Iterable[Any],
    *,
    variant: Variant = "decomposer",
    screen: Screen = "none",
    answer: AnswerSource = "teacher",
    out_dir: str | Path,
    task: Task = "math",
    max_subquestions: int = 3,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    keep_no_decomposition: bool = True,
) -> SftSummary:
    """Build SFT data for one paper variant from teacher runs and write it to ``out_dir``.

    ``source``: a ``TraceStore`` or the path of one (its finished runs: what ``collect``
    recorded), or any iterable of objects with ``TraceRun``'s attributes (question,
    context, gold, correct, route, subquestions, decomposition, solution, status, calls...).
    ``keep_no_decomposition=False`` drops the runs whose decomposer answered "No
    decomposition" (a teacher that declines most questions would teach the student to).
    Returns the summary, which is also the path of ``out_dir`` (``finetune(summary, ...)``).
    Raises ``DivconqError`` on bad settings, an existing non-empty ``out_dir`` (unless
    ``overwrite``), a missing store, or when no example survives screening.
    """
    check_choice("variant", variant, VARIANTS)
    check_choice("screen", screen, SCREENS)
    check_choice("answer", answer, ANSWER_SOURCES)
    if variant == "decomposer" and answer != "teacher":
        raise DivconqError("answer='gold' applies to the solver variant only (S_E-A); use variant='solver'")
    if variant == "solver" and screen == "self":
        raise DivconqError("screen='self' applies to the decomposer variant only (S_D-S); use screen='gold' for solvers")
    with _runs_of(source) as runs:
        out_dir, prompts, summary = _begin(
            out_dir, overwrite, task, max_subquestions, val_fraction, variant=variant, screen=screen,
            answer=answer if variant == "solver" else None, paper_name=paper_name(variant, screen, answer),
            source="traces",
        )
        kept, dropped = _examples_from_runs(runs, summary, prompts, screen, answer, keep_no_decomposition, val_fraction)
    if screen == "self":
        hint = "no sampled decomposition led the solver to gold: sample more (divconq improve --samples) or use --screen none"
    elif screen == "gold":
        hint = "no run matched gold: collect traces with --gold so runs are scored, or use --screen none"
    elif variant == "solver":
        hint = "the solver variants need static joint runs (mode static, solve joint) with sub-questions"
    else:
        hint = "the decomposer variants need static runs whose decomposer wrote sub-questions"
    return _finish(kept, summary, dropped, out_dir, overwrite, hint)


def _examples_from_runs(runs: Iterable[Any], summary: SftSummary, prompts: PromptSet, screen: str, answer: str,
                        keep_no_decomposition: bool, val_fraction: float) -> tuple[list, Counter]:
    """The (split, example) pairs the runs give, and why the others were dropped."""
    variant, max_subquestions = summary.variant, summary.max_subquestions
    dropped: Counter = Counter()
    kept: list[tuple[str, dict[str, Any]]] = []
    seen_keys: set[str] = set()
    if screen == "self":
        runs, passed_over = _fewest_solver_tokens(runs)
        dropped.update(passed_over)
        summary.seen += sum(passed_over.values())
    for run in runs:
        summary.seen += 1
        status = getattr(run, "status", "ok")
        if status not in (None, "ok"):
            dropped[f"run status {status!r}"] += 1
            continue
        question = getattr(run, "question", None)
        if not isinstance(question, str) or not question.strip():
            dropped["no question"] += 1
            continue
        if screen != "none":
            correct = getattr(run, "correct", None)
            if correct is None:
                dropped["no gold to screen against"] += 1
                continue
            if not correct:
                dropped["answer did not match gold"] += 1
                continue
        if variant == "decomposer":
            example, reason, flag = _decomposer_example(run, prompts, max_subquestions)
        else:
            example, reason, flag = _solver_example(run, prompts, answer)
        if example is None:
            dropped[reason] += 1
            continue
        if variant == "decomposer" and flag and not keep_no_decomposition:
            dropped["'No decomposition' (not kept)"] += 1
            continue
        key = normalise_question(question, getattr(run, "context", None))
        if key in seen_keys:
            dropped["duplicate question (kept the first)"] += 1
            continue
        seen_keys.add(key)
        if variant == "decomposer":
            summary.no_decomposition += int(flag)
        else:
            summary.answer_appended += int(flag)
        kept.append((split_of(key, val_fraction), example))
    return kept, dropped


def solver_tokens(run: Any) -> int:
    """The tokens the solver read and wrote in a run: what using its decomposition cost."""
    usage = getattr(run, "usage", None) or {}
    solver = usage.get("solver") if isinstance(usage, dict) else None
    if not isinstance(solver, dict):
        return 0
    return int(solver.get("input_tokens") or 0) + int(solver.get("output_tokens") or 0)


CHEAPER_SAMPLE_KEPT = "another sample of the question cost the solver fewer tokens (kept that one)"


def _fewest_solver_tokens(runs: Iterable[Any]) -> tuple[list[Any], Counter]:
    """S_D-S screening: of the runs of one question whose decomposition led the solver to
    gold, the one with the fewest solver tokens (the first of equals).

    Returns those runs, then every run that is no candidate (not ok, unscored, wrong, or
    with no sub-questions), which ``build_sft`` drops with its reason (or keeps, for a
    question no candidate covers); and the candidates passed over, as drop reasons.
    """
    best: dict[str, Any] = {}
    others: list[Any] = []
    passed_over: Counter = Counter()
    for run in runs:
        question = getattr(run, "question", None)
        candidate = (getattr(run, "status", "ok") in (None, "ok") and isinstance(question, str)
                     and getattr(run, "correct", None) is True and bool(getattr(run, "subquestions", None)))
        if not candidate:
            others.append(run)
            continue
        key = normalise_question(question, getattr(run, "context", None))
        if key in best:
            passed_over[CHEAPER_SAMPLE_KEPT] += 1
            if solver_tokens(best[key]) <= solver_tokens(run):
                continue
        best[key] = run
    return list(best.values()) + others, passed_over


def append_sft_files(source_dir: str | Path, target_dir: str | Path) -> None:
    """Append the example files of one SFT dir to those of another (card and summary aside)."""
    for split in SPLITS:
        for pattern in CONFIG_FILES.values():
            source = Path(source_dir) / pattern.format(split=split)
            if source.is_file():  # an empty split has no file
                with (Path(target_dir) / source.name).open("a", encoding="utf-8") as out:
                    out.write(source.read_text(encoding="utf-8"))


def sft_from_store(store_path: str | Path, **settings: Any) -> SftSummary:
    """:func:`build_sft` over the finished runs of the trace store at ``store_path``
    (``build_sft`` takes the path itself; this name stays for divconq 0.1 callers)."""
    return build_sft(Path(store_path), **settings)


def build_sft_from_gold(
    examples: Iterable[Any],
    out_dir: str | Path,
    *,
    task: str = "math",
    max_subquestions: int = 3,
    val_fraction: float = 0.1,
    overwrite: bool = False,
) -> SftSummary:
    """Decomposer SFT data from gold decompositions (``Example.gold_subquestions``).

    Examples without gold sub-questions, or with more than ``max_subquestions`` of them
    (the prompt promises at most that many; raise ``max_subquestions`` to keep them),
    are dropped with a reason.
    """
    out_dir, prompts, summary = _begin(
        out_dir, overwrite, task, max_subquestions, val_fraction,
        variant="decomposer", screen="none", answer=None, paper_name="S_D-gold", source="gold",
    )
    dropped: Counter = Counter()
    kept: list[tuple[str, dict[str, Any]]] = []
    seen_keys: set[str] = set()
    for example in examples:
        summary.seen += 1
        question = getattr(example, "question", None)
        context = getattr(example, "context", None)
        if not isinstance(question, str) or not question.strip():
            dropped["no question"] += 1
            continue
        gold = [" ".join(q.split()) for q in (getattr(example, "gold_subquestions", None) or ()) if q and q.strip()]
        if not gold:
            dropped["no gold sub-questions"] += 1
            continue
        if len(gold) > max_subquestions:
            dropped[f"more than {max_subquestions} gold sub-questions"] += 1
            continue
        key = normalise_question(question, context)
        if key in seen_keys:
            dropped["duplicate question (kept the first)"] += 1
            continue
        seen_keys.add(key)
        prompt = _message_dicts(decompose_messages(prompts, question, context, max_subquestions))
        kept.append((split_of(key, val_fraction), {"prompt": prompt, "completion": _canonical_decomposition(gold)}))
    hint = "use a dataset with gold decompositions (e.g. gsm8k socratic, strategyqa, break) or raise max_subquestions"
    return _finish(kept, summary, dropped, out_dir, overwrite, hint)


def read_summary(data_dir: str | Path) -> dict[str, Any] | None:
    """The ``summary.json`` of an SFT data dir, or None when there is none."""
    path = Path(data_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DivconqError(f"{path} is unreadable ({exc}): rebuild the SFT data") from None

