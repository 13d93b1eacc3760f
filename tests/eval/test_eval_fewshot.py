import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.eval import fewshot_metrics
from mrl.eval.fewshot import group_by_class, ncm_accuracy, sample_episodes


def test_ncm_hand_computed_and_normalises_after_slicing():
    # m=1: every value is positive, so every sliced vector normalises to +1, both class
    #   means tie and the first class wins: accuracy 1/2.
    # m=2: class 0's support (1, 0) and (10, 10) is normalised *before* averaging, giving a
    #   mean at 22.5 degrees; class 1's mean is at about 86 degrees. The class-1 query at
    #   60 degrees is closer to class 1 (26 vs 37.5 degrees). Averaging raw vectors would put
    #   class 0's mean at 42 degrees and misclassify it (accuracy 3/4).
    train_x = np.array([[1, 0], [10, 10], [0.1, 1], [0.1, 2]], dtype=np.float32)
    train_y = np.array([0, 0, 1, 1])
    test_x = np.array([[1, 0.1], [2, 0.5], [0.5, 0.866], [0.1, 1]], dtype=np.float32)
    test_y = np.array([0, 0, 1, 1])
    out = fewshot_metrics(
        train_x, train_y, test_x, test_y, dims=[1, 2], shots=2, episodes=3, queries_per_class=2
    )
    assert out == {"fewshot/2way2shot@d1": 0.5, "fewshot/2way2shot@d2": 1.0}


def test_ncm_accuracy_by_hand():
    support = np.array([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # 1 episode, 2 classes, 1 shot
    query = np.array([[[[0.8, 0.6], [0.6, 0.8]], [[0.0, 1.0], [1.0, 0.0]]]])
    np.testing.assert_allclose(ncm_accuracy(support, query), [0.5])  # 1 of 2 right each


def test_fewshot_learnable_and_prefix_monotone(clusters):
    train_x, train_y, test_x, test_y = clusters
    dims = [4, 16, 64]
    out = fewshot_metrics(train_x, train_y, test_x, test_y, dims, episodes=40)
    assert set(out) == {f"fewshot/5way{k}shot@d{m}" for k in (1, 5) for m in dims}
    assert out["fewshot/5way5shot@d64"] > 0.7  # chance is 0.2
    assert out["fewshot/5way5shot@d64"] >= out["fewshot/5way1shot@d64"]
    for k in (1, 5):
        assert out[f"fewshot/5way{k}shot@d64"] >= out[f"fewshot/5way{k}shot@d4"] - 0.02
    again = fewshot_metrics(train_x, train_y, test_x, test_y, dims, episodes=40)
    assert again == out  # seeded


def test_fewshot_ways_and_class_subset(clusters):
    train_x, train_y, test_x, test_y = clusters
    out = fewshot_metrics(
        train_x, train_y, test_x, test_y, [8], ways=2, shots=(1,), episodes=10, classes=[3, 4]
    )
    assert list(out) == ["fewshot/2way1shot@d8"] and 0.5 < out["fewshot/2way1shot@d8"] <= 1
    out3 = fewshot_metrics(train_x, train_y, test_x, test_y, [8], ways=[2, 3], episodes=5)
    assert set(out3) == {f"fewshot/{n}way{k}shot@d8" for n in (2, 3) for k in (1, 5)}


def test_episodes_are_seeded_and_within_class():
    train_y, test_y = np.repeat(np.arange(4), 10), np.repeat(np.arange(4), 6)
    by_train, by_test = group_by_class(train_y, np.arange(4)), group_by_class(test_y, np.arange(4))
    a = sample_episodes(by_train, by_test, 3, 2, 5, 7, np.random.default_rng(1))
    b = sample_episodes(by_train, by_test, 3, 2, 5, 7, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    support, query = a
    assert support.shape == (7, 3, 2) and query.shape == (7, 3, 5)
    # each episode row i holds one class, the same on both sides, no repeats
    assert (train_y[support] == train_y[support][:, :, :1]).all()
    np.testing.assert_array_equal(train_y[support][:, :, 0], test_y[query][:, :, 0])
    assert all(len(set(row)) == 3 for row in train_y[support][:, :, 0])


def test_fewshot_errors(clusters):
    train_x, train_y, test_x, test_y = clusters
    with pytest.raises(MRLError, match="ways=6 exceeds the 5 classes available"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], ways=6)
    with pytest.raises(MRLError, match="ways=3 exceeds the 2 classes available"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], ways=3, classes=[0, 1])
    with pytest.raises(MRLError, match="class 0 has 100 train items; 101-shot episodes need"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], shots=(1, 101))
    with pytest.raises(MRLError, match="class 0 has 40 test items but queries_per_class=41"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], queries_per_class=41)
    with pytest.raises(MRLError, match=r"classes=\[2\]: few-shot episodes need at least 2"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], classes=[2])
    with pytest.raises(MRLError, match="class 9 has 0 train items"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], classes=[1, 9])
    with pytest.raises(MRLError, match="episodes=0 must be a positive integer"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], episodes=0)
    with pytest.raises(MRLError, match="shots=0 must be a positive integer"):
        fewshot_metrics(train_x, train_y, test_x, test_y, [8], shots=0)
