"""Distillation: capture graph traces, turn them into SFT data, train and evaluate a student.

The loop from Python, one call a step::

    from divconq.distill import build_sft, collect, finetune
    from divconq.distill.datasets import load_dataset

    collect(build_graph(teacher, teacher).compile(), load_dataset("gsm8k", "train.jsonl"), "traces.db",
            dataset="gsm8k")                                      # resumable; runs scored by the dataset's metric
    data = build_sft("traces.db", screen="gold", out_dir="data/sd_r")   # S_D-R
    student = finetune(data, base="default", out="adapters/sd_r")       # -> "default+adapter=adapters/sd_r"

``improve`` (``divconq.distill.self_improve``) runs rounds of the student improving itself.

Every name here loads on first use (PEP 562), so ``import divconq.distill`` (or one of
its light modules, e.g. ``divconq.distill.metrics``) loads neither TRL nor LangGraph.
No module names a function here: ``collect`` lives in ``divconq.distill.collection``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module of divconq.distill that holds it
_HOMES = {
    "CollectResult": "collection",
    "collect": "collection",
    "SftSummary": "sft",
    "build_sft": "sft",
    "TrainConfig": "train",
    "finetune": "train",
    "Metric": "metrics",
    "exact_match": "metrics",
    "metric_for": "metrics",
    "TraceRecorder": "recorder",
    "import_langsmith_runs": "langsmith_runs",
    "TraceRun": "traces",
    "TraceStore": "traces",
    "HeldOut": "self_improve",
    "ImproveConfig": "self_improve",
    "improve": "self_improve",
}

__all__ = sorted(_HOMES)

if TYPE_CHECKING:  # type checkers and editors do not run __getattr__
    from divconq.distill.collection import CollectResult, collect
    from divconq.distill.langsmith_runs import import_langsmith_runs
    from divconq.distill.metrics import Metric, exact_match, metric_for
    from divconq.distill.recorder import TraceRecorder
    from divconq.distill.self_improve import HeldOut, ImproveConfig, improve
    from divconq.distill.sft import SftSummary, build_sft
    from divconq.distill.traces import TraceRun, TraceStore
    from divconq.distill.train import TrainConfig, finetune


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
