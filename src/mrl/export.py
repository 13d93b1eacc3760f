"""``mrl-export <run dir or .ckpt> [--out DIR] [--format auto|mrl|sentence-transformers]
[--no-onnx] [--push-to-hub REPO_ID]``.

Image models (``--format mrl``, the default for them) get a self-contained folder that
:func:`mrl.load` reads back without the run dir::

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

Text models (``model=hf_text``: any checkpoint whose ``model._target_`` is
:class:`~mrl.models.text.TextEncoder`, whatever its objective) are exported as a
*sentence-transformers* folder (``--format auto`` picks it for them; ``--format
sentence-transformers`` insists on it and refuses image checkpoints), written by
sentence-transformers' own ``SentenceTransformer.save``::

    modules.json, config_sentence_transformers.json   Transformer -> Pooling (mean | cls)
    config.json, model.safetensors, tokenizer*        the fine-tuned transformers encoder
    1_Pooling/config.json                             the run's pooling
    mteb_model_meta.json                              MTEB ``ModelMeta`` fields; ``embed_dim``
                                                      is the list of trained Matryoshka dims
    mrl_export.json                                   dims, method, width, pooling, source and
                                                      the reload check
    README.md                                         model card (dims, usage, results)

``SentenceTransformer(folder, truncate_dim=m).encode(texts)`` gives the first ``m`` features
of the checkpoint's *unnormalised* pooled embedding (there is no Normalize module, so a
truncated prefix is exactly a slice; pass ``normalize_embeddings=True`` for unit vectors, as
every MRL evaluator normalises after slicing). Classification heads and MLM heads are not
exported (the folder is the encoder). The folder is reloaded with ``SentenceTransformer``
(local files only) before it is renamed into place, and its embeddings of a few sentences
must equal the checkpoint encoder's within :data:`ST_TOLERANCE` (recorded in
``mrl_export.json``). ``--no-onnx`` does not apply (no ONNX graph is written for text).
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
FORMATS = ("auto", "mrl", "sentence-transformers")
#: model targets that make a checkpoint a text model (exported for sentence-transformers)
TEXT_TARGETS = ("mrl.models.text.TextEncoder", "mrl.models.TextEncoder")
ST_TOLERANCE = 1e-5  # max abs difference of the reloaded folder's embeddings
ST_META = "mrl_export.json"
MTEB_META = "mteb_model_meta.json"
ST_FORMAT = "mrl-export-sentence-transformers"
#: what the reload check embeds (the last one is longer than most max_seq_length settings)
CHECK_SENTENCES = (
    "a domestic animal kept for companionship",
    "bank",
    "the sloping land beside a body of water, where the current is slow and the ground "
    "is soft enough to hold the roots of reeds, willows and other plants that like water "
    "and that hold the soil against the river when it floods in the spring",
)
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


def _staging_folder(dest: str | Path) -> tuple[Path, Path]:
    """(``dest``, a fresh temporary folder beside it) for an export written there and renamed
    into place; a ``dest`` that exists and is not an empty folder is refused (never replaced)."""
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
    return dest, tmp


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

    dest, tmp = _staging_folder(dest)
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
    fmt: str = "auto",
) -> Path:
    """Write the export folder of a run dir or checkpoint (module doc); returns its path.

    ``fmt``: ``auto`` (sentence-transformers for text models, ``mrl`` for image models),
    ``mrl`` or ``sentence-transformers``."""
    from mrl.eval.cache import file_fingerprint
    from mrl.run.checkpoints import read_checkpoint
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
    if fmt not in FORMATS:
        raise MRLError(f"--format {fmt!r} is invalid; use one of {', '.join(FORMATS)}")
    t = time.time()
    raw = read_checkpoint(ckpt)
    text = is_text_hparams(raw.get("hyper_parameters"))
    run = run_dir_of(ckpt)
    # provenance without local paths (the folder may be published)
    source_info = {"checkpoint": ckpt.name, "fingerprint": file_fingerprint(ckpt)}
    if fmt == "sentence-transformers" and not text:
        raise MRLError(
            f"--format sentence-transformers needs a text model (model=hf_text), but {ckpt} "
            "holds an image model; use --format mrl (or auto)"
        )
    if text and fmt == "mrl":
        raise MRLError(
            f"{ckpt} holds a text model (model=hf_text): --format mrl is for image models; use "
            "--format sentence-transformers (or auto)"
        )
    if text:
        encoder, info = text_encoder_of(raw, ckpt)
        write_sentence_transformers(
            encoder, info, dest, run_dir=run.path if run else None, source=source_info
        )
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        check = json.loads((dest / ST_META).read_text())["check"]
        print(
            f"exported {info['method']} text model ({info['model']}, dims {info['dims']}) as a "
            f"sentence-transformers folder to {dest}: {size / 1e6:.1f} MB in "
            f"{time.time() - t:.1f} s; reloaded with SentenceTransformer, max abs diff "
            f"{check['max_abs_diff']:.2e}"
        )
        if push_to_hub:
            push(dest, push_to_hub)
        return dest
    del raw
    encoder = load(ckpt)
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


# ----------------------------------------------------------------------------- text models
def is_text_hparams(hp: Any) -> bool:
    """True for the hyper-parameters of a text model's checkpoint (``model=hf_text``)."""
    model = hp.get("model") if isinstance(hp, dict) else None
    return isinstance(model, dict) and model.get("_target_") in TEXT_TARGETS


def text_encoder_of(raw: dict[str, Any], ckpt: Path) -> tuple[Any, dict[str, Any]]:
    """The trained :class:`~mrl.models.text.TextEncoder` of a text checkpoint (any objective:
    its weights are the state dict's ``net.model.*``, or ``net.backbone.model.*`` under
    nested classifier heads) and what the export records (dims, method, pooling, ...)."""
    from mrl.core.dims import parse_dims
    from mrl.models import method_name
    from mrl.objectives.contrastive import build_text_encoder

    hp, state = raw.get("hyper_parameters"), raw.get("state_dict")
    if not is_text_hparams(hp) or not isinstance(state, dict):
        raise MRLError(f"checkpoint {ckpt} is not a text model's training checkpoint")
    encoder = build_text_encoder(hp["model"])
    for prefix in ("net.", "net.backbone."):
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix + "model.")}
        if sub:
            break
    try:
        encoder.load_state_dict(sub, strict=True)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MRLError(f"checkpoint {ckpt} does not match its text model config: {first}") from e
    encoder.eval()
    dims = parse_dims(hp.get("dims", "auto"), encoder.width)
    ff_dim = hp.get("ff_dim")  # FF-k: one head on the first k features ("max": all)
    ff_dim = dims[-1] if ff_dim in ("max", "auto") else ff_dim
    ff_dim = int(ff_dim) if ff_dim is not None else None
    if hp.get("mlm_probability") is not None:
        method = "MRL-E"  # objective=mlm: the tied output layer read by prefix
    else:
        method = method_name(bool(hp.get("efficient")), ff_dim)
    info = {
        "dims": [ff_dim] if ff_dim is not None else dims,
        "method": method,
        "width": int(encoder.width),
        "pooling": encoder.pooling,
        "max_seq_length": int(encoder.max_seq_length or encoder.tokenizer.model_max_length),
        "model": str(hp["model"].get("name")),
    }
    return encoder, info


def _mteb_meta(encoder: Any, info: dict[str, Any], name: str) -> dict[str, Any]:
    """Fields of MTEB's ``ModelMeta`` (``embed_dim``: the trained Matryoshka dims)."""
    n_params = sum(p.numel() for p in encoder.model.parameters())
    base = "sentence-transformers/all-MiniLM-L6-v2" if info["model"] == "minilm" else info["model"]
    return {
        "name": name,
        "revision": None,
        "release_date": time.strftime("%Y-%m-%d", time.gmtime()),
        "languages": None,
        "n_parameters": int(n_params),
        "memory_usage_mb": round(n_params * 4 / 2**20, 1),
        "max_tokens": info["max_seq_length"],
        "embed_dim": list(info["dims"]),
        "license": None,
        "open_weights": True,
        "public_training_code": None,
        "public_training_data": None,
        "framework": ["Sentence Transformers", "PyTorch"],
        "reference": None,
        "similarity_fn_name": "cosine",
        "use_instructions": False,
        "training_datasets": None,
        "adapted_from": base,
        "modalities": ["text"],
        "model_type": ["dense"],
    }


def text_model_card(info: dict[str, Any], run_dir: Path | None) -> str:
    """``README.md`` of a sentence-transformers export: dims, usage, per-prefix results."""
    from mrl.run.layout import RunDir
    from mrl.run.record import read_record

    record = read_record(RunDir(run_dir).record) if run_dir else {}
    metrics = read_record(RunDir(run_dir).metrics) if run_dir else {}
    seed = int(record.get("seed", 0) or 0)
    dims = info["dims"]
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, feature-extraction, matryoshka, "
        "matryoshka-representation-learning]",
        "---",
        "",
        f"# {info['method']} {info['model']} ({record.get('data', '?')})",
        "",
        f"A Matryoshka text embedding model: every prefix of its {info['width']}-d embedding "
        f"is an embedding; trained prefixes (Matryoshka dims, MTEB `embed_dim`): {dims} "
        f"(seed {seed}). Pooling: {info['pooling']}; at most {info['max_seq_length']} tokens.",
        "",
        "## Use",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = SentenceTransformer('<this folder>', truncate_dim={dims[0]})",
        "z = model.encode(texts, normalize_embeddings=True)  # the first dims, then unit norm",
        "```",
        "",
        "The folder has no Normalize module: `encode` returns the unnormalised pooled "
        "embedding (its first `truncate_dim` features); similarity is cosine.",
        "",
        _results_table(metrics, dims, seed).rstrip(),
        "",
    ]
    return "\n".join(lines)


def _st_check(folder: Path, encoder: Any, dims: Sequence[int]) -> dict[str, Any]:
    """Reload ``folder`` with ``SentenceTransformer`` (local files) and compare its embeddings
    (full and truncated to the smallest dim) with ``encoder``'s."""
    from sentence_transformers import SentenceTransformer

    texts = list(CHECK_SENTENCES)
    with torch.inference_mode():
        want = encoder(texts).float().cpu()
    try:
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        got = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
        st.truncate_dim = int(dims[0])
        small = torch.as_tensor(st.encode(texts, convert_to_numpy=True))
    except Exception as e:  # noqa: BLE001 - loader failures come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MRLError(f"the sentence-transformers folder does not reload ({first})") from e
    diff = float((got - want).abs().max()) if got.shape == want.shape else float("inf")
    diff_small = (
        float((small - want[:, : dims[0]]).abs().max())
        if small.shape == (len(texts), dims[0])
        else float("inf")
    )
    if not max(diff, diff_small) <= ST_TOLERANCE:
        raise MRLError(
            f"sentence-transformers check failed: the reloaded folder's embeddings differ from "
            f"the checkpoint's encoder by {max(diff, diff_small):.3g} (> {ST_TOLERANCE:g})"
        )
    import sentence_transformers

    return {
        "sentences": len(texts),
        "max_abs_diff": diff,
        "truncate_dim": int(dims[0]),
        "truncated_max_abs_diff": diff_small,
        "tolerance": ST_TOLERANCE,
        "sentence_transformers": sentence_transformers.__version__,
    }


def sentence_transformer_of(
    encoder: Any, info: dict[str, Any], folder: str | Path, device: str = "cpu"
) -> Any:
    """An in-memory ``SentenceTransformer`` (Transformer -> Pooling, cosine, no Normalize) of a
    :class:`~mrl.models.text.TextEncoder` and its :func:`text_encoder_of` info: what the
    exported folder reloads as. The transformers files are written to ``folder`` (kept by the
    caller as long as the model may be saved again)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return SentenceTransformer(
        modules=[
            Transformer(str(folder), max_seq_length=int(info["max_seq_length"])),
            Pooling(int(info["width"]), pooling_mode=str(info["pooling"])),
        ],
        device=str(device),
        similarity_fn_name="cosine",
    )


def write_sentence_transformers(
    encoder: Any,
    info: dict[str, Any],
    dest: str | Path,
    run_dir: Path | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``encoder`` (a :class:`~mrl.models.text.TextEncoder`) as a sentence-transformers
    folder at ``dest`` (module doc): temporary sibling, reload check, then a rename."""
    from mrl import __version__

    dest, tmp = _staging_folder(dest)
    try:
        encoder = encoder.cpu().eval()
        with tempfile.TemporaryDirectory(dir=tmp) as hf:
            st = sentence_transformer_of(encoder, info, hf)
            st.save(str(tmp), create_model_card=False)
            del st
        check = _st_check(tmp, encoder, info["dims"])
        meta = {
            "format": ST_FORMAT,
            "mrl_version": __version__,
            **info,
            "normalized": False,
            "source": dict(source or {}),
            "check": check,
        }
        (tmp / ST_META).write_text(json.dumps(meta, indent=2) + "\n")
        mteb = _mteb_meta(encoder, info, dest.name)
        (tmp / MTEB_META).write_text(json.dumps(mteb, indent=2) + "\n")
        (tmp / CARD).write_text(text_model_card(info, run_dir))
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)
        tmp.chmod(0o755)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        description="Export a trained MRL run: safetensors + config.json + ONNX + model card "
        "(image models), or a sentence-transformers folder (text models).",
    )
    parser.add_argument("source", help="a run dir or a .ckpt written by train.py")
    parser.add_argument("--out", default=None, help="output folder (default: <run dir>/export)")
    parser.add_argument(
        "--format",
        default="auto",
        choices=FORMATS,
        help="auto: sentence-transformers for text models (model=hf_text), mrl for image models",
    )
    parser.add_argument("--no-onnx", action="store_true", help="skip model.onnx and its check")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="upload to HF")
    args = parser.parse_args(argv)
    try:
        export(
            args.source,
            args.out,
            onnx=not args.no_onnx,
            push_to_hub=args.push_to_hub,
            fmt=args.format,
        )
    except MRLError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
