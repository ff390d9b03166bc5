"""Errors that mean "the input is wrong": the CLI prints them as one line, no traceback."""


class DivconqError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class ModelSpecError(DivconqError):
    """A model spec that cannot be parsed or loaded."""


class AdapterMismatchError(DivconqError):
    """A PEFT adapter that was trained on another base model."""
