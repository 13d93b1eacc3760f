"""Train an MRL / MRL-E / FF model: ``python train.py [overrides]`` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from mrl.cli import one_line_errors, register_resolvers
from mrl.tasks.train import train

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@one_line_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric") or "", None)  # for sweepers


if __name__ == "__main__":
    main()
