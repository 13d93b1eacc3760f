"""Resuming a killed run: ``python train.py <same overrides> hydra.run.dir=<run dir> ckpt_path=last``.

* :class:`LastCheckpoint` keeps ``<run dir>/checkpoints/last.ckpt`` fresh: every
  ``every_n_train_steps`` optimizer steps (mid-epoch), at every epoch end (after validation)
  and at the step where a SIGTERM arrived (the run then stops: exit status 143).
  The best-by-``val/top1`` checkpoint is a separate ``ModelCheckpoint`` with ``save_last: false``,
  so the two never write the same file. Checkpoints whose weights are not finite are not
  written: ``last.ckpt`` always holds the last good state.
* The checkpoint carries the global RNG states (torch, CUDA, numpy, Python) and restores them on
  resume, so a run killed right after an epoch and resumed continues the same random stream
  (shuffling, augmentation, dropout): its final metrics equal an uninterrupted run's on CPU.
  Resuming mid-epoch restarts that epoch's data order and runs the epoch's remaining number of
  steps (Lightning's behaviour for map-style datasets).
* :func:`check_resume_checkpoint` reads the file with ``weights_only=True`` (a crafted pickle or
  a corrupt file is refused before Lightning opens it) and refuses a checkpoint of another
  architecture with a one-line message naming the difference.
* :func:`wandb_run_id` persists the W&B run id in ``<run dir>/wandb_id.txt``, so the resumed
  process continues the same W&B run (``resume="allow"``) instead of starting a second one.
* Lightning's ``CSVLogger`` deletes ``metrics.csv`` when it starts in a non-empty folder:
  :func:`stash_csv_logs` moves the rows logged before the resume point to
  ``metrics.part-<k>.csv`` first, and :func:`merge_csv_logs` puts them back in front of the new
  rows when the run completes, so ``csv/metrics.csv`` holds the whole history once.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError
from mrl.core.validate import integer
from mrl.run.checkpoints import read_checkpoint
from mrl.run.files import write_text_atomic
from mrl.run.layout import LAST, RunDir

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- RNG states
def capture_rng_states() -> dict[str, Any]:
    """Global RNG states as tensors / plain Python values (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_states` (parts that are absent are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"].cpu())
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in states:
        version, state, gauss = states["python"]
        random.setstate((version, tuple(state), gauss))


# ----------------------------------------------------------------------------- last.ckpt
def _all_finite(module: torch.nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt`` every ``every_n_train_steps`` steps and at every epoch end.

    Args:
        dirpath: the checkpoint folder (``<run dir>/checkpoints``).
        every_n_train_steps: optimizer steps between mid-epoch saves; 0 or None: epoch ends only.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = 200) -> None:
        n = 0 if every_n_train_steps is None else every_n_train_steps
        integer(
            n,
            "callbacks.last_checkpoint.every_n_train_steps",
            min=0,
            hint="(0 or null: save at epoch ends only)",
        )
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=0,
            save_last=False,
            every_n_train_steps=n or None,
            save_on_train_epoch_end=True,
        )
        self.every_n_steps = n
        self._saved_at: int | None = None

    @property
    def state_key(self) -> str:  # stable across every_n_train_steps changes on resume
        return "mrl.LastCheckpoint"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng_states": capture_rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("rng_states"):
            restore_rng_states(state_dict["rng_states"])

    @property
    def path(self) -> Path:
        return Path(str(self.dirpath)) / LAST

    def _save_last(self, trainer: pl.Trainer, pl_module: pl.LightningModule, force: bool) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not force and self._saved_at == trainer.global_step:
            return
        if not _all_finite(pl_module):
            log.warning(
                "weights are not finite at step %d: %s keeps the previous state",
                trainer.global_step,
                self.path,
            )
            return
        self.last_model_path = str(self.path)
        self._save_checkpoint(trainer, str(self.path))
        self._saved_at = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if getattr(trainer, "received_sigterm", False):  # stop at this step, resumable
            self._save_last(trainer, pl_module, force=False)
            raise SIGTERMException
        n = self.every_n_steps
        if n and trainer.global_step > 0 and trainer.global_step % n == 0:
            self._save_last(trainer, pl_module, force=False)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save_last(trainer, pl_module, force=True)  # after validation: a complete epoch

    def on_validation_end(self, trainer, pl_module) -> None:
        pass

    def on_exception(self, trainer, pl_module, exception) -> None:
        pass  # never overwrite the last good checkpoint with a failing state

    def on_train_end(self, trainer, pl_module) -> None:
        pass


# ----------------------------------------------------------------------------- resume checks
def _model_name(hp: dict[str, Any]) -> Any:
    model = hp.get("model")
    return model.get("name") if isinstance(model, dict) else model


#: Hyper-parameters that change how a model trains but not what it is or which metrics it logs:
#: they may differ on resume. Every other hyper-parameter must match.
TRAINING_ONLY = frozenset(
    {"optim", "label_smoothing", "weights", "channels_last", "widths_per_step"}
)
TRAINING_ONLY_MODEL = frozenset({"pretrained", "drop_path_rate", "checkpoint_path"})
_CONFIG_NAMES = {
    "dims": "mrl.dims",
    "efficient": "mrl.efficient",
    "ff_dim": "mrl.ff_dim",
    "num_classes": "data classes",
    "in_chans": "data channels",
    "img_size": "image size",
}


def _dims(spec: Any, width: int | None) -> Any:
    """The nesting list a ``dims`` spec means (``auto``, ``[8,16,...,512]``), else the spec."""
    try:
        return parse_dims(spec, width)
    except MRLError:
        return spec


def _model_fields(
    hp: dict[str, Any], mine: dict[str, Any], width: int | None = None
) -> list[tuple[str, Any, Any]]:
    """``(config key, checkpoint value, current value)`` of every field that decides the model
    or its metric keys (the nesting dims, the architecture, the data shape); ``width``: the
    embedding width that ``dims: auto`` stands for."""
    out = []
    for key in sorted(set(hp) | set(mine)):
        if key in TRAINING_ONLY:
            continue
        a, b = hp.get(key), mine.get(key)
        if key == "model" and isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if sub not in TRAINING_ONLY_MODEL:
                    out.append((f"model.{sub}", a.get(sub), b.get(sub)))
            continue
        if key == "efficient":
            a, b = bool(a), bool(b)
        if key == "dims":
            a, b = _dims(a, width), _dims(b, width)
        out.append((_CONFIG_NAMES.get(key, key), a, b))
    return out


def check_resume_checkpoint(path: str | Path, module: pl.LightningModule) -> dict[str, Any]:
    """Refuse an unsafe, corrupt or foreign checkpoint before Lightning loads it.

    Returns ``{"path", "epoch", "global_step"}`` of the checkpoint.
    """
    what = f"ckpt_path={path}"
    ckpt = read_checkpoint(path, label=what)
    missing = [k for k in ("state_dict", "hyper_parameters", "loops") if k not in ckpt]
    if missing:
        raise MRLError(
            f"{what} is not a train.py training checkpoint (no {', '.join(missing)}); give "
            "<run dir>/checkpoints/last.ckpt or another .ckpt written by train.py"
        )
    hp, mine = dict(ckpt["hyper_parameters"]), dict(module.hparams)
    diffs = [
        f"{key} {a!r} in the checkpoint vs {b!r} now"
        for key, a, b in _model_fields(hp, mine, getattr(module, "embed_width", None))
        if a != b
    ]
    theirs, own = ckpt["state_dict"], module.state_dict()
    shape = next(
        (k for k in own if k not in theirs or tuple(theirs[k].shape) != tuple(own[k].shape)),
        None,
    ) or next((k for k in theirs if k not in own), None)
    if not diffs and shape is not None:
        a = tuple(theirs[shape].shape) if shape in theirs else "absent"
        b = tuple(own[shape].shape) if shape in own else "absent"
        diffs.append(f"weights {shape} {a} in the checkpoint vs {b} now")
    if diffs:
        raise MRLError(
            f"{what} was written by another config ({diffs[0]}); resume with the overrides that "
            "wrote it, or drop ckpt_path to start a new run"
        )
    return {
        "path": str(path),
        "epoch": int(ckpt.get("epoch", 0)),
        "global_step": int(ckpt.get("global_step", 0)),
    }


# ----------------------------------------------------------------------------- W&B run id
def wandb_run_id(run_dir: str | Path, configured: str | None = None, write: bool = True) -> str:
    """The W&B run id of this run dir: ``configured``, else ``wandb_id.txt``, else a new one.

    The id is written to ``<run dir>/wandb_id.txt`` (unless ``write=False``) so that a resumed
    process logs into the same W&B run (offline runs: the same ``offline-run-*-<id>`` suffix,
    merged by ``wandb sync``).
    """
    f = RunDir(run_dir).wandb_id
    old = f.read_text().strip() if f.is_file() else ""
    wid = str(configured) if configured else (old or secrets.token_hex(4))
    if write and wid != old:
        write_text_atomic(f, wid + "\n")
    return wid


# ----------------------------------------------------------------------------- CSV history
def _csv_loggers(loggers: list) -> list:
    return [lg for lg in loggers if type(lg).__name__ == "CSVLogger"]


def _csv_files(loggers: list) -> list[Path]:
    return [Path(lg.log_dir) / "metrics.csv" for lg in _csv_loggers(loggers)]


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _parts(folder: Path) -> list[Path]:
    found = folder.glob("metrics.part-*.csv")
    return sorted(found, key=lambda p: int(p.stem.rsplit("-", 1)[-1]))


def stash_csv_logs(loggers: list, before_step: int) -> None:
    """Keep the CSV rows of steps < ``before_step`` (the resume point) in a part file."""
    for f in _csv_files(loggers):
        if not f.is_file():
            continue
        header, rows = _read_csv(f)

        def step(row: dict[str, str]) -> float:
            try:
                return float(row.get("step") or 0)
            except ValueError:
                return 0.0

        keep = [r for r in rows if step(r) < before_step]
        _write_csv(f.with_name(f"metrics.part-{len(_parts(f.parent))}.csv"), header, keep)
        f.unlink()


def merge_csv_logs(loggers: list) -> None:
    """Prepend the stashed part files to ``metrics.csv`` and remove them."""
    for f in _csv_files(loggers):
        parts = _parts(f.parent)
        if not parts:
            continue
        header: list[str] = []
        rows: list[dict[str, str]] = []
        for p in [*parts, f] if f.is_file() else parts:
            h, r = _read_csv(p)
            header += [k for k in h if k not in header]
            rows += r
        _write_csv(f, sorted(header), rows)
        for p in parts:
            p.unlink()


def adopt_csv_header(loggers: list) -> None:
    """Make each CSV logger know the columns already in its ``metrics.csv``.

    Under ``strategy=ddp_spawn`` the fit logs from a child process, so the parent's logger
    would rewrite the file with only the test columns and fail; this lets it append instead.
    """
    for lg, f in zip(_csv_loggers(loggers), _csv_files(loggers), strict=True):
        if f.is_file():
            header, _ = _read_csv(f)
            keys = lg.experiment.metrics_keys
            keys.extend(k for k in header if k not in keys)
            keys.sort()
