"""objective=mlm (issue #14 item 3): BERT's masked-language loss with a Matryoshka output layer
tied to the input embeddings, on real WordNet glosses and examples with the bundled MiniLM."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from mrl.core.errors import MRLError
from mrl_test_utils import assert_scaled_lr_groups

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIMS = [12, 24, 48, 96, 192, 384]


@pytest.fixture(scope="module")
def dm():
    from mrl.data.wordnet import WordNetDataModule

    return WordNetDataModule(max_synsets=300, test_size=0.2, task="mlm", batch_size=16, seed=0)


@pytest.fixture(scope="module")
def module():
    from mrl.objectives.mlm import MLMLitModule

    return MLMLitModule({"name": "minilm", "max_seq_length": 32}, dims="auto")


def test_texts_are_glosses_then_examples(dm):
    recs = dm.synsets("train")
    texts = dm.texts("train")
    assert texts[: 1 + len(recs[0]["examples"])] == [recs[0]["gloss"], *recs[0]["examples"]]
    assert len(texts) == sum(1 + len(r["examples"]) for r in recs)
    assert len(dm.synsets("train")) > 200  # task=mlm keeps synsets without queries too


def test_masking_follows_the_collator_and_is_seeded(dm, module):
    """Labels hold the original token at masked positions only (-100 elsewhere), special
    tokens are never masked, about 15 % are masked, and evaluation masks repeat."""
    masker = module.masking_tokenizer()
    texts = dm.texts("train")[:200]
    batch = masker(texts, seed=3)
    plain = module.net.tokenizer(texts, truncation=True, max_length=32, padding=True)
    ids, labels = batch["input_ids"], batch["labels"]
    orig = torch.tensor(plain["input_ids"])
    assert ids.shape == orig.shape and torch.equal(
        batch["attention_mask"], torch.tensor(plain["attention_mask"])
    )
    at = labels != -100
    assert torch.equal(labels[at], orig[at]) and torch.equal(ids[~at], orig[~at])
    special = torch.isin(orig, torch.tensor(module.net.tokenizer.all_special_ids))
    assert not (at & special).any()
    rate = at.sum().item() / (~special).sum().item()
    assert 0.12 < rate < 0.18, rate
    mask_id = module.net.tokenizer.mask_token_id
    assert 0.7 < (ids[at] == mask_id).float().mean().item() < 0.9  # 80 % [MASK]
    assert torch.equal(masker(texts, seed=3)["labels"], labels)
    assert not torch.equal(masker(texts, seed=4)["labels"], labels)
    # the data module's evaluation batches: the same masks every time
    dm.set_tokenizer(masker)
    try:
        first = next(iter(dm.test_dataloader()))
        again = next(iter(dm.test_dataloader()))
        assert torch.equal(first["labels"], again["labels"])
        assert first["input_ids"].shape[0] == 16
    finally:
        dm.set_tokenizer(None)


def test_tied_prefix_logits_equal_an_independent_product(dm, module):
    """logits_m = transform(h)[:, :m] @ E[:, :m]^T + b over the whole vocabulary, against a
    float64 computation from BERT's head formula written here (dense, gelu, LayerNorm)."""
    module.eval()
    batch = module.masking_tokenizer()(dm.texts("test")[:8], seed=0)
    with torch.no_grad():
        logits, target = module.masked_logits(batch)
        hidden = module.net.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    at = batch["labels"] != -100
    assert list(logits) == DIMS and torch.equal(target, batch["labels"][at])
    E = module.net.model.embeddings.word_embeddings.weight.double()
    assert module.head.weight is module.net.model.embeddings.word_embeddings.weight  # tied
    t = module.head.transform
    h = hidden[at].double() @ t.dense.weight.double().T + t.dense.bias.double()
    h = 0.5 * h * (1 + torch.erf(h / 2**0.5))  # BERT's gelu
    h = F.layer_norm(
        h, (h.shape[-1],), t.LayerNorm.weight.double(), t.LayerNorm.bias.double(), t.LayerNorm.eps
    )
    b = module.head.bias.double()
    for m in DIMS:
        ref = h[:, :m] @ E[:, :m].T + b
        assert logits[m].shape == (int(at.sum()), E.shape[0])
        assert torch.allclose(logits[m].double(), ref, atol=1e-4), m
    per = module.prefix_losses(batch)
    for m in DIMS:
        assert per[m].item() == pytest.approx(
            F.cross_entropy(logits[m].double(), target).item(), rel=1e-5
        )
    # the new head's parameters are its transform and bias; the decoder is E itself
    names = {n for n, _ in module.named_parameters() if n.startswith("head.")}
    assert names == {
        "head.bias",
        "head.transform.dense.weight",
        "head.transform.dense.bias",
        "head.transform.LayerNorm.weight",
        "head.transform.LayerNorm.bias",
    }


@pytest.mark.slow
def test_a_few_steps_on_real_glosses_reduce_the_loss(dm):
    from mrl.objectives.mlm import MLMLitModule

    torch.manual_seed(0)
    module = MLMLitModule({"name": "minilm", "max_seq_length": 24}, dims=[12, 48, 384])
    module.train()
    masker = module.masking_tokenizer()
    texts = dm.texts("train")[:32]
    batches = [masker(texts[i : i + 16], seed=i) for i in (0, 16)]
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)

    def total() -> tuple[float, dict]:
        with torch.no_grad():
            module.eval()
            per = [module.prefix_losses(b) for b in batches]
            module.train()
        return {m: sum(p[m].item() for p in per) / 2 for m in module.dims}

    before = total()
    for step in range(8):
        per = module.prefix_losses(batches[step % 2])
        loss = sum(per.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = total()
    # measured: d12 10.34 -> 9.88, d48 10.35 -> 9.33, d384 10.68 -> 5.10
    for m in module.dims:
        assert after[m] < before[m] - 0.2, (m, before, after)
    assert after[384] < before[384] - 2.0 and after[384] < after[12]


def test_the_output_bias_starts_at_the_training_tokens_log_prior(dm, monkeypatch):
    """bias_init=prior (the default): fitting sets the bias to the add-one smoothed log
    frequency of the tokens of the first PRIOR_TEXTS training texts (100 here), counted here
    independently; special tokens get
    the smoothing count only; every prefix then predicts the unigram model's tokens from the
    start (the bias is the same for all). bias_init=zeros keeps BERT's zeros."""
    from collections import Counter
    from types import SimpleNamespace

    from mrl.objectives import mlm
    from mrl.objectives.mlm import MLMLitModule

    def fitted(**kwargs) -> MLMLitModule:  # setup("fit") as the trainer calls it
        module = MLMLitModule({"name": "minilm", "max_seq_length": 32}, **kwargs)
        assert not module.head.bias.any()
        module._trainer = SimpleNamespace(datamodule=dm)
        try:
            module.setup("fit")
        finally:
            module._trainer = None
            dm.set_tokenizer(None)
        return module

    monkeypatch.setattr(mlm, "PRIOR_TEXTS", 100)
    module = fitted(dims=[12, 384])
    assert module.bias_init == "prior"
    tok = module.net.tokenizer
    counts = Counter()
    assert len(dm.texts("train")) > 300
    for text in dm.texts("train")[:100]:
        counts.update(tok(text, truncation=True, max_length=32)["input_ids"])
    for t in tok.all_special_ids:
        counts[t] = 0
    total = sum(counts.values()) + len(tok)
    bias = module.head.bias.detach()
    for t in (tok.convert_tokens_to_ids("the"), tok.convert_tokens_to_ids("of"), tok.cls_token_id):
        assert bias[t].item() == pytest.approx(math.log((counts[t] + 1) / total), abs=1e-4)
    assert int(bias.argmax()) == counts.most_common(1)[0][0]
    assert tok.convert_ids_to_tokens(int(bias.argmax())) in ("a", "the", "of")
    assert bias[tok.mask_token_id] == bias.min()  # never in a text: smoothing count only

    assert not fitted(bias_init="zeros").head.bias.any()
    with pytest.raises(
        MRLError, match=r"objective.bias_init='log' is not one of \['prior', 'zeros'\]"
    ):
        MLMLitModule({"name": "minilm"}, bias_init="log")


def test_ff_trains_one_prefix_and_reads_every_smaller_one(dm, module):
    """mrl.ff_dim=k: the loss has the prefix-k term only; evaluation reads every nesting dim up
    to k from the same tied output (equal to the MRL module's logits with the same head)."""
    from mrl.objectives.mlm import MLMLitModule

    ff = MLMLitModule({"name": "minilm", "max_seq_length": 32}, dims="auto", ff_dim="max")
    assert (ff.dims, ff.eval_dims, ff.method) == ([384], DIMS, "FF-384")
    ff.head.load_state_dict(module.head.state_dict())
    ff.eval(), module.eval()
    batch = module.masking_tokenizer()(dm.texts("test")[:8], seed=0)
    with torch.no_grad():
        assert list(ff.prefix_losses(batch)) == [384]
        ours, _ = ff.masked_logits(batch, ff.eval_dims)
        ref, _ = module.masked_logits(batch)
        ff.on_test_epoch_start()
        ff._eval_step(batch)
    assert list(ours) == DIMS
    for m in DIMS:
        assert torch.allclose(ours[m], ref[m], atol=1e-5), m
    assert list(ff._eval) == DIMS and all(v[2] > 0 for v in ff._eval.values())
    with pytest.raises(MRLError, match="mrl.ff_dim=0 must be an integer in 1..384"):
        MLMLitModule({"name": "minilm"}, ff_dim=0)


def test_mlm_bad_input_is_one_line(cfg_factory, module):
    from mrl.objectives.mlm import MLMLitModule
    from mrl.tasks.train import build_datamodule, build_module

    with pytest.raises(MRLError, match="mlm_probability"):
        MLMLitModule({"name": "minilm"}, mlm_probability=1.5)
    with pytest.raises(MRLError, match="exceeds the width 384"):
        MLMLitModule({"name": "minilm"}, dims=[12, 512])
    with pytest.raises(MRLError, match="unmasked batch"):
        module.prefix_losses({"text": ["a gloss"]})
    cfg = cfg_factory("objective=mlm", "model=hf_text")  # image data
    with pytest.raises(MRLError, match="data.task=mlm") as e:
        build_module(cfg, build_datamodule(cfg))
    assert "\n" not in str(e.value)


def test_the_new_head_learns_at_a_scaled_rate(module):
    """head_lr_scale: the head's groups run at lr * scale, the encoder's at lr; every
    parameter is in exactly one group; the schedule starts from those rates."""
    module.head_lr_scale = 10.0
    try:
        assert_scaled_lr_groups(module, module.head.parameters(), 10.0)
    finally:
        module.head_lr_scale = 1.0
