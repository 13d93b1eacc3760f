"""One error type for every bad input a user can give.

Entry points catch :class:`MRLError` and print its message as a single line
(``error: ...``) with a non-zero exit, so a typo in an override never ends in a traceback
(see :mod:`mrl.cli`, which also turns Hydra's own composition errors into one line).
"""

from __future__ import annotations


class MRLError(ValueError):
    """A user-facing error: the message names the bad value and what would be valid."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class NonFiniteLossError(MRLError):
    """Training produced a NaN or infinite loss; ``step`` and ``prefix`` say where."""

    def __init__(self, message: str, step: int | None = None, prefix: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.prefix = prefix
