"""Errors that mean "the input is wrong": the CLI prints them as one line, no traceback."""


class DivconqError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class ModelSpecError(DivconqError):
    """A model spec that cannot be parsed or loaded."""


class AdapterMismatchError(DivconqError):
    """A PEFT adapter that was trained on another base model."""


class OutputWriteError(DivconqError):
    """An output (a trace store, a results file) could not be written, e.g. a full disk.

    Runs stop at the first one instead of sending every remaining question to the model:
    nothing more could be saved. What was written before it is kept.
    """
