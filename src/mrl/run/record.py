"""``run.json``, the run record: written when a task starts, updated, finalised on exit.

Fields: ``task``, ``status`` (``running`` -> ``completed`` | ``failed`` | ``interrupted``: Ctrl-C,
SIGTERM or a scheduler's pre-emption signal), ``run_dir``,
``seconds`` and, on failure, ``error`` (one line, at most 500 characters); tasks add their own
(``method``, ``dims``, ``seed``, ...). Every write is atomic.

A deferred record (``defer=True``, for a command in a run dir that already holds an earlier
command's record) writes nothing until :meth:`RunRecord.commit`: a command refused before that
point leaves the earlier record as it was.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mrl.core.errors import Terminated
from mrl.run.files import write_json_atomic

log = logging.getLogger(__name__)


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON object at ``path`` ({} when absent or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class RunRecord(dict):
    """The record being written; :meth:`save` writes it now."""

    def __init__(self, path: Path, **fields: Any) -> None:
        super().__init__(status="running", **fields)
        self.path = path
        self.committed = False

    def save(self) -> None:
        """Write the record now (a deferred record only after :meth:`commit`)."""
        if self.committed:
            write_json_atomic(self.path, dict(self))

    def commit(self) -> None:
        """From now on the record is written (the command has passed its checks)."""
        self.committed = True
        self.save()


@contextlib.contextmanager
def run_record(path: str | Path, *, defer: bool = False, **fields: Any) -> Iterator[RunRecord]:
    """Write the record as running, yield it, then mark it completed, failed (with the error)
    or interrupted, and the seconds taken; the original error is never hidden by a write error.

    ``defer``: write nothing until the task calls ``record.commit()`` (see the module doc).
    """
    record = RunRecord(Path(path), **fields)
    t0 = time.time()
    if not defer:
        record.commit()
    try:
        yield record
        record["status"] = "completed"
    except (KeyboardInterrupt, SystemExit, Terminated) as e:  # Ctrl-C, SIGTERM, pre-emption
        record.update(status="interrupted", error=f"{type(e).__name__} {e}".strip()[:500])
        raise
    except BaseException as e:
        record.update(status="failed", error=" ".join(str(e).split())[:500] or type(e).__name__)
        raise
    finally:
        record["seconds"] = round(time.time() - t0, 1)
        try:
            record.save()
        except OSError as e:
            log.error("could not write %s: %s", path, e)
