import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_precision, retrieval_recall

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.eval import (
    map_at_k,
    precision_at_k,
    prefix_neighbors,
    recall_at_k,
    retrieval_metrics,
)

HITS = np.array(
    [
        [1, 0, 1, 0],  # P@4 = 1/2; mAP@4 = (1/1 + 2/3) / 4 = 5/12
        [0, 0, 0, 0],  # no hits: everything 0
        [1, 1, 1, 1],  # all hits: everything 1
        [0, 0, 0, 1],  # mAP@4 = (1/4) / 4 = 1/16 (dividing by #hits would give 1/4)
    ]
)


def test_precision_at_k_by_hand():
    np.testing.assert_allclose(precision_at_k(HITS, 4), [0.5, 0, 1, 0.25])
    np.testing.assert_allclose(precision_at_k(HITS, 1), [1, 0, 1, 0])
    np.testing.assert_allclose(precision_at_k(HITS, 2), [0.5, 0, 1, 0])


def test_map_at_k_divides_by_k():
    np.testing.assert_allclose(map_at_k(HITS, 4), [5 / 12, 0, 1, 1 / 16])
    np.testing.assert_allclose(map_at_k(HITS, 3), [(1 + 2 / 3) / 3, 0, 1, 0])
    np.testing.assert_allclose(map_at_k(HITS, 1), [1, 0, 1, 0])


def test_recall_at_k_by_hand():
    np.testing.assert_allclose(recall_at_k(HITS, 4, np.array([4, 3, 8, 0])), [0.5, 0, 0.5, 0])
    np.testing.assert_allclose(recall_at_k(HITS, 2, 1300), [1 / 1300, 0, 2 / 1300, 0])


def test_retrieval_metrics_by_hand():
    train_y = np.array([0, 0, 1, 1, 1, 2])  # class sizes 2, 3, 1
    test_y = np.array([1, 0, 3])  # class 3 is absent from the database
    idx = np.array([[2, 0, 3], [2, 3, 4], [0, 1, 2]])  # hits [1,0,1], [0,0,0], [0,0,0]
    nb = {8: (np.zeros((3, 3), np.float32), idx)}
    out = retrieval_metrics(nb, train_y, test_y, ks=(1, 3))
    assert out == pytest.approx(
        {
            "retrieval/P@1@d8": 1 / 3,
            "retrieval/mAP@1@d8": 1 / 3,
            "retrieval/R@1@d8": (1 / 3) / 3,
            "retrieval/P@3@d8": (2 / 3) / 3,
            "retrieval/mAP@3@d8": ((1 + 2 / 3) / 3) / 3,
            "retrieval/R@3@d8": (2 / 3) / 3,
        }
    )
    const = retrieval_metrics(nb, train_y, test_y, ks=(3,), recall_denominator=4)
    assert const["retrieval/R@3@d8"] == pytest.approx((2 / 4) / 3)


def test_ties_follow_the_search_order():
    # items 0 and 1 are the same vector with different labels: the tie is broken by the
    # lower index (item 0, label 0), so a label-1 query misses at rank 1 and hits at rank 2
    train = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    train_y, test_y = np.array([0, 1, 1]), np.array([1])
    nb = prefix_neighbors(train, np.array([[1.0, 0.1]]), dims=[2], k=2)
    np.testing.assert_array_equal(nb[2][1], [[0, 1]])
    out = retrieval_metrics(nb, train_y, test_y, ks=(1, 2))
    assert out["retrieval/P@1@d2"] == 0 and out["retrieval/P@2@d2"] == 0.5
    assert out["retrieval/mAP@2@d2"] == pytest.approx((1 / 2) / 2)
    assert out["retrieval/R@2@d2"] == 0.5


def test_precision_and_recall_match_torchmetrics(clusters):
    train_x, train_y, test_x, test_y = clusters
    train_x, train_y, test_x, test_y = train_x[::5], train_y[::5], test_x[:30], test_y[:30]
    ks, m = (5, 10), 8
    out = retrieval_metrics(prefix_neighbors(train_x, test_x, [m], k=10), train_y, test_y, ks)
    sims = truncate(test_x, m, normalize=True) @ truncate(train_x, m, normalize=True).T
    for k in ks:
        p = [
            retrieval_precision(torch.from_numpy(s), torch.from_numpy(train_y == y), top_k=k)
            for s, y in zip(sims, test_y, strict=True)
        ]
        r = [
            retrieval_recall(torch.from_numpy(s), torch.from_numpy(train_y == y), top_k=k)
            for s, y in zip(sims, test_y, strict=True)
        ]
        assert out[f"retrieval/P@{k}@d{m}"] == pytest.approx(float(np.mean(p)), abs=1e-6)
        assert out[f"retrieval/R@{k}@d{m}"] == pytest.approx(float(np.mean(r)), abs=1e-6)


def test_retrieval_errors():
    nb = {4: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64))}
    y = np.array([0, 1])
    with pytest.raises(MRLError, match="k=100 exceeds the 3 neighbours stored per query"):
        retrieval_metrics(nb, y, y)
    with pytest.raises(MRLError, match="k=5 exceeds the 4 neighbours available"):
        map_at_k(HITS, 5)
    with pytest.raises(MRLError, match="k=0 must be a positive integer"):
        precision_at_k(HITS, 0)
    with pytest.raises(MRLError, match="recall_denominator='paper'"):
        retrieval_metrics(nb, y, y, ks=(3,), recall_denominator="paper")
    with pytest.raises(MRLError, match="recall_denominator=0 must be a positive integer"):
        retrieval_metrics(nb, y, y, ks=(3,), recall_denominator=0)
    with pytest.raises(MRLError, match=r"ks=\(\) must be positive integers"):
        retrieval_metrics(nb, y, y, ks=())
    with pytest.raises(MRLError, match="dtype float64; expected integer class labels"):
        retrieval_metrics(nb, y.astype(float), y, ks=(3,))


def test_recall_edge_cases_and_class_counts():
    """A class of one relevant item, a zero denominator, and labels absent from the database
    (each found by mutation testing to be unchecked)."""
    from mrl.eval.retrieval import class_counts

    np.testing.assert_array_equal(
        class_counts(np.array([0, 0, 2]), np.array([0, 1, 2, 3])), [2, 0, 1, 0]
    )
    hits = np.array([[1, 0], [1, 1], [0, 1]])
    np.testing.assert_array_equal(recall_at_k(hits, 2, np.array([1, 0, 2])), [1.0, 0.0, 0.5])


def test_retrieval_error_messages_name_the_argument():
    nb = {4: (np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64))}
    y = np.array([0, 1])
    with pytest.raises(MRLError, match=r"ks=\[2.5\] must be positive integers"):
        retrieval_metrics(nb, y, y, ks=[2.5])
    with pytest.raises(MRLError, match=r"ks=\[3, -1\] must be positive integers"):
        retrieval_metrics(nb, y, y, ks=[3, -1])
    with pytest.raises(MRLError, match="^train_y "):
        retrieval_metrics(nb, y.astype(float), y, ks=(3,))
    with pytest.raises(MRLError, match="^test_y "):
        retrieval_metrics(nb, y, y.astype(float), ks=(3,))
    with pytest.raises(MRLError, match="^retrieval_metrics"):
        retrieval_metrics(nb, y, y, ks=(5,))
    with pytest.raises(MRLError, match="or a positive int such as 1300$"):
        retrieval_metrics(nb, y, y, ks=(3,), recall_denominator="paper")
