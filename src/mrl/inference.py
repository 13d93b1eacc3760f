"""Use a trained model: ``mrl.load(path).encode(images, dim=64)`` -> embeddings at any size.

``mrl.load`` reads

* a training checkpoint (``.ckpt``, read with ``torch.load(weights_only=True)``): the network
  is rebuilt from its hyper-parameters; the preprocessing comes from its run dir (below);
* a run dir: its ``checkpoints/last.ckpt`` (the final weights, which ``metrics.json``'s test
  numbers describe; a folder holding a single other ``.ckpt`` uses that one);
* an export folder written by ``mrl-export`` (:mod:`mrl.export`): ``config.json`` and
  ``model.safetensors`` only. Nothing else in the folder is read, and nothing is unpickled.

Preprocessing (what :meth:`MatryoshkaEncoder.encode` does to its inputs) is the *evaluation*
transform of the data module the model was trained with, described by
:func:`preprocessing_of` as a plain dict (recorded in an export's ``config.json``). For a
checkpoint it is derived from the run's ``.hydra/config.yaml``: the training data module is
rebuilt from it and given the backbone's timm config exactly as training does
(:func:`mrl.data.base.follow_model_transforms`); no data files are read. Deriving it from the
data module, rather than recording numbers when training, keeps one source of truth (the data
module's own code), works for every checkpoint already written and needs no change to
training; a ``.ckpt`` copied away from its run dir has no preprocessing: export the run
(``mrl-export``) to get a self-contained folder.

Two pipelines, as in :mod:`mrl.data`:

* ``"tensor"`` (Fashion-MNIST; CIFAR without a timm config): uint8 pixels resized bilinearly
  (on tensors, only when the size differs), then ``(x / 255 - mean) / std`` with the data
  set's own mean/std (e.g. Fashion-MNIST's 0.2860 / 0.3530, not timm's defaults);
* ``"timm"`` (ImageFolder / ImageNet; CIFAR trained through ``train.py``):
  ``timm.data.create_transform(**config, is_training=False)`` (resize, centre crop,
  normalise with the recorded mean/std).

Conventions of :meth:`MatryoshkaEncoder.encode`: inputs are *raw* images, never normalised
ones: a uint8 tensor / array ``(N, C, H, W)`` or ``(C, H, W)`` in 0..255, a float one in
[0, 1], a PIL image or a list of PIL images (converted to the model's channels, ``L`` or
``RGB``). PIL images and uint8 tensors follow the training data path exactly; float tensors
go through the same operations on floats (equal up to the rounding to uint8 that the data
path does). The output is a float32 numpy array ``(N, dim)``: the first ``dim`` features of
the full embedding, L2-normalised *after* slicing when ``normalize`` (as every retrieval /
kNN evaluator does: :func:`mrl.core.nesting.truncate`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ONNX = "model.onnx"
CARD = "README.md"
FORMAT = "mrl-export"
FORMAT_VERSION = 1
#: backbone classes an export's ``config.json`` may name (it never names arbitrary code)
BACKBONE_TARGETS = ("mrl.models.Backbone", "mrl.models.backbone.Backbone")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- preprocessing
def preprocessing_of(dm: Any) -> dict[str, Any]:
    """The evaluation transform of a data module, as a JSON-able dict.

    ``{"pipeline": "tensor" | "timm", "channels", "size", "mean", "std", "interpolation"}``
    plus, for ``"timm"``, ``"timm_config"`` (the arguments of ``timm.data.create_transform``).
    Call it after :func:`mrl.data.base.follow_model_transforms` (as training does).
    """
    from mrl.data.cifar import CIFARDataModule
    from mrl.data.fashion_mnist import FashionMNISTDataModule
    from mrl.data.imagefolder import ImageFolderDataModule

    if isinstance(dm, FashionMNISTDataModule) or (
        isinstance(dm, CIFARDataModule) and dm.data_config is None
    ):
        return {
            "pipeline": "tensor",
            "channels": int(dm.in_chans),
            "size": int(dm.img_size),
            "mean": [float(v) for v in dm.mean],
            "std": [float(v) for v in dm.std],
            "interpolation": "bilinear",
        }
    if isinstance(dm, CIFARDataModule):
        cfg = dict(dm.data_config)
    elif isinstance(dm, ImageFolderDataModule):
        cfg = dm._resolved_config()
    else:
        raise MRLError(
            f"cannot derive the preprocessing of data module {type(dm).__name__}; supported: "
            "FashionMNISTDataModule, CIFARDataModule, ImageFolderDataModule"
        )
    timm_cfg = {
        "input_size": [int(v) for v in cfg["input_size"]],
        "interpolation": str(cfg.get("interpolation", "bilinear")),
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
        "crop_mode": str(cfg.get("crop_mode", "center")),
    }
    return {
        "pipeline": "timm",
        "channels": int(dm.in_chans),
        "size": int(timm_cfg["input_size"][-1]),
        "mean": timm_cfg["mean"],
        "std": timm_cfg["std"],
        "interpolation": timm_cfg["interpolation"],
        "timm_config": timm_cfg,
    }


class Preprocessor:
    """Raw images -> the normalised float32 batch ``(N, C, size, size)`` the model was
    evaluated on (see the module doc for the accepted inputs)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        try:
            self.pipeline = str(spec["pipeline"])
            self.channels = int(spec["channels"])
            self.size = int(spec["size"])
            mean = [float(v) for v in spec["mean"]]
            std = [float(v) for v in spec["std"]]
        except (KeyError, TypeError, ValueError) as e:
            raise MRLError(
                f"preprocessing {dict(spec)!r} is invalid ({type(e).__name__}: {e}); expected "
                "pipeline, channels, size, mean, std"
            ) from e
        if self.pipeline not in ("tensor", "timm") or len(mean) != self.channels:
            raise MRLError(
                f"preprocessing {dict(spec)!r} is invalid; pipeline must be tensor or timm and "
                f"mean/std have one value per channel ({self.channels})"
            )
        self.spec = dict(spec)
        c = self.channels
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self._mean, self._std = mean_t, std_t
        # the data path's arithmetic: (x / 255 - mean) / std == x * scale + shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t
        self._transform = None
        if self.pipeline == "timm":
            from timm.data import create_transform

            self._transform = create_transform(**spec["timm_config"], is_training=False)

    # -- inputs -> a list of chunks
    def count(self, inputs: Any) -> int:
        """Number of images in ``inputs`` (validated)."""
        return len(self._items(inputs))

    def _items(self, inputs: Any) -> Any:
        from PIL import Image

        if isinstance(inputs, Image.Image):
            return [inputs]
        if isinstance(inputs, np.ndarray):
            inputs = torch.from_numpy(inputs)
        if isinstance(inputs, torch.Tensor):
            x = inputs.detach().cpu()
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[1] != self.channels:
                raise MRLError(
                    f"images of shape {tuple(inputs.shape)} are invalid; give (N, "
                    f"{self.channels}, H, W) or ({self.channels}, H, W) raw images"
                )
            if x.dtype == torch.uint8:
                return x
            if not x.is_floating_point():
                raise MRLError(
                    f"images of dtype {x.dtype} are invalid; give uint8 in 0..255 or float in "
                    "[0, 1] (raw, not normalised)"
                )
            if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
                raise MRLError(
                    f"float images span [{float(x.min()):.3g}, {float(x.max()):.3g}]; give raw "
                    "images in [0, 1] (encode normalises them itself) or uint8 in 0..255"
                )
            return x.float().clamp_(0, 1)
        if isinstance(inputs, (list, tuple)):
            bad = [type(v).__name__ for v in inputs if not isinstance(v, Image.Image)]
            if bad:
                raise MRLError(
                    f"a list of {bad[0]} is invalid; give a list of PIL images or one tensor "
                    f"(N, {self.channels}, H, W)"
                )
            return list(inputs)
        raise MRLError(
            f"images of type {type(inputs).__name__} are invalid; give a tensor / numpy array "
            f"(N, {self.channels}, H, W), a PIL image or a list of PIL images"
        )

    def batches(self, inputs: Any, batch_size: int):
        """Normalised float32 batches of at most ``batch_size`` images, in order."""
        items = self._items(inputs)
        for start in range(0, len(items), batch_size):
            yield self(items[start : start + batch_size])

    def __call__(self, items: Any) -> torch.Tensor:
        """One batch of raw images -> normalised float32 ``(N, C, size, size)``."""
        from PIL import Image

        if isinstance(items, (torch.Tensor, np.ndarray, Image.Image)):
            items = self._items(items)
        if self.pipeline == "timm":
            return torch.stack([self._timm_one(v) for v in items])
        if isinstance(items, list):  # PIL images, maybe of different sizes
            return torch.cat([self._tensor_batch(self._pil_to_uint8(v)[None]) for v in items])
        return self._tensor_batch(items)

    def _pil_to_uint8(self, img: Any) -> torch.Tensor:
        img = img.convert("L" if self.channels == 1 else "RGB")
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()

    def _tensor_batch(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if x.dtype == torch.uint8:
            return x.float().mul_(self._scale).add_(self._shift)
        return (x - self._mean) / self._std

    def _timm_one(self, img: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(img, Image.Image):
            img = img.convert("L" if self.channels == 1 else "RGB")
        elif img.dtype == torch.uint8:  # the data path: uint8 pixels -> PIL -> transform
            arr = img.permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[:, :, 0] if self.channels == 1 else arr)
        return self._transform(img)


# ----------------------------------------------------------------------------- the encoder
def _device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MRLError(f"device={device!r} is invalid; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MRLError(
            f"device={device!r} but no CUDA GPU is available (torch.cuda.is_available() is "
            "False); use device='cpu'"
        )
    if dev.type not in ("cpu", "cuda"):
        raise MRLError(f"device={device!r} is invalid; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def _dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise MRLError(f"dtype={dtype!r} is invalid; use one of {', '.join(_DTYPES)}")


class MatryoshkaEncoder:
    """A trained MRL network with its preprocessing: :meth:`encode` at any prefix size.

    Attributes: ``net`` (the :class:`~mrl.models.MRLModel`, eval mode), ``dims`` (the trained
    prefixes), ``width`` (full embedding width), ``method`` (MRL / MRL-E / FF-k),
    ``preprocessing`` (the dict of :func:`preprocessing_of`), ``config`` (what an export's
    ``config.json`` records) and ``source`` (the path it was loaded from).
    """

    def __init__(self, net: Any, config: Mapping[str, Any], source: str = "") -> None:
        self.net = net.eval()
        self.config = dict(config)
        self.dims = [int(m) for m in config["dims"]]
        self.width = int(net.embed_dim)
        self.method = str(config["method"])
        self.preprocessing = dict(config["preprocessing"])
        self.preprocess = Preprocessor(self.preprocessing)
        self.source = source

    def __repr__(self) -> str:
        return (
            f"MatryoshkaEncoder({self.method}, {self.config['model'].get('name')}, "
            f"dims={self.dims}, width={self.width}, source={self.source!r})"
        )

    def check_dim(self, dim: Any) -> int:
        """``dim`` when it is a trained prefix; any size in 1..width with a warning (the
        paper's interpolated sizes); otherwise a one-line :class:`MRLError`."""
        if dim is None:
            return self.width
        ok = isinstance(dim, (int, np.integer)) and not isinstance(dim, bool)
        if ok and int(dim) in self.dims:
            return int(dim)
        if ok and 1 <= int(dim) <= self.width:
            warnings.warn(
                f"dim={int(dim)} is not a trained prefix {self.dims}; its slice is an "
                "interpolated size (usually between its trained neighbours)",
                stacklevel=3,
            )
            return int(dim)
        raise MRLError(
            f"dim={dim!r} is invalid; use a trained prefix size {self.dims} or an integer in "
            f"1..{self.width} (None: the full width)"
        )

    @torch.inference_mode()
    def embed(
        self, inputs: Any, batch_size: int = 256, device: Any = None, dtype: Any = None
    ) -> torch.Tensor:
        """Full-width, unnormalised float32 embeddings (CPU tensor ``(N, width)``)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MRLError(f"batch_size={batch_size!r} is invalid; use a positive integer")
        dev, dt = _device(device), _dtype(dtype)
        self.net.to(dev)
        outs = []
        for x in self.preprocess.batches(inputs, batch_size):
            x = x.to(dev)
            with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
                z = self.net.embed(x)
            outs.append(z.float().cpu())
        if not outs:
            return torch.zeros(0, self.width)
        return torch.cat(outs)

    def encode(
        self,
        inputs: Any,
        dim: int | None = 64,
        normalize: bool = True,
        batch_size: int = 256,
        device: Any = None,
        dtype: Any = None,
    ) -> np.ndarray:
        """Embeddings of raw images at prefix size ``dim``: float32 numpy ``(N, dim)``.

        Args:
            inputs: raw images (module doc): uint8 / [0, 1] float tensor or array
                ``(N, C, H, W)``, a PIL image or a list of them.
            dim: a trained prefix (``self.dims``), any size in 1..width (a warning), or None
                (the full width).
            normalize: L2-normalise each row *after* slicing to ``dim``.
            batch_size: images per forward pass.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; None: CUDA when available.
            dtype: compute dtype, ``float32`` (default), ``bfloat16`` or ``float16``
                (autocast); the output is float32 either way.
        """
        m = self.check_dim(dim)
        z = self.embed(inputs, batch_size=batch_size, device=device, dtype=dtype)
        return truncate(z, m, normalize=bool(normalize)).numpy()


# ----------------------------------------------------------------------------- loading
def _small_stem(model: Mapping[str, Any], img_size: int) -> bool:
    stem = model.get("small_input_stem", "auto")  # the rule of build_backbone
    if stem == "auto":
        return img_size < 64 and "resnet" in str(model.get("name"))
    return bool(stem)


def _model_config(hp: Mapping[str, Any], net: Any, preprocessing: Mapping[str, Any]) -> dict:
    model = dict(hp["model"])
    target = model.pop("_target_", BACKBONE_TARGETS[0])
    model.pop("_partial_", None)
    model.pop("pretrained", None)  # the weights are the file's; never download
    img_size, in_chans = int(hp["img_size"]), int(hp["in_chans"])
    model.update(
        _target_=target,
        in_chans=in_chans,
        img_size=img_size,
        small_input_stem=_small_stem(hp["model"], img_size),
    )
    from mrl import __version__

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mrl_version": __version__,
        "method": method_name_of(net),
        "dims": [int(m) for m in net.dims],
        "embed_dim": int(net.embed_dim),
        "num_classes": int(hp["num_classes"]),
        "efficient": bool(net.efficient),
        "ff_dim": None if net.ff_dim is None else int(net.ff_dim),
        "model": model,
        "preprocessing": dict(preprocessing),
    }


def method_name_of(net: Any) -> str:
    from mrl.models import method_name

    return method_name(net.efficient, net.ff_dim)


def build_net(config: Mapping[str, Any]) -> Any:
    """An untrained :class:`~mrl.models.MRLModel` of an export's ``config.json`` (never
    downloads weights; only the backbone classes in :data:`BACKBONE_TARGETS`)."""
    from mrl.models import MRLModel
    from mrl.objectives.classification import build_backbone

    try:
        model = dict(config["model"])
        target = model.get("_target_", BACKBONE_TARGETS[0])
        in_chans, img_size = int(model.pop("in_chans")), int(model.pop("img_size"))
        dims, num_classes = list(config["dims"]), int(config["num_classes"])
        embed_dim, ff_dim = int(config["embed_dim"]), config.get("ff_dim")
        efficient = bool(config.get("efficient", False))
    except (KeyError, TypeError, ValueError) as e:
        raise MRLError(f"{CONFIG} is incomplete or invalid ({type(e).__name__}: {e})") from e
    if target not in BACKBONE_TARGETS:
        raise MRLError(
            f"{CONFIG} names model._target_={target!r}; an export may only use "
            f"{', '.join(BACKBONE_TARGETS)}"
        )
    model["pretrained"] = False
    backbone = build_backbone(model, in_chans, img_size)
    backbone.expand_to(embed_dim)
    return MRLModel(backbone, dims, num_classes, efficient=efficient, ff_dim=ff_dim)


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a path names: the file itself, or a run dir's ``checkpoints/last.ckpt``
    (a folder holding exactly one other ``.ckpt`` uses that one)."""
    from mrl.run.layout import RunDir

    path = Path(path).expanduser()
    if path.is_file():
        return path
    run = RunDir(path)
    if run.last_ckpt.is_file():
        return run.last_ckpt
    found = sorted(run.checkpoints.glob("*.ckpt")) if run.checkpoints.is_dir() else []
    if len(found) == 1:
        return found[0]
    what = f"several ({', '.join(p.name for p in found[:4])})" if found else "none"
    raise MRLError(
        f"{path} holds no {run.last_ckpt.relative_to(path)} (checkpoints found: {what}); give a "
        "run dir, a .ckpt file or an export folder written by mrl-export"
    )


def _checkpoint_encoder(ckpt: Path) -> MatryoshkaEncoder:
    from omegaconf import OmegaConf

    from mrl.cli import register_resolvers
    from mrl.data.base import follow_model_transforms
    from mrl.objectives.classification import MRLLitModule
    from mrl.run.checkpoints import read_checkpoint
    from mrl.run.layout import run_dir_of
    from mrl.tasks.instantiate import instantiate

    raw = read_checkpoint(ckpt)
    hp = raw.get("hyper_parameters")
    if "state_dict" not in raw or not isinstance(hp, dict) or "model" not in hp:
        raise MRLError(f"checkpoint {ckpt} is not an MRL training checkpoint (no hyper-parameters)")
    run = run_dir_of(ckpt)
    if run is None:
        raise MRLError(
            f"no training config above {ckpt} (.hydra/config.yaml), so its preprocessing is "
            "unknown; give the checkpoint inside its run dir, or an mrl-export folder"
        )
    hp = {**hp, "model": {**hp["model"], "pretrained": False}}
    try:
        module = MRLLitModule(**hp)
    except TypeError as e:
        raise MRLError(f"checkpoint {ckpt} is not an MRL (MRL/MRL-E/FF) checkpoint: {e}") from e
    missing, unexpected = module.load_state_dict(raw["state_dict"], strict=False)
    if missing or unexpected:
        raise MRLError(
            f"checkpoint {ckpt} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    register_resolvers()
    train_cfg = OmegaConf.load(run.hydra_config)
    try:
        dm = instantiate(OmegaConf.to_container(train_cfg.data, resolve=True))
    except MRLError as e:
        raise MRLError(
            f"cannot rebuild the training data module of {run.path} to read its preprocessing: {e}"
        ) from e
    follow_model_transforms(dm, module)  # what training did to the data module
    config = _model_config(hp, module.net, preprocessing_of(dm))
    config["source"] = {"checkpoint": str(ckpt.resolve()), "run_dir": str(run.path)}
    return MatryoshkaEncoder(module.net, config, source=str(ckpt))


def read_export_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of an export folder, checked for its format."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise MRLError(f"{folder / CONFIG} is unreadable: {' '.join(str(e).split())}") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise MRLError(f"{folder / CONFIG} is not an mrl-export config (format {FORMAT!r} missing)")
    return config


def _export_encoder(folder: Path) -> MatryoshkaEncoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    missing = [n for n in (CONFIG, WEIGHTS) if not (folder / n).is_file()]
    if missing:
        raise MRLError(
            f"export folder {folder} lacks {missing[0]}; it needs {CONFIG} and {WEIGHTS} "
            "(write it with mrl-export)"
        )
    config = read_export_config(folder)
    net = build_net(config)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise MRLError(f"{folder / WEIGHTS} is unreadable: {' '.join(str(e).split())}") from e
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise MRLError(f"{folder / WEIGHTS} does not match {CONFIG}: {first}") from e
    return MatryoshkaEncoder(net, config, source=str(folder))


def is_export_folder(path: Path) -> bool:
    """A folder holding an export's files (``config.json`` or ``model.safetensors``)."""
    return path.is_dir() and any((path / n).is_file() for n in (CONFIG, WEIGHTS))


def load(path: str | Path) -> MatryoshkaEncoder:
    """A :class:`MatryoshkaEncoder` from a ``.ckpt``, a run dir or an ``mrl-export`` folder
    (module doc). Never runs pickled code; bad paths are a one-line :class:`MRLError`."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise MRLError(
            f"{p} does not exist; give a .ckpt, a run dir or an export folder (mrl-export)"
        )
    if is_export_folder(p):
        return _export_encoder(p)
    return _checkpoint_encoder(checkpoint_of(p))


__all__ = [
    "MatryoshkaEncoder",
    "Preprocessor",
    "build_net",
    "checkpoint_of",
    "load",
    "preprocessing_of",
]
