"""A decomposer that improves itself from the solver's feedback: ``divconq improve``.

The paper distils the decomposer from a teacher, so the student can at best copy it. This
is rejection sampling (STaR, ReST): the student samples several decompositions of each
training question, the solver answers with each through the real graph, and the student
is retrained on the ones that led the solver to the gold answer. It needs no teacher once
a student decomposes, and it learns what helps *this* solver.

Round 0 scores the starting student on the held-out questions. Each round r = 1..R then:

  1. questions  the next ``questions`` training questions no earlier round kept (the budget);
  2. sample     the round r-1 student draws ``draws`` decompositions of each at ``temperature``
                and keeps the first ``samples`` distinct usable ones (``distill.sampling``);
  3. screen     the screening solver answers the question with each, through the real graph,
                every run recorded in a trace store, as ``divconq collect`` records;
  4. keep       per question, of the samples whose answer matched gold, the one with the
                fewest solver tokens: S_D-S (``build_sft(screen="self")``) over every round so
                far. Questions solved by every sample and by none are counted (they carry no
                signal); a round where no sample reached gold stops there, retraining nothing;
  5. train      through ``finetune``, on the prior data (the student's own training data, when
                given) plus the kept set: a new LoRA student on the base (``train_from="base"``),
                or the round's student trained on from its adapter (``train_from="student"``);
  6. evaluate   the new student on the held-out questions, with the evaluation solver, and
                its paired bootstrap CI against round 0.

``screened_from`` starts a new run from another run's round 0 and round 1 screening (copied),
so that training choices (``train_from``, the prior data) are compared over the same kept set:
sampling and screening are most of a round's time, and a repeat would differ by server noise.

The screening solver may be cheaper than the evaluation one (the paper's Table 4 question:
do decompositions tuned against one solver help another). Every step's output is its done
mark, and sampling, screening, training and evaluation resume inside themselves (by
question, sample, checkpoint and question), so a stopped run continues where it was::

    OUT/improve.json              settings and every finished round (the report reads it)
    OUT/round_0/heldout.jsonl     the starting student's held-out results
    OUT/round_<r>/questions.txt   the round's training questions (its budget)
                 /samples.jsonl   one line per question: the distinct samples and the draws' cost
                 /screen.db       trace store: one run per (question, sample)
                 /screening.json  accept rate, questions solved by all and none, the kept ids
                 /kept/           S_D-S data of every round so far
                 /train_data/     prior data + kept: what the student trains on (its summary
                                  says where each part came from; the adapter manifest keeps it)
                 /adapter/        the round's student (``<base>+adapter=<dir>``)
                 /heldout.jsonl   its held-out results
                 /clock.json      wall seconds per step, over every sitting
                 /screened_from.json  where the round's samples and screening were copied from
                                  (``screened_from``; round 0 and round 1 only)
                 /round.json      the round's figures, written last
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from langchain_core.language_models import BaseChatModel

from divconq.contract import DEFAULT_TIMEOUT_SECONDS, MAX_CAP, TASKS, TRAIN_FROM, Task, TrainFrom
from divconq.distill.datasets import Example, load_dataset
from divconq.distill.evaluate import load_pricing, read_results, summarise
from divconq.distill.sampling import SAMPLE_KEY, Draws, SampledDecomposer, sample_decompositions
from divconq.distill.sft import SUMMARY_FILE, append_sft_files, build_sft, read_summary, write_card
from divconq.distill.stats import paired_bootstrap, paired_rows
from divconq.errors import DivconqError
from divconq.safeio import WriterLock, atomic_dir, atomic_write, os_error_line
from divconq.scrub import scrub_value

__all__ = ["HeldOut", "ImproveConfig", "ImproveResult", "NoSignalError", "format_rounds", "improve", "label"]

logger = logging.getLogger(__name__)

SETTINGS_FILE = "improve.json"
# Settings a resumed run may change: they change how fast it runs, not what it computes.
_FREE_SETTINGS = ("rounds", "concurrency")
# Settings that decide only what a round trains, not what it samples, screens and keeps: a
# run with other values may take over another's round 1 screening (screened_from). Not
# val_fraction: the kept set is copied with its split.
_TRAINING_SETTINGS = ("prior_data", "train_from")


class NoSignalError(DivconqError):
    """A round gave nothing to learn from (no sample reached gold): it stopped, retraining nothing.

    ``screening`` holds the round's figures (accept rate, questions solved by none...).
    """

    def __init__(self, message: str, screening: dict[str, Any]) -> None:
        super().__init__(message)
        self.screening = screening


@dataclass(frozen=True)
class ImproveConfig:
    """How each round samples, screens and scores: every default in one place."""

    samples: int = 4  # K: distinct decompositions per question
    temperature: float = 0.8
    rounds: int = 1
    questions: int | None = None  # the question budget of a round; None: every training question
    draws: int | None = None  # decompositions drawn per question to find K distinct ones; None: 2K
    task: Task = "math"
    max_subquestions: int = 3
    max_new_tokens: int = 256
    concurrency: int = 2  # screening and evaluation questions in flight
    val_fraction: float = 0.1  # of the kept set, by a hash of the question
    seed: int = 0
    # "base": each round trains a new adapter on the base; "student": it trains the round's
    # student on from its adapter (kept and prior data alike), so what the student already
    # decomposes well is not relearned from scratch.
    train_from: TrainFrom = "base"
    # Pricing keys (divconq.distill.evaluate): the paper's student at 13/175 of GPT-3.5, and GPT-3.5.
    decomposer_price: str = "13b-student"
    solver_price: str = "openai:gpt-3.5-turbo"

    def __post_init__(self) -> None:
        _whole("samples", self.samples, 2, "K distinct decompositions to compare, so at least 2")
        _whole("rounds", self.rounds, 1)
        _whole("max_subquestions", self.max_subquestions, 1, f"at most {MAX_CAP}", high=MAX_CAP)
        _whole("max_new_tokens", self.max_new_tokens, 1)
        _whole("concurrency", self.concurrency, 1)
        if self.questions is not None:
            _whole("questions", self.questions, 1)
        if self.draws is not None:
            _whole("draws", self.draws, self.samples, f"at least samples ({self.samples})")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            raise DivconqError(f"temperature must be above 0 (greedy decoding writes one decomposition K times), "
                               f"got {self.temperature!r}")
        if self.train_from not in TRAIN_FROM:
            raise DivconqError(f"train_from must be one of {', '.join(TRAIN_FROM)}, got {self.train_from!r}")
        if self.task not in TASKS:
            raise DivconqError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not 0 <= self.val_fraction < 1:
            raise DivconqError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")

    @property
    def draws_per_question(self) -> int:
        return self.draws if self.draws is not None else 2 * self.samples


def _whole(name: str, value: Any, low: int, why: str = "", *, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        reason = f" ({why})" if why else ""
        raise DivconqError(f"{name} must be a whole number of at least {low}{reason}, got {value!r}")


@dataclass(frozen=True)
class HeldOut:
    """The held-out questions every round is scored on: a data file, optionally a fixed slice of it
    (``bench/results/gsm8k_heldout.txt``), and its first ``limit``."""

    data: str | Path
    slice: str | Path | None = None
    limit: int | None = None


@dataclass
class ImproveResult:
    """The rounds run so far (round 0 first) and the last round's student spec."""

    out: str
    student: str
    rounds: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label(model: Any) -> str:
    """How a model is named in the settings and the figures: its spec, or its class."""
    return model if isinstance(model, str) else type(model).__name__


@dataclass
class _Plan:
    """The checked inputs of a run."""

    student: str
    base: str
    solver: Any  # a model spec or a chat model
    screen_solver: Any
    dataset: str
    train: list[Example]
    heldout: list[Example]
    slice_key: str | None
    prior: Path | None
    out: Path
    config: ImproveConfig
    train_config: Any
    start_ids: set[str]
    timeout: float | None
    pricing: dict[str, dict[str, float]]
    progress: bool


@dataclass(frozen=True)
class _Round:
    """The files of one round (see the module docstring)."""

    dir: Path

    questions = property(lambda self: self.dir / "questions.txt")
    samples = property(lambda self: self.dir / "samples.jsonl")
    store = property(lambda self: self.dir / "screen.db")
    screening = property(lambda self: self.dir / "screening.json")
    kept = property(lambda self: self.dir / "kept")
    train_data = property(lambda self: self.dir / "train_data")
    adapter = property(lambda self: self.dir / "adapter")
    heldout = property(lambda self: self.dir / "heldout.jsonl")
    clock = property(lambda self: self.dir / "clock.json")
    summary = property(lambda self: self.dir / "round.json")
    screened_from = property(lambda self: self.dir / "screened_from.json")  # where a reused screening came from


# --------------------------------------------------------------------------- the loop


def improve(
    student: str,
    solver: str | BaseChatModel,
    *,
    dataset: str,
    data: str | Path,
    out: str | Path,
    screen_solver: str | BaseChatModel | None = None,
    heldout: HeldOut | None = None,
    prior_data: str | Path | None = None,
    screened_from: str | Path | None = None,
    config: ImproveConfig | None = None,
    train_config: Any = None,
    pricing: dict[str, dict[str, float]] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
    progress: bool = True,
) -> ImproveResult:
    """Run ``config.rounds`` rounds of self-improvement; return every round's figures.

    Args:
        student: the starting decomposer, a local model: ``default``, ``default+adapter=DIR``,
            ``hf:DIR`` or ``hf:DIR+adapter=DIR``; each round trains a new adapter on its base.
        solver: the model (spec or chat model) that answers the held-out questions, and screens by default.
        dataset, data: the training questions, with gold answers (``divconq.distill.datasets``).
        out: the run's directory; rerunning with it resumes (settings must match but ``rounds``).
        screen_solver: a cheaper solver for screening the samples (``solver`` when None).
        heldout: the questions each round is scored on (none: no held-out score).
        prior_data: an SFT dir the student was trained on, trained on again with the kept set.
        screened_from: another run's ``out``, of the same student, solvers, data and sampling: a new
            run starts from its round 0 and its round 1 samples and screening (copied), so that only
            the training differs.
        config: sampling, screening and budget settings (``ImproveConfig()`` when None).
        train_config: a ``TrainConfig`` for each round's training (``TrainConfig()`` when None).
        pricing: extra pricing-table entries (``{spec: {"input", "output"}}`` $/1K tokens).

    Raises ``NoSignalError`` when a round's samples never led the solver to gold (that
    round retrains nothing; the rounds before it stay), ``DivconqError`` on bad input.
    """
    plan = _plan(student, solver, dataset, data, out, screen_solver, heldout, prior_data, config or ImproveConfig(),
                 train_config, pricing, timeout, progress)
    with WriterLock(plan.out / SETTINGS_FILE, "improve run"):  # a second run on this dir is refused now
        settings = _check_settings(plan, data, heldout)
        if screened_from is not None:
            _take_screening(plan, settings, Path(screened_from))
        rounds = [_round_zero(plan)]
        _write_json(plan.out / SETTINGS_FILE, {"settings": settings, "rounds": rounds})
        current = plan.student
        for number in range(1, plan.config.rounds + 1):
            try:
                record = _round(plan, number, current)
            except NoSignalError as exc:  # the round's figures say why: kept beside the finished rounds
                _write_json(plan.out / SETTINGS_FILE, {"settings": settings, "rounds": rounds, "stopped": str(exc),
                                                       "stopped_round": {"round": number, **exc.screening}})
                raise
            rounds.append(record)
            current = record["student"]
            _write_json(plan.out / SETTINGS_FILE, {"settings": settings, "rounds": rounds})
    return ImproveResult(str(plan.out), current, rounds)


def _round_zero(plan: _Plan) -> dict[str, Any]:
    paths = _Round(plan.out / "round_0")
    if paths.summary.is_file():
        return _read_json(paths.summary)
    with _timed(paths, "evaluate"):
        rows = _evaluate(plan, plan.student, paths.heldout)
    record = _record(plan, 0, plan.student, rows, rows, None, paths)
    _write_json(paths.summary, record)
    return record


def _round(plan: _Plan, number: int, student: str) -> dict[str, Any]:
    """One round: sample, screen, keep, train, evaluate; each step skipped once done."""
    paths = _Round(plan.out / f"round_{number}")
    if paths.summary.is_file():
        return _read_json(paths.summary)
    prompts = _prompts(plan, student)
    if not (paths.kept / SUMMARY_FILE).is_file():
        examples = _questions(plan, number, paths)
        with _timed(paths, "sample"):
            draws = _sample(plan, number, paths, student, prompts, examples)
        with _timed(paths, "screen"):
            _screen(plan, number, paths, student, prompts, examples, draws)
        stats = _screening_stats(plan, paths, examples, draws)
        _write_json(paths.screening, stats)
        _stop_without_signal(plan, number, stats)
        with _timed(paths, "keep"):
            _keep(plan, number, paths)
    from divconq.distill.train import student_spec
    from divconq.nodes.manifest import ADAPTER_MANIFEST

    stats = _read_json(paths.screening)
    new_student = student_spec(plan.base, paths.adapter)
    if not (paths.train_data / SUMMARY_FILE).is_file():
        _training_data(plan, number, paths, student, stats)
    if not (paths.adapter / ADAPTER_MANIFEST).is_file():
        with _timed(paths, "train"):
            _train(plan, number, paths, student)
    with _timed(paths, "evaluate"):
        rows = _evaluate(plan, new_student, paths.heldout)
    round_zero_rows = read_results(plan.out / "round_0" / "heldout.jsonl")
    record = _record(plan, number, new_student, rows, round_zero_rows, stats, paths)
    _write_json(paths.summary, record)
    logger.info("%s", format_rounds([record]))
    return record


# --------------------------------------------------------------------------- inputs


def _plan(student: str, solver: Any, dataset: str, data: str | Path, out: str | Path, screen_solver: Any,
          heldout: HeldOut | None, prior_data: str | Path | None, config: ImproveConfig, train_config: Any,
          pricing: dict | None, timeout: float | None, progress: bool) -> _Plan:
    """Every input checked before any model loads."""
    from divconq.nodes.models import parse_spec

    base = _base_of(student)
    for spec in (solver, screen_solver):
        if isinstance(spec, str) and spec.startswith("gold:"):
            raise DivconqError("a gold: spec is a decomposer, not a solver: pass a solver model spec")
        if isinstance(spec, str):
            parse_spec(spec)
    train = _with_gold(load_dataset(dataset, data), data)
    start_ids = _start_training_ids(student)
    held, slice_key = _heldout(dataset, heldout, start_ids) if heldout else ([], None)
    held_ids = {e.id for e in held}
    train = [e for e in train if e.id not in held_ids]
    if not train:
        raise DivconqError(f"every question of {data} is in the held-out set: pass other training --data")
    prior = Path(prior_data) if prior_data is not None else None
    if prior is not None and not (prior / "train.jsonl").is_file():
        raise DivconqError(f"prior data {prior} holds no train.jsonl: pass an SFT dir of divconq sft (or the recipe)")
    if train_config is None:
        from divconq.distill.train import TrainConfig

        train_config = TrainConfig()
    train_config = copy.copy(train_config)
    train_config.output_dir = None  # each round's checkpoints go beside its adapter
    return _Plan(student, base, solver, screen_solver or solver, dataset, train, held, slice_key, prior, Path(out),
                 config, train_config, start_ids, timeout, {**load_pricing(None), **(pricing or {})}, progress)


def _base_of(student: str) -> str:
    """The base model spec a student's adapters train on; refused unless it is a local model."""
    from divconq.nodes.models import parse_spec

    spec = None if student.startswith("gold:") else parse_spec(student)
    if spec is None or spec.kind == "chat":
        raise DivconqError(f"the student {student!r} must be a local model (default, default+adapter=DIR, hf:DIR or "
                           "hf:DIR+adapter=DIR): improve samples from it and retrains it")
    return "default" if spec.kind == "default" else f"hf:{spec.target}"


def _with_gold(examples: list[Example], data: str | Path) -> list[Example]:
    missing = [e for e in examples if not e.answers]
    if missing:
        raise DivconqError(
            f"{len(missing)} of the {len(examples)} questions in {data} have no gold answer (e.g. {missing[0].id}): "
            "improve keeps a decomposition only when it led the solver to gold; pass a dataset with answers")
    return examples


def _start_training_ids(student: str) -> set[str]:
    """The question ids the starting student was trained on (``training_ids.txt`` beside its adapter)."""
    from divconq.distill.recipe import TRAINING_IDS_FILE
    from divconq.nodes.models import DEFAULT_ADAPTER_DIR, parse_spec

    spec = parse_spec(student)
    if spec.adapter == "none":
        return set()
    directory = Path(spec.adapter) if spec.adapter else DEFAULT_ADAPTER_DIR if spec.kind == "default" else None
    source = directory / TRAINING_IDS_FILE if directory is not None else None
    if source is None or not source.is_file():
        return set()
    return {line.strip() for line in source.read_text(encoding="utf-8").splitlines() if line.strip()}


def _heldout(dataset: str, heldout: HeldOut, start_ids: set[str]) -> tuple[list[Example], str | None]:
    from divconq.distill.slices import check_disjoint, read_slice, select

    examples = load_dataset(dataset, heldout.data)
    if heldout.slice is not None:
        slice_ = read_slice(heldout.slice)
        check_disjoint(slice_, start_ids, "the starting student")
        chosen, key = select(examples, slice_), slice_.key
    else:
        chosen, key = [e for e in examples if e.id not in start_ids], None
    if heldout.limit is not None:
        _whole("held-out limit", heldout.limit, 1)
        chosen = chosen[: heldout.limit]
    if not chosen:
        raise DivconqError(f"no held-out questions left in {heldout.data}: pass another held-out file")
    return _with_gold(chosen, heldout.data), key


def _check_settings(plan: _Plan, data: str | Path, heldout: HeldOut | None) -> dict[str, Any]:
    """This run's settings; a run in ``out`` with other settings is refused, naming the first that differs."""
    settings = scrub_value({
        "student": plan.student, "solver": label(plan.solver), "screen_solver": label(plan.screen_solver),
        "dataset": plan.dataset,
        "data": str(Path(data).resolve()),
        "heldout": None if heldout is None else {
            "data": str(Path(heldout.data).resolve()), "slice": plan.slice_key, "limit": heldout.limit},
        "prior_data": None if plan.prior is None else str(plan.prior.resolve()),
        **{f.name: getattr(plan.config, f.name) for f in fields(ImproveConfig)},
    })
    earlier = _read_json(plan.out / SETTINGS_FILE) if (plan.out / SETTINGS_FILE).is_file() else None
    for key, value in ((earlier or {}).get("settings") or {}).items():
        if key not in _FREE_SETTINGS and settings.get(key) != value:
            raise DivconqError(f"{plan.out} holds a run with {key} {value!r}, this run has {settings.get(key)!r}: "
                               "pass another --out, or the same settings to resume it")
    return settings


def _take_screening(plan: _Plan, settings: dict[str, Any], source: Path) -> None:
    """Copy round 0 and round 1's samples, screening and kept set of the run in ``source``.

    Only those: later rounds sample from a student this run trains. Refused unless ``source``
    sampled and screened as this run would; what this run already holds is kept as it is."""
    source_file = source / SETTINGS_FILE
    if not source_file.is_file():
        raise DivconqError(f"screened_from {source} holds no run of divconq improve ({SETTINGS_FILE}): pass its --out")
    theirs = _read_json(source_file).get("settings") or {}
    for key in sorted(set(theirs) | set(settings)):
        if key not in _FREE_SETTINGS + _TRAINING_SETTINGS and theirs.get(key) != settings.get(key):
            raise DivconqError(f"screened_from {source} sampled or screened with {key} {theirs.get(key)!r}, this run "
                               f"has {settings.get(key)!r}: its screening is not this run's; drop screened_from")
    zero, one = _Round(source / "round_0"), _Round(source / "round_1")
    if not (zero.summary.is_file() and (one.kept / SUMMARY_FILE).is_file()):
        raise DivconqError(f"screened_from {source} has not finished round 1's screening: resume that run first")
    if not (plan.out / "round_0" / "round.json").is_file():
        _copy_files(zero, _Round(plan.out / "round_0"), ("round.json", "heldout.jsonl", "clock.json"))
    target = _Round(plan.out / "round_1")
    if not (target.kept / SUMMARY_FILE).is_file():
        _copy_screening(one, target)


def _copy_files(source: _Round, target: _Round, names: tuple[str, ...]) -> None:
    import shutil

    with atomic_dir(target.dir, replace_existing=True, what="round dir") as scratch:
        for name in names:
            if (source.dir / name).is_file():
                shutil.copy2(source.dir / name, scratch / name)
        _write_json(_Round(scratch).screened_from, {"source": str(source.dir.resolve())})


def _copy_screening(source: _Round, target: _Round) -> None:
    """A round's sample, screen and keep steps, their files and seconds; the store through SQLite's backup."""
    import shutil
    import sqlite3

    with atomic_dir(target.dir, replace_existing=True, what="round dir") as scratch:
        into = _Round(scratch)
        for path in ("questions", "samples", "screening"):
            shutil.copy2(getattr(source, path), getattr(into, path))
        shutil.copytree(source.kept, into.kept)
        reader, writer = sqlite3.connect(f"file:{source.store}?mode=ro", uri=True), sqlite3.connect(into.store)
        try:
            reader.backup(writer)
        finally:
            reader.close()
            writer.close()
        clock = _read_json(source.clock) if source.clock.is_file() else {}
        _write_json(into.clock, {k: v for k, v in clock.items() if k in ("sample", "screen", "keep")})
        _write_json(into.screened_from, {"source": str(source.dir.resolve())})


def _prompts(plan: _Plan, student: str) -> Any:
    """The student's prompts: zero-shot, as its training data is written, but for the bare embedded model."""
    from divconq.nodes.models import needs_one_shot
    from divconq.nodes.prompts import get_prompts

    return get_prompts(plan.config.task, one_shot=needs_one_shot(student))


# --------------------------------------------------------------------------- steps


def _questions(plan: _Plan, number: int, paths: _Round) -> list[Example]:
    """The round's questions: the first ``questions`` no earlier round kept, fixed once chosen."""
    by_id = {e.id: e for e in plan.train}
    if paths.questions.is_file():
        ids = [line for line in paths.questions.read_text(encoding="utf-8").splitlines() if line]
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DivconqError(f"question {missing[0]} of {paths.questions} is not in the training data any more: "
                               "pass the data this run started with, or another --out")
        return [by_id[i] for i in ids]
    kept_before: set[str] = set()
    for earlier in range(1, number):
        kept_before |= set(_read_json(_Round(plan.out / f"round_{earlier}").screening)["kept_ids"])
    pool = [e for e in plan.train if e.id not in kept_before]
    chosen = pool[: plan.config.questions] if plan.config.questions else pool
    if not chosen:
        raise DivconqError(f"round {number}: every training question was kept in an earlier round: pass more --data "
                           "or fewer --rounds")
    atomic_write(paths.questions, "".join(e.id + "\n" for e in chosen), what="question list")
    return chosen


def _seed(plan: _Plan, number: int, example_id: str) -> int:
    digest = hashlib.sha1(f"{plan.config.seed}:{number}:{example_id}".encode()).hexdigest()
    return int(digest[:8], 16)


def _sample(plan: _Plan, number: int, paths: _Round, student: str, prompts: Any,
            examples: list[Example]) -> dict[str, Draws]:
    """Each question's distinct samples, appended one question a line as they are drawn."""
    from tqdm import tqdm

    from divconq.nodes import load_chat_model
    from divconq.nodes.prompts import decompose_messages

    done = {row["id"]: Draws.from_dict(row["draws"]) for row in _read_rows(paths.samples)}
    todo = [e for e in examples if e.id not in done]
    if not todo:
        return done
    config = plan.config
    # Sampling draws from the transformers pipeline itself (seeded torch generation), so never llama.cpp here.
    chat = load_chat_model(student, role="decomposer", max_new_tokens=config.max_new_tokens, engine="transformers")
    logger.info("round %d: sampling %d decompositions of each of %d questions (%d done before)",
                number, config.draws_per_question, len(todo), len(done))
    for example in tqdm(todo, desc=f"round {number} sample", unit="q", disable=not plan.progress):
        messages = decompose_messages(prompts, example.question, example.context, config.max_subquestions)
        draws = sample_decompositions(
            chat, messages, question=example.question, samples=config.samples, draws=config.draws_per_question,
            temperature=config.temperature, max_subquestions=config.max_subquestions,
            max_new_tokens=config.max_new_tokens, seed=_seed(plan, number, example.id))
        _append_row(paths.samples, {"id": example.id, "draws": draws.to_dict()})
        done[example.id] = draws
    return done


def _sample_examples(examples: list[Example], draws: dict[str, Draws]) -> list[tuple[Example, Any]]:
    """One screening example per sample: the question under the id ``<question id>#<sample>``."""
    return [(Example(f"{e.id}#{j}", e.question, e.context, e.answers), sample)
            for e in examples for j, sample in enumerate(draws[e.id].samples)]


def _screen(plan: _Plan, number: int, paths: _Round, student: str, prompts: Any, examples: list[Example],
            draws: dict[str, Draws]) -> None:
    """The screening solver answers each question with each sample, through the graph, into the store (``collect``)."""
    from divconq.distill.collection import collect
    from divconq.distill.metrics import matches_gold
    from divconq.distill.runner import RunSettings
    from divconq.graph import build_graph
    from divconq.nodes import load_chat_model

    pairs = _sample_examples(examples, draws)
    samples = {example.id: (draws[example.id.rsplit("#", 1)[0]].prompt_digest, sample) for example, sample in pairs}

    def graph() -> Any:  # built only when some sample is still to be screened: the solver loads then
        logger.info("round %d: screening with %s", number, label(plan.screen_solver))
        solver = load_chat_model(plan.screen_solver, role="solver", max_new_tokens=plan.config.max_new_tokens,
                                 timeout=plan.timeout)
        decomposer = SampledDecomposer(samples=samples, model_name=student)
        return build_graph(decomposer, solver, prompts=prompts, max_subquestions=plan.config.max_subquestions,
                           timeout=plan.timeout).compile()

    try:
        collect(graph, [example for example, _ in pairs], paths.store, dataset=plan.dataset,
                metric=functools.partial(matches_gold, plan.dataset),
                settings=RunSettings(concurrency=plan.config.concurrency, progress=plan.progress),
                metadata=lambda example: {SAMPLE_KEY: example.id, "improve_round": number},
                description=f"round {number} screen")
    except DivconqError as exc:
        raise DivconqError(f"round {number}: screening: {exc}") from None


def _screening_stats(plan: _Plan, paths: _Round, examples: list[Example], draws: dict[str, Draws]) -> dict[str, Any]:
    """Accept rate, questions solved by every sample and by none, the questions kept."""
    from divconq.distill.sft import solver_tokens
    from divconq.distill.traces import TraceStore

    outcomes: dict[str, list[bool]] = {e.id: [] for e in examples}
    errors = tokens = 0
    if paths.store.is_file():
        with TraceStore(paths.store, readonly=True) as store:
            for run in store.runs(status=None):
                question = (run.example_id or "").rsplit("#", 1)[0]
                if run.status != "ok":
                    errors += 1
                elif question in outcomes:
                    outcomes[question].append(bool(run.correct))
                    tokens += solver_tokens(run)
    screened = [o for o in outcomes.values() if o]
    samples = sum(len(o) for o in screened)
    correct = sum(sum(o) for o in screened)
    every = list(draws[e.id] for e in examples)
    return {
        "questions": len(examples),
        "samples_screened": samples,
        "correct_samples": correct,
        "accept_rate": correct / samples if samples else None,
        "kept_questions": sum(1 for o in screened if any(o)),
        "solved_by_all": sum(1 for o in screened if all(o)),
        "solved_by_none": sum(1 for o in screened if not any(o)),
        "no_usable_sample": sum(1 for d in every if not d.samples),
        "screen_errors": errors,
        "draws": {key: sum(getattr(d, key) for d in every)
                  for key in ("draws", "duplicates", "declined", "unusable", "surplus", "input_tokens", "output_tokens")},
        "screening_solver_tokens": tokens,
        "kept_ids": [e.id for e in examples if any(outcomes[e.id])],
    }


def _stop_without_signal(plan: _Plan, number: int, stats: dict[str, Any]) -> None:
    """A round with nothing to learn from stops here, before anything is retrained."""
    if stats["kept_questions"]:
        return
    questions = f"{stats['questions']} question{'s' if stats['questions'] != 1 else ''}"
    if not stats["samples_screened"]:
        raise NoSignalError(
            f"round {number}: the student wrote no usable decomposition in {plan.config.draws_per_question} draws "
            f"for any of the {questions}, so nothing was retrained: raise --temperature or --draws, or start from "
            "a trained student", stats)
    raise NoSignalError(
        f"round {number}: the solver {label(plan.screen_solver)} reached gold with none of the "
        f"{stats['samples_screened']} sampled decompositions of {questions}, so nothing was retrained: sample more "
        "(--samples, --temperature), screen with a stronger --screen-solver, or check the gold answers of the data",
        stats)


def _keep(plan: _Plan, number: int, paths: _Round) -> None:
    """S_D-S data over the stores of every round so far: per question, the cheapest sample that reached gold."""
    from divconq.distill.traces import TraceStore

    runs = []
    for earlier in range(1, number + 1):
        with TraceStore(_Round(plan.out / f"round_{earlier}").store, readonly=True) as store:
            runs += list(store.runs())
    build_sft(runs, variant="decomposer", screen="self", out_dir=paths.kept, task=plan.config.task,
              max_subquestions=plan.config.max_subquestions, val_fraction=plan.config.val_fraction, overwrite=True)


def _training_data(plan: _Plan, number: int, paths: _Round, student: str, stats: dict[str, Any]) -> None:
    """The prior data and the kept set in one SFT dir, whose summary says where each part came from."""
    kept = read_summary(paths.kept) or {}
    prior = read_summary(plan.prior) if plan.prior is not None else None
    provenance = {
        "method": "divconq improve (rejection sampling: the student's samples that led the solver to gold)",
        "round": number, "sampled_by": student, "screened_by": label(plan.screen_solver), "samples": plan.config.samples,
        "draws": plan.config.draws_per_question, "temperature": plan.config.temperature,
        "questions": stats["questions"], "kept_questions": stats["kept_questions"],
        "accept_rate": stats["accept_rate"],
        "stores": [str(_Round(plan.out / f"round_{r}").store) for r in range(1, number + 1)],
        "prior_data": None if plan.prior is None else str(plan.prior),
        "train_from": plan.config.train_from,
    }
    with atomic_dir(paths.train_data, replace_existing=True, what="training data dir") as scratch:
        if plan.prior is not None:
            append_sft_files(plan.prior, scratch)
        append_sft_files(paths.kept, scratch)
        counts = {split: _count_lines(scratch / f"{split}.jsonl") for split in ("train", "validation")}
        summary = {
            "variant": "decomposer", "screen": "self", "answer": None, "paper_name": "S_D-S",
            "task": plan.config.task, "prompt_version": kept.get("prompt_version"),
            "max_subquestions": plan.config.max_subquestions,
            "source": "self-screened samples" + (" + prior data" if plan.prior is not None else ""),
            **counts, "provenance": provenance, "sources": {"kept": kept, "prior": prior},
        }
        write_card(scratch, "divconq SFT data: S_D-S (self-screened)",
                   f"Round {number} of divconq improve: {counts['train']} train and {counts['validation']} validation "
                   "examples. `summary.json` says where they came from.")
        (scratch / SUMMARY_FILE).write_text(json.dumps(scrub_value(summary), indent=2) + "\n", encoding="utf-8")


def _train(plan: _Plan, number: int, paths: _Round, student: str) -> None:
    """The round's student, through the same trainer (from the base, or on from ``student``'s
    adapter); the ids it saw beside it."""
    from divconq.distill.recipe import TRAINING_IDS_FILE
    from divconq.distill.train import finetune
    from divconq.nodes.models import adapter_of

    train_config = copy.copy(plan.train_config)
    adapter = adapter_of(student) if plan.config.train_from == "student" else None
    start = str(adapter) if adapter else None  # a bare student has no adapter to train on: a new one
    train_config.init_adapter = start
    logger.info("round %d: training %s on %s", number, start or plan.base, paths.train_data)
    finetune(paths.train_data, base=plan.base, out=paths.adapter, config=train_config, resume=True)
    ids = set(plan.start_ids)
    for earlier in range(1, number + 1):
        ids |= set(_read_json(_Round(plan.out / f"round_{earlier}").screening)["kept_ids"])
    atomic_write(paths.adapter / TRAINING_IDS_FILE, "".join(f"{i}\n" for i in sorted(ids)), what="training ids")


def _evaluate(plan: _Plan, student: str, out: Path) -> list[dict[str, Any]]:
    """The student's held-out results (resumed: finished questions are not run again)."""
    from divconq.distill.evaluate import evaluate
    from divconq.distill.runner import RunSettings
    from divconq.graph import build_graph
    from divconq.nodes import load_chat_model

    if not plan.heldout:
        return []
    wanted = {e.id for e in plan.heldout}
    rows = read_results(out)
    if wanted <= {row["id"] for row in rows}:
        return [row for row in rows if row["id"] in wanted]
    prompts = _prompts(plan, student)
    run_info = {"dataset": plan.dataset, "decomposer": student, "solver": label(plan.solver), "mode": "static",
                "prompts": prompts.name, "prompt_version": prompts.version,
                "decomposer_price_key": plan.config.decomposer_price, "solver_price_key": plan.config.solver_price}
    if plan.slice_key:
        run_info["slice"] = plan.slice_key
    tokens = plan.config.max_new_tokens
    decomposer = load_chat_model(student, role="decomposer", max_new_tokens=tokens, timeout=plan.timeout)
    solver = load_chat_model(plan.solver, role="solver", max_new_tokens=tokens, timeout=plan.timeout)
    graph = build_graph(decomposer, solver, prompts=prompts, max_subquestions=plan.config.max_subquestions,
                        timeout=plan.timeout).compile()
    rows = evaluate(graph, plan.heldout, dataset=plan.dataset, out=out, run_info=run_info,
                    settings=RunSettings(concurrency=plan.config.concurrency, progress=plan.progress))
    return [row for row in rows if row["id"] in wanted]


# --------------------------------------------------------------------------- figures


def _record(plan: _Plan, number: int, student: str, rows: list[dict[str, Any]], round_zero: list[dict[str, Any]],
            stats: dict[str, Any] | None, paths: _Round) -> dict[str, Any]:
    """A round's figures: the shape bench/improve.py reports, with the details beside it."""
    clock = _read_json(paths.clock) if paths.clock.is_file() else {}
    stats = stats or {}
    questions = stats.get("questions", 0)
    record: dict[str, Any] = {
        "round": number, "n": questions, "score": None, "ci_low": None, "ci_high": None,
        "accept_rate": stats.get("accept_rate"), "decomposer_dollars_per_q": None,
        "seconds": round(sum(clock.values()), 1),
        "student": student, "screen_solver": label(plan.screen_solver) if number else None, "solver": label(plan.solver),
        "heldout_n": len(rows), "difference": None, "paired_n": None, "decomposer_tokens_per_q": None,
        "solver_tokens_per_q": None,
        **{key: stats.get(key) for key in ("samples_screened", "correct_samples", "kept_questions", "solved_by_all",
                                           "solved_by_none", "no_usable_sample", "screen_errors")},
        "sampling_tokens_per_q": _per(sum(stats.get("draws", {}).get(k, 0) for k in ("input_tokens", "output_tokens")),
                                      questions),
        "screening_solver_tokens_per_q": _per(stats.get("screening_solver_tokens", 0), questions),
        "train_examples": (read_summary(paths.train_data) or {}).get("train") if number else None,
        # A round whose samples and screening were copied from another run (screened_from):
        # its seconds count that run's sampling and screening.
        "screened_from": _read_json(paths.screened_from)["source"] if paths.screened_from.is_file() else None,
        "seconds_by_step": clock,
    }
    if rows:
        summary = summarise(rows, plan.pricing)
        decomposer, solver = summary["roles"]["decomposer"], summary["roles"]["solver"]
        record.update(score=summary["score"],
                      decomposer_tokens_per_q=decomposer["input_tokens_per_q"] + decomposer["output_tokens_per_q"],
                      decomposer_dollars_per_q=decomposer["dollars_per_q"],
                      solver_tokens_per_q=solver["input_tokens_per_q"] + solver["output_tokens_per_q"])
        run_scores, base_scores = paired_rows(rows, round_zero)
        if run_scores:
            paired = paired_bootstrap(run_scores, base_scores)
            record.update(difference=paired.difference, ci_low=paired.ci_low, ci_high=paired.ci_high, paired_n=paired.n)
    return record


def _per(total: float, count: int) -> float | None:
    return total / count if count else None


def format_rounds(rounds: list[dict[str, Any]]) -> str:
    """One line per round: what it screened and kept, and how the student scored."""
    lines = []
    for r in rounds:
        head = f"round {r['round']}: "
        if r["round"]:
            accept = "n/a" if r["accept_rate"] is None else f"{100 * r['accept_rate']:.1f}%"
            head += (f"{r['n']} questions, {r['samples_screened']} samples screened, accept rate {accept}; kept "
                     f"{r['kept_questions']} (solved by every sample {r['solved_by_all']}, by none "
                     f"{r['solved_by_none']}, no usable sample {r['no_usable_sample']}); ")
        if r["score"] is None:
            head += "no held-out score"
        else:
            versus = "" if not r["round"] or r["difference"] is None else (
                f", {r['difference']:+.1f} [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}] vs round 0")
            dollars = "n/a" if r["decomposer_dollars_per_q"] is None else f"${r['decomposer_dollars_per_q']:.7f}"
            head += (f"held-out EM {r['score']:.1f} (n={r['heldout_n']}){versus}; decomposer "
                     f"{r['decomposer_tokens_per_q']:.0f} tokens/q, {dollars}/q")
        lines.append(head + f"; {r['seconds']:.0f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- files


@contextmanager
def _timed(paths: _Round, step: str) -> Iterator[None]:
    """Add this sitting's wall seconds of ``step`` to the round's clock, also when it stops."""
    started = time.perf_counter()
    try:
        yield
    finally:
        clock = _read_json(paths.clock) if paths.clock.is_file() else {}
        clock[step] = round(clock.get(step, 0.0) + time.perf_counter() - started, 2)
        _write_json(paths.clock, clock)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DivconqError(f"{path} is unreadable ({type(exc).__name__}): restore it, or start over in another --out") from None


def _write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(scrub_value(value), indent=2, default=str) + "\n", what=path.name)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The lines of an append-only JSONL file; a torn last line (a killed run) is cut off, so it runs again."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise DivconqError(f"{path} line {number} is not JSON: restore it, or start over in another --out") from None
            atomic_write(path, "".join(json.dumps(row) + "\n" for row in rows), what=path.name)
    return rows


def _append_row(path: Path, row: dict[str, Any]) -> None:
    line = (json.dumps(scrub_value(row), ensure_ascii=False) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            while line:  # one row, one append: a kill leaves at most a torn last line
                line = line[os.write(fd, line):]
        finally:
            os.close(fd)
    except OSError as exc:
        raise DivconqError(os_error_line(exc, path) + "; the questions sampled before are kept, rerun to resume") from None


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else 0
