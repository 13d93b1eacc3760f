"""``mrl.run.reuse.stale_reason``: an evaluation run is stale once the checkpoint it read is
rewritten (its fine-tune re-run), and stands while the checkpoint is older than its metrics."""

from __future__ import annotations

import os

from mrl.run.reuse import stale_reason


def test_evaluation_of_a_rewritten_checkpoint_is_stale(tmp_path):
    ckpt = tmp_path / "ft" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights")
    run = tmp_path / "ft_knn"
    (run / ".hydra").mkdir(parents=True)
    args = [f"ckpt_path={ckpt}", "eval=[knn]"]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\n" for a in args))
    (run / "metrics.json").write_text("{}")
    os.utime(ckpt, (1_000, 1_000))
    os.utime(run / "metrics.json", (2_000, 2_000))
    assert stale_reason("eval", args, run) is None  # evaluated after the checkpoint was made

    os.utime(ckpt, (3_000, 3_000))  # the fine-tune ran again
    assert stale_reason("eval", args, run) == (
        f"was evaluated before its checkpoint {ckpt} was rewritten"
    )
    assert "other overrides" in stale_reason("eval", [f"ckpt_path={ckpt}", "eval=[probe]"], run)
