"""Loaders for the evaluation and distillation datasets used by the paper.

"Divide-or-Conquer? Which Part Should You Distill Your LLM?" (arXiv 2402.15000)
evaluates on GSM8K, DROP and Bamboogle and uses gold decompositions (GSM8K socratic,
StrategyQA, DROP annotations, Break QDMR) as references. Every loader reads the file
in its original public format and returns the same flat :class:`Example`, so the
graph, the distillation data builder and the metrics never see per-dataset layouts.

Files are never bundled with the package: pass the path of a file you downloaded
(sources are listed in ``shared/data/README.md`` next to the repository).

Ids (stable, deterministic, documented because evaluations exclude training ids):

* datasets that ship an id keep it unchanged: DROP ``query_id``, StrategyQA ``qid``,
  Break ``question_id``, HotpotQA ``_id``, generic jsonl ``id``;
* the others (GSM8K, Bamboogle, HotpotQA-simplified, jsonl without ``id``) get
  :func:`question_id`: ``f"{dataset}-{sha1(normalised question)[:12]}"``. The id is
  content based, not positional, so ``gsm8k/test.jsonl`` and
  ``gsm8k/test_socratic.jsonl`` give the same id for the same question, and
  reordering or subsetting a file does not change ids.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divconq.contract import DROP_SPAN_SEP
from divconq.errors import DivconqError

__all__ = [
    "DATASETS",
    "DatasetFormatError",
    "Example",
    "load_dataset",
    "normalise_question",
    "question_id",
]


@dataclass(frozen=True)
class Example:
    """One question with its gold answers and, where the dataset has them, gold sub-questions.

    ``answers`` holds every gold answer (a DROP multi-span answer is one string whose
    spans are joined by :data:`divconq.contract.DROP_SPAN_SEP`); it is empty for
    Break, which has decompositions but no answers.
    """

    id: str
    question: str
    context: str | None
    answers: tuple[str, ...]
    gold_subquestions: tuple[str, ...] = ()


class DatasetFormatError(DivconqError):
    """A data file does not have the expected layout; the message names file, place and expectation.

    A ValueError (through DivconqError), so the CLI prints it as one line.
    """


# --------------------------------------------------------------------------- helpers


def normalise_question(question: str, context: str | None = None) -> str:
    """The key that tells questions apart: NFKC, collapsed whitespace, casefolded; the
    context (if any) is part of the key, since reading-comprehension questions repeat
    across passages. Ids hash it, and SFT data dedupes and splits by it."""

    def norm(text: str) -> str:
        return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()

    key = norm(question or "")
    if context and context.strip():
        key += "\x1f" + norm(context)
    return key


def question_id(dataset: str, question: str) -> str:
    """Content-based id: identical questions get identical ids in any file of a dataset."""
    digest = hashlib.sha1(normalise_question(question).encode("utf-8")).hexdigest()[:12]
    return f"{dataset}-{digest}"


def _preview(value: Any, limit: int = 60) -> str:
    """Short one-line repr of an offending value, so errors stay one line."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(path: Path, where: str, expected: str, got: Any) -> DatasetFormatError:
    return DatasetFormatError(f"{path.name} {where}: expected {expected}, got {_preview(got)}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path.name}: expected UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_json(path: Path) -> Any:
    """Whole-file JSON; a syntax error reports the line the parser stopped at."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path.name} line {exc.lineno}: invalid JSON ({exc.msg})") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed value) for each non-blank line."""
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path.name} line {lineno}: invalid JSON ({exc.msg})") from None


def _json_records(path: Path, expected: str) -> list[Any]:
    """A JSON file whose top level must be a list of records."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise _error(path, "top level", f"a JSON list of {expected}", type(data).__name__)
    return data


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row with lower-cased column names); check the header first."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = [name.strip().lower() for name in reader.fieldnames or []]
        except UnicodeDecodeError:
            raise DatasetFormatError(f"{path.name}: expected UTF-8 text") from None
        missing = [name for name in required if name not in header]
        if missing:
            cols = " and ".join(repr(n) for n in required)
            raise _error(path, "line 1", f"a CSV header with columns {cols}", reader.fieldnames)
        reader.fieldnames = header
        try:
            for row in reader:
                if None in row or any(row.get(name) is None for name in required):
                    raise _error(path, f"line {reader.line_num}", f"{len(header)} CSV fields", row)
                yield reader.line_num, row
        except UnicodeDecodeError:
            raise DatasetFormatError(f"{path.name} line {reader.line_num + 1}: expected UTF-8 text") from None


def _text(value: Any) -> str | None:
    """Strip a string field; numbers are accepted as answers (e.g. generic jsonl)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _lower_keys(record: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in record.items()}


def _str_list(value: Any) -> tuple[str, ...] | None:
    """A list of non-empty strings, or None if the value is anything else."""
    if not isinstance(value, list):
        return None
    items = [_text(v) for v in value]
    return None if any(v is None for v in items) else tuple(v for v in items if v is not None)


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------- GSM8K

_GSM8K_FINAL = "####"
_SOCRATIC_SEP = " ** "


def _gsm8k_example(path: Path, lineno: int, record: Any) -> Example:
    """GSM8K answer: reasoning lines, then '#### <number>'; socratic lines are 'Q ** step'."""
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not isinstance(
        record.get("answer"), str
    ):
        raise _error(path, f"line {lineno}", "a JSON object with string 'question' and 'answer'", record)
    answer: str = record["answer"]
    if _GSM8K_FINAL not in answer:
        raise _error(path, f"line {lineno}", f"an 'answer' ending with '{_GSM8K_FINAL} <number>'", answer[-40:])
    reasoning, final = answer.rsplit(_GSM8K_FINAL, 1)
    final = final.strip().replace(",", "")
    if not final:
        raise _error(path, f"line {lineno}", f"a number after '{_GSM8K_FINAL}'", answer[-40:])
    subqs = tuple(
        line.split(_SOCRATIC_SEP, 1)[0].strip() for line in reasoning.splitlines() if _SOCRATIC_SEP in line
    )
    question = record["question"].strip()
    return Example(question_id("gsm8k", question), question, None, (final,), subqs)


def _load_gsm8k(path: Path) -> list[Example]:
    return [_gsm8k_example(path, lineno, rec) for lineno, rec in _iter_jsonl(path)]


# --------------------------------------------------------------------------- DROP


def _drop_answer(answer: Any) -> str | None:
    """Official ``answer_json_to_strings``: number, else spans, else 'day month year'.

    Multi-span answers are joined with DROP_SPAN_SEP so they fit in ``Example.answers``;
    blank answers (the official evaluator skips them) give None.
    """
    if not isinstance(answer, dict):
        return None
    number = answer.get("number")
    if number not in (None, ""):
        return str(number).strip() or None
    spans = [s.strip() for s in answer.get("spans") or [] if isinstance(s, str) and s.strip()]
    if spans:
        return DROP_SPAN_SEP.join(spans)
    date = answer.get("date") or {}
    if not isinstance(date, dict):
        return None
    text = " ".join(str(date.get(k, "")).strip() for k in ("day", "month", "year")).split()
    return " ".join(text) or None


def _drop_subquestions(qa: dict[str, Any]) -> tuple[str, ...]:
    """Gold decomposition of the drop_decomp annotations.

    ``decomp_qas`` holds [sub-question, answer] pairs (including symbolic steps such as
    'diff(4; 1)', kept verbatim); ``decomposition`` holds statements and is only used
    when there are no ``decomp_qas``. The official DROP files have neither.
    """
    pairs = qa.get("decomp_qas")
    if isinstance(pairs, list) and pairs:
        return tuple(str(p[0]).strip() for p in pairs if isinstance(p, list) and p and str(p[0]).strip())
    steps = _str_list(qa.get("decomposition"))
    return steps or ()


def _drop_qa(path: Path, where: str, passage: str, qa: Any) -> Example:
    question = _text(qa.get("question")) if isinstance(qa, dict) else None
    if question is None or not isinstance(qa.get("answer"), dict):
        raise _error(path, where, "a qa pair with 'question' and an 'answer' object", qa)
    candidates = [qa["answer"], *(qa.get("validated_answers") or [])]
    answers = _dedupe([a for a in map(_drop_answer, candidates) if a is not None])
    if not answers:
        raise _error(path, where, "a non-empty answer (number, spans or date)", qa["answer"])
    qid = _text(qa.get("query_id")) or question_id("drop", question)
    return Example(qid, question, passage, answers, _drop_subquestions(qa))


def _load_drop(path: Path) -> list[Example]:
    """Official DROP layout: {passage_id: {passage, qa_pairs: [...]}}; context = passage."""
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _error(path, "top level", "a JSON object mapping passage ids to passages", type(data).__name__)
    examples: list[Example] = []
    for pid, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("passage"), str) or not isinstance(
            entry.get("qa_pairs"), list
        ):
            raise _error(path, f"passage {pid!r}", "an object with 'passage' and a 'qa_pairs' list", entry)
        for i, qa in enumerate(entry["qa_pairs"]):
            examples.append(_drop_qa(path, f"passage {pid!r} qa_pairs[{i}]", entry["passage"], qa))
    return examples


# --------------------------------------------------------------------------- Bamboogle


def _bamboogle_example(path: Path, where: str, record: Any) -> Example:
    """Bamboogle (self-ask): Question/Answer; Q1/Q2 are the (silver) two-hop split.

    Only ``Answer`` is gold; the A2 alternatives in the comp-gap release are model
    written, so they are not added to the answers.
    """
    fields = _lower_keys(record) if isinstance(record, dict) else {}
    question, answer = _text(fields.get("question")), _text(fields.get("answer"))
    if question is None or answer is None:
        raise _error(path, where, "a record with non-empty 'Question' and 'Answer'", record)
    subqs = tuple(q for q in (_text(fields.get("q1")), _text(fields.get("q2"))) if q)
    return Example(question_id("bamboogle", question), question, None, (answer,), subqs)


def _load_bamboogle(path: Path) -> list[Example]:
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path, ("question", "answer"))
        return [_bamboogle_example(path, f"line {n}", row) for n, row in rows]
    records = _json_records(path, "Bamboogle records")
    return [_bamboogle_example(path, f"record {i}", rec) for i, rec in enumerate(records)]


# --------------------------------------------------------------------------- StrategyQA

_YES_NO = {True: "yes", False: "no", "true": "yes", "false": "no", "yes": "yes", "no": "no"}


def _strategyqa_example(path: Path, index: int, record: Any) -> Example:
    """StrategyQA: boolean answer -> 'yes'/'no'; the test split has no answer (answers=())."""
    where = f"record {index}"
    question = _text(record.get("question")) if isinstance(record, dict) else None
    if question is None:
        raise _error(path, where, "an object with a 'question'", record)
    raw = record.get("answer")
    key = raw.strip().lower() if isinstance(raw, str) else raw
    if raw is not None and key not in _YES_NO:
        raise _error(path, where, "'answer' true/false", raw)
    answers = (_YES_NO[key],) if raw is not None else ()
    qid = _text(record.get("qid")) or question_id("strategyqa", question)
    return Example(qid, question, None, answers, _str_list(record.get("decomposition")) or ())


def _load_strategyqa(path: Path) -> list[Example]:
    records = _json_records(path, "StrategyQA records")
    return [_strategyqa_example(path, i, rec) for i, rec in enumerate(records)]


# --------------------------------------------------------------------------- HotpotQA


def _hotpot_context(context: Any) -> str | None:
    """Official HotpotQA context is [[title, [sentences]], ...]; the simplified file has none."""
    if isinstance(context, str):
        return context or None
    if not isinstance(context, list):
        return None
    paragraphs = [
        f"{item[0]}: {''.join(item[1])}"
        for item in context
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)
    ]
    return "\n".join(paragraphs) or None


def _hotpot_example(path: Path, index: int, record: Any) -> Example:
    question = _text(record.get("question")) if isinstance(record, dict) else None
    answer = _text(record.get("answer")) if isinstance(record, dict) else None
    if question is None or answer is None:
        raise _error(path, f"record {index}", "an object with 'question' and 'answer'", record)
    qid = _text(record.get("_id")) or question_id("hotpotqa", question)
    return Example(qid, question, _hotpot_context(record.get("context")), (answer,))


def _load_hotpotqa(path: Path) -> list[Example]:
    records = _json_records(path, "HotpotQA records")
    return [_hotpot_example(path, i, rec) for i, rec in enumerate(records)]


# --------------------------------------------------------------------------- Break

_RETURN = re.compile(r"^return\s+", re.IGNORECASE)


def _qdmr_steps(decomposition: str) -> tuple[str, ...]:
    """QDMR 'return A ;return B #1': split on ';', drop the 'return' keyword, tidy spaces."""
    steps = (_RETURN.sub("", " ".join(step.split())) for step in decomposition.split(";"))
    return tuple(step for step in steps if step)


def _load_break(path: Path) -> list[Example]:
    """Break QDMR csv; no answers, the value is the gold decomposition (``#k`` refers to step k)."""
    examples = []
    for lineno, row in _read_csv(path, ("question_text", "decomposition")):
        question, steps = row["question_text"].strip(), _qdmr_steps(row["decomposition"])
        if not question or not steps:
            raise _error(path, f"line {lineno}", "non-empty 'question_text' and 'decomposition'", row)
        qid = (row.get("question_id") or "").strip() or question_id("break", question)
        examples.append(Example(qid, question, None, (), steps))
    return examples


# --------------------------------------------------------------------------- generic jsonl


def _jsonl_example(path: Path, lineno: int, record: Any) -> Example:
    """Generic line: {"question", "answer" (str or list), "context"?, "id"?, "subquestions"?}."""
    where, expected = f"line {lineno}", "a JSON object with 'question' and 'answer'"
    if not isinstance(record, dict) or _text(record.get("question")) is None or "answer" not in record:
        raise _error(path, where, expected, record)
    if not isinstance(record["question"], str):  # a number is accepted as an answer, not as a question
        raise _error(path, where, "'question' as text", record["question"])
    raw = record["answer"]
    answers = _str_list(raw) if isinstance(raw, list) else ((a,) if (a := _text(raw)) else None)
    if not answers:
        raise _error(path, where, "'answer' as a non-empty string or list of strings", raw)
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise _error(path, where, "'context' as a string", context)
    raw_subqs = record.get("subquestions")
    subqs = () if raw_subqs is None else _str_list(raw_subqs)
    if subqs is None:
        raise _error(path, where, "'subquestions' as a list of strings", raw_subqs)
    question = _text(record["question"]) or ""
    qid = _text(record.get("id")) or question_id("jsonl", question)
    return Example(qid, question, context or None, _dedupe(list(answers)), subqs)


def _load_jsonl(path: Path) -> list[Example]:
    return [_jsonl_example(path, lineno, rec) for lineno, rec in _iter_jsonl(path)]


# --------------------------------------------------------------------------- entry point

_LOADERS: dict[str, Callable[[Path], list[Example]]] = {
    "gsm8k": _load_gsm8k,
    "drop": _load_drop,
    "bamboogle": _load_bamboogle,
    "strategyqa": _load_strategyqa,
    "hotpotqa": _load_hotpotqa,
    "break": _load_break,
    "jsonl": _load_jsonl,
}

DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(name: str, path: str | Path) -> list[Example]:
    """Load ``path`` in the original format of dataset ``name`` (one of :data:`DATASETS`).

    Raises ValueError (DivconqError) for an unknown name, FileNotFoundError for a missing file and
    :class:`DatasetFormatError` (one line: file, line or record, what was expected).
    """
    loader = _LOADERS.get(name.strip().lower())
    if loader is None:
        raise DivconqError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    file = Path(path)
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "not found"
        raise FileNotFoundError(f"{name} data file {what}: {file}")
    examples = loader(file)
    if not examples:
        raise DatasetFormatError(f"{file.name} holds no {name} questions: pass a data file with at least one")
    return examples
