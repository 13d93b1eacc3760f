"""Training-side benchmarks: step overhead of MRL / MRL-E, one-pass heads, input pipeline.

* ``train_overhead``: one SGD step (zero_grad, forward, Matryoshka loss, backward, step) of
  MRL, MRL-E and the plain model (``ff_dim`` = width: one head at full width), same backbone,
  batch and data, built through :class:`mrl.objectives.classification.MRLLitModule`; rounds interleaved.
* ``heads``: :meth:`MRLHead.forward` (MRL-E, all prefixes in one pass) against
  :meth:`MRLHead.forward_naive` (one matmul per prefix); outputs asserted equal.
* ``pipeline`` (run in its own process): the default FashionMNISTDataModule's training
  loader against the default training step, plus that process's peak RSS.
"""

from __future__ import annotations

from typing import Any

from .common import GB, interleaved, median, peak_rss_bytes, row, set_threads, spread

VARIANTS = {"ff": {"ff_dim": "max"}, "mrl": {}, "mrl_e": {"efficient": True}}
TARGETS = {"mrl": 1.05, "mrl_e": 1.02}


def build_variants(model: str, num_classes: int, in_chans: int, img_size: int):
    """The three modules (same seed, hence the same backbone initialisation)."""
    import torch

    from mrl.objectives.classification import MRLLitModule

    out = {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        out[name] = MRLLitModule(
            model={"name": model},
            num_classes=num_classes,
            in_chans=in_chans,
            img_size=img_size,
            **kw,
        ).train()
    return out


def sgd_for(module, lr: float = 0.1):
    """SGD as ``configure_optimizers`` builds it (momentum 0.9, no decay on norm/bias)."""
    import torch

    cfg = module.optim_cfg
    decay = [p for p in module.parameters() if p.ndim > 1]
    no_decay = [p for p in module.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"])


def make_step(module, opt, x, y):
    """One training step: forward -> Matryoshka loss -> backward -> SGD step."""

    def step():
        opt.zero_grad(set_to_none=True)
        total, _ = module.loss_fn(module(x), y)
        total.backward()
        opt.step()
        return total

    return step


def fashion_mnist_batch(batch: int, seed: int = 0):
    """One augmented training batch of the real Fashion-MNIST, or None when it is absent."""
    import torch

    from mrl.core.errors import MRLError
    from mrl.data import FashionMNISTDataModule

    try:
        dm = FashionMNISTDataModule(batch_size=batch, download=False)
        dm.setup()
    except MRLError:
        return None
    torch.manual_seed(seed)
    return next(iter(dm.train_dataloader()))


def train_overhead(
    tag: str,
    model: str,
    img_size: int,
    in_chans: int,
    num_classes: int,
    batch: int,
    reps: int,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    """Rows ``train_step/{tag}/{mrl,mrl_e}_vs_ff``: seconds per step, MRL over plain."""
    import torch

    set_threads(2)
    data = "synthetic N(0, 1) images, random labels"
    xy = None
    if in_chans == 1 and img_size == 28 and num_classes == 10:
        xy = fashion_mnist_batch(batch)
        if xy is not None:
            data = "a real Fashion-MNIST training batch (augmented)"
    if xy is None:
        g = torch.Generator().manual_seed(0)
        xy = (
            torch.randn(batch, in_chans, img_size, img_size, generator=g),
            torch.randint(0, num_classes, (batch,), generator=g),
        )
    x, y = xy
    mods = build_variants(model, num_classes, in_chans, img_size)
    steps = {k: make_step(m, sgd_for(m), x, y) for k, m in mods.items()}
    cpu: dict[str, list[float]] = {}
    times = interleaved(steps, reps=reps, warmup=warmup, cpu_times=cpu)
    t_ff = median(times["ff"])
    rows = []
    for v in ("mrl", "mrl_e"):
        t = median(times[v])
        paired = [a / b for a, b in zip(times[v], times["ff"], strict=True)]
        rows.append(
            row(
                f"train_step/{tag}/{v}_vs_ff",
                t / t_ff,
                "<=",
                TARGETS[v],
                interval_of=(times[v], times["ff"]),
                seconds=t,
                seconds_ff=t_ff,
                times=times[v],
                times_ff=times["ff"],
                paired_ratio_median=median(paired),
                cpu_time_ratio=median(cpu[v]) / median(cpu["ff"]),
                spread=max(spread(times[v]), spread(times["ff"])),
                dims=mods[v].dims,
                ff_dim=mods["ff"].dims[-1],
                note=(
                    f"{model} {in_chans}x{img_size}x{img_size}, batch {batch}, {num_classes} "
                    f"classes, SGD step; {reps} interleaved reps (+{warmup} warm-up), median; "
                    f"data: {data}; {torch.get_num_threads()} threads"
                ),
            )
        )
    return rows


def heads(n: int, width: int, num_classes: int, reps: int) -> list[dict[str, Any]]:
    """Rows ``heads/mrl_e_one_pass_{fwd,fwd_bwd}_speedup``: naive seconds / one-pass seconds."""
    import torch
    import torch.nn.functional as F

    from mrl.core.dims import auto_dims
    from mrl.models.heads import MRLHead

    set_threads(2)
    torch.manual_seed(0)
    dims = auto_dims(width)
    head = MRLHead(dims, num_classes, efficient=True)
    z = torch.randn(n, width)
    y = torch.randint(0, num_classes, (n,))

    with torch.no_grad():
        a, b = head(z), head.forward_naive(z)
    max_diff = max(float((a[m] - b[m]).abs().max()) for m in dims)
    for m in dims:  # the benchmark refuses to report a speed-up of a wrong result
        assert torch.allclose(a[m], b[m], rtol=1e-5, atol=1e-5), (m, max_diff)
    del a, b

    def fwd(f):
        def run():
            with torch.no_grad():
                return f(z)

        return run

    def fwd_bwd(f):
        zg = z.clone().requires_grad_(True)

        def run():
            head.zero_grad(set_to_none=True)
            zg.grad = None
            loss = sum(F.cross_entropy(v, y) for v in f(zg).values())
            loss.backward()

        return run

    rows = []
    for kind, wrap in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        times = interleaved(
            {"one_pass": wrap(head.forward), "naive": wrap(head.forward_naive)}, reps, 1
        )
        t1, t0 = median(times["one_pass"]), median(times["naive"])
        rows.append(
            row(
                f"heads/mrl_e_one_pass_{kind}_speedup",
                t0 / t1,
                ">=",
                1.0,
                interval_of=(times["naive"], times["one_pass"]),
                seconds=t1,
                seconds_naive=t0,
                max_abs_diff=max_diff,
                note=(
                    f"MRLHead(efficient) {n}x{width} embeddings, {num_classes} classes, dims "
                    f"{dims[0]}..{dims[-1]} ({len(dims)}); {'forward' if kind == 'fwd' else 'forward + CE sum + backward'}; "
                    f"outputs equal within 1e-5 (max |diff| {max_diff:.2e}); {reps} reps, median"
                ),
            )
        )
    return rows


def pipeline(batch: int, reps: int, loader_batches: int) -> list[dict[str, Any]]:
    """Default loader batches/s over default (MRL resnet18) training steps/s; peak RSS.

    Meant to run in a fresh process (``python -m scripts.bench --worker pipeline``): the RSS row is then the
    peak of a process holding the data, the model, the optimiser and one step's activations.
    """
    import torch

    from mrl.data import FashionMNISTDataModule
    from mrl.objectives.classification import MRLLitModule

    set_threads(2)
    torch.manual_seed(0)
    dm = FashionMNISTDataModule(batch_size=batch)  # defaults: augment on, num_workers 0
    dm.setup()
    module = MRLLitModule(model={"name": "resnet18"}, num_classes=10, in_chans=1, img_size=28)
    module.train()
    opt = sgd_for(module)
    state = {"it": iter(dm.train_dataloader())}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(dm.train_dataloader())
            return next(state["it"])

    def load():  # several batches per round: one batch takes only milliseconds
        for _ in range(loader_batches):
            next_batch()

    x, y = next_batch()
    step = make_step(module, opt, x, y)
    times = interleaved({"loader": load, "step": step}, reps=reps, warmup=1)
    t_batch = median(times["loader"]) / loader_batches
    t_step = median(times["step"])
    rss = peak_rss_bytes()
    note = (
        f"FashionMNISTDataModule(batch_size={batch}) defaults (augment on, num_workers=0) vs "
        f"MRL resnet18 (dims {module.dims[0]}..{module.dims[-1]}) SGD step on its batches; "
        f"{reps} interleaved reps, median"
    )
    return [
        row(
            "input_pipeline/loader_vs_train_step",
            (1 / t_batch) / (1 / t_step),
            ">=",
            2.0,
            loader_batches_per_s=1 / t_batch,
            train_steps_per_s=1 / t_step,
            seconds_per_batch=t_batch,
            seconds_per_step=t_step,
            note=note,
        ),
        row(
            "peak_rss/train_default_gb",
            rss / GB,
            "<=",
            4.0,
            unit="GB",
            note=(
                f"peak RSS (VmHWM) of a fresh process running {reps + 1} default training "
                f"steps (batch {batch}) and the loader: data + model + SGD state + activations"
            ),
        ),
    ]
