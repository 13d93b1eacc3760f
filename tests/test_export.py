"""mrl.load / MatryoshkaEncoder.encode and mrl-export (issue #16 items 1-2), on the shared
tiny Fashion-MNIST run (``trained_run``): encode at any size against an independent
reference, the data module's own eval preprocessing, export -> reload, ONNX, no pickle."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import mrl
from mrl.core.errors import MRLError
from mrl_test_utils import run_cli


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run[0]


@pytest.fixture(scope="module")
def enc(run_dir):
    return mrl.load(run_dir)


@pytest.fixture(scope="module")
def dm(run_dir):
    """The training data module, rebuilt from the run's config (as eval.py does)."""
    from mrl.tasks.instantiate import instantiate

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = instantiate(OmegaConf.to_container(cfg.data, resolve=True))
    data.setup("test")
    return data


@pytest.fixture(scope="module")
def raw_and_loader_batch(dm):
    """The first test-loader batch and the raw uint8 images it was made from."""
    x, _ = next(iter(dm.test_dataloader()))
    ds = dm.dataset("test")
    raw = ds.images[ds.indices[: len(x)]]
    assert raw.dtype == torch.uint8 and raw.shape == (len(x), 1, 28, 28)
    return raw, x


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """``mrl-export <run> --out <dir>`` through the installed console script (exit 0)."""
    out = tmp_path_factory.mktemp("export") / "fmnist-mrl"
    script = Path(sys.executable).parent / "mrl-export"
    assert script.is_file(), "pip install -e . creates the mrl-export console script"
    r = run_cli(str(script), str(run_dir), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"to {out}" in r.stdout
    return out


def _ref_embed(run_dir: Path, images: torch.Tensor) -> np.ndarray:
    """Full-width features of the checkpoint's backbone (float64) on images normalised here
    with Fashion-MNIST's mean/std, independently of mrl.inference."""
    module = mrl.load_module(run_dir / "checkpoints" / "last.ckpt")
    x = (images.numpy().astype(np.float64) / 255.0 - 0.2860) / 0.3530
    with torch.no_grad():
        z = module.net.backbone(torch.from_numpy(x).float())
    return z.numpy().astype(np.float64)


def test_encode_is_the_sliced_then_normalised_backbone_feature(enc, run_dir, raw_and_loader_batch):
    raw = raw_and_loader_batch[0][:40]
    full = _ref_embed(run_dir, raw)
    assert enc.width == full.shape[1] == 512 and enc.dims == [8, 16, 32, 64, 128, 256, 512]
    for m in (8, 64, 512):
        ref = full[:, :m] / np.linalg.norm(full[:, :m], axis=1, keepdims=True)
        got = enc.encode(raw, dim=m, batch_size=16, device="cpu")
        assert got.dtype == np.float32 and got.shape == (40, m)
        np.testing.assert_allclose(got, ref, atol=2e-5)
    raw_slice = enc.encode(raw, dim=16, normalize=False, device="cpu")
    np.testing.assert_allclose(raw_slice, full[:, :16], rtol=1e-4, atol=1e-4)
    assert enc.encode(raw, dim=None, device="cpu").shape == (40, 512)
    # a size between trained prefixes (the paper's interpolation) works, with a warning
    with pytest.warns(UserWarning, match="dim=12 is not a trained prefix"):
        z12 = enc.encode(raw[:3], dim=12, device="cpu")
    ref12 = full[:3, :12] / np.linalg.norm(full[:3, :12], axis=1, keepdims=True)
    np.testing.assert_allclose(z12, ref12, atol=2e-5)


def test_preprocessing_is_the_data_modules_eval_transform(enc, raw_and_loader_batch):
    raw, batch = raw_and_loader_batch
    # Fashion-MNIST's own statistics, not timm's 0.449 / 0.226 defaults
    assert enc.preprocessing["mean"] == [0.286] and enc.preprocessing["std"] == [0.353]
    assert torch.equal(enc.preprocess(raw), batch)  # uint8: the loader's exact arithmetic
    pil = [Image.fromarray(img[0].numpy(), mode="L") for img in raw[:8]]
    assert torch.equal(enc.preprocess(pil), batch[:8])
    rgb = Image.fromarray(np.repeat(raw[0, 0].numpy()[:, :, None], 3, axis=2), mode="RGB")
    torch.testing.assert_close(enc.preprocess([rgb]), batch[:1], atol=0.02, rtol=0)  # -> L
    torch.testing.assert_close(enc.preprocess(raw.float() / 255), batch, atol=1e-5, rtol=0)
    # encode of PIL images == encode of the tensor they came from
    np.testing.assert_array_equal(
        enc.encode(pil, dim=32, device="cpu"), enc.encode(raw[:8], dim=32, device="cpu")
    )


def test_export_folder_reloads_with_identical_embeddings(
    exported, enc, run_dir, raw_and_loader_batch
):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md",
        "config.json",
        "model.onnx",
        "model.safetensors",
    ]
    config = json.loads((exported / "config.json").read_text())
    assert config["method"] == "MRL" and config["dims"] == enc.dims
    assert config["num_classes"] == 10 and config["embed_dim"] == 512
    assert config["model"]["name"] == "resnet18" and config["model"]["in_chans"] == 1
    assert config["model"]["small_input_stem"] is True and config["model"]["img_size"] == 28
    assert config["preprocessing"] == enc.preprocessing
    assert config["onnx"]["max_abs_diff"] <= 1e-4
    # nothing in config.json names a local path
    assert str(run_dir) not in (exported / "config.json").read_text()

    from safetensors.torch import load_file

    state = load_file(str(exported / "model.safetensors"))
    assert set(state) == set(enc.net.state_dict())
    assert any(k.startswith("head.") for k in state) and any(
        k.startswith("backbone.") for k in state
    )

    again = mrl.load(exported)
    raw = raw_and_loader_batch[0][:24]
    for m in (8, 128, None):
        np.testing.assert_array_equal(
            again.encode(raw, dim=m, device="cpu"), enc.encode(raw, dim=m, device="cpu")
        )

    card = (exported / "README.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "| dim | test/top1 | test/top5 |" in card
    for m in enc.dims:
        t1, t5 = 100 * metrics[f"test/top1@d{m}"], 100 * metrics[f"test/top5@d{m}"]
        assert f"| {m} | {t1:.2f} | {t5:.2f} |" in card


def test_onnx_matches_pytorch_on_another_batch_size(exported, enc, raw_and_loader_batch):
    import onnxruntime as ort

    config = json.loads((exported / "config.json").read_text())
    n = 7
    assert n not in (config["onnx"]["exported_batch"], config["onnx"]["checked_batch"])
    x = enc.preprocess(raw_and_loader_batch[0][:n])
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and not isinstance(inp.shape[0], int)  # dynamic batch axis
    got = session.run(None, {"images": x.numpy()})[0]
    want = enc.embed(raw_and_loader_batch[0][:n], device="cpu").numpy()
    assert got.shape == (n, 512)
    assert np.abs(got - want).max() <= 1e-4


class _Marker:
    """Unpickling this creates ``path`` (``open(path, "w")``): proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_pickle_in_an_export_folder_is_never_loaded(
    exported, enc, tmp_path, raw_and_loader_batch
):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Marker(marker))
    pickle.loads(payload).close()  # the payload works: unpickling it creates the marker
    assert marker.exists()
    marker.unlink()

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    for name in ("pytorch_model.bin", "model.ckpt", "model.pt"):
        (folder / name).write_bytes(payload)
    z = mrl.load(folder).encode(raw_and_loader_batch[0][:4], dim=8, device="cpu")
    assert z.shape == (4, 8) and not marker.exists()

    (folder / "model.safetensors").write_bytes(payload)  # a pickle posing as the weights
    with pytest.raises(MRLError) as e:
        mrl.load(folder)
    assert "model.safetensors is unreadable" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()

    # config.json may not name arbitrary code as the backbone class
    shutil.copy(exported / "model.safetensors", folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["_target_"] = "os.system"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MRLError, match="an export may only use mrl.models.Backbone"):
        mrl.load(folder)


def test_bfloat16_encode_is_close_to_float32(enc, raw_and_loader_batch):
    raw = raw_and_loader_batch[0][:16]
    fp32 = enc.encode(raw, dim=64, device="cpu")
    bf16 = enc.encode(raw, dim=64, device="cpu", dtype=torch.bfloat16)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    cos = (fp32 * bf16).sum(1)  # both rows unit-norm
    assert cos.min() > 0.99, cos.min()
    assert not np.array_equal(fp32, bf16)  # bfloat16 really was used


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_bad_inputs_are_one_line_errors(
    enc, run_dir, exported, tmp_path, monkeypatch, raw_and_loader_batch
):
    raw = raw_and_loader_batch[0][:2]
    for bad in (0, 513, -8, "64", 1.5, True):
        with pytest.raises(MRLError) as e:
            enc.encode(raw, dim=bad)
        assert _one_line(e).startswith(f"dim={bad!r} is invalid") and "[8, 16" in str(e.value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MRLError) as e:
        enc.encode(raw, dim=8, device="cuda")
    assert "no CUDA GPU" in _one_line(e)
    with pytest.raises(MRLError) as e:
        enc.encode(raw, dim=8, device="cpu", dtype="int8")
    assert _one_line(e).startswith("dtype='int8' is invalid")
    with pytest.raises(MRLError) as e:  # already-normalised input is refused
        enc.encode(enc.preprocess(raw), dim=8, device="cpu")
    assert "raw images in [0, 1]" in _one_line(e)

    with pytest.raises(MRLError) as e:
        mrl.load(tmp_path / "nope")
    assert "does not exist" in _one_line(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MRLError) as e:
        mrl.load(tmp_path / "empty")
    assert "holds no checkpoints/last.ckpt" in _one_line(e)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(exported / "config.json", partial / "config.json")
    with pytest.raises(MRLError) as e:
        mrl.load(partial)
    assert "lacks model.safetensors" in _one_line(e)
    lone = tmp_path / "lone.ckpt"  # a checkpoint away from its run dir: preprocessing unknown
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", lone)
    with pytest.raises(MRLError) as e:
        mrl.load(lone)
    assert "preprocessing is unknown" in _one_line(e)

    import huggingface_hub.constants

    from mrl.export import push

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(MRLError) as e:
        push(exported, "someone/fmnist-mrl")
    assert _one_line(e).startswith("--push-to-hub someone/fmnist-mrl failed")


def test_cli_refuses_to_overwrite_an_export(exported, run_dir):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    r = run_cli("-m", "mrl", "export", str(run_dir), "--out", str(exported), "--no-onnx")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"error: --out {exported} exists and is not an empty folder; choose a new folder or remove it"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a trained prefix never warns
        mrl.load(exported).encode(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), dim=64)


def test_timm_pipeline_equals_the_cifar_eval_transform(tmp_path):
    """Data trained through timm's transform (CIFAR via train.py): the same resize / crop /
    normalisation as the data module's own eval dataset, on synthetic uint8 images."""
    from mrl.data import CIFAR10DataModule
    from mrl.data.base import follow_model_transforms
    from mrl.eval.pipeline import _eval_transform
    from mrl.inference import Preprocessor, preprocessing_of
    from mrl.objectives.classification import MRLLitModule

    dm = CIFAR10DataModule(root=tmp_path, download=False, val_size=0)
    module = MRLLitModule(model={"name": "resnet18"}, num_classes=10, in_chans=3, img_size=32)
    follow_model_transforms(dm, module)  # what train.py does
    gen = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(12) % 10
    dm._data, dm._loaded = (imgs, labels, imgs[:6], labels[:6]), True  # no files needed
    ds = dm.dataset("test")
    want = torch.stack([ds[i][0] for i in range(6)])

    spec = preprocessing_of(dm)
    assert spec["pipeline"] == "timm" and spec["size"] == 32 and spec["channels"] == 3
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the model's, as trained
    assert _eval_transform(dm) == spec  # what the embedding cache's meta.json records
    pre = Preprocessor(json.loads(json.dumps(spec)))  # as read back from config.json
    assert torch.equal(pre(imgs[:6]), want)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in imgs[:6]]
    assert torch.equal(pre(pil), want)


def test_cache_meta_records_the_real_fashion_mnist_statistics(dm):
    from mrl.eval.pipeline import _eval_transform

    rec = _eval_transform(dm)
    assert rec["mean"] == [0.286] and rec["std"] == [0.353] and rec["pipeline"] == "tensor"
    assert _eval_transform(object()) == ""  # data the preprocessing cannot describe: as before
