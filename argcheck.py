"""The argument checks: typed, bounded numbers and fixed choices, with one-line errors.

Every number the CLI takes goes through a checker here, so ``--limit 0``, ``--concurrency
-5`` or ``--timeout abc`` end in one line naming the flag, what it needs and what it got
(exit 2), instead of being quietly raised to 1 or taken to mean "all". The library checks
a value against its fixed choices (a ``Literal``'s values) with ``check_choice``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, NoReturn

from divconq.errors import DivconqError

__all__ = ["OneLineParser", "check_choice", "fraction", "int_between", "positive_float", "positive_int"]


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Refuse a value outside its choices, naming them: ``unknown mode 'fast': choose one of ...``."""
    if value not in choices:
        raise DivconqError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"needs {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"needs a finite number, got {text!r}")
    return value


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high`` (no upper bound if None)."""

    def check(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise argparse.ArgumentTypeError(f"needs a whole number {bounds}, got {text!r}")
        return value

    check.__name__ = "int"  # argparse names the type in its messages
    return check


positive_int = int_between(1)


def positive_float(text: str) -> float:
    """An argparse ``type``: a number above zero (seconds, learning rates, epochs)."""
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"needs a number above 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """An argparse ``type``: a fraction in [0, 1) (a validation share)."""
    value = float(_number(text, float))
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"needs a number from 0 up to (not including) 1, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other divconq error, with where to look."""

    def error(self, message: str) -> NoReturn:
        print(f"divconq: error: {message}: see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(2)
