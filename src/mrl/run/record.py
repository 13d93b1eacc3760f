"""``run.json``, the run record: written when a task starts, updated, finalised on exit.

Fields: ``task``, ``status`` (``running`` -> ``completed`` | ``failed`` | ``interrupted``: Ctrl-C or a
scheduler's pre-emption signal), ``run_dir``,
``seconds`` and, on failure, ``error`` (one line, at most 500 characters); tasks add their own
(``method``, ``dims``, ``seed``, ...). Every write is atomic.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

    def save(self) -> None:
        write_json_atomic(self.path, dict(self))


@contextlib.contextmanager
def run_record(path: str | Path, **fields: Any) -> Iterator[RunRecord]:
    """Write ``run.json`` as running, yield it, then mark it completed or failed (with the
    error) and the seconds taken; the original error is never hidden by a write error."""
    record = RunRecord(Path(path), **fields)
    t0 = time.time()
    record.save()
    try:
        yield record
        record["status"] = "completed"
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or a scheduler's pre-emption
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
