"""Entry-point glue: one-line errors instead of tracebacks.

A :class:`~mrl.errors.MRLError` (bad input) in a single run prints ``error: <message>``
on stderr and exits with status 2; set ``HYDRA_FULL_ERROR=1`` for the traceback. In a
multirun the error is re-raised, so Hydra records that job as failed and runs the others.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from mrl.errors import MRLError


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001
        return False


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MRLError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or _is_multirun():
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
