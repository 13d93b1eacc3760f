"""Train an MRL / MRL-E / FF model: ``python train.py [overrides]`` (see conf/train.yaml).

The same as ``mrl-train`` and ``python -m mrl train`` (:func:`mrl.cli.train_main`).
"""

from mrl.cli import train_main

if __name__ == "__main__":
    train_main()
