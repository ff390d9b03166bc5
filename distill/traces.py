"""Trace capture: every decomposer and solver call of a graph run, kept for distillation.

Distilling the decomposer (arXiv 2402.15000) needs the exact prompts the teacher saw
and what it wrote, next to whether the run's final answer was right. ``TraceRecorder``
is a LangChain callback handler that captures this from any compiled LangGraph graph;
``TraceStore`` keeps it in one SQLite file (WAL, one transaction per finished run, so a
killed collection loses at most the run in flight and resumes from
``done_example_ids``); ``import_langsmith_runs`` brings in runs traced to LangSmith.

Nothing secret is written: every run is scrubbed on its way into the store.
"""

from __future__ import annotations

import json
import re
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from divconq.errors import DivconqError

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "TraceCall",
    "TraceRecorder",
    "TraceRun",
    "TraceStore",
    "exact_match",
    "format_run_tree",
    "import_langsmith_runs",
    "scrub_metadata",
    "scrub_text",
]

FORMAT = "divconq-traces"
SCHEMA_VERSION = "1"
DECOMPOSER, SOLVER = "decomposer", "solver"  # the values of nodes.nodes.DECOMPOSER/SOLVER

Scorer = Callable[[str | None, list[str]], bool]


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


# --------------------------------------------------------------------------- secrets

REDACTED = "[REDACTED]"
# Metadata keys that name credentials. "token" only as a whole word, so "max_tokens"
# and "tokenizer" survive while "hf_token" and "accessToken" do not.
_SECRET_KEY = re.compile(
    r"api[_-]?key|authori[sz]ation|secret|passw(?:or)?d|credential|(?:^|[_-])token(?:$|[_-])", re.I
)
_SECRET_VALUES = [
    re.compile(r"\bsk-(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}"),  # OpenAI, Anthropic (sk-ant-...)
    re.compile(r"\blsv2_(?:pt|sk)_[A-Za-z0-9_]{16,}"),  # LangSmith
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),  # Hugging Face
    re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),  # GitHub
    re.compile(r"\b(?:gsk|r8|pplx|xai)[_-][A-Za-z0-9]{20,}"),  # Groq, Replicate, Perplexity, xAI
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bAIza[0-9A-Za-z_\-]{35}"),  # Google
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}"),
    re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/=]{12,}"),
]
# "api_key=..." / "Authorization: ..." / "password: ..." written out in free text.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(api[_-]?key|access[_-]?token|auth[_-]?token|secret|passw(?:or)?d)([\"']?\s*[:=]\s*[\"']?)"
    r"(?!\[REDACTED\])(?=[^\s\"',;}]*\d|[^\s\"',;}]{20})[^\s\"',;}]{6,}"  # token-like: a digit, or long
)
# An Authorization header, whatever its scheme ("Bearer", "Token", "Basic", none).
_AUTH_HEADER = re.compile(
    r"(?i)\b(authori[sz]ation)([\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])(?:[A-Za-z]+\s+)?[^\s\"',;}]{6,}"
)


def scrub_text(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[REDACTED]``."""
    if not text:
        return text
    for pattern in _SECRET_VALUES:
        text = pattern.sub(REDACTED, text)
    for pattern in (_AUTH_HEADER, _SECRET_ASSIGNMENT):
        text = pattern.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return text


def _is_secret_key(key: str) -> bool:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key))  # accessToken -> access_Token
    return bool(_SECRET_KEY.search(snake))


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return scrub_metadata(value)
    if isinstance(value, (list, tuple)):
        return [_scrub_value(v) for v in value]
    return value


def scrub_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy without credential-named keys (at any depth) and with key-like values redacted."""
    return {str(k): _scrub_value(v) for k, v in metadata.items() if not _is_secret_key(str(k))}


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
        )
        for c in run.calls
    ]
    return replace(
        run,
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


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _run_row(run: TraceRun) -> tuple[Any, ...]:
    values = {name: getattr(run, name) for name in _RUN_COLUMNS}
    for name in _JSON_RUN_COLUMNS:
        values[name] = _dumps(values[name])
    values["correct"] = None if run.correct is None else int(bool(run.correct))
    return tuple(values[name] for name in _RUN_COLUMNS)


def _call_row(call: TraceCall, run_id: str) -> tuple[Any, ...]:
    values = {name: getattr(call, name) for name in _CALL_COLUMNS}
    values.update(run_id=run_id, messages=_dumps(call.messages))
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


class TraceStore:
    """A SQLite file of traced runs.

    WAL mode lets analysis read while a collection writes (several processes may
    write too); each ``write_run`` is one transaction, so the file is always a set
    of complete runs. A file that is not a trace store is refused and never touched.
    Thread-safe: one connection behind a lock.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        fresh = self._check_ours()
        if readonly and fresh:
            raise DivconqError(f"{self.path} holds no traces: collect some first, or check the path")
        try:
            if readonly:
                self._db = sqlite3.connect(self._ro_uri(), uri=True, check_same_thread=False, isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.execute("PRAGMA synchronous = FULL")
                if fresh:
                    self._create_schema()
        except sqlite3.Error as exc:
            raise DivconqError(
                f"cannot open trace store {self.path}: {exc}; check the path and its permissions"
            ) from exc

    # -- opening

    def _ro_uri(self) -> str:
        return self.path.resolve().as_uri() + "?mode=ro"

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
        with self.path.open("rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            raise self._not_ours("not an SQLite database")
        try:
            probe = sqlite3.connect(self._ro_uri(), uri=True)
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
        except sqlite3.DatabaseError as exc:
            raise self._not_ours(f"unreadable or corrupt SQLite file: {exc}") from exc
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
        """BEGIN IMMEDIATE ... COMMIT under the lock: all of it is written, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writing

    def write_run(self, run: TraceRun) -> None:
        """Write (or replace) one run and its calls, atomically, secrets scrubbed."""
        with self._transaction():
            self._insert(run)

    def _insert(self, run: TraceRun) -> None:
        run = _scrub_run(run)
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
            with self._lock:
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
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (str(run_id),)).fetchone()
            return None if row is None else _run_from_row(row, self._calls([row["run_id"]])[row["run_id"]])

    def has_example(self, dataset: str, example_id: str, status: str | None = "ok") -> bool:
        """Whether this example has a run (by default a finished one: errors are retried)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM runs WHERE dataset = ? AND example_id = ? AND (? IS NULL OR status = ?) LIMIT 1",
                (dataset, str(example_id), status, status),
            ).fetchone()
        return row is not None

    def done_example_ids(self, dataset: str, status: str | None = "ok") -> set[str]:
        """Example ids of ``dataset`` with a run, to skip when resuming a collection."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT example_id FROM runs WHERE dataset = ? AND example_id IS NOT NULL "
                "AND (? IS NULL OR status = ?)",
                (dataset, status, status),
            ).fetchall()
        return {row[0] for row in rows}

    def count(self, status: str | None = None) -> int:
        """How many runs (of ``status``, or all)."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM runs WHERE ? IS NULL OR status = ?", (status, status))
            return int(row.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r})"


# --------------------------------------------------------------------------- shared parsing


def _normalise_answer(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())  # 1,000 -> 1000
    kept = [
        " "
        if ch in string.punctuation
        and not (ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit())
        else ch
        for i, ch in enumerate(text)
    ]
    return " ".join("".join(kept).split())


def exact_match(answer: str | None, gold: list[str]) -> bool:
    """The default scorer: normalised exact match (case, punctuation, spacing) against any gold."""
    if answer is None:
        return False
    predicted = _normalise_answer(str(answer))
    return any(predicted == _normalise_answer(str(g)) for g in gold)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: keep the text
        return "".join(
            b if isinstance(b, str) else str(b.get("text", "")) if isinstance(b, dict) else str(b) for b in content
        )
    return "" if content is None else str(content)


_ROLES = {
    "human": "user",
    "user": "user",
    "ai": "assistant",
    "assistant": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "developer": "system",
}
_CLASS_ROLES = {
    "SystemMessage": "system",
    "HumanMessage": "user",
    "AIMessage": "assistant",
    "ToolMessage": "tool",
    "FunctionMessage": "function",
}


def _message(message: BaseMessage) -> dict[str, str]:
    role = getattr(message, "role", None) if message.type == "chat" else None
    return {"role": role or _ROLES.get(message.type, message.type), "content": _content_text(message.content)}


def _role(metadata: Mapping[str, Any], tags: Iterable[str] | None, node: str | None) -> str:
    """Decomposer or solver: what ``call_model`` tagged, else guessed from the node name."""
    if metadata.get("divconq_role"):
        return str(metadata["divconq_role"])
    for tag in tags or ():
        if isinstance(tag, str) and tag.startswith("divconq:"):
            return tag.split(":", 1)[1]
    name = (node or "").lower()
    return DECOMPOSER if "decompos" in name or "propose" in name else SOLVER


def _model_name(*sources: Mapping[str, Any] | None) -> str | None:
    for source in sources:
        for key in ("ls_model_name", "model", "model_name", "model_id", "repo_id"):
            value = (source or {}).get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _token_counts(usage: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """(input, output) tokens from a usage_metadata or an OpenAI-style token_usage dict."""
    usage = usage or {}
    prompt = usage.get("input_tokens", usage.get("prompt_tokens"))
    completion = usage.get("output_tokens", usage.get("completion_tokens"))
    return _int(prompt), _int(completion)


def _order_key(metadata: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """(superstep, task path): parallel ``Send`` branches sort by their index, not by timing."""
    metadata = metadata or {}
    step = metadata.get("langgraph_step")
    path = metadata.get("langgraph_path") or ()
    path_key = tuple((0, x, "") if isinstance(x, int) else (1, 0, str(x)) for x in path)
    return (step if isinstance(step, int) else 0, path_key)


def _gold(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple, set)) else [str(value)]


def _texts_of(messages: Any, role: str) -> list[str]:
    """The texts of the messages with ``role`` ("user", "assistant"), as objects or dicts."""
    found = []
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, BaseMessage):
            as_dict: dict[str, str] | None = _message(message)
        else:
            as_dict = _serialized_message(message) if isinstance(message, Mapping) else None
        if as_dict and as_dict["role"] == role:
            found.append(as_dict["content"])
    return found


def _first_str(mapping: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        if isinstance(mapping.get(key), str):
            return mapping[key]
    return None


_OUR_METADATA = {"gold", "example_id", "dataset"}
_EXTRA_OUTPUTS = ("mode", "solve", "fallback_reason")


def _fill_run(run: TraceRun, inputs: Any, outputs: Any, metadata: Mapping[str, Any], scorer: Scorer) -> None:
    """Question, answer and the rest from a root run's inputs, outputs and metadata.

    Our graph's keys map one to one; for other graphs ``question``/``input``/``query``
    or the first human message, and ``answer``/``output`` or the last AI message.
    """
    ins = inputs if isinstance(inputs, Mapping) else {}
    outs = outputs if isinstance(outputs, Mapping) else {}
    question = _first_str(ins, "question", "input", "query") or _first_str(outs, "question")
    if question is None:
        human = _texts_of(ins.get("messages"), "user")
        question = human[0] if human else inputs if isinstance(inputs, str) else _dumps(inputs) or ""
    run.question = question
    run.context = _first_str(ins, "context") or _first_str(outs, "context")
    run.answer = _first_str(outs, "answer", "output")
    if run.answer is None:
        said = _texts_of(outs.get("messages"), "assistant")
        run.answer = said[-1] if said else outputs if isinstance(outputs, str) else None
    run.route = _first_str(outs, "route")
    for name in ("subquestions", "sub_answers"):
        if isinstance(outs.get(name), list):
            setattr(run, name, [str(v) for v in outs[name]])
    run.decomposition = _first_str(outs, "decomposition")
    run.solution = _first_str(outs, "solution")
    run.usage = dict(outs["usage"]) if isinstance(outs.get("usage"), Mapping) else _usage_from_calls(run.calls)
    run.gold = _gold(metadata.get("gold"))
    run.example_id = None if metadata.get("example_id") is None else str(metadata["example_id"])
    run.dataset = None if metadata.get("dataset") is None else str(metadata["dataset"])
    kept = {k: v for k, v in metadata.items() if k not in _OUR_METADATA and not k.startswith(("ls_", "lc_"))}
    kept.update({k: outs[k] for k in _EXTRA_OUTPUTS if outs.get(k) is not None})
    run.metadata = kept
    if run.gold is not None and run.status == "ok":
        run.correct = bool(scorer(run.answer, run.gold))


def _usage_from_calls(calls: list[TraceCall]) -> dict[str, Any]:
    usage: dict[str, dict[str, float]] = {}
    for call in calls:
        into = usage.setdefault(call.role, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "seconds": 0.0})
        into["calls"] += 1
        into["input_tokens"] += call.input_tokens or 0
        into["output_tokens"] += call.output_tokens or 0
        into["seconds"] += call.seconds or 0.0
    return usage


def _one_line(error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:500]


# --------------------------------------------------------------------------- recorder


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
    members: set[UUID] = field(default_factory=set)
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
    """Records each root chain run (a graph invocation) and its chat model calls.

    Add it to the run config of any compiled graph: ``graph.invoke(inputs,
    config={"callbacks": [recorder], "metadata": {"gold": [...], "example_id": ...,
    "dataset": ...}})``. Everything is keyed by run ids under a lock, so one recorder
    serves ``batch``, threads, ``ainvoke`` and parallel ``Send`` branches. A run is
    written when its root chain ends (status 'ok') or fails (status 'error'); a run
    paused by ``interrupt`` is not written. Model calls made outside any chain are
    ignored. ``raise_error`` (default True) makes a failed write fail the invocation,
    so a collection never silently loses traces.
    """

    run_inline = True  # handle events in order on the caller's thread, also under asyncio

    def __init__(self, store: TraceStore, *, scorer: Scorer | None = None, raise_error: bool = True) -> None:
        super().__init__()
        self.store = store
        self.scorer: Scorer = scorer or exact_match
        self.raise_error = raise_error
        self._lock = threading.Lock()
        self._open: dict[UUID, _OpenRun] = {}
        self._where: dict[UUID, tuple[UUID, tuple[Any, ...]]] = {}  # run id -> (root id, task order key)

    # -- run tree bookkeeping

    def _enter(self, run_id: UUID, parent_run_id: UUID | None, metadata: Mapping[str, Any] | None) -> UUID | None:
        """Register a child run under its root; return the root id (None if not ours)."""
        if parent_run_id is None or parent_run_id not in self._where:
            return None
        root, key = self._where[parent_run_id]
        if parent_run_id == root:  # a task of the root graph: its step and path order it
            key = _order_key(metadata)
        self._where[run_id] = (root, key)
        self._open[root].members.add(run_id)
        return root

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
            if parent_run_id is not None:
                self._enter(run_id, parent_run_id, metadata)
                return
            run = TraceRun(run_id=str(run_id), question="", started_at=time.time())
            self._open[run_id] = _OpenRun(run, time.perf_counter(), inputs, dict(metadata or {}))
            self._where[run_id] = (run_id, _order_key(None))

    def _start_call(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        messages: list[dict[str, str]],
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        model: str | None,
    ) -> None:
        with self._lock:
            root = self._enter(run_id, parent_run_id, metadata)
            if root is None:
                return
            open_run = self._open[root]
            metadata = metadata or {}
            node = metadata.get("langgraph_node")
            call = TraceCall(
                call_id=str(run_id),
                role=_role(metadata, tags, node),
                messages=messages,
                node=node,
                model=model,
                started_at=time.time(),
                run_id=str(root),
            )
            key = self._where[run_id][1] + (open_run.counter,)
            open_run.counter += 1
            open_run.calls[run_id] = _OpenCall(call, time.perf_counter(), key)

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
        sent = [_message(m) for m in (messages[0] if messages else [])]
        model = _model_name(metadata, kwargs.get("invocation_params"), (serialized or {}).get("kwargs"))
        self._start_call(run_id, parent_run_id, sent, tags, metadata, model)

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
        model = _model_name(metadata, kwargs.get("invocation_params"), (serialized or {}).get("kwargs"))
        self._start_call(run_id, parent_run_id, sent, tags, metadata, model)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            open_call = self._find_call(run_id)
            if open_call is None:
                return
            call = open_call.call
            call.seconds = time.perf_counter() - open_call.t0
            generation = response.generations[0][0] if response.generations and response.generations[0] else None
            if generation is None:
                return
            call.output = generation.text
            message = getattr(generation, "message", None)
            tokens = _token_counts(getattr(message, "usage_metadata", None))
            if tokens == (None, None):
                llm_output = response.llm_output or {}
                tokens = _token_counts(llm_output.get("token_usage") or llm_output.get("usage"))
            call.input_tokens, call.output_tokens = tokens
            if call.model is None:
                call.model = _model_name(getattr(message, "response_metadata", None), response.llm_output)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            open_call = self._find_call(run_id)
            if open_call is not None:
                open_call.call.seconds = time.perf_counter() - open_call.t0

    def _find_call(self, run_id: UUID) -> _OpenCall | None:
        root = self._where.get(run_id, (None,))[0]
        open_run = self._open.get(root) if root is not None else None
        return open_run.calls.get(run_id) if open_run else None

    # -- tool and retriever runs only need registering, so their children find the root

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
            self._enter(run_id, parent_run_id, metadata)

    def on_retriever_start(
        self,
        serialized: Any,
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        with self._lock:
            self._enter(run_id, parent_run_id, metadata)

    # -- the end of a root run writes it

    def _close(self, run_id: UUID) -> _OpenRun | None:
        with self._lock:
            open_run = self._open.pop(run_id, None)
            if open_run is not None:
                for member in open_run.members | {run_id}:
                    self._where.pop(member, None)
            return open_run

    def _finish(self, open_run: _OpenRun, outputs: Any) -> None:
        run = open_run.run
        run.seconds = time.perf_counter() - open_run.t0
        ordered = sorted(open_run.calls.values(), key=lambda c: c.key)
        run.calls = [replace(c.call, seq=i) for i, c in enumerate(ordered)]
        _fill_run(run, open_run.inputs, outputs, open_run.metadata, self.scorer)
        self.store.write_run(run)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is not None or run_id not in self._open:
            return
        open_run = self._close(run_id)
        if open_run is None or open_run.paused or (isinstance(outputs, Mapping) and "__interrupt__" in outputs):
            return
        self._finish(open_run, outputs)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        if parent_run_id is not None:
            if _is_interrupt(error):
                with self._lock:
                    root = self._where.get(run_id, (None,))[0]
                    if root in self._open:
                        self._open[root].paused = True
            return
        open_run = self._close(run_id)
        if open_run is None or _is_interrupt(error):
            return
        open_run.run.status, open_run.run.error = "error", _one_line(error)
        self._finish(open_run, None)


# --------------------------------------------------------------------------- LangSmith import


def _serialized_message(message: Mapping[str, Any]) -> dict[str, str] | None:
    """{"role", "content"} from a LangChain-serialized message or a plain message dict."""
    if message.get("lc") == 1 and isinstance(message.get("id"), list):
        kwargs = message.get("kwargs") or {}
        cls = str(message["id"][-1])
        role = kwargs.get("role") if cls in ("ChatMessage", "ChatMessageChunk") else None
        role = role or _CLASS_ROLES.get(cls.removesuffix("Chunk"), cls)
        return {"role": str(role), "content": _content_text(kwargs.get("content"))}
    data = message.get("data") if isinstance(message.get("data"), Mapping) else message  # messages_to_dict
    kind = message.get("role") or message.get("type") or data.get("role") or data.get("type")
    if kind is None or "content" not in data:
        return None
    return {"role": _ROLES.get(str(kind), str(kind)), "content": _content_text(data.get("content"))}


def _ls_messages(inputs: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = inputs.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[0], list):
        messages = messages[0]  # a batch of prompts: the first (a graph call sends one)
    if isinstance(messages, list):
        converted = [_serialized_message(m) for m in messages if isinstance(m, Mapping)]
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
        text = _content_text(kwargs.get("content"))
    return text, kwargs.get("usage_metadata")


def _ls_call(run: Any, root_id: str) -> TraceCall:
    metadata = run.metadata or {}
    extra = run.extra or {}
    outputs = run.outputs or {}
    text, usage = _ls_output(outputs)
    tokens = (_int(run.prompt_tokens), _int(run.completion_tokens))
    if tokens == (None, None):
        tokens = _token_counts(usage)
    if tokens == (None, None):
        llm_output = outputs.get("llm_output") or {}
        tokens = _token_counts(llm_output.get("token_usage") or llm_output.get("usage"))
    return TraceCall(
        call_id=str(run.id),
        role=_role(metadata, run.tags, metadata.get("langgraph_node")),
        messages=_ls_messages(run.inputs or {}),
        output=text,
        node=metadata.get("langgraph_node"),
        model=_model_name(metadata, extra.get("invocation_params"), outputs.get("llm_output")),
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        seconds=run.latency,
        started_at=run.start_time.timestamp(),
        run_id=root_id,
    )


def _read_langsmith_jsonl(path: Path) -> list[Any]:
    from langsmith.schemas import Run
    from pydantic import ValidationError

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DivconqError(f"cannot read {path}: {exc}") from exc
    runs = []
    expected = "one LangSmith Run per line, as JSON (Run.model_dump_json())"
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DivconqError(f"{path}:{lineno}: invalid JSON ({exc.msg}): expected {expected}") from exc
        if not isinstance(record, dict) or "id" not in record or "run_type" not in record:
            got = sorted(record)[:8] if isinstance(record, dict) else type(record).__name__
            raise DivconqError(f"{path}:{lineno}: expected {expected} with 'id' and 'run_type', got {got}")
        try:
            runs.append(Run(**record))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise DivconqError(f"{path}:{lineno}: field {where!r}: {first['msg']}; expected {expected}") from exc
    return runs


def import_langsmith_runs(jsonl_path: str | Path, store: TraceStore, *, scorer: Scorer | None = None) -> int:
    """Add runs exported from LangSmith (``Client.list_runs`` records, one JSON per line).

    Runs are grouped by trace; the root run (no parent) gives the question and answer,
    its ``llm`` runs the calls. Every trace must hold its root. Re-importing is a no-op
    (dedupe as in ``TraceStore.add_new_runs``). Returns how many runs were added.
    """
    path = Path(jsonl_path)
    by_trace: dict[str, list[Any]] = {}
    for run in _read_langsmith_jsonl(path):
        by_trace.setdefault(str(run.trace_id), []).append(run)
    traces = []
    for trace_id, members in by_trace.items():
        roots = [r for r in members if r.parent_run_id is None]
        if len(roots) != 1:
            raise DivconqError(
                f"{path}: trace {trace_id} has {len(roots)} root runs (parent_run_id null), expected 1: "
                "export whole traces, e.g. list_runs(trace_id=...) for each trace"
            )
        traces.append(_ls_trace(roots[0], members, scorer or exact_match))
    return store.add_new_runs(traces)


def _ls_trace(root: Any, members: list[Any], scorer: Scorer) -> TraceRun:
    by_id = {r.id: r for r in members}

    def task_key(run: Any) -> tuple[Any, ...]:
        while run.parent_run_id is not None and run.parent_run_id != root.id and run.parent_run_id in by_id:
            run = by_id[run.parent_run_id]
        return _order_key(run.metadata)

    llm_runs = sorted(
        (r for r in members if r.run_type in ("llm", "chat_model")), key=lambda r: (task_key(r), r.start_time)
    )
    calls = [replace(_ls_call(r, str(root.id)), seq=i) for i, r in enumerate(llm_runs)]
    run = TraceRun(
        run_id=str(root.id),
        question="",
        started_at=root.start_time.timestamp(),
        seconds=root.latency,
        source="langsmith",
        calls=calls,
    )
    if root.error or root.outputs is None:
        run.status = "error"
        run.error = _one_line(root.error or "the run had not finished when it was exported")
    _fill_run(run, root.inputs, root.outputs, root.metadata or {}, scorer)
    return run


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
        for role, u in _usage_from_calls(run.calls).items():
            lines.append(
                f"  {role}: {int(u['calls'])} call(s), {_cost(u['input_tokens'], u['output_tokens'], u['seconds'])}"
            )
    return "\n".join(lines)
