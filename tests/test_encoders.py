"""Bring your own encoder (issue #17 item 1): ``eval.py encoder=timm|sentence_transformers``.

Real data (Fashion-MNIST, WordNet), real models (timm ResNets, the bundled all-MiniLM-L6-v2),
the real CLI; references computed here: a timm model built and loaded by hand, MiniLM through
transformers (:class:`mrl.models.text.TextEncoder`), numpy brute-force 1-NN, nDCG and Hamming
ranking.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from mrl.data import FashionMNISTDataModule
from mrl.data.wordnet import CACHE_ROOT, WordNetDataModule
from mrl_test_utils import run_cli_cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FMNIST = [
    "data=fashion_mnist",
    "data.subset=600",
    "data.val_size=100",
    "data.test_subset=200",
    "logger=csv",
    "eval=[knn]",
]
WORDNET = ["data=wordnet", "data.max_synsets=4000", "logger=csv"]


def _offline_env(monkeypatch, cache) -> None:
    """Every CLI case offline, with ``cache`` as the Hugging Face hub cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def _imagenet_style_resnet18() -> dict[str, torch.Tensor]:
    """A random resnet18 state dict as timm publishes one (RGB 7x7 stem, 1000-class fc)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():  # no zero-init residual gates, BatchNorm variances away from 1
        for mod in model.modules():  # (so loading them matters); features then differ
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.running_var.uniform_(0.5, 1.5)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _fake_hub_cache(cache, repo: str, weights: dict[str, torch.Tensor]) -> None:
    """The layout huggingface_hub leaves after a download: refs/main -> snapshots/<rev>/."""
    rev = "0" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / rev).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    save_file(weights, str(folder / "snapshots" / rev / "model.safetensors"))


def _reference_embeddings(weights, split_loaders) -> dict[str, np.ndarray]:
    """The features a grey-input resnet18 with these weights gives, built by hand: timm's
    1-channel model, the RGB stem summed over its input channels, no classifier."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1)
    state = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    state["conv1.weight"] = weights["conv1.weight"].sum(dim=1, keepdim=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    out = {}
    with torch.no_grad():
        for split, loader in split_loaders.items():
            xs, ys = zip(*[(model(x), y) for x, y in loader], strict=True)
            out[f"{split}_x"] = torch.cat(xs).numpy()
            out[f"{split}_y"] = torch.cat(ys).numpy()
    return out


def _one_nn_bounds(train_x, train_y, test_x, test_y, m: int, tol: float = 1e-5):
    """Lowest and highest 1-NN accuracy of L2-normalised m-prefixes, brute force in float64:
    a query whose best scores lie within ``tol`` (float32 rounding decides) counts as right
    in the highest when any of them has its label, in the lowest when all do."""
    a = train_x[:, :m].astype(np.float64)
    b = test_x[:, :m].astype(np.float64)
    s = (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (
        a / np.linalg.norm(a, axis=1, keepdims=True)
    ).T
    near = s >= s.max(axis=1, keepdims=True) - tol
    right = train_y[None, :] == test_y[:, None]
    lo = np.mean(np.all(right | ~near, axis=1))
    hi = np.mean(np.any(right & near, axis=1))
    return float(lo), float(hi)


def _arrays(run) -> dict[str, np.ndarray]:
    return {f.stem: np.load(f) for f in (run / "embeddings").glob("*.npy")}


def test_timm_encoder_from_a_file_a_train_checkpoint_and_the_hub_cache(tmp_path, monkeypatch):
    """One set of ImageNet-style resnet18 weights, given three ways (a .safetensors file, a
    Lightning-style checkpoint with our ``net.backbone.model.`` keys, timm's pretrained weights
    found in the local hub cache offline): the same embeddings as the model built by hand on
    the same images, and kNN metrics equal to brute-force 1-NN on them, at every precision."""
    weights = _imagenet_style_resnet18()
    save_file(weights, str(tmp_path / "r18.safetensors"))
    torch.save(
        {"state_dict": {f"net.backbone.model.{k}": v for k, v in weights.items()}},
        tmp_path / "r18.ckpt",
    )
    _fake_hub_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", weights)
    _offline_env(monkeypatch, tmp_path / "hub")
    common = ["encoder=timm", "encoder.name=resnet18", *FMNIST, "dims=[8,64,512]"]
    cases = [
        (
            "file",
            "eval.py",
            [
                *common,
                f"encoder.checkpoint={tmp_path / 'r18.safetensors'}",
                "eval.precisions=[float32,binary]",
                f"hydra.run.dir={tmp_path / 'file'}",
            ],
            {},
        ),
        (
            "ckpt",
            "eval.py",
            [*common, f"encoder.checkpoint={tmp_path / 'r18.ckpt'}", f"hydra.run.dir={tmp_path}/c"],
            {},
        ),
        (
            "hub",
            "eval.py",
            [*common, "encoder.pretrained=true", f"hydra.run.dir={tmp_path / 'hub_run'}"],
            {},
        ),
    ]
    res = run_cli_cases(cases, tmp_path / "cli")
    for name, r in res.items():
        assert r["code"] == 0, (name, r["stderr"][-2000:])
    dm = FashionMNISTDataModule(subset=600, val_size=100, test_subset=200)
    dm.setup("fit")
    dm.setup("test")
    loaders = {"train": dm.train_eval_dataloader(), "val": dm.val_dataloader()}
    loaders["test"] = dm.test_dataloader()
    ref = _reference_embeddings(weights, loaders)
    runs = {"file": tmp_path / "file", "ckpt": tmp_path / "c", "hub": tmp_path / "hub_run"}
    for name, run in runs.items():
        got = _arrays(run)
        assert sorted(got) == sorted(ref), name
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-4, err_msg=f"{name} {k}")
        meta = json.loads((run / "embeddings" / "meta.json").read_text())["encoder"]
        assert meta["small_input_stem"] is False and meta["width"] == 512  # the 7x7 stem kept
    metrics = json.loads((runs["file"] / "metrics.json").read_text())
    got = _arrays(runs["file"])
    for m in (8, 64, 512):
        lo, hi = _one_nn_bounds(got["train_x"], got["train_y"], got["test_x"], got["test_y"], m)
        assert lo - 1e-12 <= metrics[f"knn/top1@d{m}"] <= hi + 1e-12, (m, lo, hi)
        assert hi - lo <= 0.02  # few near-ties: the bounds pin the metric down
        # binary: sign bits, Hamming distance, ties to the lowest database index
        a, b = got["train_x"][:, :m] > 0, got["test_x"][:, :m] > 0
        ham = (b[:, None, :] != a[None, :, :]).sum(-1)
        nn = np.argsort(ham, axis=1, kind="stable")[:, 0]
        binary = float(np.mean(got["train_y"][nn] == got["test_y"]))
        assert metrics[f"knn/top1@d{m}/binary"] == pytest.approx(binary, abs=1e-12)
    assert "linear/top1@d8" not in metrics  # no trained heads
    assert (runs["file"] / "plots").is_dir() and (runs["file"] / "precisions.json").is_file()


def _ndcg_and_r1(docs, queries, relevant, m):
    """nDCG@10 and R@1 of cosine search on normalised m-prefixes, brute force."""
    d = docs[:, :m] / np.linalg.norm(docs[:, :m], axis=1, keepdims=True)
    q = queries[:, :m] / np.linalg.norm(queries[:, :m], axis=1, keepdims=True)
    order = np.argsort(-(q @ d.T), axis=1, kind="stable")
    rank = np.argmax(order == relevant[:, None], axis=1) + 1.0
    ndcg = np.where(rank <= 10, 1.0 / np.log2(rank + 1.0), 0.0).mean()
    return float(ndcg), float((rank == 1).mean())


def test_minilm_on_wordnet_through_sentence_transformers(tmp_path, monkeypatch):
    """The bundled MiniLM as ``encoder=sentence_transformers`` on a few hundred WordNet test
    synsets: documents = the split's glosses, queries = their lemmas and examples (a prompt
    goes before queries only); embeddings equal MiniLM run through transformers by hand; the
    default evaluator is text retrieval, whose metrics equal a brute-force nDCG@10 / R@1, and
    precisions and the PCA baseline run on it."""
    from mrl.models.text import TextEncoder

    _offline_env(monkeypatch, tmp_path / "hub")
    cases = [
        (
            "plain",
            "eval.py",
            [
                "encoder=sentence_transformers",
                "encoder.name=minilm",
                *WORDNET,
                "dims=[12,48,384]",
                "eval.precisions=[float32,binary]",
                "eval.baselines=[truncate,pca]",
                f"hydra.run.dir={tmp_path / 'plain'}",
            ],
            {},
        ),
        (
            "prompt",
            "eval.py",
            [
                "encoder=sentence_transformers",
                "encoder.name=minilm",
                "encoder.prompt='search_query: '",
                *WORDNET,
                "dims=[384]",
                f"hydra.run.dir={tmp_path / 'prompt'}",
            ],
            {},
        ),
    ]
    res = run_cli_cases(cases, tmp_path / "cli")
    for name, r in res.items():
        assert r["code"] == 0, (name, r["stderr"][-2000:])
    dm = WordNetDataModule(max_synsets=4000, cache_dir=CACHE_ROOT.expanduser())
    queries, docs = dm.pairs("test")
    flat = [q for qs in queries for q in qs]
    relevant = np.asarray([j for j, qs in enumerate(queries) for _ in qs])
    assert 150 < len(docs) < 300 and len(flat) > len(docs)
    got = _arrays(tmp_path / "plain")
    np.testing.assert_array_equal(got["train_y"], np.arange(len(docs)))
    np.testing.assert_array_equal(got["test_y"], relevant)
    enc = TextEncoder("minilm", max_seq_length=256).eval()

    def ref(texts):
        with torch.no_grad():
            z = torch.cat([enc(texts[i : i + 128]) for i in range(0, len(texts), 128)])
        return torch.nn.functional.normalize(z, dim=1).numpy()

    rows = np.random.default_rng(0).choice(len(flat), 100, replace=False)  # the reference's cost
    np.testing.assert_allclose(got["train_x"], ref(docs), atol=2e-5)
    np.testing.assert_allclose(got["test_x"][rows], ref([flat[i] for i in rows]), atol=2e-5)
    prompted = _arrays(tmp_path / "prompt")
    np.testing.assert_array_equal(prompted["train_x"], got["train_x"])  # documents unchanged
    np.testing.assert_allclose(
        prompted["test_x"][rows], ref([f"search_query: {flat[i]}" for i in rows]), atol=2e-5
    )
    assert not np.allclose(prompted["test_x"], got["test_x"], atol=1e-3)

    metrics = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    for m in (12, 48, 384):
        ndcg, r1 = _ndcg_and_r1(got["train_x"], got["test_x"], relevant, m)
        assert metrics[f"text_retrieval/nDCG@10@d{m}"] == pytest.approx(ndcg, abs=1e-9)
        assert metrics[f"text_retrieval/R@1@d{m}"] == pytest.approx(r1, abs=1e-9)
        assert f"text_retrieval/nDCG@10@d{m}/binary" in metrics
    # the width is the model's (384) and short prefixes lose accuracy, PCA recovers some
    assert metrics["text_retrieval/nDCG@10@d384"] > 0.4 > metrics["text_retrieval/nDCG@10@d12"]
    assert metrics["text_retrieval/nDCG@10@d12/pca"] > metrics["text_retrieval/nDCG@10@d12"]


BAD = [
    ("group", ["encoder=foo", "data=fashion_mnist"], r"'foo' is not a config in group 'encoder'"),
    (
        "timm_name",
        ["encoder=timm", "encoder.name=resnet_nope", *FMNIST],
        r"encoder.name='resnet_nope' is not a timm model .*; see timm.list_models",
    ),
    ("no_name", ["encoder=timm", *FMNIST], r"encoder.name is required"),
    (
        "setting",
        ["encoder=timm", "encoder.name=resnet18", "+encoder.bogus=1", *FMNIST],
        r"encoder.bogus is not a setting of encoder=timm; valid: \[",
    ),
    ("no_data", ["encoder=timm", "encoder.name=resnet18"], r"encoder=timm needs the data"),
    (
        "no_file",
        ["encoder=timm", "encoder.name=resnet18", "encoder.checkpoint=/nonexistent.pth", *FMNIST],
        r"encoder.checkpoint='/nonexistent.pth' is not a file; give a .safetensors",
    ),
    (
        "other_arch",
        ["encoder=timm", "encoder.name=resnet18", "encoder.checkpoint={r34}", *FMNIST],
        r"encoder.checkpoint='.*r34.safetensors' does not fit timm model 'resnet18' "
        r"\(unexpected \['layer1.2",
    ),
    (
        "too_wide",
        [
            "encoder=timm",
            "encoder.name=resnet18",
            "encoder.checkpoint={r18}",
            *FMNIST,
            "dims=[8,1000]",
        ],
        r"dims=\[8, 1000\]: \[1000\] not integers in 1..512 \(the embedding width\)",
    ),
    (
        "pretrained_offline",
        ["encoder=timm", "encoder.name=resnet34", "encoder.pretrained=true", *FMNIST],
        r"encoder.name='resnet34' with encoder.pretrained=true cannot be loaded offline.*"
        r"encoder.checkpoint=<file>",
    ),
    (
        "hub_offline",
        ["encoder=sentence_transformers", "encoder.name=nomic-ai/nomic-embed-text-v1.5", *WORDNET],
        r"encoder.name='nomic-ai/nomic-embed-text-v1.5' cannot be loaded offline: it is not in "
        r"the local hub cache",
    ),
    (
        "not_a_folder",
        ["encoder=sentence_transformers", "encoder.name={tmp}", *WORDNET],
        r"encoder.name='.*' is not a model folder \(no modules.json or config.json\)",
    ),
    (
        "images_text",
        ["encoder=timm", "encoder.name=resnet18", *WORDNET],
        r"encoder=timm embeds images but data 'wordnet' is text; use encoder=sentence_transformers",
    ),
    (
        "text_images",
        ["encoder=sentence_transformers", *FMNIST],
        r"encoder=sentence_transformers embeds text but data 'fashion_mnist' is images",
    ),
    (
        "two_sources",
        ["encoder=timm", "encoder.name=resnet18", "ckpt_path=/x.ckpt", *FMNIST],
        r"ckpt_path and encoder are both given; evaluate one source at a time",
    ),
]


def test_bad_encoder_input_is_one_line(tmp_path, monkeypatch):
    """Every bad encoder input stops with one ``error:`` line naming the value and what is
    valid, exit status 2, before any embedding is computed."""
    _offline_env(monkeypatch, tmp_path / "hub")
    torch.manual_seed(0)
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("resnet34").state_dict().items()},
        str(tmp_path / "r34.safetensors"),
    )
    save_file(
        {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()},
        str(tmp_path / "r18.safetensors"),
    )
    (tmp_path / "empty").mkdir()
    subs = {
        "{r34}": str(tmp_path / "r34.safetensors"),
        "{r18}": str(tmp_path / "r18.safetensors"),
        "{tmp}": str(tmp_path / "empty"),
    }

    def fill(arg: str) -> str:
        for k, v in subs.items():
            arg = arg.replace(k, v)
        return arg

    cases = [
        (name, "eval.py", [*map(fill, args), f"hydra.run.dir={tmp_path / name}"], {})
        for name, args, _ in BAD
    ]
    res = run_cli_cases(cases, tmp_path / "cli")
    import re

    for name, _, match in BAD:
        r = res[name]
        lines = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
        assert r["code"] == 2 and len(lines) == 1, (name, r["code"], r["stderr"][-1500:])
        assert re.search(match, lines[0]), (name, lines[0])
        assert not (tmp_path / name / "embeddings").exists(), name


@pytest.mark.slow
def test_a_checkpoint_trained_here_as_a_timm_encoder(trained_run, tmp_path):
    """A ``train.py`` checkpoint given as ``encoder.checkpoint`` (its small-image stem found
    from the weights) embeds exactly as ``eval.py ckpt_path=`` does, and scores the same."""
    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    common = ["logger=csv", "eval=[knn]", "dims=[8,64,512]", "data_overrides.test_subset=1000"]
    cases = [
        ("ckpt", "eval.py", [f"ckpt_path={ckpt}", *common, f"hydra.run.dir={tmp_path / 'a'}"], {}),
        (
            "encoder",
            "eval.py",
            [
                "encoder=timm",
                "encoder.name=resnet18",
                f"encoder.checkpoint={ckpt}",
                "data=fashion_mnist",
                "data.subset=4000",
                "data.val_size=500",
                *common,
                f"hydra.run.dir={tmp_path / 'b'}",
            ],
            {},
        ),
    ]
    res = run_cli_cases(cases, tmp_path / "cli")
    for name, r in res.items():
        assert r["code"] == 0, (name, r["stderr"][-2000:])
    a, b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
    meta = json.loads((tmp_path / "b" / "embeddings" / "meta.json").read_text())
    assert meta["encoder"]["small_input_stem"] is True
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for m in (8, 64, 512):
        assert mb[f"knn/top1@d{m}"] == pytest.approx(ma[f"knn/top1@d{m}"], abs=2e-3)


def test_small_stem_of_a_checkpoint_is_read_from_its_weights(tmp_path):
    """A checkpoint of our small-image ResNet (3x3 stride-1 stem, keys under
    ``net.backbone.model.``): ``small_input_stem: auto`` finds the stem, the encoder embeds as
    the saved backbone does; forcing the other stem is a one-line shape error."""
    from mrl.core.errors import MRLError
    from mrl.encoders import build_encoder, encoder_settings
    from mrl.models.backbone import Backbone

    torch.manual_seed(0)
    saved = Backbone("resnet18", in_chans=1, img_size=28, small_input_stem=True).eval()
    state = {f"net.backbone.{k}": v for k, v in saved.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"dims": [8, 512]}}, tmp_path / "s.ckpt")
    dm = FashionMNISTDataModule(subset=200, val_size=100, test_subset=64)
    spec = {"kind": "timm", "name": "resnet18", "checkpoint": str(tmp_path / "s.ckpt")}
    enc = build_encoder(encoder_settings(spec), dm).eval()
    assert enc.small_input_stem is True and enc.width == 512
    dm.setup("test")
    x, _ = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        np.testing.assert_allclose(enc.embed(x).numpy(), saved(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(
        MRLError,
        match=r"does not fit timm model 'resnet18' \(conv1.weight is "
        r"\(64, 1, 3, 3\), the model's \(64, 1, 7, 7\)\)",
    ) as err:
        build_encoder(encoder_settings({**spec, "small_input_stem": False}), dm)
    assert "\n" not in str(err.value)
