"""Inference and export costs (issue 16): ``mrl.load(...).encode`` throughput, ``mrl-export``
time and size, and onnxruntime vs PyTorch latency.

Usage (from the repository root)::

    python -m scripts.bench.encode_export [--reps 5] [--batch 256] [--threads 2] [--out FILE]

Model: the default Fashion-MNIST model of ``train.py`` (MRL, timm resnet18 with the
small-input stem at 28 px, 1 channel, dims 8..512, 10 classes) with *random-init* weights
(seed 0): the FLOPs, and so the speed, are those of a trained one. Inputs: the first
``--batch`` real Fashion-MNIST test images as uint8 (so ``encode`` includes the
preprocessing, as a user's call does).

Rows (medians of ``--reps`` interleaved repetitions, after one warm-up):

* ``encode_dim8`` / ``encode_full``: images/s of ``encode(images, dim=8 | None,
  batch_size=batch, device="cpu")`` (float32; slice + L2 normalisation included);
* ``export``: seconds of :func:`mrl.export.write_export` (safetensors + ONNX export and its
  onnxruntime check + config + card) and the folder's size (MB), one run;
* ``onnx_vs_torch``: seconds for one preprocessed batch through onnxruntime (CPU execution
  provider, ``--threads`` intra-op threads) and through PyTorch (``net.embed`` under
  ``inference_mode``), and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import interleaved, median, set_threads, spread


def build_encoder(seed: int = 0):
    """The default Fashion-MNIST MRL resnet18, random init, as a MatryoshkaEncoder."""
    import torch

    from mrl.data import FashionMNISTDataModule
    from mrl.data.base import follow_model_transforms
    from mrl.inference import MatryoshkaEncoder, _model_config, preprocessing_of
    from mrl.objectives.classification import MRLLitModule

    torch.manual_seed(seed)
    dm = FashionMNISTDataModule()
    hp = {
        "model": {"_target_": "mrl.models.Backbone", "name": "resnet18", "pretrained": False},
        "num_classes": dm.num_classes,
        "in_chans": dm.in_chans,
        "img_size": dm.img_size,
    }
    module = MRLLitModule(**hp).eval()
    follow_model_transforms(dm, module)
    config = _model_config(hp, module.net, preprocessing_of(dm))
    return MatryoshkaEncoder(module.net, config, source="random-init"), dm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.encode_export")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from mrl.export import write_export

    set_threads(args.threads)
    enc, dm = build_encoder()
    dm.setup("test")
    ds = dm.dataset("test")
    images = ds.images[ds.indices[: args.batch]]
    n = len(images)
    rows: list[dict] = []

    def enc_at(dim):
        return lambda: enc.encode(images, dim=dim, batch_size=args.batch, device="cpu")

    cpu: dict[str, list[float]] = {}
    times = interleaved({"dim8": enc_at(8), "full": enc_at(None)}, reps=args.reps, cpu_times=cpu)
    for key, name in (("dim8", "encode_dim8"), ("full", "encode_full")):
        s = median(times[key])
        rows.append(
            {
                "name": name,
                "images_per_s": round(n / s, 1),
                "seconds_per_batch": round(s, 4),
                "spread": round(spread(times[key]), 3),
                "cpu_seconds_per_batch": round(median(cpu[key]), 4),
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "export"
        t = time.perf_counter()
        write_export(enc, dest, onnx=True)
        seconds = time.perf_counter() - t
        sizes = {f.name: f.stat().st_size for f in dest.iterdir()}
        config = json.loads((dest / "config.json").read_text())
        rows.append(
            {
                "name": "export",
                "seconds": round(seconds, 2),
                "onnx_export_seconds": config["onnx"]["export_seconds"],
                "folder_mb": round(sum(sizes.values()) / 1e6, 2),
                "files_mb": {k: round(v / 1e6, 3) for k, v in sorted(sizes.items())},
                "onnx_max_abs_diff": config["onnx"]["max_abs_diff"],
            }
        )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(dest / "model.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        x = enc.preprocess(images)
        x_np = x.numpy()
        net = enc.net.cpu().eval()

        def run_torch():
            with torch.inference_mode():
                return net.embed(x)

        lat = interleaved(
            {
                "onnxruntime": lambda: session.run(None, {"images": x_np}),
                "torch": run_torch,
            },
            reps=args.reps,
        )
        diff = float(np.abs(session.run(None, {"images": x_np})[0] - run_torch().numpy()).max())
        o, p = median(lat["onnxruntime"]), median(lat["torch"])
        rows.append(
            {
                "name": "onnx_vs_torch",
                "batch": n,
                "onnxruntime_s": round(o, 4),
                "torch_s": round(p, 4),
                "onnxruntime_over_torch": round(o / p, 3),
                "max_abs_diff": diff,
            }
        )

    info = {
        "model": "MRL resnet18 (small-input stem), Fashion-MNIST 1x28x28, random init",
        "threads": args.threads,
        "reps": args.reps,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(info))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "info": info}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
