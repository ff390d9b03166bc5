"""Distillation: capture graph traces, turn them into SFT data, train and evaluate a student.

Heavy modules (transformers, peft, trl) load only when their functions are used:
``finetune`` and ``TrainConfig`` come from :mod:`divconq.distill.train` on first access.
"""

from typing import Any

from divconq.distill.traces import TraceRecorder, TraceRun, TraceStore, import_langsmith_runs

__all__ = ["TraceRecorder", "TraceRun", "TraceStore", "TrainConfig", "finetune", "import_langsmith_runs"]

_FROM_TRAIN = ("TrainConfig", "finetune")


def __getattr__(name: str) -> Any:
    # PEP 562 lazy attribute: importing divconq.distill must not import TRL (seconds).
    if name in _FROM_TRAIN:
        from divconq.distill import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
