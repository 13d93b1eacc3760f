import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.eval import (
    adaptive_classification,
    adaptive_classification_curve,
    adaptive_retrieval,
    cascade,
    learn_thresholds,
)
from mrl.eval.adaptive import rerank_scores, softmax_confidence


def two_class_logits(conf: list[float]) -> np.ndarray:
    """Logits ``[a, 0]`` whose max softmax is ``conf`` (> 0.5) for class 0."""
    c = np.asarray(conf)
    return np.stack([np.log(c / (1 - c)), np.zeros_like(c)], axis=1)


def test_softmax_confidence():
    conf, pred = softmax_confidence(np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, np.log(3)]]))
    np.testing.assert_allclose(conf, [0.5, 1.0, 0.75])
    np.testing.assert_array_equal(pred, [0, 0, 1])


def test_learn_thresholds_by_hand():
    # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.6 (right): accepting the top
    # 1, 2, 3, 4 gives precision 1, 1/2, 2/3, 3/4
    logits = {2: two_class_logits([0.9, 0.8, 0.7, 0.6]), 8: np.zeros((4, 2))}
    y = np.array([0, 1, 0, 0])
    assert learn_thresholds(logits, y, 0.75) == {2: pytest.approx(0.6), 8: 0.0}
    assert learn_thresholds(logits, y, 0.70)[2] == pytest.approx(0.6)  # smallest threshold
    assert learn_thresholds(logits, y, 0.80)[2] == pytest.approx(0.9)
    assert learn_thresholds(logits, y, 1.00)[2] == pytest.approx(0.9)
    # ties: a threshold of 0.9 accepts both 0.9s (1 right, 1 wrong) -> precision 1/2
    tied = {2: two_class_logits([0.9, 0.9, 0.7]), 8: np.zeros((3, 2))}
    assert learn_thresholds(tied, np.array([0, 1, 0]), 0.9)[2] == float("inf")
    assert learn_thresholds(tied, np.array([0, 1, 0]), 0.6)[2] == pytest.approx(0.7)


def test_cascade_by_hand():
    logits = {
        2: two_class_logits([0.9, 0.6, 0.8]),  # predicts class 0
        4: np.array([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]),  # predicts class 1
    }
    pred, used = cascade(logits, {2: 0.75, 4: 0.0})
    np.testing.assert_array_equal(pred, [0, 1, 0])
    np.testing.assert_array_equal(used, [2, 4, 2])
    pred, used = cascade(logits, {2: float("inf"), 4: 0.99})  # the last always answers
    np.testing.assert_array_equal(used, [4, 4, 4])


def synthetic_logits(n: int, seed: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Per-prefix logits whose signal (and accuracy) grows with the prefix size."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    strength = {4: 1.0, 16: 2.0, 64: 3.5}
    return {m: np.eye(5)[y] * s + rng.standard_normal((n, 5)) for m, s in strength.items()}, y


def reference_cascade_point(calib, cy, test, ty, target):
    """(test top-1, mean answering prefix) of a cascade written from its definition: at each
    prefix but the last, the smallest calibration confidence t whose accepted set
    (confidence >= t) is correct at a rate >= target (none: the prefix never answers); a test
    item is answered by the first prefix where its confidence reaches t, else by the last."""

    def conf_pred(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).max(1), z.argmax(1)

    dims = sorted(calib)
    thresholds = {}
    for m in dims[:-1]:
        conf, pred = conf_pred(calib[m])
        ok = [t for t in sorted(set(conf)) if np.mean(pred[conf >= t] == cy[conf >= t]) >= target]
        thresholds[m] = ok[0] if ok else np.inf
    right, spent = 0, 0
    for i in range(len(ty)):
        for m in dims:
            conf, pred = conf_pred(test[m][i : i + 1])
            if m == dims[-1] or conf[0] >= thresholds[m]:
                right += int(pred[0] == ty[i])
                spent += m
                break
    return right / len(ty), spent / len(ty)


def test_adaptive_classification_synthetic():
    calib, cy = synthetic_logits(2000, 0)
    test, ty = synthetic_logits(2000, 1)
    out = adaptive_classification(calib, cy, test, ty)
    largest_acc = np.mean(test[64].argmax(1) == ty)
    assert out["adaptive_cls/max_prefix_top1"] == pytest.approx(largest_acc)
    assert out["adaptive_cls/top1"] > 0.9 and out["adaptive_cls/top1"] >= largest_acc - 0.03
    assert 4 < out["adaptive_cls/expected_dim"] < 64  # some items stop early
    # an independent brute-force cascade gives the same operating points
    ref = reference_cascade_point(calib, cy, test, ty, np.mean(calib[64].argmax(1) == cy))
    assert out["adaptive_cls/top1"] == pytest.approx(ref[0], abs=1e-12)
    assert out["adaptive_cls/expected_dim"] == pytest.approx(ref[1], abs=1e-12)
    acc4 = np.mean(calib[4].argmax(1) == cy)
    points = [
        reference_cascade_point(calib, cy, test, ty, p)
        for p in [*np.linspace(acc4, 1.0, 41), np.mean(calib[64].argmax(1) == cy)]
    ] + [(largest_acc, 64.0)]  # target inf: the largest prefix answers everything
    match = min((d, -t) for t, d in points if t >= largest_acc - 0.005)
    assert out["adaptive_cls/dim_to_match"] == pytest.approx(match[0], abs=1e-12)
    assert out["adaptive_cls/dim_to_match_top1"] == pytest.approx(-match[1], abs=1e-12)
    assert out["adaptive_cls/dim_to_match"] < 60  # measured 48.3: some items stop early

    curve = adaptive_classification_curve(calib, cy, test, ty)
    assert curve[-1]["expected_dim"] == 64 and curve[-1]["top1"] == pytest.approx(largest_acc)
    dims = [pt["expected_dim"] for pt in curve]
    assert dims == sorted(dims) and dims[0] < 16
    assert curve[0]["top1"] < curve[-1]["top1"]  # accuracy rises with the dims spent


def test_adaptive_classification_errors():
    calib, cy = synthetic_logits(50, 0)
    test, ty = synthetic_logits(50, 1)
    with pytest.raises(MRLError, match="differ from test prefixes"):
        adaptive_classification(calib, cy, {4: test[4], 16: test[16]}, ty)
    with pytest.raises(MRLError, match=r"test_logits\[16\] has shape \(10, 5\)"):
        adaptive_classification(calib, cy, {**test, 16: test[16][:10]}, ty)
    with pytest.raises(MRLError, match="target_tolerance=2 must be a fraction"):
        adaptive_classification(calib, cy, test, ty, target_tolerance=2)
    with pytest.raises(MRLError, match="calib_logits is empty"):
        adaptive_classification({}, cy, test, ty)


def test_rerank_scores_match_numpy():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((500, 24)).astype(np.float32)
    q = rng.standard_normal((7, 24)).astype(np.float32)
    ids = rng.integers(0, 500, (7, 30))
    np.testing.assert_allclose(
        rerank_scores(db, q, ids), np.einsum("qd,qkd->qk", q, db[ids]), rtol=1e-5, atol=1e-5
    )


def test_rerank_scores_pads_and_checks():
    db = np.eye(4, dtype=np.float32)
    q = np.ones((1, 4), dtype=np.float32)
    np.testing.assert_array_equal(rerank_scores(db, q, np.array([[0, -1, 3]])), [[1, -np.inf, 1]])
    with pytest.raises(MRLError, match=r"candidate id 4 is outside the database \(0..3"):
        rerank_scores(db, q, np.array([[0, 4]]))
    with pytest.raises(MRLError, match="candidate id -2"):
        rerank_scores(db, q, np.array([[-2, 0]]))
    with pytest.raises(MRLError, match="queries have width 3 but the database has width 4"):
        rerank_scores(db, q[:, :3], np.array([[0]]))
    with pytest.raises(MRLError, match=r"expected \(1, K\)"):
        rerank_scores(db, q, np.array([0, 1]))


@pytest.fixture(scope="module")
def retrieval_data(make_data):
    return make_data(n_classes=10, per_class_train=200, per_class_test=20, width=64, seed=3)


def test_adaptive_retrieval_close_to_exact(retrieval_data):
    db, db_y, q, q_y = retrieval_data
    out = adaptive_retrieval(db, db_y, q, q_y, d_shortlist=8, shortlist_k=100, repeats=2)
    assert out["adaptive_ret/exact_mAP@10"] > 0.5  # random rankings hit at rate 0.1
    # the 8-d shortlist may even filter out some noise: adaptive is not worse than exact
    assert out["adaptive_ret/mAP@10"] >= out["adaptive_ret/exact_mAP@10"] - 0.03
    assert out["adaptive_ret/top1"] >= out["adaptive_ret/exact_top1"] - 0.03
    assert 0.5 < out["adaptive_ret/overlap@10"] <= 1
    # d_rerank=2048 is clipped to the width 64: exact N * 64 against N * 8 + K * 64
    assert out["adaptive_ret/flops_ratio"] == pytest.approx(2000 * 64 / (2000 * 8 + 100 * 64))
    assert out["adaptive_ret/seconds"] > 0 and out["adaptive_ret/exact_seconds"] > 0
    assert out["adaptive_ret/speedup"] == pytest.approx(
        out["adaptive_ret/exact_seconds"] / out["adaptive_ret/seconds"]
    )


def test_adaptive_retrieval_funnel(retrieval_data):
    db, db_y, q, q_y = retrieval_data
    funnel = [(4, 400), (16, 100), (32, 40), (64, 10)]
    out = adaptive_retrieval(db, db_y, q, q_y, funnel=funnel, repeats=1)
    flops = 2000 * 4 + 400 * 16 + 100 * 32 + 40 * 64
    assert out["adaptive_ret/flops_ratio"] == pytest.approx(2000 * 64 / flops)
    assert out["adaptive_ret/mAP@10"] >= out["adaptive_ret/exact_mAP@10"] - 0.05
    # a "shortlist" of the whole database reranked at full width is exact search
    whole = adaptive_retrieval(db, db_y, q, q_y, funnel=[(8, 2000), (64, 10)], repeats=1)
    assert whole["adaptive_ret/overlap@10"] == 1.0
    assert whole["adaptive_ret/mAP@10"] == whole["adaptive_ret/exact_mAP@10"]


def test_adaptive_retrieval_errors(retrieval_data):
    db, db_y, q, q_y = retrieval_data
    with pytest.raises(MRLError, match="dim 128 exceeds the embedding width 64"):
        adaptive_retrieval(db, db_y, q, q_y, funnel=[(8, 100), (128, 10)])
    with pytest.raises(MRLError, match="keeps 5000 but the database has 2000 items"):
        adaptive_retrieval(db, db_y, q, q_y, shortlist_k=5000)
    with pytest.raises(
        MRLError, match="keep counts must not increase and the last must be >= k=10"
    ):
        adaptive_retrieval(db, db_y, q, q_y, funnel=[(8, 50), (16, 100), (64, 10)])
    with pytest.raises(MRLError, match="the last must be >= k=10"):
        adaptive_retrieval(db, db_y, q, q_y, funnel=[(8, 50), (64, 5)])
    with pytest.raises(MRLError, match="funnel is empty"):
        adaptive_retrieval(db, db_y, q, q_y, funnel=[])
    with pytest.raises(MRLError, match="queries have width 8 but the database has 64"):
        adaptive_retrieval(db, db_y, q[:, :8], q_y)
    with pytest.raises(MRLError, match="repeats=0 must be a positive integer"):
        adaptive_retrieval(db, db_y, q, q_y, repeats=0)


def test_adaptive_retrieval_index_stages(retrieval_data, tmp_path):
    """Stage mappings (binary / ivf shortlists) in the same evaluator; outputs keep their keys
    and add recall, bytes per vector and build time; the index is cached by content."""
    db, db_y, q, q_y = retrieval_data
    binary = [{"dim": 64, "keep": 200, "precision": "binary"}, (64, 10)]
    out = adaptive_retrieval(db, db_y, q, q_y, funnel=binary, repeats=1)
    assert out["adaptive_ret/mAP@10"] >= out["adaptive_ret/exact_mAP@10"] - 0.05
    assert out["adaptive_ret/recall@10"] == out["adaptive_ret/overlap@10"] > 0.7
    assert out["adaptive_ret/bytes_per_vector"] == 64 / 8 + 4 * 64
    assert "adaptive_ret/flops_ratio" not in out  # defined for flat float32 shortlists only
    ivf = [{"dim": 16, "keep": 100, "index": "ivf", "d_c": 8, "nlist": 20, "nprobe": 20}, (64, 10)]
    first = adaptive_retrieval(db, db_y, q, q_y, funnel=ivf, repeats=1, index_cache=tmp_path)
    again = adaptive_retrieval(db, db_y, q, q_y, funnel=ivf, repeats=1, index_cache=tmp_path)
    assert len(list(tmp_path.glob("funnel-*/*.faiss"))) == 2
    assert again["adaptive_ret/mAP@10"] == first["adaptive_ret/mAP@10"]
    # nprobe = nlist: the shortlist is exact at 16-d, as the flat funnel of the same sizes
    flat = adaptive_retrieval(db, db_y, q, q_y, funnel=[(16, 100), (64, 10)], repeats=1)
    assert first["adaptive_ret/mAP@10"] == flat["adaptive_ret/mAP@10"]


def test_adaptive_evaluator_config_stages_and_cache_beside_embeddings(retrieval_data, tmp_path):
    """The evaluator takes stage mappings from the config (OmegaConf lists) and, for
    memory-mapped embeddings, caches the index in an indexes/ folder beside them."""
    from omegaconf import OmegaConf

    from mrl.eval import AdaptiveRetrieval
    from mrl.eval.cache import load_embeddings, save_embeddings
    from mrl.eval.registry import EvalData

    db, db_y, q, q_y = retrieval_data
    folder = save_embeddings(
        tmp_path / "embeddings", dict(train_x=db, train_y=db_y, test_x=q, test_y=q_y), {}
    )
    data = EvalData.from_arrays(load_embeddings(folder))
    cfg = OmegaConf.create(
        {"funnel": [{"dim": 16, "keep": 100, "index": "hnsw"}, [64, 10]], "repeats": 1}
    )
    ev = AdaptiveRetrieval(**cfg)
    out = ev(data, [64])
    assert out["adaptive_ret/mAP@10"] >= out["adaptive_ret/exact_mAP@10"] - 0.05
    assert len(list((folder / "indexes").glob("funnel-*/hnsw-*.faiss"))) == 1
    assert AdaptiveRetrieval(index_cache=None, repeats=1).cache_folder(data) is None


def test_rerank_scores_check_finite():
    """The NaN/inf scan of the database is on by default; ``check_finite=False`` skips only
    that scan (a store validated once), never the id and shape checks."""
    db = np.eye(4, dtype=np.float32)
    db[2, 1] = np.nan
    q = np.ones((1, 4), dtype=np.float32)
    with pytest.raises(MRLError, match=r"database holds NaN or infinite values \(first at row 2\)"):
        rerank_scores(db, q, np.array([[0, 3]]))
    np.testing.assert_array_equal(
        rerank_scores(db, q, np.array([[0, 3]]), check_finite=False), [[1, 1]]
    )
    with pytest.raises(MRLError, match="candidate id 4 is outside"):
        rerank_scores(db, q, np.array([[0, 4]]), check_finite=False)
