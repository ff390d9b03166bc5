"""Distillation: capture graph traces, turn them into SFT data, train and evaluate a student.

Heavy modules (transformers, peft, trl) load only when their functions are used:
``finetune`` and ``TrainConfig`` come from :mod:`divconq.distill.train`, ``improve``,
``ImproveConfig`` and ``HeldOut`` from :mod:`divconq.distill.self_improve`, on first access.
"""

from typing import Any

from divconq.distill.langsmith_runs import import_langsmith_runs
from divconq.distill.recorder import TraceRecorder
from divconq.distill.traces import TraceRun, TraceStore

__all__ = ["HeldOut", "ImproveConfig", "TraceRecorder", "TraceRun", "TraceStore", "TrainConfig", "finetune",
           "import_langsmith_runs", "improve"]

_FROM_TRAIN = ("TrainConfig", "finetune")
_FROM_IMPROVE = ("HeldOut", "ImproveConfig", "improve")


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: importing divconq.distill must not import TRL (seconds).
    if name in _FROM_TRAIN:
        from divconq.distill import train

        return getattr(train, name)
    if name in _FROM_IMPROVE:
        from divconq.distill import self_improve

        return getattr(self_improve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
