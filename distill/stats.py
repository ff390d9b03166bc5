"""Paired comparisons of two evaluation runs on the same questions.

Rows of a results table differ by a few points at n=100-300, about the size of the noise.
Two runs on the same questions are compared question by question: the paired bootstrap
resamples questions (not runs), so what both runs got right or wrong together cancels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class PairedDifference:
    """``run - baseline`` in points (0-100) over ``n`` shared questions, with a bootstrap CI."""

    n: int
    difference: float
    ci_low: float
    ci_high: float
    only_run: int  # questions the run got right and the baseline wrong
    only_baseline: int  # and the other way round

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def paired_bootstrap(run: Sequence[float], baseline: Sequence[float], *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """The mean difference ``run - baseline`` (in points) and its percentile bootstrap CI."""
    if len(run) != len(baseline) or not run:
        raise ValueError(f"paired scores need equal, non-empty lengths (got {len(run)} and {len(baseline)})")
    deltas = [100 * (a - b) for a, b in zip(run, baseline)]
    n = len(deltas)
    rng = random.Random(seed)
    means = sorted(sum(deltas[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low, high = means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]
    return PairedDifference(n, sum(deltas) / n, low, high,
                            sum(1 for d in deltas if d > 0), sum(1 for d in deltas if d < 0))


def paired_rows(run: list[dict[str, Any]], baseline: list[dict[str, Any]], key: str = "score") -> tuple[list[float], list[float]]:
    """The scores of the questions both results lists hold, matched by id, in ``baseline``'s order."""
    by_id = {row["id"]: row for row in run}
    shared = [row for row in baseline if row["id"] in by_id]
    return [by_id[row["id"]].get(key, 0.0) for row in shared], [row.get(key, 0.0) for row in shared]


def decomposed_share(rows: list[dict[str, Any]]) -> float:
    """The share of questions the decomposer actually split into sub-questions."""
    return sum(1 for row in rows if row.get("subquestions")) / len(rows) if rows else 0.0
