"""``mrl-export <run dir or .ckpt> [--out DIR] [--no-onnx] [--push-to-hub REPO_ID]``.

Writes a self-contained folder that :func:`mrl.load` reads back without the run dir::

    model.safetensors   the network's state dict (backbone + nested heads; no pickle)
    config.json         architecture (timm name, in_chans, img_size, small-input stem, ...),
                        nesting dims, method (MRL / MRL-E / FF-k), num_classes, the
                        preprocessing (size, mean, std, channels; see mrl.inference) and the
                        ONNX check
    model.onnx          preprocessed images (N, C, H, W) -> full-width embedding (N, width),
                        dynamic batch axis; checked against PyTorch with onnxruntime on a
                        batch of another size (max abs diff <= 1e-4, recorded in config.json)
    README.md           a model card with the run's per-prefix results (metrics.json)

The ONNX graph takes *preprocessed* images (``MatryoshkaEncoder.preprocess``) and returns the
unnormalised full embedding: slice its first m columns and L2-normalise them yourself.

The folder is written under a temporary name and renamed at the end, so it is either complete
or absent; an existing non-empty ``--out`` is refused (nothing a user made is overwritten).
Default ``--out``: ``<run dir>/export``. ``--push-to-hub`` uploads the folder with
``huggingface_hub.HfApi().upload_folder`` (creating the model repo if needed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrl.core.errors import MRLError
from mrl.inference import (
    CARD,
    CONFIG,
    ONNX,
    WEIGHTS,
    MatryoshkaEncoder,
    checkpoint_of,
    is_export_folder,
    load,
)

ONNX_TOLERANCE = 1e-4
EXPORT_BATCH = 2  # traced batch size; the check runs another size (the axis is dynamic)
CHECK_BATCH = 5


class EmbedGraph(nn.Module):
    """``images -> net.embed(images)``: the exported ONNX graph (full width, unnormalised)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.embed(images)


def export_onnx(encoder: MatryoshkaEncoder, path: Path, seed: int = 0) -> dict[str, Any]:
    """Write ``path`` (dynamic batch axis) and check it against PyTorch with onnxruntime on a
    batch of :data:`CHECK_BATCH` preprocessed random images; returns the check's record.
    A difference above :data:`ONNX_TOLERANCE` is an :class:`MRLError`."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MRLError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install "
            "'matryoshka-rl[export]' (or pass --no-onnx)"
        ) from e
    p = encoder.preprocessing
    c, s = int(p["channels"]), int(p["size"])
    graph = EmbedGraph(encoder.net.cpu().eval()).eval()
    gen = torch.Generator().manual_seed(seed)
    traced = encoder.preprocess(torch.rand(EXPORT_BATCH, c, s, s, generator=gen))
    t = time.time()
    try:
        program = torch.onnx.export(
            graph,
            (traced,),
            dynamo=True,
            input_names=["images"],
            output_names=["embedding"],
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MRLError(f"ONNX export failed ({type(e).__name__}: {first}); pass --no-onnx") from e
    seconds = time.time() - t
    x = encoder.preprocess(torch.rand(CHECK_BATCH, c, s, s, generator=gen))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode():
        want = graph(x).float().numpy()
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= ONNX_TOLERANCE:
        raise MRLError(
            f"ONNX check failed: onnxruntime output {got.shape} differs from PyTorch's "
            f"{want.shape} by {diff:.3g} (> {ONNX_TOLERANCE:g}); pass --no-onnx"
        )
    return {
        "file": ONNX,
        "input": "images",
        "input_shape": ["batch", c, s, s],
        "output": "embedding",
        "output_shape": ["batch", encoder.width],
        "exported_batch": EXPORT_BATCH,
        "checked_batch": CHECK_BATCH,
        "max_abs_diff": diff,
        "tolerance": ONNX_TOLERANCE,
        "onnxruntime": ort.__version__,
        "export_seconds": round(seconds, 2),
    }


def _results_table(metrics: dict[str, Any], dims: Sequence[int], seed: int) -> str:
    """The per-prefix table (percent) of a run's ``metrics.json``, as markdown."""
    from mrl.results import to_markdown

    names = sorted(
        {k.split("@d", 1)[0] for k in metrics if "@d" in k and not k.startswith("train/")}
    )
    chosen = [n for n in names if not n.startswith("val/")] or names
    rows = [
        {"method": n, "dim": int(m), "top1": 100 * float(metrics[f"{n}@d{m}"]), "seed": seed}
        for n in chosen
        for m in dims
        if isinstance(metrics.get(f"{n}@d{m}"), (int, float))
    ]
    if not rows:
        return "No per-prefix results were found in the run's metrics.json.\n"
    text = to_markdown(rows, "Results", "Per-prefix metrics of the run (%).")
    return text.replace("# Results", "## Results", 1)


def model_card(encoder: MatryoshkaEncoder, run_dir: Path | None) -> str:
    """``README.md`` of an export: what the model is, how to use it, its per-prefix results."""
    from mrl.run.layout import RunDir
    from mrl.run.record import read_record

    cfg = encoder.config
    model, prep = cfg["model"], cfg["preprocessing"]
    record = read_record(RunDir(run_dir).record) if run_dir else {}
    metrics = read_record(RunDir(run_dir).metrics) if run_dir else {}
    seed = int(record.get("seed", 0) or 0)
    data = record.get("data", "?")
    lines = [
        "---",
        "library_name: matryoshka-rl",
        "tags: [matryoshka-representation-learning, image-embeddings, onnx, safetensors]",
        "---",
        "",
        f"# {cfg['method']} {model.get('name')} ({data})",
        "",
        f"A Matryoshka Representation Learning model: every prefix of its {encoder.width}-d "
        f"embedding is a representation; trained prefixes: {cfg['dims']} "
        f"({cfg['num_classes']} classes, seed {seed}).",
        "",
        "## Use",
        "",
        "```python",
        "import mrl",
        "",
        "enc = mrl.load('<this folder>')",
        "z = enc.encode(images, dim=64)  # raw images (uint8 / [0,1] / PIL) -> (N, 64), L2-normalised",
        "```",
        "",
        f"Preprocessing (done by `encode`): {prep['pipeline']} pipeline, {prep['channels']} "
        f"channel(s), {prep['size']} px, mean {prep['mean']}, std {prep['std']}.",
        "",
        f"`{ONNX}` (when present) maps preprocessed images `(N, {prep['channels']}, "
        f"{prep['size']}, {prep['size']})` to the full unnormalised embedding `(N, "
        f"{encoder.width})`; slice the first m columns, then L2-normalise them.",
        "",
        _results_table(metrics, cfg["dims"], seed).rstrip(),
        "",
    ]
    return "\n".join(lines)


def _default_out(source: Path, ckpt: Path) -> Path:
    from mrl.run.layout import run_dir_of

    run = run_dir_of(ckpt)
    return (run.path if run else ckpt.parent) / "export"


def write_export(
    encoder: MatryoshkaEncoder,
    dest: str | Path,
    onnx: bool = True,
    run_dir: Path | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``encoder``'s export folder at ``dest`` (module doc): under a fresh temporary
    name next to it, renamed at the end; an existing non-empty ``dest`` is refused."""
    from safetensors.torch import save_file

    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise MRLError(
            f"--out {dest} exists and is not an empty folder; choose a new folder or remove it"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as e:
        raise MRLError(
            f"cannot write --out {dest}: {e.strerror or e}; give a writable folder"
        ) from e
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.net.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "mrl-export"})
        config = dict(encoder.config)
        config["source"] = dict(source or {})
        config["onnx"] = export_onnx(encoder, tmp / ONNX) if onnx else None
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CARD).write_text(model_card(encoder, run_dir))
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        if dest.exists():
            dest.rmdir()  # empty (checked above); fails if something appeared meanwhile
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def export(
    source: str | Path,
    out: str | Path | None = None,
    onnx: bool = True,
    push_to_hub: str | None = None,
) -> Path:
    """Write the export folder of a run dir or checkpoint (module doc); returns its path."""
    from mrl.eval.cache import file_fingerprint
    from mrl.run.layout import run_dir_of

    src = Path(str(source)).expanduser()
    if not src.exists():
        raise MRLError(f"{src} does not exist; give a run dir or a .ckpt written by train.py")
    if is_export_folder(src):
        raise MRLError(f"{src} is already an export folder; give a run dir or a .ckpt")
    ckpt = checkpoint_of(src)
    dest = Path(out).expanduser() if out else _default_out(src, ckpt)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):  # before the slow part
        raise MRLError(
            f"--out {dest} exists and is not an empty folder; choose a new folder or remove it"
        )
    t = time.time()
    encoder = load(ckpt)
    run = run_dir_of(ckpt)
    # provenance without local paths (the folder may be published)
    source_info = {"checkpoint": ckpt.name, "fingerprint": file_fingerprint(ckpt)}
    write_export(encoder, dest, onnx=onnx, run_dir=run.path if run else None, source=source_info)
    size = sum(f.stat().st_size for f in dest.iterdir())
    onnx_info = json.loads((dest / CONFIG).read_text())["onnx"]
    print(
        f"exported {encoder.method} ({encoder.config['model'].get('name')}, dims "
        f"{encoder.dims}) to {dest}: {size / 1e6:.1f} MB in {time.time() - t:.1f} s"
        + (f"; ONNX vs PyTorch max abs diff {onnx_info['max_abs_diff']:.2e}" if onnx_info else "")
    )
    if push_to_hub:
        push(dest, push_to_hub)
    return dest


def push(folder: Path, repo_id: str) -> str:
    """Upload ``folder`` to the Hugging Face model repo ``repo_id`` (created if missing)."""
    try:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as e:  # noqa: BLE001 - offline, auth, bad repo id: one line
        msg = " ".join(str(e).split())[:300] or type(e).__name__
        raise MRLError(
            f"--push-to-hub {repo_id} failed ({type(e).__name__}: {msg}); the export is "
            f"complete in {folder}: check the network and `huggingface-cli login`, then retry "
            "with huggingface_hub's upload_folder"
        ) from e
    url = str(getattr(info, "commit_url", "") or f"https://huggingface.co/{repo_id}")
    print(f"pushed {folder} to {url}")
    return url


def main(argv: Sequence[str] | None = None) -> None:
    """``mrl-export`` / ``python -m mrl export``: bad input -> ``error: <line>``, exit 2."""
    parser = argparse.ArgumentParser(
        prog="mrl-export",
        description="Export a trained MRL run: safetensors + config.json + ONNX + model card.",
    )
    parser.add_argument("source", help="a run dir or a .ckpt written by train.py")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/export)")
    parser.add_argument("--no-onnx", action="store_true", help="skip model.onnx and its check")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload to HF")
    args = parser.parse_args(argv)
    try:
        export(args.source, args.out, onnx=not args.no_onnx, push_to_hub=args.push_to_hub)
    except MRLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
