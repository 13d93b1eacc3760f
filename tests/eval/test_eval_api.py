import pytest

import mrl.eval
from mrl.errors import MRLError
from mrl.eval import evaluate_embeddings, knn_metrics, prefix_neighbors, retrieval_metrics


def test_evaluate_embeddings_all(clusters):
    train_x, train_y, test_x, test_y = clusters
    dims = [4, 16, 64]
    out = evaluate_embeddings(
        train_x,
        train_y,
        test_x,
        test_y,
        dims,
        num_classes=5,
        retrieval_ks=(10, 25),
        fewshot_kwargs={"episodes": 10},
        probe_kwargs={"epochs": 5, "batch_size": 128, "num_threads": 1},
    )
    for m in dims:
        for key in (
            "knn/top1",
            "knn/top1_k20",
            "retrieval/P@10",
            "retrieval/mAP@25",
            "retrieval/R@25",
            "fewshot/5way1shot",
            "fewshot/5way5shot",
            "probe/top1",
        ):
            assert 0 <= out[f"{key}@d{m}"] <= 1
    assert all(isinstance(v, float) for v in out.values())
    # same numbers as calling the evaluators on one shared neighbour search
    nb = prefix_neighbors(train_x, test_x, dims, k=25)
    assert knn_metrics(nb, train_y, test_y, 5).items() <= out.items()
    assert retrieval_metrics(nb, train_y, test_y, (10, 25)).items() <= out.items()


def test_evaluate_embeddings_subset_and_errors(clusters):
    train_x, train_y, test_x, test_y = clusters
    out = evaluate_embeddings(train_x, train_y, test_x, test_y, [8], 5, evaluators=["knn"])
    assert set(out) == {"knn/top1@d8", "knn/top1_k20@d8"}
    with pytest.raises(MRLError, match=r"evaluators=\['knn', 'svm'\]: choose from"):
        evaluate_embeddings(train_x, train_y, test_x, test_y, [8], 5, evaluators=["knn", "svm"])


def test_public_api():
    assert set(mrl.eval.__all__) <= set(dir(mrl.eval))
