"""GPU benchmark (``python -m scripts.bench --gpu``, ``bash scripts/gpu_bench.sh``).

* Training throughput of ResNet-50 at 224 px, 1000 classes, synthetic data on the GPU,
  bf16 autocast, channels_last, SGD: images/s of MRL and MRL-E over the plain model (one
  head at full width), eager and with ``torch.compile`` (model + loss compiled together).
  Variants interleaved round by round; median of the rounds.
* FAISS on the GPU, when an importable ``faiss`` has GPU support: exact top-10 search of
  Matryoshka-like synthetic vectors, GPU index against the CPU index (all cores).

Needs only torch, timm, pytorch-lightning, torchmetrics and ``src`` on PYTHONPATH (no
FAISS, Hydra or the package installed). ``budget_s`` bounds the whole run: the compiled
part and FAISS are skipped, with a note, when too little time is left.
"""

from __future__ import annotations

import time
from typing import Any

from .common import GB, Synthetic, interleaved, median, row

VARIANTS = {"ff": {"ff_dim": "max"}, "mrl": {}, "mrl_e": {"efficient": True}}


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _train_rows(batch: int, steps: int, reps: int, compile_: bool) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    from mrl.objectives.classification import MRLLitModule

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device=dev, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev, generator=g)

    class LossOf(nn.Module):  # model + Matryoshka loss, so torch.compile sees both
        def __init__(self, module):
            super().__init__()
            self.net, self.loss_fn = module.net, module.loss_fn

        def forward(self, x, y):
            return self.loss_fn(self.net(x), y)[0]

    fns, compile_s, dims = {}, {}, {}
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        module = MRLLitModule(
            model={"name": "resnet50"}, num_classes=1000, in_chans=3, img_size=224, **kw
        )
        dims[name] = module.dims
        model = LossOf(module).to(dev).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        fwd = torch.compile(model) if compile_ else model

        def one(fwd=fwd, opt=opt):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = time.perf_counter()
        for _ in range(3):  # compile (if any), cuDNN autotuning, allocator warm-up
            one()
        torch.cuda.synchronize()
        compile_s[name] = time.perf_counter() - t

        def run(one=one):
            for _ in range(steps):
                one()

        fns[name] = run
    times = interleaved(fns, reps, warmup=1, sync=torch.cuda.synchronize)
    ips = {k: batch * steps / median(v) for k, v in times.items()}
    tag = "compiled" if compile_ else "eager"
    gpu = torch.cuda.get_device_name()
    rows = []
    for v in ("mrl", "mrl_e"):
        rows.append(
            row(
                f"gpu/resnet50_224_bf16_cl_{tag}/{v}_vs_ff_throughput",
                ips[v] / ips["ff"],
                ">=",
                0.97,
                images_per_s=ips[v],
                images_per_s_ff=ips["ff"],
                warmup_seconds=compile_s[v],
                warmup_seconds_ff=compile_s["ff"],
                dims=dims[v],
                note=(
                    f"{gpu}: resnet50 224 px, 1000 classes, batch {batch}, bf16 autocast, "
                    f"channels_last, SGD, synthetic data; {tag}; images/s over {steps} steps x "
                    f"{reps} interleaved rounds, median"
                ),
            )
        )
    return rows


def _faiss_rows(n: int, d: int, n_queries: int, reps: int) -> list[dict[str, Any]]:
    try:
        import faiss
    except ImportError as e:
        return [_skip("gpu/faiss_exact_gpu_vs_cpu_speedup", f"faiss is not importable ({e})")]
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return [
            _skip(
                "gpu/faiss_exact_gpu_vs_cpu_speedup",
                f"faiss {faiss.__version__} has no GPU support (faiss-gpu not installed)",
            )
        ]
    from mrl.core.nesting import truncate

    synth = Synthetic(d, 1000, seed=0)
    xb = truncate(synth.chunk(n, 1)[0], d, normalize=True)
    q = truncate(synth.chunk(n_queries, 2)[0], d, normalize=True)
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
    gpu.search(q[:10], 10)
    times = interleaved(
        {"cpu": lambda: cpu.search(q, 10), "gpu": lambda: gpu.search(q, 10)}, reps, warmup=1
    )
    t_cpu, t_gpu = median(times["cpu"]), median(times["gpu"])
    return [
        row(
            "gpu/faiss_exact_gpu_vs_cpu_speedup",
            t_cpu / t_gpu,
            ">=",
            10.0,
            seconds_gpu=t_gpu,
            seconds_cpu=t_cpu,
            note=(
                f"exact top-10 inner-product search, {n:,} x {d} ({n * d * 4 / GB:.1f} GB), "
                f"{n_queries} queries: GpuIndexFlatIP vs IndexFlatIP on "
                f"{faiss.omp_get_max_threads()} CPU threads; {reps} reps, median"
            ),
        )
    ]


def _skip(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "value": None, "target": "-", "met": False, "skipped": why}


def gpu_rows(
    batch: int,
    steps: int,
    reps: int,
    faiss_n: int,
    faiss_queries: int,
    budget_s: float = 450.0,
    do_compile: bool = True,
) -> list[dict[str, Any]]:
    """Every GPU row; [] (with a message) when no GPU is visible."""
    if not gpu_available():
        print("gpu benchmark: no CUDA GPU visible to torch; nothing to run")
        return []
    start = time.perf_counter()
    rows = _train_rows(batch, steps, reps, compile_=False)
    eager_s = time.perf_counter() - start
    if not do_compile:
        rows.append(_skip("gpu/resnet50_224_bf16_cl_compiled", "compile disabled"))
    elif budget_s - eager_s < 4 * eager_s + 150:
        rows.append(
            _skip(
                "gpu/resnet50_224_bf16_cl_compiled",
                f"skipped: {budget_s - eager_s:.0f}s of the {budget_s:.0f}s budget left",
            )
        )
    else:
        try:
            rows += _train_rows(batch, steps, reps, compile_=True)
        except Exception as e:  # noqa: BLE001 - report, keep the eager rows
            rows.append(_skip("gpu/resnet50_224_bf16_cl_compiled", f"{type(e).__name__}: {e}"))
    if budget_s - (time.perf_counter() - start) < 60:
        rows.append(_skip("gpu/faiss_exact_gpu_vs_cpu_speedup", "skipped: time budget spent"))
    else:
        rows += _faiss_rows(faiss_n, 2048, faiss_queries, reps)
    return rows
