"""Checkpoint files that survive a kill, and that load without running code.

Why a custom writer: Lightning's ``TorchCheckpointIO`` saves through
``lightning_fabric.utilities.cloud_io._atomic_save``, which serialises into memory and then
writes inside an fsspec transaction. For a local path fsspec's ``LocalFileOpener`` writes the
bytes to ``tempfile.mkstemp()`` (the *system* temp folder, usually ``/tmp``) and commits with
``shutil.move``. That is a rename only when ``/tmp`` and the run dir share a filesystem; on a
cluster (``/tmp`` local, run dirs on NFS / Lustre / another mount) ``shutil.move`` falls back
to ``copy2``, which truncates ``last.ckpt`` and rewrites it in place: a kill during that copy
leaves the previous checkpoint unreadable. Nothing is fsynced either, so a power loss after the
rename can leave an empty file, and a kill leaves the temp file behind in ``/tmp``.

:class:`AtomicCheckpointIO` (set by ``mrl.tasks.train`` as the Trainer's checkpoint plugin) writes
``<dir>/.<name>.<random>.tmp`` next to the target, fsyncs it, ``os.replace``-s it over the
target (atomic within one folder) and fsyncs the folder. A kill at any moment leaves either the
old or the new complete file, plus at most one stray ``.tmp`` (removed by
:func:`remove_stale_temp_files` when the run resumes).

:func:`read_checkpoint`, the one checkpoint reader, reads a checkpoint with ``torch.load(weights_only=True)``: a file
carrying pickled code (a crafted checkpoint) or a corrupt file is refused with a one-line
:class:`~mrl.core.errors.MRLError` before anything else reads it.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mrl.core.errors import MRLError
from mrl.run.files import umask_mode

TMP_SUFFIX = ".tmp"


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to a temp file in the target's folder, fsync, then ``os.replace``."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        umask_mode(fd)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:  # torch's writer reports a full disk as "unexpected pos"
        Path(tmp).unlink(missing_ok=True)
        cause = e.__context__ or e.__cause__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files a killed writer left in ``folder``; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: local checkpoints are written atomically (see module doc).

    Remote URLs (``s3://`` ...) keep Lightning's own writer. Loading is Lightning's, with
    ``weights_only=True`` unless the caller asks otherwise.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"weights_only": True if weights_only is None else weights_only}
        if map_location is not None:
            kwargs["map_location"] = map_location
        return super().load_checkpoint(path, **kwargs)


def _reason(e: Exception) -> str:
    """The informative part of a ``torch.load`` failure (not its generic preamble)."""
    text = str(e).strip()
    boiler = ("Weights only load failed", "Check the documentation", "Please file an issue")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    useful = [p for p in paragraphs if not p.startswith(boiler) and "Please file an issue" not in p]
    reason = useful[0] if useful else (text.splitlines() or [type(e).__name__])[0]
    return " ".join(reason.split())[:200] or type(e).__name__


def read_checkpoint(path: str | os.PathLike, label: str | None = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU; refusal/corruption -> one-line MRLError.

    ``label`` starts the messages (default ``checkpoint <path>``), e.g. ``ckpt_path=<path>``.
    """
    path = Path(path).expanduser()
    label = label or f"checkpoint {path}"
    if not path.is_file():
        raise MRLError(f"{label} is not a file; give a .ckpt written by train.py")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or unsafe (pickled code)
        raise MRLError(
            f"{label} cannot be loaded safely (torch.load weights_only=True: {_reason(e)}); "
            "the file is corrupt, truncated or carries pickled code: give a .ckpt written by "
            "train.py"
        ) from e
    if not isinstance(ckpt, dict):
        raise MRLError(
            f"{label} holds a {type(ckpt).__name__}, not a training checkpoint; give a .ckpt "
            "written by train.py"
        )
    return ckpt


def fit_progress(path: str | os.PathLike) -> tuple[int, int]:
    """``(global_step, epochs started)`` recorded in a Lightning checkpoint."""
    ckpt = read_checkpoint(path)
    try:
        epochs = int(ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]["processed"])
    except (KeyError, TypeError):
        epochs = int(ckpt.get("epoch", -1)) + 1
    return int(ckpt.get("global_step", 0)), epochs
