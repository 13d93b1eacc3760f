"""One error type for every bad input a user can give.

Entry points catch :class:`MRLError` and print its message as a single line
(``error: ...``) with a non-zero exit, so a typo in an override never ends in a traceback.
"""

from __future__ import annotations


class MRLError(ValueError):
    """A user-facing error: the message names the bad value and what would be valid."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
