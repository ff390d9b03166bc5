"""Distillation: capture graph traces, turn them into SFT data, train and evaluate a student.

Heavy modules (transformers, peft) load only when their functions are used.
"""

from divconq.distill.traces import TraceRecorder, TraceRun, TraceStore, import_langsmith_runs

__all__ = ["TraceRecorder", "TraceRun", "TraceStore", "import_langsmith_runs"]
