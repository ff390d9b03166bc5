"""Fixed evaluation slices: a committed list of question ids that every compared row runs on.

Rows of a table are only comparable question by question (paired) when they ran on the
same questions. A slice file holds one question id per line, in order (``#`` lines are
comments); ``divconq eval --slice FILE`` scores exactly those questions, refuses a slice
that overlaps the ids an adapter was trained on, and records the slice's identity in
every results row, so a results file is never extended from another slice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from divconq.errors import DivconqError


@dataclass(frozen=True)
class Slice:
    """A named, ordered list of question ids; ``key`` identifies its exact contents."""

    name: str
    ids: tuple[str, ...]

    @property
    def key(self) -> str:
        digest = hashlib.sha1("\n".join(self.ids).encode()).hexdigest()[:10]
        return f"{self.name}@{digest}"


def read_slice(path: str | Path) -> Slice:
    """The slice in ``path``; an unreadable, empty or duplicated list ends with one line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DivconqError(f"cannot read slice file {path} ({exc}): pass a text file with one question id per line") from exc
    ids = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not ids:
        raise DivconqError(f"slice file {path} holds no ids: write one question id per line")
    if len(set(ids)) != len(ids):
        raise DivconqError(f"slice file {path} lists some ids twice: each question once")
    return Slice(path.stem, ids)


def check_disjoint(slice_: Slice, training_ids: Iterable[str], source: str) -> None:
    """Refuse a slice that shares questions with a training set: its scores would be inflated."""
    trained = set(training_ids)  # once: an iterator can be read only once, and the test is per id
    overlap = [i for i in slice_.ids if i in trained]
    if overlap:
        raise DivconqError(
            f"slice {slice_.name} overlaps the training ids of {source} ({len(overlap)} ids, e.g. {overlap[0]}): "
            "evaluate on a held-out slice, or retrain without those questions"
        )


def select(examples: Sequence, slice_: Slice) -> list:
    """The examples of ``slice_``, in the slice's order; every id must be in the dataset."""
    by_id = {e.id: e for e in examples}
    missing = [i for i in slice_.ids if i not in by_id]
    if missing:
        raise DivconqError(
            f"{len(missing)} ids of slice {slice_.name} are not in the dataset (e.g. {missing[0]}): "
            "is --data the file the slice was made from?"
        )
    return [by_id[i] for i in slice_.ids]


def held_out(examples: Sequence, training_ids: Iterable[str], size: int) -> list[str]:
    """The first ``size`` example ids in file order that are in no training id list."""
    excluded = set(training_ids)
    ids = [e.id for e in examples if e.id not in excluded][:size]
    if len(ids) < size:
        raise DivconqError(f"only {len(ids)} held-out questions left, {size} asked: use a smaller --size")
    return ids
