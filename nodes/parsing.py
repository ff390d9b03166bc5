"""Parsers for decomposer and solver output.

Model output is untrusted text: these functions never raise on it. They return an
empty decomposition (or an empty answer) when nothing usable is there, and the graph
falls back to single-stage solving.
"""

from __future__ import annotations

import difflib
import re

from divconq.contract import ANSWER_RE

NO_DECOMPOSITION = "No decomposition"
NO_MORE_SUBQUESTIONS = "No more sub-questions"
# How much of a reply the parsers read, so a runaway reply costs milliseconds, not
# seconds: sub-questions come first in a decomposition (16K characters is about 4K
# tokens, far past any real list of ten), and the final answer comes last in a solution.
MAX_DECOMPOSITION_CHARS = 16_384
MAX_SOLUTION_CHARS = 32_768

# A leading label or list marker: "1.", "(2)", "3)", "-", "*", "•", "Q1:", "Sub-question 2:", "Step 3 -".
_LABEL = re.compile(
    r"""^\s*(?:
        (?:[-*•·]+|\#+)\s*                                  # bullets, markdown headers
      | \(?\d{1,2}\s*[.):\]]\s*                             # 1.  1)  (1)  1:
      | (?:next\s+)?(?:sub[-\s]?questions?|sub[-\s]?q|q|question|step|next)\s*\#?\d{0,2}\s*[:.)\-–]\s*   # labels
    )+""",
    re.IGNORECASE | re.VERBOSE,
)
_BOLD = re.compile(r"\*\*|__|`")
# Every pattern here is linear in its input: a repeat that can start anywhere in a run of
# its characters (`\s+` inside a run of spaces, `^\s*` over blank lines) would rescan the
# rest of the run from each start, quadratic in the run's length. So whitespace runs are
# entered only at their first character, and line-start patterns skip only spaces and tabs.
_INLINE_NUMBERED = re.compile(r"(?<!\s)\s+(?=\(?\d{1,2}[.)]\s+\S)")
_AFTER_QUESTION_MARK = re.compile(r"(?<=\?)\s+")
# Text the decomposer adds after a sub-question that is not part of it.
_TRAILING_ANSWER = re.compile(r"\?\s*(?:answer|a\d*)\s*[:=].*$", re.IGNORECASE)
_NO_DECOMP = re.compile(r"\bno\s+decomposition\b", re.IGNORECASE)
_DONE = re.compile(
    r"\b(?:no\s+(?:more|further|other|additional)\s+(?:sub[-\s]?)?questions?"
    r"|no\s+decomposition|(?:that\s+is\s+)?enough\s+to\s+answer|i\s+am\s+done|\bdone\b\s*\.?$)",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_CODE_FENCE = re.compile(r"```[a-zA-Z]*")


def _normalise(text: str) -> str:
    """A key that compares questions (a sub-question that echoes the question, or repeats
    another): its letters and digits. Answers compare by ``contract.normalise_answer``."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _is_echo(candidate: str, question_key: str) -> bool:
    """True when the candidate merely repeats the main question (``question_key``: normalised)."""
    a, b = _normalise(candidate), question_key
    if not a or not b:
        return False
    if a == b:
        return True
    # A full restatement of a long question with small edits is still an echo; the
    # last sentence of a word problem (its actual question) is not.
    if len(a) <= 0.6 * len(b):
        return False
    # ratio() <= quick_ratio() <= real_quick_ratio(): the cheap bounds rule out most
    # candidates (a long line is never an echo of a short question) before the costly one.
    matcher = difflib.SequenceMatcher(None, a, b)
    return matcher.real_quick_ratio() > 0.9 and matcher.quick_ratio() > 0.9 and matcher.ratio() > 0.9


def is_no_decomposition(text: str | None) -> bool:
    """True when the decomposer says the question needs no decomposition."""
    if not isinstance(text, str):
        return False
    stripped = _CODE_FENCE.sub("", text[:MAX_DECOMPOSITION_CHARS]).strip().strip('"*.` ')
    if not stripped:
        return False
    # Only when the verdict is the whole reply or its first line: a sub-question list
    # that happens to mention the phrase later is still a decomposition.
    first_line = stripped.splitlines()[0]
    return bool(_NO_DECOMP.search(first_line)) and len(_normalise(first_line).split()) <= 6


def _candidate_lines(text: str) -> list[tuple[str, bool]]:
    """Split output into (line, had_label) pairs, one candidate sub-question each."""
    text = _CODE_FENCE.sub("\n", text)
    pieces: list[tuple[str, bool]] = []
    for raw in text.splitlines():
        line = _BOLD.sub("", raw).strip()
        if not line:
            continue
        # "1. What is x? 2. What is y?" on one line.
        for part in _INLINE_NUMBERED.split(line):
            labelled = bool(_LABEL.match(part))
            body = _LABEL.sub("", part).strip()
            # "What is x? What is y?" on one line: one candidate per question mark.
            for sentence in _AFTER_QUESTION_MARK.split(body):
                if sentence.strip():
                    pieces.append((sentence.strip(), labelled))
    return pieces


def _clean(candidate: str) -> str:
    candidate = _TRAILING_ANSWER.sub("?", candidate)
    candidate = candidate.strip().strip('"\'').strip()
    return re.sub(r"\s+", " ", candidate)


def _looks_like_subquestion(body: str, labelled: bool) -> bool:
    words = body.split()
    if len(words) < 3 or body.endswith(":"):
        return False
    if body.endswith("?"):
        return True
    # Imperative steps ("Find the total cost") only count when the model listed them.
    return labelled and len(words) >= 4


def parse_subquestions(
    text: str | None, max_subquestions: int = 3, question: str | None = None
) -> list[str]:
    """Extract at most ``max_subquestions`` distinct sub-questions from decomposer output.

    Handles numbered lists, bullets, "Sub-question 1:" labels, one question per line,
    several questions on one line, surrounding chatter, duplicates and echoes of the
    main ``question``. Returns ``[]`` for "No decomposition" or unusable output.
    Reads the first ``MAX_DECOMPOSITION_CHARS`` characters.
    """
    if not isinstance(max_subquestions, int) or max_subquestions < 1:
        raise ValueError(f"max_subquestions must be a positive integer, got {max_subquestions!r}")
    if not isinstance(text, str) or is_no_decomposition(text):
        return []
    question_key = _normalise(question) if question else ""
    found: list[str] = []
    seen: set[str] = set()
    for body, labelled in _candidate_lines(text[:MAX_DECOMPOSITION_CHARS]):
        body = _clean(body)
        if not _looks_like_subquestion(body, labelled) or _is_echo(body, question_key):
            continue
        key = _normalise(body)
        if key in seen:
            continue
        seen.add(key)
        found.append(body)
        if len(found) == max_subquestions:
            break
    return found


def parse_next_subquestion(
    text: str | None, question: str | None = None, asked: list[str] | tuple[str, ...] = ()
) -> str | None:
    """The next sub-question from a dynamic (self-ask style) decomposer turn.

    ``None`` means stop: the decomposer said it is done, wrote nothing usable, or
    repeated a sub-question it already asked (which would otherwise loop).
    """
    if not isinstance(text, str):
        return None
    head = _CODE_FENCE.sub("", text[:MAX_DECOMPOSITION_CHARS]).strip().splitlines()
    if head and _DONE.search(head[0]) and "?" not in head[0]:
        return None
    candidates = parse_subquestions(text, max_subquestions=1, question=question)
    if not candidates:
        return None
    asked_keys = {_normalise(q) for q in asked}
    return None if _normalise(candidates[0]) in asked_keys else candidates[0]


def extract_answer(text: str | None) -> str:
    """The final answer in solver output: what follows the last "The answer is".

    Falls back to a LaTeX ``\\boxed{}`` value, then to the last non-empty line.
    Returns ``""`` for empty or non-text output. Reads the last ``MAX_SOLUTION_CHARS``
    characters.
    """
    if not isinstance(text, str):
        return ""
    text = _BOLD.sub("", text[-MAX_SOLUTION_CHARS:]).strip()
    if not text:
        return ""
    markers = list(ANSWER_RE.finditer(text))
    if markers:
        tail = text[markers[-1].end():].strip()
        # "The answer is: \[ \boxed{72} \]" over several lines: keep the display block whole.
        if tail.startswith(("\\[", "$$")):
            closing = "\\]" if tail.startswith("\\[") else "$$"
            end = tail.find(closing, 2)
            tail = " ".join(tail[2 : end if end != -1 else None].split())
        answer = tail.splitlines()[0] if tail else ""
        if not answer.strip() and len(tail.splitlines()) > 1:
            answer = next((ln for ln in tail.splitlines() if ln.strip()), "")
    else:
        boxed = _BOXED.findall(text)
        answer = boxed[-1] if boxed else [ln for ln in text.splitlines() if ln.strip()][-1]
    boxed_inner = _BOXED.search(answer)
    if boxed_inner:
        answer = boxed_inner.group(1)
    answer = answer.strip().strip("$").strip()
    return answer.rstrip(".").strip().strip('"\'').strip()


_NUMBERED_START = r"(?:^|\n)[^\S\n]*(?:\*\*)?(?:sub[-\s]?question\s*|q|a|answer\s*|step\s*)?{n}\s*[.):\]]"


def split_sub_answers(text: str | None, n: int) -> list[str]:
    """Best-effort split of one joint solver response into its ``n`` sub-answers.

    The paper's solver answers all sub-questions in one response; when the model
    numbered them ("1.", "Sub-question 2:", "A3:") the pieces are returned in order,
    otherwise ``[]`` (the whole response stays available as the solution text).
    Reads the first ``MAX_SOLUTION_CHARS`` characters.
    """
    if not isinstance(text, str) or n < 1:
        return []
    text = text[:MAX_SOLUTION_CHARS]
    starts: list[tuple[int, int]] = []
    position = 0
    for i in range(1, n + 1):
        match = re.compile(_NUMBERED_START.format(n=i), re.IGNORECASE).search(text, position)
        if match is None:
            return []
        starts.append((match.start(), match.end()))
        position = match.end()
    pieces = []
    for k, (_, body_start) in enumerate(starts):
        if k + 1 < n:
            end = starts[k + 1][0]
        else:  # the last sub-answer ends at the paragraph break before the final answer
            blank = text.find("\n\n", body_start)
            end = blank if blank != -1 else len(text)
        pieces.append(text[body_start:end].strip())
    return pieces
