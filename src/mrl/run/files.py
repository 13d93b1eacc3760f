"""Result files: atomic writes and the ``metrics.json`` merge.

* Every result file is written to a temporary file in the same folder, then renamed, so a
  kill never leaves a half-written ``metrics.json``.
* ``metrics.json`` is a flat JSON object from metric name to number (fractions in [0, 1]).
  :func:`update_metrics_json` is a read-merge-write under an exclusive lock on a sidecar
  ``.metrics.json.lock`` (``fcntl.flock``), so two processes adding results at once (a training
  run and an evaluation, two evaluators) both keep their keys.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mrl.core.errors import MRLError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]


def umask_mode(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would:
    0666 minus the process umask, so teammates on a shared file system can read results."""
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` via a temporary file in the same folder + fsync + rename (the file gets
    the umask's mode, as with ``open``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask_mode(fd)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON via a temporary file + rename (never a half-written file)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive inter-process lock on the sidecar ``.<name>.lock`` of ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def update_metrics_json(path: str | Path, metrics: Mapping[str, Any]) -> dict[str, float]:
    """Merge numeric ``metrics`` into the flat JSON object at ``path`` (created if absent).

    Read-modify-write under :func:`file_lock`: concurrent writers lose nothing. Non-finite
    values are dropped.
    """
    path = Path(path)
    new: dict[str, float] = {}
    for k, v in metrics.items():
        v = float(v.item() if hasattr(v, "item") else v)
        if math.isfinite(v):
            new[str(k)] = v
    with file_lock(path):
        current: dict[str, float] = {}
        if path.exists():
            try:
                current = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise MRLError(
                    f"{path} is not valid JSON ({e}); move it away so results can be written"
                ) from e
            if not isinstance(current, dict):
                raise MRLError(f"{path} holds a JSON {type(current).__name__}, not an object")
        current.update(new)
        write_json_atomic(path, current)
    return current
