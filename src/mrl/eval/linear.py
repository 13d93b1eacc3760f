"""Top-1 of a model's trained heads, per trained prefix (raw, unnormalised slices)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mrl.eval.registry import EvalData, Evaluator


def head_logits(module, z: np.ndarray, batch: int = 8192) -> dict[int, np.ndarray]:
    """Per-prefix logits of ``module.net.head`` for embeddings ``z``, in batches."""
    head = module.net.head
    dev = next(head.parameters()).device
    parts: dict[int, list[np.ndarray]] = {m: [] for m in head.dims}
    with torch.no_grad():
        for i in range(0, len(z), batch):
            zb = torch.from_numpy(np.ascontiguousarray(z[i : i + batch])).float().to(dev)
            for m, v in head(zb).items():
                parts[m].append(v.float().cpu().numpy())
    return {m: np.concatenate(v) for m, v in parts.items()}


class Linear(Evaluator):
    """``linear/top1@d{m}``: accuracy of the trained head of prefix m on the test split
    (only trained prefixes among the evaluated dims). With ``eval.precisions`` also
    ``linear/top1@d{m}/{float16,int8}``: the heads on quantized raw test slices."""

    main_metric = "linear/top1"
    needs_heads = True
    raw_precisions = ("float16", "int8")

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        return {
            f"linear/top1@d{m}": float(np.mean(lg.argmax(1) == data.test_y))
            for m, lg in data.logits("test").items()
            if m in dims
        }
