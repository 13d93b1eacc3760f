"""A command's hold on its run dir: lock first, check everything, write only after that.

Every ``train.py`` / ``eval.py`` run follows the same order (:class:`RunDirClaim`):

1. **lock** the run dir (``fcntl.flock`` on the folder itself, so no file is created and a
   killed process never leaves a stale lock). A second process in the same run dir stops with
   one line; the lock is released when the task ends or the process dies.
2. **check**: the task reads the previous record and validates the command (config values,
   ``ckpt_path``, a resume checkpoint against the model, the data) without writing anything.
   A refused command therefore leaves an existing run dir byte-identical.
3. **commit** (:meth:`RunDirClaim.commit`): the command's Hydra files are written, then the task
   writes its record and results. Hydra itself writes nothing into the run dir
   (``hydra.output_subdir: null`` and a delayed log file).

Where the Hydra files go: ``.hydra/{config,hydra,overrides}.yaml`` belong to the command that
created the run (the training run, for ``eval.py`` and for resumes); every later command in the
same dir writes its own under ``.hydra/<task>-<n>/`` (``n`` = 1, 2, ...), so evaluating into a
training run dir, or resuming it, never replaces the training's config. A fresh start in a run
dir that holds no checkpoint (e.g. after a failed run) becomes the creator: the old files move
to ``.hydra/replaced-<n>/``.

Records: ``run.json`` is the record of the run dir's own task; a different task in the same dir
(``eval.py`` into a training run dir) keeps its record in ``<task>.json`` (e.g. ``eval.json``).

Multi-process runs: only the launching process (rank 0) claims the run dir; ranks started by
Lightning's script launcher (``LOCAL_RANK`` > 0) neither lock nor write.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from pathlib import Path
from typing import Any

from mrl.core.errors import MRLError
from mrl.run.files import write_text_atomic
from mrl.run.layout import RunDir
from mrl.run.record import read_record

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


def is_child_rank() -> bool:
    """True in a process started by Lightning's script launcher for rank > 0."""
    for var in ("LOCAL_RANK", "NODE_RANK"):
        if os.environ.get(var, "0") not in ("", "0"):
            return True
    return False


class RunDirClaim:
    """Lock ``path`` for this process; :meth:`commit` writes the command's Hydra files.

    Use as a context manager (the lock is released on exit). ``previous`` is the run dir's
    record before this command (``{}`` for a new dir), ``fresh`` tells whether the dir held
    nothing of an earlier command.
    """

    def __init__(self, path: str | Path, task: str) -> None:
        self.run = RunDir(path)
        self.task = task
        self._fd: int | None = None
        self.child = is_child_rank()
        self.committed = False

    # ------------------------------------------------------------------ lock
    def __enter__(self) -> RunDirClaim:
        self.run.path.mkdir(parents=True, exist_ok=True)
        if not self.child and fcntl is not None:
            fd = os.open(self.run.path, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise MRLError(
                    f"run dir {self.run.path} is in use by another process (a train.py or "
                    "eval.py still running there); wait for it to finish or choose another "
                    "hydra.run.dir"
                ) from None
            except OSError:  # a filesystem without flock: run unlocked
                os.close(fd)
                fd = -1
            self._fd = fd if fd >= 0 else None
        self.previous = read_record(self.run.record)
        self.fresh = not self.previous and not self.run.hydra_config.exists()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    # ------------------------------------------------------------------ records
    @property
    def record_path(self) -> Path:
        """``run.json``, or ``<task>.json`` when the dir belongs to another task."""
        owner = self.previous.get("task")
        if owner in (None, self.task):
            return self.run.record
        return self.run.path / f"{self.task}.json"

    # ------------------------------------------------------------------ commit
    def commit(self, cfg: Any, *, creator: bool | None = None) -> Path | None:
        """Write this command's Hydra files (see the module docstring); returns their folder.

        ``cfg``: the task's config, as the task received it. ``creator``: this command starts
        the run afresh (default: the dir is new).
        """
        release_log_files()
        if self.committed or self.child:
            return None
        self.committed = True
        files = _hydra_files(cfg)
        if files is None:  # not under Hydra (called from Python): nothing to record
            return None
        top = self.run.hydra_config.parent
        creator = self.fresh if creator is None else creator
        if top.joinpath("config.yaml").exists():
            if creator and self.task == "train":
                _move_top_files(top, _next_dir(top, "replaced"))
                dest = top
            else:
                dest = _next_dir(top, self.task)
        else:
            dest = top
        for name, text in files.items():
            write_text_atomic(dest / name, text)
        return dest


def _next_dir(top: Path, stem: str) -> Path:
    taken = [
        int(m.group(1))
        for p in top.glob(f"{stem}-*")
        if (m := re.fullmatch(rf"{re.escape(stem)}-(\d+)", p.name))
    ]
    return top / f"{stem}-{max(taken, default=0) + 1}"


def _move_top_files(top: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in HYDRA_FILES:
        if (top / name).exists():
            os.replace(top / name, dest / name)


_ABSENT = "absent"


def config_changes(made: dict, now: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """``"<dotted key> (<made> then, <now> now)"`` for every leaf where a run dir's recorded
    config ``made`` and the config ``now`` differ (both unresolved containers, as in
    ``.hydra/config.yaml``), in key order; top-level keys in ``ignore`` are skipped."""
    made, now = ({k: v for k, v in c.items() if k not in ignore} for c in (made, now))
    return _changes(made, now, "")


def _changes(made: Any, now: Any, key: str) -> list[str]:
    if isinstance(made, dict) and isinstance(now, dict):
        keys = sorted(set(made) | set(now), key=str)
        return [
            c
            for k in keys
            for c in _changes(made.get(k, _ABSENT), now.get(k, _ABSENT), f"{key}{k}.")
        ]
    if made == now:
        return []
    show = [v if v is _ABSENT else repr(v) for v in (made, now)]
    return [f"{key[:-1]} ({show[0]} then, {show[1]} now)"]


def recorded_config(run_dir: str | Path) -> dict | None:
    """The config a run dir was created with (``.hydra/config.yaml``), or None without one."""
    import yaml

    try:
        made = yaml.safe_load(RunDir(run_dir).hydra_config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return made if isinstance(made, dict) else None


def _hydra_files(cfg: Any) -> dict[str, str] | None:
    """The three files Hydra would write (``config.yaml`` = the task config, unresolved)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.instance().cfg  # a config holding only the ``hydra`` node
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


# ----------------------------------------------------------------------------- log file
_DEFERRED: weakref.WeakSet[DeferredFileHandler] = weakref.WeakSet()


class DeferredFileHandler(logging.FileHandler):
    """The run's ``<task>.log``: records are held in memory until the command commits
    (:func:`release_log_files`), so a refused command does not touch an existing run dir."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = None, **_: Any):
        super().__init__(filename, mode, encoding, delay=True)
        self._held: list[logging.LogRecord] | None = []
        _DEFERRED.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self._held is not None:
            self._held.append(record)
        else:
            super().emit(record)

    def open_file(self) -> None:
        """Write the held records and log straight to the file from now on."""
        held, self._held = self._held, None
        for record in held or []:
            super().emit(record)


def release_log_files() -> None:
    """Write the held log records and log straight to the files from now on."""
    for handler in list(_DEFERRED):
        handler.open_file()
