"""Pre-emption under submitit (SLURM, or its local executor): requeue at a safe point.

A scheduler warns a job with a signal (submitit: ``SIGUSR2``, or ``SUBMITIT_PREEMPT_SIGNAL``)
before it pre-empts or times it out; submitit's handler then pickles the job and requeues it
(``hydra.launcher.max_num_timeout`` times). Run directly, that handler exits wherever the
signal lands, e.g. inside a checkpoint write. :class:`PreemptionCheckpoint` defers it to the
end of the current training step, writes ``last.ckpt`` there (atomically), and only then lets
submitit requeue; the requeued job, launched with ``ckpt_path=auto``, resumes from that step.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


def in_submitit_job() -> bool:
    """True inside a job started by submitit or SLURM (the callback is inert without a
    Python-level handler for the signal, i.e. outside submitit)."""
    try:
        import submitit

        submitit.JobEnvironment()
    except (ImportError, RuntimeError):
        return False
    return True


def preempt_signal() -> signal.Signals:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class PreemptionCheckpoint(pl.Callback):
    """Defer the pre-emption signal to a step boundary, save ``last_ckpt``, then requeue."""

    def __init__(self, last_ckpt: str | Path) -> None:
        self.last_ckpt = str(last_ckpt)
        self._original: Any = None
        self._pending: tuple[int, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        sig = preempt_signal()
        original = signal.getsignal(sig)
        if stage == "fit" and callable(original):  # submitit's handler is installed
            self._original = original
            signal.signal(sig, self._defer)

    def _defer(self, signum: int, frame: Any) -> None:
        log.warning("signal %s: checkpointing at the end of this step, then requeueing", signum)
        self._pending = (signum, frame)

    def _restore(self) -> None:
        if self._original is not None:
            signal.signal(preempt_signal(), self._original)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._pending is None:
            return
        trainer.save_checkpoint(self.last_ckpt)
        print(f"pre-empted at step {trainer.global_step}: wrote {self.last_ckpt}; requeueing")
        self._restore()
        pending, self._pending = self._pending, None
        self._original(*pending)  # submitit: pickle the job, requeue, exit

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
        if self._pending is not None:  # arrived after the last step: requeue now
            pending, self._pending = self._pending, None
            self._original(*pending)
