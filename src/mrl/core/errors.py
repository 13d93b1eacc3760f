"""One error type for every bad input a user can give.

Entry points catch :class:`MRLError` and print its message as a single line
(``error: ...``) with a non-zero exit, so a typo in an override never ends in a traceback
(see :mod:`mrl.cli`, which also turns Hydra's own composition errors into one line).
"""

from __future__ import annotations


class MRLError(ValueError):
    """A user-facing error: the message names the bad value and what would be valid.

    An MRLError raised inside a DataLoader worker reaches the main process re-raised by torch
    with the worker's traceback as its message; only the original message is kept.
    """

    def __init__(self, message: str) -> None:
        text = str(message)
        if "in DataLoader worker process" in text and "Original Traceback" in text:
            last = text.strip().splitlines()[-1]  # "mrl.core.errors.MRLError: <message>"
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(" ".join(text.split()))


class NonFiniteLossError(MRLError):
    """Training produced a NaN or infinite loss; ``step`` and ``prefix`` say where."""

    def __init__(self, message: str, step: int | None = None, prefix: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.prefix = prefix


class Terminated(MRLError):
    """The run was stopped by a signal (SIGTERM from a scheduler or ``kill``): exit status
    ``exit_code`` (128 + the signal number, as a shell reports a killed process)."""

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code
