"""Matryoshka dual encoder (ALIGN row, issue #14 item 4): the nested symmetric loss, the
image-text metrics against brute-force references, the caption data (Fashion-MNIST + WordNet,
CSV / JSONL files) and their bad inputs, and one end-to-end run; real data throughout."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mrl.core.errors import MRLError
from mrl.data.image_text import (
    FASHION_SYNSETS,
    TEMPLATES,
    FashionMNISTCaptionsDataModule,
    ImageTextDataModule,
)
from mrl.eval.image_text import cross_modal_recall, knn_topk, zero_shot_top1
from mrl_test_utils import assert_scaled_lr_groups

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIMS = [8, 16, 32, 64]


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def fmnist():
    dm = FashionMNISTCaptionsDataModule(
        subset=300,
        val_size=100,
        test_subset=200,
        batch_size=16,
        eval_batch_size=64,
        seed=0,
        augment=False,
    )
    dm.setup()
    return dm


def test_fashion_captions_are_templates_and_the_wordnet_gloss(fmnist):
    from mrl.data.wordnet import CACHE_ROOT, SYSTEM_ROOT, load_synsets

    caps = fmnist.captions()
    glosses = {
        r["name"]: r["gloss"] for r in load_synsets(str(SYSTEM_ROOT), str(CACHE_ROOT.expanduser()))
    }
    assert len(caps) == 10 and all(len(c) == len(TEMPLATES) + 1 for c in caps)
    for (name, synset), cs in zip(FASHION_SYNSETS, caps, strict=True):
        assert cs[0] == f"a photo of {'an' if name[0] in 'aeiou' else 'a'} {name}."
        assert cs[-1] == glosses[synset]
    assert caps[9][0] == "a photo of an ankle boot."
    assert "footwear" in caps[9][-1] and "carrying money" in caps[8][-1]
    texts, groups = fmnist.eval_texts("test")
    assert len(texts) == len(set(texts)) == 70 and np.bincount(groups).tolist() == [7] * 10
    prompts, cls = fmnist.class_prompts()
    assert len(prompts) == 60 and prompts[cls.tolist().index(3)] == "a photo of a dress."


def test_fashion_caption_batches_follow_the_images_and_splits(fmnist):
    from mrl.data.fashion_mnist import find_idx_files
    from mrl.data.idx import read_idx

    train = fmnist.dataset("train")
    labels = train.images.targets.numpy()
    torch.manual_seed(0)
    batch = next(iter(fmnist.train_dataloader()))
    assert batch["image"].shape == (16, 1, 28, 28) and len(batch["text"]) == 16
    # every caption is one of its image's class captions: find the images by their pixels
    caps = fmnist.captions()
    x_all = train.images.get_batch(range(len(train)))[0]
    for img, text in zip(batch["image"], batch["text"], strict=True):
        i = int(((x_all - img) ** 2).flatten(1).sum(1).argmin())
        assert text in caps[labels[i]]
    torch.manual_seed(0)
    again = next(iter(fmnist.train_dataloader()))
    assert again["text"] == batch["text"]  # seeded: the same draw
    # evaluation: the official test images, group = label = class
    test = next(iter(fmnist.test_dataloader()))
    assert (test["group"] == test["label"]).all() and len(fmnist.dataset("test")) == 200
    files = find_idx_files("/usr/share/datasets/fashion-mnist")
    official = read_idx(files["test_images"])
    idx = fmnist.dataset("test").images.indices[:3].numpy()
    raw = (test["image"][:3, 0] * 0.3530 + 0.2860) * 255
    assert np.abs(raw.numpy() - official[idx]).max() < 1e-3
    other = FashionMNISTCaptionsDataModule(subset=300, val_size=100, test_subset=200, seed=1)
    assert not np.array_equal(
        other.dataset("test").images.indices, fmnist.dataset("test").images.indices
    )


def _write_pngs(tmp_path: Path, n: int = 8) -> tuple[list[str], list[int]]:
    from mrl.data.fashion_mnist import find_idx_files
    from mrl.data.idx import read_idx

    files = find_idx_files("/usr/share/datasets/fashion-mnist")
    x, y = read_idx(files["test_images"])[:n], read_idx(files["test_labels"])[:n]
    (tmp_path / "img").mkdir()
    names = []
    for i in range(n):
        Image.fromarray(x[i]).save(tmp_path / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    return names, [int(v) for v in y]


def test_csv_and_jsonl_pairs_load(tmp_path):
    names, labels = _write_pngs(tmp_path)
    rows = [
        (n, f"caption {k} of image {i}", f"c{labels[i]}")
        for i, n in enumerate(names)
        for k in range(2)
    ]
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", "label"])
        w.writerows(rows)
    dm = ImageTextDataModule(
        tmp_path / "pairs.csv", test_size=2, val_size=2, img_size=28, in_chans=1, batch_size=4
    )
    assert dm.num_classes == len(set(labels)) and dm.class_names == sorted(
        {f"c{v}" for v in labels}
    )
    assert dm.split_sizes() == {"train": 4, "val": 2, "test": 2}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 28, 28) and len(batch["text"]) == 4
    texts, groups = dm.eval_texts("test")
    assert len(texts) == 4 and groups.tolist() == [0, 0, 1, 1]
    test = next(iter(dm.test_dataloader()))
    assert test["group"].tolist() == [0, 1]
    for g, lab in zip(test["group"], test["label"], strict=True):
        img = texts[2 * int(g)].split()[-1]  # "caption k of image i"
        assert dm.class_names[int(lab)] == f"c{labels[int(img)]}"
    # JSONL, no label column: no classes, labels -1
    with open(tmp_path / "pairs.jsonl", "w") as f:
        for n, c, _ in rows:
            f.write(json.dumps({"image": n, "caption": c}) + "\n")
    dm = ImageTextDataModule(tmp_path / "pairs.jsonl", test_size=0.25, val_size=1, img_size=32)
    assert dm.num_classes is None and dm.class_prompts() is None
    assert (next(iter(dm.test_dataloader()))["label"] == -1).all()
    assert next(iter(dm.test_dataloader()))["image"].shape[1:] == (3, 32, 32)


def test_bad_pair_files_are_one_line(tmp_path):
    names, _ = _write_pngs(tmp_path, 3)

    def write(name: str, header: list[str], rows: list[list[str]]) -> Path:
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
        return tmp_path / name

    def error(path, **kw) -> str:
        with pytest.raises(MRLError) as e:
            dm = ImageTextDataModule(path, test_size=1, val_size=0, img_size=28, **kw)
            for split in ("train", "test"):
                list(dm.train_dataloader() if split == "train" else dm.test_dataloader())
        assert "\n" not in str(e.value)
        return str(e.value)

    bad = write("cols.csv", ["file", "text"], [[n, "x"] for n in names])
    msg = error(bad)
    assert "found columns ['file', 'text']" in msg and "'image'" in msg and "'caption'" in msg
    assert "no column 'image'" in error(bad, caption_column="text")
    with open(tmp_path / "cols.jsonl", "w") as f:
        f.write(json.dumps({"image": names[0], "text": "a"}) + "\n")
    assert "found columns ['image', 'text']" in error(tmp_path / "cols.jsonl")
    missing = write("missing.csv", ["image", "caption"], [[names[0], "a"], ["img/nope.png", "b"]])
    msg = error(missing)
    assert "row 2" in msg and str((tmp_path / "img" / "nope.png").resolve()) in msg
    empty = write(
        "empty.csv", ["image", "caption"], [[names[0], "a"], [names[1], "b"], [names[2], "  "]]
    )
    msg = error(empty)
    assert "row 3: empty caption" in msg and names[2] in msg
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    broken = write(
        "broken.csv",
        ["image", "caption"],
        [[n, f"c{i}"] for i, n in enumerate([*names, "img/broken.png"])],
    )
    msg = error(broken)
    assert msg.startswith("cannot read image") and str(tmp_path / "img" / "broken.png") in msg


# ---------------------------------------------------------------------------- metrics
def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cross_modal_recall_equals_brute_force():
    rng = np.random.default_rng(0)
    img_group = rng.integers(0, 30, 120)
    txt_group = np.concatenate([np.arange(30), rng.integers(0, 30, 50)])
    centers = rng.normal(size=(30, 32))
    images = centers[img_group] + 1.2 * rng.normal(size=(120, 32))
    texts = centers[txt_group] + 1.2 * rng.normal(size=(80, 32))
    dims, ks = [4, 8, 32], (1, 5, 10)
    got = cross_modal_recall(images, texts, img_group, txt_group, dims, ks, "t/")
    assert len(got) == 2 * len(dims) * len(ks)
    for m in dims:
        for name, q, qg, db, dg in (
            ("i2t", images, img_group, texts, txt_group),
            ("t2i", texts, txt_group, images, img_group),
        ):
            s = _unit(q[:, :m]) @ _unit(db[:, :m]).T
            for k in ks:
                hits = 0
                for i in range(len(q)):
                    top = sorted(range(len(db)), key=lambda j: (-s[i, j], j))[:k]
                    hits += any(dg[j] == qg[i] for j in top)
                assert got[f"t/{name}_R@{k}@d{m}"] == pytest.approx(hits / len(q)), (name, k, m)
    assert 0 < got["t/i2t_R@1@d4"] < got["t/i2t_R@1@d32"] < 1


def test_zero_shot_and_knn_equal_numpy_references():
    rng = np.random.default_rng(1)
    c, n, d = 6, 90, 24
    centers = rng.normal(size=(c, d))
    labels = rng.integers(0, c, n)
    images = centers[labels] + 1.5 * rng.normal(size=(n, d))
    prompt_class = np.repeat(np.arange(c), 3)
    prompts = centers[prompt_class] + rng.normal(size=(len(prompt_class), d))
    dims = [3, 6, 24]
    got = zero_shot_top1(images, labels, prompts, prompt_class, c, dims)
    for m in dims:
        w = np.stack([_unit(prompts[prompt_class == k, :m]).mean(0) for k in range(c)])
        pred = np.argmax(_unit(images[:, :m]) @ _unit(w).T, axis=1)
        assert got[f"zeroshot_top1@d{m}"] == pytest.approx(np.mean(pred == labels))
    assert 1 / c < got["zeroshot_top1@d24"] < 1
    train_y = rng.integers(0, c, 200)
    train_x = centers[train_y] + 1.5 * rng.normal(size=(200, d))
    got = knn_topk(train_x, train_y, images, labels, c, dims, (1, 5), n_neighbors=10, T=0.1)
    for m in dims:
        s = _unit(images[:, :m]) @ _unit(train_x[:, :m]).T
        top1 = top5 = 0
        for i in range(n):
            nn = np.argsort(-s[i], kind="stable")[:10]
            votes = np.zeros(c)
            for j in nn:
                votes[train_y[j]] += np.exp((s[i, j] - s[i, nn[0]]) / 0.1)
            order = sorted(range(c), key=lambda k: (-votes[k], k))
            top1 += order[0] == labels[i]
            top5 += labels[i] in order[:5]
        assert got[f"knn_top1@d{m}"] == pytest.approx(top1 / n)
        assert got[f"knn_top5@d{m}"] == pytest.approx(top5 / n)


# ---------------------------------------------------------------------------- loss
@pytest.fixture(scope="module")
def module():
    from mrl.objectives.image_text import ImageTextLitModule

    torch.manual_seed(0)
    return ImageTextLitModule(
        {"name": "resnet18", "channels": [16, 32, 64, 128], "small_input_stem": False},
        {"name": "minilm", "pooling": "mean", "max_seq_length": 32},
        in_chans=1,
        img_size=28,
        num_classes=10,
        embed_dim=64,
        dims=DIMS,
        weights={8: 2.0},
        temperature=0.07,
        symmetric=True,
    )


def test_nested_symmetric_loss_equals_library_loss_per_prefix(module, fmnist):
    """Sum over prefixes of sentence-transformers' MultipleNegativesRankingLoss (both
    directions) on normalised slices, and a float64 cross-entropy, on a real batch."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util import dot_score

    torch.manual_seed(0)
    batch = next(iter(fmnist.train_dataloader()))  # strings: no tokenizer given
    assert len(set(batch["text"])) < len(batch["text"])  # repeated captions: the shortcut runs
    module.eval()  # BatchNorm: the same statistics in both computations
    with torch.no_grad():
        per = module.prefix_losses(batch)
        img = module.net.image_proj(module.net.backbone(batch["image"]))
        txt = module.net.text_proj(module.net.text(batch["text"]))  # every caption encoded
    lib = MultipleNegativesRankingLoss(
        model=None,
        scale=1 / 0.07,
        similarity_fct=dot_score,
        directions=("query_to_doc", "doc_to_query"),
        partition_mode="per_direction",
    )
    assert list(per) == DIMS
    total = sum(module.prefix_weights[m] * per[m] for m in DIMS)
    ref_total = 0.0
    for m in DIMS:
        a, b = F.normalize(img[:, :m], dim=1), F.normalize(txt[:, :m], dim=1)
        ref = lib.compute_loss_from_embeddings([a, b], None)
        logits = a.double() @ b.double().T / 0.07
        target = torch.arange(len(a))
        ce = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        assert per[m].item() == pytest.approx(ref.item(), rel=1e-5), m
        assert per[m].item() == pytest.approx(ce.item(), rel=1e-5), m
        ref_total += (2.0 if m == 8 else 1.0) * ref.item()
    assert total.item() == pytest.approx(ref_total, rel=1e-5)
    module.train()


def test_text_tower_learns_at_a_scaled_rate(module):
    """objective.text_lr_scale (0.02 in experiment=align_fashion_mnist): the text tower's groups
    at lr * scale, the image tower and projections at lr; each parameter in one group."""
    module.text_lr_scale = 0.02
    try:
        assert_scaled_lr_groups(module, module.net.text.parameters(), 0.02)
    finally:
        module.text_lr_scale = 1.0


def test_ff_and_bad_settings(module):
    from mrl.objectives.image_text import ImageTextLitModule

    args = (
        {"name": "resnet18", "channels": [16, 32, 64, 128], "small_input_stem": False},
        {"name": "minilm", "max_seq_length": 16},
    )
    ff = ImageTextLitModule(*args, in_chans=1, img_size=28, embed_dim=64, dims=DIMS, ff_dim="max")
    assert ff.method == "FF-64" and ff.dims == [64] and ff.eval_dims == DIMS
    ff16 = ImageTextLitModule(*args, in_chans=1, img_size=28, embed_dim=64, dims=DIMS, ff_dim=16)
    assert ff16.net.embed_dim == 16 and ff16.eval_dims == [8, 16]
    with pytest.raises(MRLError, match="exceeds objective.embed_dim=64"):
        ImageTextLitModule(*args, in_chans=1, img_size=28, embed_dim=64, dims=[8, 128])
    with pytest.raises(MRLError, match="mrl.efficient"):
        ImageTextLitModule(*args, in_chans=1, img_size=28, efficient=True)


def test_pca_baseline_is_one_transform_fitted_on_the_training_images(module, fmnist):
    """objective.baselines=[truncate,pca]: one PCA for both towers (a caption's row does not
    depend on which matrix it is in), fitted on the training images only (other test rows leave
    it unchanged), components in order of decreasing variance; adaptor and unknown names are
    one-line errors."""
    from mrl.objectives.image_text import ImageTextLitModule

    batches = iter(fmnist.train_dataloader())
    test = next(batches)
    train = torch.cat([next(batches)["image"] for _ in range(6)])  # 96 images > 64 dims
    module.eval()
    with torch.no_grad():
        emb = {
            "image": module.embed(test["image"]).numpy(),
            "text": module.embed_texts(test["text"]),
            "train": module.embed(train).numpy(),
        }
    module.train()
    out = module._transformed("pca", emb)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in emb.items()}
    swapped = module._transformed("pca", {**emb, "image": emb["text"], "text": emb["image"]})
    np.testing.assert_allclose(swapped["image"], out["text"], atol=1e-5)
    np.testing.assert_allclose(swapped["train"], out["train"], atol=1e-5)
    fewer = module._transformed("pca", {**emb, "image": emb["image"][:5], "text": emb["text"][:3]})
    np.testing.assert_allclose(fewer["train"], out["train"], atol=1e-5)  # test rows: not fitted
    np.testing.assert_allclose(fewer["image"], out["image"][:5], atol=1e-5)
    var = out["train"].var(axis=0)
    assert np.all(np.diff(var) <= 1e-6) and var[0] > 10 * var[-1]
    np.testing.assert_allclose(out["train"].mean(axis=0), 0.0, atol=1e-4)

    args = (
        {"name": "resnet18", "channels": [16, 32, 64, 128], "small_input_stem": False},
        {"name": "minilm", "max_seq_length": 16},
    )
    with pytest.raises(
        MRLError,
        match=r"baselines='adaptor' is not a baseline; use some of \['truncate', 'pca', 'random_projection'\]$",
    ):
        ImageTextLitModule(*args, in_chans=1, img_size=28, baselines=["truncate", "adaptor"])
    with pytest.raises(MRLError, match="objective.baselines='pcaa' is not a baseline"):
        ImageTextLitModule(*args, in_chans=1, img_size=28, baselines=["pcaa"])
    with pytest.raises(MRLError, match="objective.baselines='pca' must be a non-empty list"):
        ImageTextLitModule(*args, in_chans=1, img_size=28, baselines="pca")


# ---------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_align_experiment_end_to_end_writes_per_prefix_metrics(cfg_factory):
    from mrl.tasks.train import train

    cfg = cfg_factory(
        "experiment=align_fashion_mnist",
        "data.subset=192",
        "data.val_size=64",
        "data.test_subset=128",
        "data.batch_size=32",
        "model.channels=[16,32,64,128]",
        "trainer.limit_train_batches=3",
    )
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric == "val/i2t_R@1"
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    run = json.loads((out / "run.json").read_text())
    dims = [8, 16, 32, 64, 128, 256]
    assert run["status"] == "completed" and run["dims"] == dims and run["global_step"] == 3
    for m in dims:
        for name in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
            assert 0 <= metrics[f"test/{name}@d{m}"] <= 1, (name, m)
        assert metrics[f"test/i2t_R@1@d{m}"] <= metrics[f"test/i2t_R@10@d{m}"]
        for name in ("zeroshot_top1", "knn_top1", "knn_top5"):
            assert 0 < metrics[f"test/{name}@d{m}"] <= 1, (name, m)
        assert metrics[f"train/loss@d{m}"] > 0
    assert metrics["test/i2t_R@1"] == metrics["test/i2t_R@1@d256"]
    assert 0 <= metrics["val/i2t_R@1"] <= 1
