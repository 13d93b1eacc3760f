import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.eval import knn_metrics, prefix_neighbors


def slice_then_normalise(x, m):
    """The reference prefix, written independently of ``mrl.core.nesting.truncate``: the first
    m coordinates, each row divided by its own L2 norm (float64; a zero row stays zero)."""
    p = np.asarray(x, dtype=np.float64)[:, :m]
    norms = np.sqrt((p**2).sum(axis=1, keepdims=True))
    return np.divide(p, norms, out=np.zeros_like(p), where=norms > 0)


def test_knn_hand_computed():
    train_y = np.array([0, 1, 1, 2])
    # query 0 (label 1): 1-NN says 0; with T=1 the votes are e^.9 for class 0 against
    #   e^.8 + e^.7 for class 1 -> weighted kNN says 1.
    # query 1 (label 0): two neighbours tied at 0.5 with labels 2 and 0 -> vote tie -> the
    #   smaller class, 0; 1-NN reads the first listed neighbour (label 2), wrong.
    # query 2 (label 2): no neighbour of class 2 among the top 2 -> both wrong.
    scores = np.array([[0.9, 0.8, 0.7], [0.5, 0.5, 0.1], [0.9, 0.2, 0.1]], dtype=np.float32)
    idx = np.array([[0, 1, 2], [3, 0, 1], [1, 0, 3]])
    test_y = np.array([1, 0, 2])
    out = knn_metrics({4: (scores, idx)}, train_y, test_y, num_classes=3, k=3, T=1.0)
    # query 2 with k=3: class 1 gets e^.9, class 0 e^.2, class 2 e^.1 -> 1, wrong.
    assert out == {"knn/top1@d4": 0.0, "knn/top1_k3@d4": pytest.approx(2 / 3)}
    out2 = knn_metrics({4: (scores, idx)}, train_y, test_y, num_classes=3, k=2, T=1.0)
    # k=2: query 0 votes e^.9 (class 0) vs e^.8 (class 1) -> 0, wrong; query 1 tie -> 0, right
    assert out2["knn/top1_k2@d4"] == pytest.approx(1 / 3)


def dino_knn(train_f, train_y, test_f, test_y, k, T, num_classes):
    """DINO's eval_knn.knn_classifier, top-1 only (reference for the cross-check)."""
    sim = test_f @ train_f.T
    distances, indices = sim.topk(k, largest=True, sorted=True)
    neighbours = torch.gather(train_y.view(1, -1).expand(len(test_f), -1), 1, indices)
    one_hot = torch.zeros(len(test_f) * k, num_classes, dtype=sim.dtype)
    one_hot.scatter_(1, neighbours.view(-1, 1), 1)
    weights = distances.clone().div_(T).exp_()
    probs = (one_hot.view(len(test_f), -1, num_classes) * weights.view(len(test_f), -1, 1)).sum(1)
    return (probs.argmax(1) == test_y).double().mean().item()


def test_knn_matches_dino_reference(clusters):
    train_x, train_y, test_x, test_y = clusters
    dims = [4, 16, 64]
    out = knn_metrics(prefix_neighbors(train_x, test_x, dims, k=20), train_y, test_y, 5)
    for m in dims:
        tr = torch.from_numpy(slice_then_normalise(train_x, m))
        te = torch.from_numpy(slice_then_normalise(test_x, m))
        ref = dino_knn(tr, torch.from_numpy(train_y), te, torch.from_numpy(test_y), 20, 0.07, 5)
        assert out[f"knn/top1_k20@d{m}"] == pytest.approx(ref)
    assert out["knn/top1@d64"] > 0.6 and out["knn/top1_k20@d64"] > 0.6  # chance is 0.2
    assert out["knn/top1_k20@d64"] >= out["knn/top1_k20@d4"] - 0.02


def test_knn_errors():
    nb = {4: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64))}
    y = np.array([0, 1])
    with pytest.raises(MRLError, match="k=20 exceeds the 3 neighbours stored per query"):
        knn_metrics(nb, y, y, num_classes=2)
    with pytest.raises(MRLError, match="T=0 must be a positive temperature"):
        knn_metrics(nb, y, y, num_classes=2, k=3, T=0)
    with pytest.raises(MRLError, match=r"train_y has labels in \[0, 1\]; with num_classes=1"):
        knn_metrics(nb, y, y, num_classes=1, k=3)
    with pytest.raises(MRLError, match="test_y has shape"):
        knn_metrics(nb, y, np.array([0, 1, 1]), num_classes=2, k=3)
    with pytest.raises(MRLError, match="neighbors is empty"):
        knn_metrics({}, y, y, num_classes=2, k=3)
