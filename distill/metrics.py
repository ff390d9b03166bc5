"""Answer metrics used by the paper (arXiv 2402.15000) and its auxiliary datasets.

* GSM8K: exact match of the final number (:func:`gsm8k_em`).
* DROP: the official DROP EM/F1 (:func:`get_metrics`, :func:`drop_score`), a faithful
  port of allennlp-reading-comprehension ``allennlp_rc/eval/drop_eval.py`` without
  numpy/scipy: the span alignment uses a small exact Hungarian algorithm.
* Bamboogle / HotpotQA / generic: gold contained in the prediction after normalisation
  (:func:`bamboogle_accuracy`), the paper's Bamboogle accuracy.
* StrategyQA: yes/no accuracy (:func:`strategyqa_accuracy`).

Predictions are passed as the model's answer text; the metrics tolerate surrounding
words (GSM8K takes the last number, Bamboogle checks containment), but DROP follows the
official evaluator and scores the text as given.

:data:`Metric` is the one type of a scoring function, wherever divconq takes one (the
recorder, the LangSmith importer, ``collect``): ``metric_for(dataset)`` is a dataset's,
``exact_match`` the default for data divconq does not know.
"""

from __future__ import annotations

import re
import string
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from divconq.contract import ANSWER_RE, DROP_SPAN_SEP, normalise_answer
from divconq.errors import DivconqError

__all__ = [
    "DROP_SPAN_SEP",
    "SCORED_DATASETS",
    "DatasetMetric",
    "Metric",
    "bamboogle_accuracy",
    "drop_score",
    "exact_match",
    "get_metrics",
    "gsm8k_em",
    "is_correct",
    "matches_gold",
    "metric_for",
    "score",
    "strategyqa_accuracy",
]

Metric = Callable[[str | None, Sequence[str]], float]
"""``metric(prediction, gold_answers) -> score`` from 0.0 to 1.0; a run is correct at 1.0.

``prediction`` is the graph's answer (None when it gave none). A function that returns a
bool is a Metric too: True counts as 1.0.
"""


def is_correct(metric: Metric, prediction: str | None, golds: Sequence[str]) -> bool:
    """Whether ``metric`` gives the prediction full marks."""
    return float(metric(prediction, golds)) >= 1.0


def exact_match(prediction: str | None, golds: Sequence[str]) -> bool:
    """The default metric: exact match against any gold, both normalised
    (``contract.normalise_answer``: case, punctuation, articles, spacing)."""
    if prediction is None:
        return False
    predicted = normalise_answer(str(prediction))
    return any(predicted == normalise_answer(str(g)) for g in golds)

# --------------------------------------------------------------------------- GSM8K

# Sign only when it is not a hyphen between words/numbers ("3-2", "COVID-19").
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?\$?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
_GSM8K_FINAL = "####"


def _final_number(text: str) -> Decimal | None:
    """The answer number of ``text`` as an exact Decimal.

    GSM8K style '#### 72' wins (first number after the last '####'); otherwise the
    last number in the text, since models state the result at the end. Decimal makes
    '18', '18.0' and '18.00' equal without float surprises; commas, '$' and a
    trailing '%' are formatting, not part of the value.
    """
    if _GSM8K_FINAL in text:
        match = _NUMBER.search(text.rsplit(_GSM8K_FINAL, 1)[1])
    else:
        match = next(reversed(list(_NUMBER.finditer(text))), None)
    if match is None:
        return None
    try:
        value = Decimal(match["num"].replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex only admits valid numbers
        return None
    return -value if match["sign"] else value


def gsm8k_em(prediction: str, gold: str) -> float:
    """1.0 when the prediction's final number equals the gold number, else 0.0.

    ``gold`` may be the bare number or a full GSM8K answer ending in '#### <number>'.
    """
    predicted, expected = _final_number(prediction), _final_number(gold)
    return float(predicted is not None and expected is not None and predicted == expected)


def _number_value(match: re.Match) -> Decimal:
    value = Decimal(match["num"].replace(",", ""))
    return -value if match["sign"] else value


def gsm8k_lenient(response: str, gold: str) -> float:
    """The paper's lenient GSM8K match: 1.0 when any number on the response's last
    non-empty line equals the gold number (ours, :func:`gsm8k_em`, takes only the final one).

    ``response`` is the model's whole reply (not only the extracted answer), as the paper
    scores it.
    """
    expected = _final_number(gold)
    lines = [line for line in response.splitlines() if line.strip()]
    if expected is None or not lines:
        return 0.0
    return float(any(_number_value(m) == expected for m in _NUMBER.finditer(lines[-1])))


# --------------------------------------------------------------------------- DROP (official)

# A multi-span answer travels as one string joined by ``contract.DROP_SPAN_SEP`` (in
# ``Example.answers`` and in model output). The official evaluator treats a string as a
# single span and only a list as several. Here a *string* containing '|' is split on '|'
# (parts stripped, empty parts dropped); a string without '|' is one span exactly as in
# the official evaluator, and a list or tuple is used as given. Commas and 'and' are never
# split on: 'Tom and Jerry' is one span, as officially.
_SPAN_BAR = DROP_SPAN_SEP.strip()

_EXCLUDE = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _remove_articles(text: str) -> str:
    return _ARTICLES.sub(" ", text)


def _white_space_fix(text: str) -> str:
    return " ".join(text.split())


def _remove_punc(text: str) -> str:
    """Numbers keep their punctuation so '2.5' stays a number."""
    return text if _is_number(text) else "".join(ch for ch in text if ch not in _EXCLUDE)


def _normalize_number(text: str) -> str:
    """'1000', '1000.0' and '1e3' all become '1000.0' (official behaviour)."""
    return str(float(text)) if _is_number(text) else text


def _tokenize(text: str) -> list[str]:
    return re.split(" |-", text)


def _normalize_answer(text: str) -> str:
    """Official per-token normalisation: lower, punctuation, numbers, articles, whitespace."""
    parts = [
        _white_space_fix(_remove_articles(_normalize_number(_remove_punc(token.lower()))))
        for token in _tokenize(text)
    ]
    return " ".join(part for part in parts if part.strip()).strip()


def _answer_to_bags(answer: str | Sequence[str]) -> tuple[list[str], list[set[str]]]:
    """Normalised spans and their token sets; a plain string is one span (official)."""
    raw_spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [_normalize_answer(span) for span in raw_spans]
    return normalized, [set(span.split()) for span in normalized]


def _compute_f1(predicted_bag: set[str], gold_bag: set[str]) -> float:
    intersection = len(gold_bag & predicted_bag)
    precision = intersection / len(predicted_bag) if predicted_bag else 1.0
    recall = intersection / len(gold_bag) if gold_bag else 1.0
    if precision == 0.0 and recall == 0.0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def _match_numbers_if_present(gold_bag: set[str], predicted_bag: set[str]) -> bool:
    """A span pair scores only if the gold has no number or they share one: '5 yards' != '6 yards'."""
    gold_numbers = {word for word in gold_bag if _is_number(word)}
    predicted_numbers = {word for word in predicted_bag if _is_number(word)}
    return not gold_numbers or bool(gold_numbers & predicted_numbers)


def _max_assignment(scores: list[list[float]]) -> list[tuple[int, int]]:
    """Maximum-weight one-to-one matching of rows to columns (rectangular allowed).

    Exact O(n^2 m) Hungarian algorithm (potentials form); replaces scipy's
    ``linear_sum_assignment(-scores)``. Any optimal matching gives the same DROP F1,
    because only the matched total enters the mean.
    """
    n = len(scores)
    m = len(scores[0]) if n else 0
    if n == 0 or m == 0:
        return []
    if n > m:
        transposed = [[scores[i][j] for i in range(n)] for j in range(m)]
        return [(i, j) for j, i in _max_assignment(transposed)]
    inf = float("inf")
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    match_of_col, way = [0] * (m + 1), [0] * (m + 1)  # 1-based; column 0 is the virtual start
    for row in range(1, n + 1):
        match_of_col[0], col = row, 0
        min_slack, used = [inf] * (m + 1), [False] * (m + 1)
        while match_of_col[col] != 0:
            used[col] = True
            cur_row, delta, next_col = match_of_col[col], inf, 0
            for j in range(1, m + 1):
                if used[j]:
                    continue
                slack = -scores[cur_row - 1][j - 1] - u[cur_row] - v[j]
                if slack < min_slack[j]:
                    min_slack[j], way[j] = slack, col
                if min_slack[j] < delta:
                    delta, next_col = min_slack[j], j
            for j in range(m + 1):
                if used[j]:
                    u[match_of_col[j]] += delta
                    v[j] -= delta
                else:
                    min_slack[j] -= delta
            col = next_col
        while col:
            prev = way[col]
            match_of_col[col] = match_of_col[prev]
            col = prev
    return [(match_of_col[j] - 1, j - 1) for j in range(1, m + 1) if match_of_col[j]]


def _align_bags(predicted: list[set[str]], gold: list[set[str]]) -> list[float]:
    """Per-gold-span F1 under the best 1-1 alignment, padded with 0 to max(len) (official).

    The padding is what penalises predicting too many or too few spans.
    """
    scores = [
        [_compute_f1(p, g) if _match_numbers_if_present(g, p) else 0.0 for p in predicted] for g in gold
    ]
    max_scores = [0.0] * max(len(gold), len(predicted))
    for row, col in _max_assignment(scores):
        max_scores[row] = max(max_scores[row], scores[row][col])
    return max_scores


def _round2(value: float) -> float:
    """numpy's round(x, 2): round-half-even of x*100, as the official ``round(np.mean(...), 2)``."""
    return round(value * 100) / 100


def get_metrics(predicted: str | Sequence[str], gold: str | Sequence[str]) -> tuple[float, float]:
    """Official DROP (exact match, F1) of one prediction against one gold answer.

    Each argument is a single span (str) or several spans (list/tuple), exactly as in
    the official evaluator; no '|' splitting happens here (see :func:`drop_score`).
    """
    predicted_spans, predicted_bags = _answer_to_bags(predicted)
    gold_spans, gold_bags = _answer_to_bags(gold)
    same = set(predicted_spans) == set(gold_spans) and len(predicted_spans) == len(gold_spans)
    per_bag = _align_bags(predicted_bags, gold_bags)
    f1 = sum(per_bag) / len(per_bag) if per_bag else 0.0
    return float(same), _round2(f1)


def _as_spans(answer: str | Sequence[str]) -> tuple[str, ...]:
    """Split a string on '|' into spans (see DROP_SPAN_SEP); lists pass through."""
    if not isinstance(answer, str):
        return tuple(answer)
    if _SPAN_BAR not in answer:
        return (answer,)
    return tuple(part.strip() for part in answer.split(_SPAN_BAR) if part.strip()) or ("",)


def drop_score(prediction: str | Sequence[str], golds: Sequence[str | Sequence[str]]) -> tuple[float, float]:
    """(EM, F1) maximised separately over the gold answers, as the official ``evaluate_json``.

    Blank gold answers are skipped like in the official script; no usable gold gives (0, 0).
    """
    predicted = _as_spans(prediction)
    best_em = best_f1 = 0.0
    for gold in golds:
        gold_spans = _as_spans(gold)
        if not gold_spans or not gold_spans[0].strip():
            continue
        em, f1 = get_metrics(predicted, gold_spans)
        best_em, best_f1 = max(best_em, em), max(best_f1, f1)
    return best_em, best_f1


# --------------------------------------------------------------------------- Bamboogle / containment

def bamboogle_accuracy(prediction: str, golds: str | Sequence[str]) -> float:
    """1.0 if any gold appears in the prediction on word boundaries, both normalised
    (``contract.normalise_answer``: case, punctuation, articles, spacing).

    Word boundaries keep '1812' from matching inside '18120' while accepting extra
    words around the answer ('It was James Madison.').
    """
    padded = f" {normalise_answer(prediction)} "
    candidates = [golds] if isinstance(golds, str) else list(golds)
    return float(any((gold := normalise_answer(g)) and f" {gold} " in padded for g in candidates))


# --------------------------------------------------------------------------- StrategyQA

_YES_NO = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_YES_NO_WORD = re.compile(r"\b(yes|no|true|false)\b")
# The solver's answer marker, or GSM8K's "####".
_YES_NO_AFTER = re.compile(f"{ANSWER_RE.pattern}|{_GSM8K_FINAL}", ANSWER_RE.flags)


def _yes_no(text: str) -> str | None:
    """Read a yes/no decision: a leading 'Yes,'/'No.', else the word after the last answer
    marker ('The answer is', 'Answer:', '####'), else the last yes/no word in the text."""
    lowered = text.strip().lower()
    if not lowered:
        return None
    leading = _YES_NO_WORD.match(lowered)
    if leading:
        return _YES_NO[leading.group(1)]
    markers = list(_YES_NO_AFTER.finditer(lowered))
    if markers:
        after = _YES_NO_WORD.search(lowered, markers[-1].end())
        if after:
            return _YES_NO[after.group(1)]
    words = _YES_NO_WORD.findall(lowered)
    return _YES_NO[words[-1]] if words else None


def strategyqa_accuracy(prediction: str, gold: str | bool) -> float:
    """1.0 when the prediction's yes/no equals the gold (bool, 'yes'/'no' or 'true'/'false')."""
    expected = ("yes" if gold else "no") if isinstance(gold, bool) else _yes_no(gold)
    return float(expected is not None and _yes_no(prediction) == expected)


# --------------------------------------------------------------------------- dispatcher

SCORED_DATASETS = ("gsm8k", "drop", "strategyqa", "bamboogle", "hotpotqa", "jsonl")  # the datasets `score` knows


def score(dataset_name: str, prediction: str, example_answers: Sequence[str]) -> dict[str, float]:
    """Score one prediction against ``Example.answers`` with the dataset's metric.

    Returns {"score": ...}; DROP returns {"score": EM, "f1": F1} (the paper reports
    F1). HotpotQA and generic jsonl use containment accuracy like Bamboogle. Break has
    no answers and cannot be scored.
    """
    name = dataset_name.strip().lower()
    answers = list(example_answers)
    if not answers:
        raise ValueError(f"{dataset_name}: example has no gold answers to score against")
    if name == "gsm8k":
        return {"score": max(gsm8k_em(prediction, gold) for gold in answers)}
    if name == "drop":
        em, f1 = drop_score(prediction, answers)
        return {"score": em, "f1": f1}
    if name == "strategyqa":
        return {"score": max(strategyqa_accuracy(prediction, gold) for gold in answers)}
    if name in ("bamboogle", "hotpotqa", "jsonl"):
        return {"score": bamboogle_accuracy(prediction, answers)}
    raise ValueError(f"no metric for dataset {dataset_name!r}; scorable: {', '.join(SCORED_DATASETS)}")


@dataclass(frozen=True)
class DatasetMetric:
    """The :data:`Metric` of a dataset divconq scores: the ``score`` of :func:`score`
    (for DROP, exact match; its F1 is in evaluation rows). Picklable, unlike a lambda."""

    dataset: str

    def __call__(self, prediction: str | None, golds: Sequence[str]) -> float:
        return score(self.dataset, prediction or "", golds)["score"]


def metric_for(dataset: str) -> Metric:
    """The metric of ``dataset`` (one of :data:`SCORED_DATASETS`), checked now."""
    name = dataset.strip().lower() if isinstance(dataset, str) else dataset
    if name not in SCORED_DATASETS:
        raise DivconqError(f"no metric for dataset {dataset!r}: use one of {', '.join(SCORED_DATASETS)}, "
                           "or pass a metric of your own (prediction, gold answers) -> 0.0 to 1.0")
    return DatasetMetric(name)


def matches_gold(dataset_name: str, prediction: str | None, example_answers: Sequence[str]) -> bool:
    """Whether a prediction scores full marks on the dataset's metric: how a run is screened
    on gold (``functools.partial(matches_gold, dataset)`` is a :data:`Metric`)."""
    return is_correct(DatasetMetric(dataset_name), prediction, example_answers)


def metric_or_scorer(metric: Metric | None, scorer: Metric | None, where: str) -> Metric:
    """``metric``, or the ``scorer=`` of divconq 0.1 (deprecated for one release), or exact match."""
    if scorer is not None:
        if metric is not None:
            raise DivconqError(f"{where}: pass metric= only (scorer= is its old name)")
        warnings.warn(f"{where}(scorer=...) is deprecated: pass metric=", DeprecationWarning, stacklevel=3)
        metric = scorer
    if metric is not None and not callable(metric):
        raise DivconqError(f"{where}: metric must be a function (prediction, gold answers) -> 0.0 to 1.0, "
                           f"got {metric!r}")
    return metric or exact_match
