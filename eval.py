"""Evaluate a trained model at every prefix: ``python eval.py ckpt_path=<ckpt> [eval=[knn]]``.

The same as ``mrl-eval`` and ``python -m mrl eval`` (:func:`mrl.cli.eval_main`).
"""

from mrl.cli import eval_main

if __name__ == "__main__":
    eval_main()
