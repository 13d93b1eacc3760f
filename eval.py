"""Evaluate a trained model at every prefix: ``python eval.py ckpt_path=<ckpt> [eval=[knn]]``."""

import hydra
from omegaconf import DictConfig

from mrl.cli import one_line_errors, register_resolvers
from mrl.tasks.evaluate import eval_task

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@one_line_errors
def main(cfg: DictConfig) -> None:
    eval_task(cfg)


if __name__ == "__main__":
    main()
