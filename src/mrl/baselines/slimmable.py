"""Evaluation of the Slim. Net baseline at representation sizes.

Mapping widths to representation sizes: :func:`slimmable_top1` reports a size ``k`` only
when a width produces exactly ``k`` features (exact size match only); other sizes are
``None`` (missing, like the paper's '-', never interpolated). ``truncate=True`` is an
opt-in alternative reading ("classifying from the first k dims"): size ``k``
is read from the smallest width whose representation has at least ``k`` dims, using its
first ``k`` features and the first ``k`` input columns of that width's classifier (what a
slimmable linear layer computes at input width ``k``); those numbers are real
measurements of an untrained-for configuration and are labelled as such by the option.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from mrl.core.errors import MRLError
from mrl.core.validate import as_sizes
from mrl.models.slimmable import SlimmableResNet
from mrl.objectives.slimmable import SlimmableLitModule


# --------------------------------------------------------------------------- evaluation
def slimmable_top1(
    model: SlimmableResNet | SlimmableLitModule,
    dataloader: Iterable,
    dims: Sequence[int] | None = None,
    truncate: bool = False,
) -> dict[int, float | None]:
    """Top-1 accuracy of a slimmable network at the representation sizes its widths give.

    Args:
        model: a :class:`SlimmableResNet` or :class:`SlimmableLitModule`.
        dataloader: yields ``(images, labels)`` batches.
        dims: sizes to report; None = the sizes the widths produce.
        truncate: False (default): only exact size matches; a size no width produces is
            ``None``. True: such a size ``k`` reads the first ``k`` features of the smallest
            width with more than ``k``, classified by that width's classifier restricted to
            its first ``k`` input columns (see the module doc); sizes above the full width
            stay ``None``.

    Returns:
        ``{k: accuracy in [0, 1] or None}`` in increasing ``k``. Each width uses its own BN
        running statistics (eval mode); the model's mode and width are restored afterwards.
    """
    net = model.net if isinstance(model, SlimmableLitModule) else model
    if not isinstance(net, SlimmableResNet):
        raise MRLError(
            f"model of type {type(model).__name__} is not a SlimmableResNet or SlimmableLitModule"
        )
    sizes = net.representation_sizes()
    by_size = {size: mult for mult, size in sizes.items()}
    dims = sorted(by_size) if dims is None else as_sizes(dims, "dims")
    plan: dict[float, list[tuple[int, bool]]] = {}  # mult -> [(k, exact)]
    for k in dims:
        if k in by_size:
            plan.setdefault(by_size[k], []).append((k, True))
        elif truncate and k < net.num_features:
            mult = min(m for m, s in sizes.items() if s > k)
            plan.setdefault(mult, []).append((k, False))
    correct = {k: 0 for ks in plan.values() for k, _ in ks}
    total = 0
    was_training, old_mult = net.training, net.width_mult
    device = next(net.parameters()).device
    net.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                x, y = batch[0].to(device), batch[1].to(device)
                total += len(y)
                for mult, ks in plan.items():
                    z = net.set_width(mult).embed(x)
                    for k, exact in ks:
                        if exact:
                            logits = net.fc(z)
                        else:
                            logits = F.linear(z[:, :k], net.fc.weight[:, :k], net.fc.bias)
                        correct[k] += int((logits.argmax(1) == y).sum())
    finally:
        net.set_width(old_mult)
        net.train(was_training)
    if total == 0:
        raise MRLError("slimmable_top1: the dataloader yielded no batches")
    return {k: (correct[k] / total if k in correct else None) for k in dims}
