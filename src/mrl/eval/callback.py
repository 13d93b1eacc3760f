"""The training callback: the evaluators of ``eval=[...]`` at the end of training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from mrl.eval.pipeline import evaluate_run
from mrl.eval.registry import Evaluator, build_evaluators, check_sizes


class MRLEvalCallback(pl.Callback):
    """Embed every split once and run the evaluators (see :mod:`mrl.eval.pipeline`).

    Args:
        evaluators: ``{name: Evaluator}`` or config nodes with ``_target_``; the training
            config passes the same ``eval`` nodes (``conf/eval/<name>.yaml``) as ``eval.py``.
        every_n_epochs: also evaluate after every N-th epoch (``None``: only at the end).
        extra_dims: untrained prefixes to evaluate too.
        out_dir: where ``metrics.json``, the embeddings and plots go (default: the
            trainer's ``default_root_dir``, i.e. the run dir).
    """

    def __init__(
        self,
        evaluators: Mapping[str, Evaluator | Any],
        every_n_epochs: int | None = None,
        extra_dims: Sequence[int] = (),
        out_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.evaluators = build_evaluators(evaluators)
        self.every_n_epochs = every_n_epochs
        self.extra_dims = list(extra_dims)
        self.out_dir = out_dir
        self.last_metrics: dict[str, float] = {}

    def _run(self, trainer: pl.Trainer, module, tag: str) -> None:
        """Every rank embeds its shard; rank 0 evaluates and writes (see the pipeline)."""
        if trainer.sanity_checking:
            return
        metrics = evaluate_run(
            module,
            trainer.datamodule,
            self.evaluators,
            Path(self.out_dir or trainer.default_root_dir),
            meta={"tag": tag},
            extra_dims=self.extra_dims,
            device=module.device,
            use_cache=False,
            loggers=trainer.loggers,
            title=f"{module.method} {tag}",
        )
        if trainer.is_global_zero:
            self.last_metrics = metrics
        trainer.strategy.barrier("mrl-eval")

    def check_data(self, dm: Any, module: Any) -> None:
        """Refuse, before training, what the data sizes rule out (e.g. k=100 on 16 images)."""
        from mrl.eval.pipeline import embed_width

        if hasattr(dm, "split_sizes") and hasattr(module, "dims"):
            sizes, classes = dm.split_sizes(), int(getattr(dm, "num_classes", 0) or 0)
            check_sizes(self.evaluators, sizes, classes, embed_width(module))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        n = self.every_n_epochs
        if n and (trainer.current_epoch + 1) % n == 0 and not trainer.fast_dev_run:
            if trainer.current_epoch + 1 < (trainer.max_epochs or 0):
                self._run(trainer, pl_module, f"epoch {trainer.current_epoch + 1}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module, "final")
