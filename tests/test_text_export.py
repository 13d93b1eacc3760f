"""Text models exported as sentence-transformers folders (issue #14 item 6): a real tiny
WordNet run, ``mrl-export`` -> ``SentenceTransformer(folder, truncate_dim=m)`` offline, against
the checkpoint's encoder rebuilt here from the raw state dict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIMS = [12, 24, 48, 96, 192, 384]
SEQ = 16


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A 3-step experiment=text_wordnet run on 120 synsets (run dir, its config)."""
    from omegaconf import OmegaConf

    from mrl.tasks.train import train
    from mrl_test_utils import compose_cfg

    out = tmp_path_factory.mktemp("text") / "run"
    cfg = compose_cfg(
        "train",
        out,
        "experiment=text_wordnet",
        "data.max_synsets=120",
        "data.val_size=0.1",
        "data.test_size=0.2",
        "data.batch_size=16",
        f"model.max_seq_length={SEQ}",
        "trainer.limit_train_batches=3",
        "optim.lr=1e-4",
    )
    train(cfg)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out, cfg


@pytest.fixture(scope="module")
def exported(text_run, tmp_path_factory):
    from mrl.export import main

    out = tmp_path_factory.mktemp("st") / "wordnet-minilm"
    main([str(text_run[0]), "--out", str(out)])  # --format auto: a text model
    return out


def _checkpoint_encoder(run: Path):
    """The trained encoder, from the checkpoint's raw ``net.model.*`` tensors (not mrl.export)."""
    from mrl.models.text import TextEncoder

    raw = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    enc = TextEncoder("minilm", max_seq_length=SEQ)
    state = {k[4:]: v for k, v in raw["state_dict"].items() if k.startswith("net.model.")}
    enc.load_state_dict(state, strict=True)
    return enc.eval()


@pytest.mark.slow
def test_export_reloads_with_sentence_transformers(text_run, exported):
    from sentence_transformers import SentenceTransformer

    from mrl.data.wordnet import WordNetDataModule

    dm = WordNetDataModule(max_synsets=120, val_size=0.1, test_size=0.2)
    texts, _ = dm.glosses("test")
    texts = texts[:20] + [" ".join(texts)]  # one far longer than max_seq_length tokens
    enc = _checkpoint_encoder(text_run[0])
    with torch.no_grad():
        want = enc(texts).numpy()
        base = _base_encoder()(texts).numpy()
    assert np.abs(want - base).max() > 1e-3  # the export holds the trained weights

    st = SentenceTransformer(str(exported), device="cpu", local_files_only=True)
    assert st.max_seq_length == SEQ and st.get_embedding_dimension() == 384
    full = st.encode(texts, convert_to_numpy=True)
    assert np.abs(full - want).max() <= 1e-5
    for m in (12, 64, 384):  # trained prefixes and an interpolated one
        st_m = SentenceTransformer(str(exported), device="cpu", truncate_dim=m)
        z = st_m.encode(texts, convert_to_numpy=True)
        assert z.shape == (len(texts), m)
        assert np.abs(z - want[:, :m]).max() <= 1e-5, m
        zn = st_m.encode(texts, normalize_embeddings=True)
        ref = want[:, :m] / np.linalg.norm(want[:, :m], axis=1, keepdims=True)
        assert np.abs(zn - ref).max() <= 1e-5, m


@pytest.mark.slow
def test_export_metadata_lists_the_matryoshka_dims(text_run, exported):
    run = json.loads((text_run[0] / "run.json").read_text())
    assert run["dims"] == DIMS
    mteb = json.loads((exported / "mteb_model_meta.json").read_text())
    assert mteb["embed_dim"] == DIMS and mteb["max_tokens"] == SEQ
    assert mteb["similarity_fn_name"] == "cosine" and mteb["modalities"] == ["text"]
    meta = json.loads((exported / "mrl_export.json").read_text())
    assert meta["dims"] == DIMS and meta["method"] == "MRL" and meta["pooling"] == "mean"
    assert meta["check"]["max_abs_diff"] <= 1e-5 and not meta["normalized"]
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode", pooling.get("pooling_mode_mean_tokens")) in ("mean", True)
    card = (exported / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and str(DIMS) in card
    assert "nDCG@10" in card  # the run's per-prefix results
    # the folder is also a transformers folder our TextEncoder reads (model.name=<folder>)
    from mrl.models.text import check_model_dir

    check_model_dir(exported, str(exported))


@pytest.mark.slow
def test_text_export_bad_input_is_one_line(text_run, exported, tmp_path, capsys):
    from mrl.export import main

    cases = [
        ([str(text_run[0]), "--format", "mrl", "--out", str(tmp_path / "a")], "text model"),
        ([str(text_run[0]), "--out", str(exported)], "not an empty folder"),
    ]
    fake = tmp_path / "image.ckpt"  # an image model's hyper-parameters
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"name": "resnet18"}}}, fake)
    cases.append(([str(fake), "--format", "sentence-transformers"], "needs a text model"))
    for argv, match in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: ") and "\n" not in err
        assert match in err, err
    assert not (tmp_path / "a").exists()


def _base_encoder():
    from mrl.models.text import TextEncoder

    return TextEncoder("minilm", max_seq_length=SEQ).eval()


@pytest.mark.parametrize("objective", ["classification", "mlm"])
def test_every_text_objective_exports_its_encoder(objective, tmp_path):
    """The encoder of a text classifier (``net.backbone.model.*``, heads dropped) or of an MLM
    module (``net.model.*``, MLM head dropped) is what the sentence-transformers folder holds."""
    from sentence_transformers import SentenceTransformer

    from mrl.export import ST_META, text_encoder_of, write_sentence_transformers
    from mrl.objectives.mlm import MLMLitModule
    from mrl.objectives.text_classification import TextClassifierLitModule

    model = {"_target_": "mrl.models.text.TextEncoder", "name": "minilm", "max_seq_length": SEQ}
    if objective == "mlm":
        module = MLMLitModule(model, dims=[16, 64, 384])
        encoder = module.net
    else:
        module = TextClassifierLitModule(model, num_classes=45, dims=[16, 64, 384])
        encoder = module.net.backbone
    with torch.no_grad():  # make the weights differ from the bundled MiniLM's
        encoder.model.embeddings.word_embeddings.weight.mul_(1.5)
    raw = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    got, info = text_encoder_of(raw, tmp_path / "x.ckpt")
    assert info["dims"] == [16, 64, 384]
    assert info["method"] == ("MRL-E" if objective == "mlm" else "MRL")
    out = write_sentence_transformers(got, info, tmp_path / "st")
    texts = ["a domestic canine", "the bank of a river"]
    with torch.no_grad():
        want = encoder.eval()(texts).numpy()
    st = SentenceTransformer(str(out), device="cpu", truncate_dim=16, local_files_only=True)
    assert np.abs(st.encode(texts) - want[:, :16]).max() <= 1e-5
    assert json.loads((out / ST_META).read_text())["dims"] == [16, 64, 384]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left
