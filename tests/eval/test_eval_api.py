import numpy as np
import pytest

import mrl.eval
from mrl.core.errors import MRLError
from mrl.eval import (
    KNN,
    EvalData,
    FewShot,
    Probe,
    Retrieval,
    knn_metrics,
    prefix_neighbors,
    retrieval_metrics,
    run_evaluators,
)


def _data(clusters):
    train_x, train_y, test_x, test_y = clusters
    return EvalData(train_x, train_y, test_x, test_y, num_classes=5)


def test_run_evaluators_all(clusters):
    train_x, train_y, test_x, test_y = clusters
    dims = [4, 16, 64]
    evaluators = {
        "knn": KNN(),
        "retrieval": Retrieval(ks=(10, 25)),
        "fewshot": FewShot(episodes=10),
        "probe": Probe(epochs=5, batch_size=128, num_threads=1),
    }
    out, secs = run_evaluators(evaluators, _data(clusters), dims)
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
    assert set(secs) == {"search", "knn", "retrieval", "fewshot", "probe"}
    # one shared neighbour search at the largest k any evaluator asks for (kNN: 20, R: 25)
    nb = prefix_neighbors(train_x, test_x, dims, k=25)
    assert knn_metrics(nb, train_y, test_y, 5).items() <= out.items()
    assert retrieval_metrics(nb, train_y, test_y, (10, 25)).items() <= out.items()


def test_run_evaluators_subset_and_missing_inputs(clusters):
    out, _ = run_evaluators({"knn": KNN()}, _data(clusters), [8])
    assert set(out) == {"knn/top1@d8", "knn/top1_k20@d8"}
    with pytest.raises(MRLError, match=r"eval=\['linear'\] need a model's trained heads"):
        run_evaluators({"linear": mrl.eval.Linear(), "knn": KNN()}, _data(clusters), [8])
    bad = _data(clusters)
    bad.train_x = bad.train_x.copy()
    bad.train_x[3, 1] = np.nan
    with pytest.raises(MRLError, match="first at row 3"):
        run_evaluators({"knn": KNN()}, bad, [8])


def test_public_api():
    assert set(mrl.eval.__all__) <= set(dir(mrl.eval))
    assert issubclass(mrl.eval.KNN, mrl.eval.Evaluator)
