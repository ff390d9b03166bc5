"""Trace capture: every decomposer and solver call of a graph run, kept for distillation.

Distilling the decomposer (arXiv 2402.15000) needs the exact prompts the teacher saw
and what it wrote, next to whether the run's final answer was right. This module holds
the records (``TraceRun`` and its ``TraceCall``s) and ``TraceStore``, which keeps them in
one SQLite file (WAL, one transaction per finished run, so a killed collection loses at
most the run in flight and resumes from ``done_example_ids``). They are filled by
``recorder.TraceRecorder``, a LangChain callback handler that captures runs of any
compiled LangGraph graph, and by ``langsmith_runs.import_langsmith_runs`` for runs traced to
LangSmith (both through ``records``, and both exported by ``divconq.distill``). This
module imports neither: they build on it.

Nothing secret is written: every run is scrubbed on its way into the store.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from divconq.errors import DivconqError, OutputWriteError
from divconq.safeio import WriterLock, is_disk_full, os_error_line
from divconq.scrub import REDACTED, scrub_metadata, scrub_text  # noqa: F401 - re-exported: the store's scrubber

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "TraceCall",
    "TraceRun",
    "TraceStore",
    "format_run_tree",
    "scrub_metadata",
    "scrub_text",
    "to_json",
    "usage_by_role",
]

FORMAT = "divconq-traces"
SCHEMA_VERSION = "1"



# --------------------------------------------------------------------------- records


@dataclass
class TraceCall:
    """One model call: the messages sent, the text returned, its cost."""

    call_id: str
    role: str
    messages: list[dict[str, str]]
    output: str | None = None
    node: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float | None = None
    started_at: float | None = None
    seq: int = 0
    run_id: str = ""  # filled from the run when written


@dataclass
class TraceRun:
    """One finished graph run (one question), with its model calls in order."""

    run_id: str
    question: str
    example_id: str | None = None
    dataset: str | None = None
    context: str | None = None
    gold: list[str] | None = None
    answer: str | None = None
    correct: bool | None = None
    route: str | None = None
    subquestions: list[str] | None = None
    sub_answers: list[str] | None = None
    decomposition: str | None = None
    solution: str | None = None
    usage: dict[str, Any] | None = None
    started_at: float | None = None
    seconds: float | None = None
    status: str = "ok"
    error: str | None = None
    source: str = "divconq"
    metadata: dict[str, Any] = field(default_factory=dict)
    calls: list[TraceCall] = field(default_factory=list)

    def calls_for(self, role: str) -> list[TraceCall]:
        """The calls one role made, in order (``"decomposer"`` for distillation data)."""
        return [c for c in self.calls if c.role == role]


def usage_by_role(calls: list[TraceCall]) -> dict[str, Any]:
    """Calls, tokens and seconds per role: a run's usage when its graph reports none."""
    usage: dict[str, dict[str, float]] = {}
    for call in calls:
        into = usage.setdefault(call.role, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0})
        into["calls"] += 1
        into["input_tokens"] += call.input_tokens or 0
        into["output_tokens"] += call.output_tokens or 0
        into["seconds"] += call.seconds or 0.0
    return usage


# --------------------------------------------------------------------------- secrets

def _scrub_run(run: TraceRun) -> TraceRun:
    def text(value: str | None) -> str | None:
        return scrub_text(value) if isinstance(value, str) else value

    def texts(values: list[str] | None) -> list[str] | None:
        return None if values is None else [scrub_text(str(v)) for v in values]

    calls = [
        replace(
            c,
            messages=[{"role": m["role"], "content": scrub_text(m["content"])} for m in c.messages],
            output=text(c.output),
            model=text(c.model),
            node=text(c.node),
        )
        for c in run.calls
    ]
    return replace(
        run,
        example_id=text(run.example_id),  # an id can quote a secret too (one derived from a URL, say)
        dataset=text(run.dataset),
        question=scrub_text(run.question),
        context=text(run.context),
        gold=texts(run.gold),
        answer=text(run.answer),
        subquestions=texts(run.subquestions),
        sub_answers=texts(run.sub_answers),
        decomposition=text(run.decomposition),
        solution=text(run.solution),
        error=text(run.error),
        metadata=scrub_metadata(run.metadata or {}),
        calls=calls,
    )


# --------------------------------------------------------------------------- store

_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, example_id TEXT, dataset TEXT, question TEXT NOT NULL, context TEXT,
    gold TEXT, answer TEXT, correct INTEGER, route TEXT, subquestions TEXT, sub_answers TEXT,
    decomposition TEXT, solution TEXT, usage TEXT, started_at REAL, seconds REAL, status TEXT,
    error TEXT, source TEXT, metadata TEXT
);
CREATE INDEX IF NOT EXISTS runs_dataset_example ON runs (dataset, example_id);
CREATE INDEX IF NOT EXISTS runs_question ON runs (question);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, run_id TEXT NOT NULL REFERENCES runs (run_id), seq INTEGER, role TEXT,
    node TEXT, model TEXT, messages TEXT, output TEXT, input_tokens INTEGER, output_tokens INTEGER,
    seconds REAL, started_at REAL
);
CREATE INDEX IF NOT EXISTS calls_run_seq ON calls (run_id, seq);
"""
# The dataclasses mirror the tables, so their fields name the columns.
_RUN_COLUMNS = tuple(f.name for f in fields(TraceRun) if f.name != "calls")
_CALL_COLUMNS = tuple(f.name for f in fields(TraceCall))
_JSON_RUN_COLUMNS = {"gold", "subquestions", "sub_answers", "usage", "metadata"}
_PAGE = 200


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _run_row(run: TraceRun) -> tuple[Any, ...]:
    values = {name: getattr(run, name) for name in _RUN_COLUMNS}
    for name in _JSON_RUN_COLUMNS:
        values[name] = to_json(values[name])
    values["correct"] = None if run.correct is None else int(bool(run.correct))
    return tuple(values[name] for name in _RUN_COLUMNS)


def _call_row(call: TraceCall, run_id: str) -> tuple[Any, ...]:
    values = {name: getattr(call, name) for name in _CALL_COLUMNS}
    values.update(run_id=run_id, messages=to_json(call.messages))
    return tuple(values[name] for name in _CALL_COLUMNS)


def _run_from_row(row: sqlite3.Row, calls: list[TraceCall]) -> TraceRun:
    values = {name: row[name] for name in _RUN_COLUMNS}
    for name in _JSON_RUN_COLUMNS:
        values[name] = None if values[name] is None else json.loads(values[name])
    values["metadata"] = values["metadata"] or {}
    values["correct"] = None if values["correct"] is None else bool(values["correct"])
    return TraceRun(**values, calls=calls)


def _call_from_row(row: sqlite3.Row) -> TraceCall:
    values = {name: row[name] for name in _CALL_COLUMNS}
    values["messages"] = json.loads(values["messages"] or "[]")
    return TraceCall(**values)


QUICK_CHECK_SECONDS = 10.0  # the integrity check on open stops here: a huge store is not checked whole


def check_integrity(db: sqlite3.Connection, path: Path, seconds: float = QUICK_CHECK_SECONDS) -> None:
    """``PRAGMA quick_check`` with a time limit: a damaged store is refused before it is used.

    A check that runs out of time (a store of many gigabytes) is not an error: it is noted
    on stderr and the store is used, as before this check existed.
    """
    import time

    deadline = time.monotonic() + seconds
    db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 1000)
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.OperationalError as exc:
        if "interrupted" not in str(exc):
            raise  # cannot read or lock it (read-only, busy): the caller says which
        logging.getLogger("divconq").warning("integrity check of %s stopped after %.0f s; using it unchecked", path, seconds)
        return
    except sqlite3.DatabaseError as exc:  # SQLITE_CORRUPT, SQLITE_NOTADB
        raise DivconqError(_damaged(path, str(exc))) from None
    finally:
        db.set_progress_handler(None, 0)
    if problems != ["ok"]:
        raise DivconqError(_damaged(path, "; ".join(problems)[:300]))


def _damaged(path: Path, detail: str) -> str:
    return (f"trace store {path} is damaged ({detail}): restore it from a copy, or save what is readable with "
            f"`sqlite3 {path} .recover | sqlite3 recovered.db` and use that")


class TraceStore:
    """A SQLite file of traced runs.

    WAL mode lets analysis read while a collection writes; each ``write_run`` is one
    transaction, so the file is always a set of complete runs. One process writes a
    store at a time (``<store>.lock``): a second writer is refused, naming the first, since
    two collections would run and keep every question twice. Opening checks the file is
    ours and whole (``PRAGMA quick_check``, bounded in time) before anything is written;
    a store that cannot be written (a read-only filesystem) still opens ``readonly``,
    through SQLite's immutable mode when its directory cannot hold the WAL index. A file
    that is not a trace store is refused and never touched. Thread-safe: one connection
    behind a lock.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._writer: WriterLock | None = None
        self._immutable = False
        fresh = self._check_ours()
        if readonly and fresh:
            raise DivconqError(f"{self.path} holds no traces: collect some first, or check the path")
        if not readonly:
            self._make_parent()
            self._writer = WriterLock(self.path, "trace store").acquire()
        try:
            self._db = self._connect()
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA foreign_keys = ON")
            if not fresh:
                check_integrity(self._db, self.path)
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                self._db.execute("BEGIN IMMEDIATE")  # fails now, not after a model call, if it cannot be written
                self._db.execute("ROLLBACK")
                if fresh:
                    self._create_schema()
        except (sqlite3.Error, DivconqError) as exc:
            self._abandon()
            if isinstance(exc, DivconqError):
                raise
            raise DivconqError(self._cannot("open" if readonly else "write", exc)) from None

    # -- opening

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DivconqError(os_error_line(exc, self.path, "create the trace store")) from None

    def _cannot(self, doing: str, exc: sqlite3.Error) -> str:
        name = getattr(exc, "sqlite_errorname", "") or ""
        if "READONLY" in name or "readonly" in str(exc):
            fix = "it is read-only here (file, folder or filesystem): copy it somewhere writable, or pass a new path"
        elif "CANTOPEN" in name or "unable to open" in str(exc):
            fix = "check the path and its permissions"
        elif is_disk_full(exc):
            fix = "the disk is full: free some space and rerun"
        else:
            fix = "check the path and its permissions"
        return f"cannot {doing} trace store {self.path} ({exc}): {fix}"

    def _abandon(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _uri(self, immutable: bool) -> str:
        # immutable=1: read without the WAL index (-shm), which a read-only folder cannot hold.
        return self.path.resolve().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")

    def _connect_readonly(self, *, probe: bool = False) -> sqlite3.Connection:
        """A read-only connection; through immutable mode when plain read-only cannot open."""
        options: dict[str, Any] = {"uri": True} if probe else {"uri": True, "check_same_thread": False,
                                                               "isolation_level": None}
        try:
            db = sqlite3.connect(self._uri(self._immutable), **options)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            if self._immutable or not ("READONLY" in name or "CANTOPEN" in name):
                raise
        self._immutable = True
        return sqlite3.connect(self._uri(True), **options)

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            return self._connect_readonly()
        return sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)

    def _not_ours(self, why: str) -> DivconqError:
        return DivconqError(
            f"{self.path} is not a divconq trace store ({why}): pass a new file path, it will not be modified"
        )

    def _check_ours(self) -> bool:
        """Refuse anything that is not ours, reading only; True for a new or empty file."""
        if not self.path.exists():
            if self.readonly:
                raise DivconqError(f"no trace store at {self.path}: check the path")
            return True
        if self.path.is_dir():
            raise self._not_ours("it is a directory")
        try:
            with self.path.open("rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError as exc:
            raise DivconqError(os_error_line(exc, self.path, "read the trace store")) from None
        if header and header != _SQLITE_HEADER:
            raise self._not_ours("not an SQLite database")
        try:
            probe = self._connect_readonly(probe=True)
            try:
                probe.execute("PRAGMA busy_timeout = 10000")
                tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not tables:
                    return True
                if "meta" not in tables:
                    raise self._not_ours("another SQLite database: it has no 'meta' table")
                meta = dict(probe.execute("SELECT key, value FROM meta").fetchall())
            finally:
                probe.close()
        except sqlite3.OperationalError as exc:
            raise DivconqError(self._cannot("read", exc)) from None
        except sqlite3.DatabaseError as exc:
            raise self._not_ours(f"unreadable or corrupt SQLite file: {exc}") from None
        if meta.get("format") != FORMAT:
            raise self._not_ours(f"its meta format is {meta.get('format')!r}, not {FORMAT!r}")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise DivconqError(
                f"{self.path} is a trace store of schema version {meta.get('schema_version')!r}, this divconq "
                f"reads version {SCHEMA_VERSION}: upgrade divconq or use a new file"
            )
        return False

    def _create_schema(self) -> None:
        with self._transaction():
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)
            self._db.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                [("format", FORMAT), ("schema_version", SCHEMA_VERSION)],
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT under the lock: all of it is written, or none.

        A failed write (a full disk, a store gone read-only) raises ``OutputWriteError``,
        which stops a collection instead of failing each remaining question in turn.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise OutputWriteError(self._cannot("write", exc) + "; every run written before is kept") from None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Under the lock; a page found damaged while reading is one clear error."""
        with self._lock:
            try:
                yield
            except sqlite3.DatabaseError as exc:
                raise DivconqError(_damaged(self.path, str(exc))) from None

    # -- writing

    def write_run(self, run: TraceRun) -> None:
        """Write (or replace) one run and its calls, atomically, secrets scrubbed."""
        with self._transaction():
            self._insert(run)

    def _insert(self, run: TraceRun) -> None:
        """One row per question: a run of an example replaces its earlier error runs (the
        attempts a retry made), and an error run is not kept beside a finished one."""
        run = _scrub_run(run)
        if run.dataset is not None and run.example_id is not None:
            key = (run.dataset, run.example_id, run.run_id)
            if run.status != "ok" and self._db.execute(
                "SELECT 1 FROM runs WHERE dataset = ? AND example_id = ? AND run_id != ? AND status = 'ok'", key
            ).fetchone():
                return
            superseded = "SELECT run_id FROM runs WHERE dataset = ? AND example_id = ? AND run_id != ? AND status != 'ok'"
            self._db.execute(f"DELETE FROM calls WHERE run_id IN ({superseded})", key)
            self._db.execute(f"DELETE FROM runs WHERE run_id IN ({superseded})", key)
        self._db.execute("DELETE FROM calls WHERE run_id = ?", (run.run_id,))
        marks = ", ".join("?" * len(_RUN_COLUMNS))
        self._db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({marks})", _run_row(run))
        marks = ", ".join("?" * len(_CALL_COLUMNS))
        self._db.executemany(
            f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}) VALUES ({marks})",
            [_call_row(c, run.run_id) for c in run.calls],
        )

    def add_new_runs(self, runs: Iterable[TraceRun]) -> int:
        """Insert the runs not already here, in one transaction; return how many were added.

        A run is already here when its run_id is, or when it has a dataset and example_id
        and a finished ('ok') run of that example is here; an error run is also skipped
        when any run of its example is here. So shards merge cleanly, and an example that
        failed in one shard but succeeded in another ends up with its good run.
        """
        added = 0
        with self._transaction():
            for run in runs:
                if self._db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run.run_id,)).fetchone():
                    continue
                if run.dataset is not None and run.example_id is not None:
                    sql = "SELECT 1 FROM runs WHERE dataset = ? AND example_id = ?"
                    args: tuple[Any, ...] = (run.dataset, run.example_id)
                    if run.status == "ok":
                        sql, args = sql + " AND status = ?", args + ("ok",)
                    if self._db.execute(sql, args).fetchone():
                        continue
                self._insert(run)
                added += 1
        return added

    def merge_from(self, other_path: str | Path) -> int:
        """Add the runs of another trace store that are not here yet (see ``add_new_runs``)."""
        if Path(other_path).resolve() == self.path.resolve():
            return 0
        with TraceStore(other_path, readonly=True) as other:
            return self.add_new_runs(other.runs(status=None))

    # -- reading

    def _calls(self, run_ids: list[str]) -> dict[str, list[TraceCall]]:
        calls: dict[str, list[TraceCall]] = {run_id: [] for run_id in run_ids}
        marks = ", ".join("?" * len(run_ids))
        rows = self._db.execute(f"SELECT * FROM calls WHERE run_id IN ({marks}) ORDER BY run_id, seq", run_ids)
        for row in rows:
            calls[row["run_id"]].append(_call_from_row(row))
        return calls

    def runs(self, status: str | None = "ok") -> Iterator[TraceRun]:
        """Runs in the order they were written, with their calls; ``status=None`` for all."""
        last = 0
        while True:
            with self._reading():
                rows = self._db.execute(
                    "SELECT rowid, * FROM runs WHERE rowid > ? AND (? IS NULL OR status = ?) ORDER BY rowid LIMIT ?",
                    (last, status, status, _PAGE),
                ).fetchall()
                if not rows:
                    return
                calls = self._calls([row["run_id"] for row in rows])
            yield from (_run_from_row(row, calls[row["run_id"]]) for row in rows)
            last = rows[-1]["rowid"]

    def get_run(self, run_id: str) -> TraceRun | None:
        with self._reading():
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (str(run_id),)).fetchone()
            return None if row is None else _run_from_row(row, self._calls([row["run_id"]])[row["run_id"]])

    def has_example(self, dataset: str, example_id: str, status: str | None = "ok") -> bool:
        """Whether this example has a run (by default a finished one: errors are retried)."""
        with self._reading():  # ids and dataset names are stored scrubbed, so they are looked up scrubbed
            row = self._db.execute(
                "SELECT 1 FROM runs WHERE dataset = ? AND example_id = ? AND (? IS NULL OR status = ?) LIMIT 1",
                (scrub_text(dataset), scrub_text(str(example_id)), status, status),
            ).fetchone()
        return row is not None

    def done_example_ids(self, dataset: str, status: str | None = "ok") -> set[str]:
        """Example ids of ``dataset`` with a run, to skip when resuming a collection.

        Ids are stored scrubbed of credentials: compare ``scrub_text(id)`` against them.
        """
        with self._reading():
            rows = self._db.execute(
                "SELECT DISTINCT example_id FROM runs WHERE dataset = ? AND example_id IS NOT NULL "
                "AND (? IS NULL OR status = ?)",
                (scrub_text(dataset), status, status),
            ).fetchall()
        return {row[0] for row in rows}

    def count(self, status: str | None = None) -> int:
        """How many runs (of ``status``, or all)."""
        with self._reading():
            row = self._db.execute("SELECT count(*) FROM runs WHERE ? IS NULL OR status = ?", (status, status))
            return int(row.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r})"


# --------------------------------------------------------------------------- display


def _cost(tokens_in: Any, tokens_out: Any, seconds: Any) -> str:
    return f"{tokens_in or 0} in / {tokens_out or 0} out tok, {float(seconds or 0):.2f}s"


def _short(text: str | None, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_run_tree(run: TraceRun) -> str:
    """One run as a terminal tree: question, route, sub-questions and answers, calls, cost."""
    where = "/".join(x for x in (run.dataset, run.example_id) if x)
    head = f"run {run.run_id[:8]} [{run.status}]" + (f" {where}" if where else "")
    head += f" route={run.route or '-'} {float(run.seconds or 0):.2f}s"
    lines = [head, f"Q: {run.question}"]
    if run.context:
        lines.append(f"   context: {_short(run.context, 120)}")
    items: list[tuple[str, list[str]]] = []  # a branch and the lines under it
    answers = run.sub_answers or []
    for i, sub in enumerate(run.subquestions or [], 1):
        answer = _short(answers[i - 1]) if i <= len(answers) else "(no answer)"
        items.append((f"{i}. {_short(sub)}", [f"-> {answer}"]))
    if run.status == "error":
        items.append((f"error: {run.error}", []))
    else:
        verdict = "" if run.correct is None else (" (correct)" if run.correct else " (wrong)")
        gold = f"  gold: {' | '.join(run.gold)}" if run.gold else ""
        items.append((f"answer: {_short(run.answer)}{verdict}{gold}", []))
    for i, (line, children) in enumerate(items):
        last = i == len(items) - 1
        lines.append(("└─ " if last else "├─ ") + line)
        lines += [("   " if last else "│  ") + "   " + child for child in children]
    if run.calls:
        lines.append("calls:")
        for c in run.calls:
            label = " ".join(x for x in (c.role, c.node, c.model) if x)
            lines.append(f"  #{c.seq} {label}: {_cost(c.input_tokens, c.output_tokens, c.seconds)}")
        for role, u in usage_by_role(run.calls).items():
            lines.append(
                f"  {role}: {int(u['calls'])} call(s), {_cost(u['input_tokens'], u['output_tokens'], u['seconds'])}"
            )
    return "\n".join(lines)
