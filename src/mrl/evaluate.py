"""Evaluate a trained model at every prefix from *one* embedding pass per split.

Flow: checkpoint -> model -> ``embeddings.npz`` (full width, float32, not normalised; train,
val and test splits with integer labels; a sidecar ``embeddings.json`` names the checkpoint
and transform) -> every evaluator slices its prefixes from the cached arrays.

Evaluators (``eval`` config group; any subset, e.g. ``eval=[knn,retrieval]``):
  linear (trained heads' top-1), probe (linear probe on frozen slices), knn (1-NN and
  weighted kNN), retrieval (P/mAP/R@k), fewshot (nearest class mean), adaptive_cls
  (confidence cascade over prefixes) and adaptive_ret (shortlist + rerank vs exact).
Conventions of each metric: see :mod:`mrl.eval`. Database = train, queries = test;
the adaptive cascade calibrates its thresholds on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl.dims import auto_dims
from mrl.errors import MRLError
from mrl.module import MRLLitModule
from mrl.runs import prefix_table, update_metrics_json, write_json_atomic

log = logging.getLogger(__name__)

EVALUATORS = ("linear", "probe", "knn", "retrieval", "fewshot", "adaptive_cls", "adaptive_ret")
SPLITS = ("train", "val", "test")
CACHE_NAME = "embeddings.npz"


# ----------------------------------------------------------------------------- checkpoints
def load_module(ckpt_path: str | Path, map_location: str = "cpu") -> MRLLitModule:
    """Rebuild an :class:`MRLLitModule` from a checkpoint without executing pickled code.

    The file is read with ``torch.load(weights_only=True)``: a checkpoint carrying arbitrary
    Python objects (a crafted pickle) is refused with an :class:`MRLError`.
    """
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise MRLError(f"ckpt_path={str(ckpt_path)!r} is not a file; give a .ckpt from train.py")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or unsafe file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MRLError(f"checkpoint {path} cannot be loaded safely (weights_only): {first}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise MRLError(f"checkpoint {path} is not an MRL training checkpoint (no hyper-parameters)")
    module = MRLLitModule(**ckpt["hyper_parameters"])
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise MRLError(
            f"checkpoint {path} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return module.eval()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's first and last MiB plus its size (fast for big checkpoints)."""
    path = Path(path)
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- embeddings
@torch.no_grad()
def embed_loader(module: MRLLitModule, loader, device: torch.device) -> tuple[np.ndarray, ...]:
    """Full-width embeddings ``z`` (float32, not normalised) and labels for one loader."""
    was_training = module.training
    module.eval().to(device)
    xs, ys = [], []
    for x, y in loader:
        xs.append(module.embed(x.to(device, non_blocking=True)).float().cpu())
        ys.append(y.cpu())
    module.train(was_training)
    if not xs:
        raise MRLError("a data split is empty: no embeddings to evaluate")
    return torch.cat(xs).numpy(), torch.cat(ys).numpy().astype(np.int64)


def compute_embeddings(module: MRLLitModule, dm: Any, device: str | torch.device = "cpu"):
    """One pass per split: ``{train,val,test}_{x,y}`` (val absent when the split is empty)."""
    device = torch.device(device)
    dm.setup("fit")
    dm.setup("test")
    out: dict[str, np.ndarray] = {}
    loaders = {"train": dm.train_eval_dataloader(), "test": dm.test_dataloader()}
    val = dm.val_dataloader()
    if val:
        loaders["val"] = val
    for split, loader in loaders.items():
        t = time.time()
        out[f"{split}_x"], out[f"{split}_y"] = embed_loader(module, loader, device)
        log.info("embedded %s: %s in %.1fs", split, out[f"{split}_x"].shape, time.time() - t)
    return out


def save_embeddings(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    """``embeddings.npz`` + sidecar ``embeddings.json`` (written atomically, npz first)."""
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    write_json_atomic(path.with_suffix(".json"), dict(meta))


def load_embeddings(path: str | Path, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read a cache written by :func:`save_embeddings` (``allow_pickle=False``).

    ``mmap=True`` memory-maps every array in place inside the (uncompressed) ``.npz``
    instead of reading it (copy-on-write maps: nothing is written back), so a
    million-vector cache costs no RAM up front and evaluators read it block by block.
    Compressed members (``np.savez_compressed``) cannot be mapped and are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"embeddings cache {path} does not exist; run eval.py with a ckpt_path")
    try:
        if mmap:
            arrays = _npz_memmap(path)
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
    except MRLError:
        raise
    except Exception as e:  # noqa: BLE001
        raise MRLError(f"embeddings cache {path} is unreadable: {e}") from e
    for k in ("train_x", "train_y", "test_x", "test_y"):
        if k not in arrays:
            raise MRLError(f"embeddings cache {path} lacks array {k!r}; it has {sorted(arrays)}")
    return arrays


def _npz_memmap(path: Path) -> dict[str, np.ndarray]:
    """``{name: np.memmap}`` of the uncompressed ``.npy`` members of an ``.npz`` file."""
    import struct
    import zipfile

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED:
                raise MRLError(
                    f"embeddings cache {path}: array {name!r} is compressed and cannot be "
                    "memory-mapped; save it with np.savez (uncompressed) or use mmap=False"
                )
            raw.seek(info.header_offset)
            local = raw.read(30)
            if local[:4] != b"PK\x03\x04":
                raise MRLError(f"embeddings cache {path}: bad zip entry for {name!r}")
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(raw)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(raw, max_header_size=100_000)
            if dtype.hasobject:
                raise MRLError(
                    f"embeddings cache {path}: array {name!r} holds Python objects; "
                    "refused (no pickles)"
                )
            out[name] = np.memmap(
                path,
                dtype=dtype,
                mode="c",
                offset=raw.tell(),
                shape=shape,
                order="F" if fortran else "C",
            )
    return out


def cached_embeddings(module, dm, cache: Path, meta: dict[str, Any], device, use_cache: bool):
    """Reuse ``cache`` when its sidecar matches ``meta`` (checkpoint + data), else recompute."""
    side = cache.with_suffix(".json")
    if use_cache and cache.is_file() and side.is_file():
        if json.loads(side.read_text()) == json.loads(json.dumps(meta)):
            log.info("reusing %s", cache)
            return load_embeddings(cache), True
    arrays = compute_embeddings(module, dm, device)
    save_embeddings(cache, arrays, meta)
    return arrays, False


# ----------------------------------------------------------------------------- evaluators
def head_logits(module: MRLLitModule, z: np.ndarray, batch: int = 8192) -> dict[int, np.ndarray]:
    """Per-prefix logits of the trained heads from cached embeddings (raw slices)."""
    head = module.net.head
    dev = next(head.parameters()).device
    parts: dict[int, list[np.ndarray]] = {m: [] for m in head.dims}
    with torch.no_grad():
        for i in range(0, len(z), batch):
            zb = torch.from_numpy(np.ascontiguousarray(z[i : i + batch])).float().to(dev)
            for m, v in head(zb).items():
                parts[m].append(v.float().cpu().numpy())
    return {m: np.concatenate(v) for m, v in parts.items()}


def eval_dims(
    trained: Sequence[int],
    extra: Sequence[int] | None,
    width: int,
    only: Sequence[int] | None = None,
) -> list[int]:
    """The prefixes to evaluate, sorted; each must lie in ``1..width``.

    ``only`` (``eval.py dims=[...]``) replaces the default, which is the trained dims plus
    the ``extra`` (untrained) prefixes; e.g. ``dims=[512]`` evaluates the largest alone.
    """

    def checked(ds: Sequence[int] | None, name: str) -> list[int]:
        ds = list(ds or [])
        bad = [
            d
            for d in ds
            if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= width
        ]
        if bad:
            raise MRLError(f"{name}={ds}: {bad} not integers in 1..{width} (the embedding width)")
        return [int(d) for d in ds]

    if only is not None:
        if not list(only):
            raise MRLError(f"dims=[]: give at least one prefix size in 1..{width}, or dims=null")
        return sorted(set(checked(only, "dims")))
    return sorted(set(trained) | set(checked(extra, "eval.extra_dims")))


def run_evaluators(
    arrays: Mapping[str, np.ndarray],
    evaluators: Mapping[str, Any],
    dims: Sequence[int],
    num_classes: int,
    module: MRLLitModule | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Run the configured evaluators on cached embeddings.

    Returns ``(metrics, seconds)``: a flat dict of fractions in [0, 1] (plus the adaptive
    evaluators' raw dims/seconds/ratios, named explicitly) and the time each evaluator took.
    """
    from mrl import eval as ev

    unknown = [e for e in evaluators if e not in EVALUATORS]
    if unknown:
        raise MRLError(f"eval={unknown}: unknown evaluator; choose from {list(EVALUATORS)}")
    if not evaluators:
        raise MRLError(f"no evaluator selected; choose from {list(EVALUATORS)}")
    tx, ty, qx, qy = arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]
    out: dict[str, float] = {}
    secs: dict[str, float] = {}

    def cfg(name: str) -> dict[str, Any]:
        return dict(evaluators.get(name) or {})

    t = time.time()
    if "linear" in evaluators:
        if module is None:
            raise MRLError("eval 'linear' needs the trained model (ckpt_path)")
        logits = head_logits(module, qx)
        for m, lg in logits.items():
            if m not in dims:
                continue
            out[f"linear/top1@d{m}"] = float(np.mean(lg.argmax(1) == qy))
        secs["linear"] = time.time() - t

    need = []
    if "knn" in evaluators:
        need.append(int(cfg("knn").get("k", 20)))
    if "retrieval" in evaluators:
        need.append(max(cfg("retrieval").get("ks", (10, 25, 50, 100))))
    if need:
        t = time.time()
        neighbors = ev.prefix_neighbors(tx, qx, dims, max(need))
        secs["search"] = time.time() - t
        if "knn" in evaluators:
            t = time.time()
            c = cfg("knn")
            out |= ev.knn_metrics(
                neighbors, ty, qy, num_classes, k=c.get("k", 20), T=c.get("T", 0.07)
            )
            secs["knn"] = time.time() - t
        if "retrieval" in evaluators:
            t = time.time()
            c = cfg("retrieval")
            out |= ev.retrieval_metrics(
                neighbors,
                ty,
                qy,
                tuple(c.get("ks", (10, 25, 50, 100))),
                c.get("recall_denominator", "class_count"),
            )
            secs["retrieval"] = time.time() - t
    if "fewshot" in evaluators:
        t = time.time()
        c = cfg("fewshot")
        heldout = c.pop("heldout_classes", None)
        c["shots"] = tuple(c.get("shots", (1, 5)))
        out |= ev.fewshot_metrics(tx, ty, qx, qy, dims, **c)
        if heldout:
            held = ev.fewshot_metrics(tx, ty, qx, qy, dims, **{**c, "classes": list(heldout)})
            out |= {k.replace("fewshot/", "fewshot_heldout/"): v for k, v in held.items()}
        secs["fewshot"] = time.time() - t
    if "probe" in evaluators:
        t = time.time()
        out |= ev.linear_probe(tx, ty, qx, qy, dims, num_classes, **cfg("probe"))
        secs["probe"] = time.time() - t
    if "adaptive_cls" in evaluators:
        if module is None or "val_x" not in arrays:
            raise MRLError("eval 'adaptive_cls' needs the trained heads and a validation split")
        t = time.time()
        out |= ev.adaptive_classification(
            head_logits(module, arrays["val_x"]),
            arrays["val_y"],
            head_logits(module, qx),
            qy,
            **cfg("adaptive_cls"),
        )
        secs["adaptive_cls"] = time.time() - t
    if "adaptive_ret" in evaluators:
        t = time.time()
        c = cfg("adaptive_ret")
        if c.get("d_rerank") in (None, "max"):
            c["d_rerank"] = int(tx.shape[1])
        if c.get("funnel"):
            c["funnel"] = [tuple(s) for s in c["funnel"]]
        out |= ev.adaptive_retrieval(tx, ty, qx, qy, **c)
        secs["adaptive_ret"] = time.time() - t
    return out, secs


# ----------------------------------------------------------------------------- reporting
MAIN_METRICS = {
    "linear": "linear/top1",
    "probe": "probe/top1",
    "knn": "knn/top1",
    "retrieval": "retrieval/mAP@10",
    "fewshot": None,  # first fewshot key found
}


def per_prefix_curves(metrics: Mapping[str, float], dims: Sequence[int]) -> dict[str, dict]:
    """``{metric name: {dim: value}}`` for each evaluator's main per-prefix metric."""
    curves: dict[str, dict[int, float]] = {}
    names = [v for v in MAIN_METRICS.values() if v]
    few = sorted({k.split("@d")[0] for k in metrics if k.startswith("fewshot/")})
    names += few[:2]
    for name in names:
        pts = {m: metrics[f"{name}@d{m}"] for m in dims if f"{name}@d{m}" in metrics}
        if pts:
            curves[name] = pts
    return curves


def plot_curves(curves: Mapping[str, Mapping[int, float]], path: Path, title: str) -> Path | None:
    """Metric (%) against prefix size, log2 x-axis, one line per evaluator; saved as PNG."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, pts in curves.items():
        xs = sorted(pts)
        ax.plot(xs, [100 * pts[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("representation size (dims)")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def log_to_wandb(loggers: Sequence[Any], metrics: Mapping[str, float], curves, dims) -> None:
    """Per-prefix table and one line plot (metric vs dim, a line per evaluator) to W&B."""
    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        run = lg.experiment
        cols = ["dim", *curves]
        table = wandb.Table(
            columns=cols, data=[[m, *[curves[c].get(m) for c in curves]] for m in dims]
        )
        run.log({"eval/per_prefix": table})
        if curves:
            xs = list(dims)
            run.log(
                {
                    "eval/metric_vs_dim": wandb.plot.line_series(
                        xs=xs,
                        ys=[[curves[c].get(m, float("nan")) for m in xs] for c in curves],
                        keys=list(curves),
                        title="metric vs representation size",
                        xname="dim",
                    )
                }
            )
        run.summary.update(dict(metrics))


# ----------------------------------------------------------------------------- the task
def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec not in ("cpu", "cuda") and not str(spec).startswith("cuda:"):
        raise MRLError(f"device={spec!r}: use auto, cpu or cuda")
    return torch.device(spec)


def _training_data_cfg(ckpt: Path):
    """The ``data`` node of the training run that wrote ``ckpt`` (``<run>/.hydra``)."""
    from omegaconf import OmegaConf

    for parent in (ckpt.parent, *ckpt.parents):
        cfg_file = parent / ".hydra" / "config.yaml"
        if cfg_file.is_file():
            train_cfg = OmegaConf.load(cfg_file)
            OmegaConf.set_struct(train_cfg, False)
            data = OmegaConf.to_container(train_cfg.data, resolve=True)
            return data, parent
        if parent == parent.parent:
            break
    return None, None


def match_data(module: MRLLitModule, dm: Any) -> None:
    """Check that ``dm`` fits the model (classes, channels) and give it the model's transform.

    The transform is the backbone's timm data config at the data's own image size.
    """
    if int(dm.num_classes) != module.hparams.num_classes or int(dm.in_chans) != (
        module.hparams.in_chans
    ):
        raise MRLError(
            f"checkpoint expects {module.hparams.num_classes} classes / "
            f"{module.hparams.in_chans} channels but the data {getattr(dm, 'name', '')!r} has "
            f"{dm.num_classes} / {dm.in_chans}; evaluate on the data it was trained on"
        )
    if hasattr(dm, "set_data_config"):
        data_cfg = module.net.backbone.data_config()
        data_cfg["input_size"] = (int(dm.in_chans), int(dm.img_size), int(dm.img_size))
        dm.set_data_config(data_cfg)


def evaluate_run(
    module: MRLLitModule,
    dm: Any,
    evaluators: Mapping[str, Any],
    out_dir: Path,
    *,
    meta: Mapping[str, Any] | None = None,
    extra_dims: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    use_cache: bool = True,
    plots: bool = True,
    loggers: Sequence[Any] = (),
    title: str = "",
) -> dict[str, float]:
    """Embed once, run every evaluator, write ``metrics.json`` + PNG plot, log to W&B.

    The per-prefix evaluators run at ``dims`` when given, else at the model's trained dims
    plus ``extra_dims`` (:func:`eval_dims`).
    """
    match_data(module, dm)
    meta = {**(meta or {}), "data": repr(dm), "transform": str(getattr(dm, "data_config", ""))}
    t0 = time.time()
    arrays, reused = cached_embeddings(module, dm, out_dir / CACHE_NAME, meta, device, use_cache)
    t_embed = time.time() - t0
    dims = eval_dims(module.dims, extra_dims, arrays["train_x"].shape[1], dims)
    metrics, secs = run_evaluators(arrays, evaluators, dims, int(dm.num_classes), module)
    final = update_metrics_json(out_dir / "metrics.json", metrics)
    timing = {
        "embed": round(t_embed, 2),
        "embeddings_reused": reused,
        **{k: round(v, 2) for k, v in secs.items()},
    }
    report(final, metrics, dims, out_dir, timing, title, plots, loggers)
    return final


def report(
    final: Mapping[str, float],
    metrics: Mapping[str, float],
    dims: Sequence[int],
    out_dir: Path,
    timing: Mapping[str, Any],
    title: str,
    plots: bool = True,
    loggers: Sequence[Any] = (),
) -> None:
    """Timing file, PNG plot, W&B tables/plots and the printed per-prefix table."""
    write_json_atomic(out_dir / "eval_timing.json", dict(timing))
    curves = per_prefix_curves(final, dims)
    if plots:
        plot_curves(curves, out_dir / "plots" / "metric_vs_dim.png", title)
    log_to_wandb(loggers, metrics, curves, dims)
    print(f"\n{title}: per-prefix metrics (%)\n{prefix_table(final, dims, list(curves))}")
    for k in sorted(final):
        if k.startswith(("adaptive_cls/", "adaptive_ret/")):
            print(f"  {k} = {final[k]:.4g}")
    print(f"timing (s): {dict(timing)}\nrun dir: {out_dir}")


def eval_task(cfg) -> dict[str, float]:
    """``eval.py``: load the checkpoint, build its data, evaluate, write the run dir."""
    import hydra
    from omegaconf import OmegaConf

    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluators = OmegaConf.to_container(cfg.get("eval") or {}, resolve=True)
    extra = list(cfg.get("extra_dims") or [])
    only = cfg.get("dims")
    if only is not None:
        if isinstance(only, (str, int, float)):
            raise MRLError(f"dims={only!r} must be a list of prefix sizes, e.g. dims=[{only}]")
        only = list(only)
    info: dict[str, Any] = {"status": "running", "task": "eval", "evaluators": list(evaluators)}
    write_json_atomic(out / "run.json", info)
    loggers: list = []
    try:
        if cfg.get("embeddings"):
            arrays = load_embeddings(cfg.embeddings, mmap=True)
            width = arrays["train_x"].shape[1]
            dims = eval_dims([], extra, width, only) or auto_dims(width)
            no_heads = [e for e in evaluators if e in ("linear", "adaptive_cls")]
            if no_heads:
                raise MRLError(
                    f"eval={no_heads} need a model's heads; with embeddings=... choose from "
                    "probe, knn, retrieval, fewshot, adaptive_ret"
                )
            num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max()) + 1)
            metrics, secs = run_evaluators(arrays, evaluators, dims, num_classes)
            final = update_metrics_json(out / "metrics.json", metrics)
            timing = {k: round(v, 2) for k, v in secs.items()}
            report(final, metrics, dims, out, timing, str(cfg.embeddings), bool(cfg.get("plots")))
            info.update(status="completed")
            return final
        ckpt = Path(str(cfg.ckpt_path)).expanduser()
        module = load_module(ckpt)
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
        if data_cfg is None:
            data_cfg, train_dir = _training_data_cfg(ckpt)
            if data_cfg is None:
                raise MRLError(
                    f"no training config found above {ckpt} (.hydra/config.yaml); "
                    "choose the data with data=<fashion_mnist|cifar10|...>"
                )
        overrides = OmegaConf.to_container(cfg.get("data_overrides") or {}, resolve=True)
        data_cfg.update({k: v for k, v in overrides.items() if v is not None})
        try:
            dm = hydra.utils.instantiate(data_cfg)
        except hydra.errors.InstantiationException as e:
            from mrl.train import _unwrap

            raise _unwrap(e) from e
        info.update(method=module.method, dims=module.dims, ckpt=str(ckpt))
        from mrl.train import _instantiate_all

        loggers = _instantiate_all(
            cfg.get("logger"), wandb={"name": cfg.get("run_name") or f"eval-{module.method}"}
        )
        meta = {"ckpt": str(ckpt.resolve()), "ckpt_fingerprint": file_fingerprint(ckpt)}
        final = evaluate_run(
            module,
            dm,
            evaluators,
            out,
            meta=meta,
            extra_dims=extra,
            dims=only,
            device=_device(str(cfg.get("device", "auto"))),
            use_cache=bool(cfg.get("cache", True)),
            plots=bool(cfg.get("plots", True)),
            loggers=loggers,
            title=f"{module.method} ({module.hparams.model.get('name')})",
        )
        info.update(status="completed")
        return final
    except BaseException as e:
        info.update(status="failed", error=" ".join(str(e).split())[:500])
        raise
    finally:
        write_json_atomic(out / "run.json", info)
        from mrl.train import _close_wandb

        _close_wandb(loggers)
