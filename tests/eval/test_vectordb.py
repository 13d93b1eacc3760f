"""LanceDB export and the funnel as a LanceDB query (mrl.eval.vectordb)."""

import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.eval.funnel import Funnel
from mrl.eval.vectordb import LanceFunnel, export_lancedb, export_run_embeddings


@pytest.fixture(scope="module")
def data(make_data):
    db, y, q, _ = make_data(n_classes=10, per_class_train=100, per_class_test=5, width=64, seed=7)
    return db, y, q  # 1000 x 64 database, 50 queries


def test_lance_funnel_matches_the_numpy_funnel(data, tmp_path):
    """IVF-flat on the prefix column with every partition probed is exact prefix search, so
    shortlist + full-width rerank must equal the in-memory flat funnel."""
    db, y, q = data
    tbl = export_lancedb(tmp_path / "lance", db, y, 16, index_type="IVF_FLAT", num_partitions=4)
    assert tbl.count_rows() == len(db)
    assert {"id", "label", "prefix", "vector"} <= set(tbl.schema.names)
    f = LanceFunnel(tbl, keep=100, k=10, nprobes=4)
    scores, ids = f.search(q)
    ref_s, ref_i = Funnel([(16, 100), (64, 10)], k=10).build(db).search(q)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    assert f.bytes_per_vector() >= 4 * 64
    assert "lancedb/" in f.describe()


def test_export_run_embeddings_and_errors(data, tmp_path):
    from mrl.eval.cache import save_embeddings

    db, y, q = data
    folder = save_embeddings(
        tmp_path / "emb", dict(train_x=db, train_y=y, test_x=q, test_y=y[: len(q)]), {}
    )
    tbl = export_run_embeddings(
        folder, tmp_path / "lance", 32, index_type="IVF_FLAT", num_partitions=2
    )
    assert tbl.count_rows() == len(db)
    np.testing.assert_array_equal(
        np.sort(tbl.to_arrow().column("id").to_numpy()), np.arange(len(db))
    )
    with pytest.raises(
        MRLError, match="already holds a LanceDB table 'embeddings'; pass overwrite"
    ):
        export_run_embeddings(folder, tmp_path / "lance", 32, index_type="IVF_FLAT")
    assert tbl.count_rows() == len(db)  # the refused export left the table as it was
    again = export_run_embeddings(
        folder, tmp_path / "lance", 16, index_type="IVF_FLAT", num_partitions=2, overwrite=True
    )
    assert again.schema.field("prefix").type.list_size == 16
    with pytest.raises(MRLError, match=r"prefix_dim=128 must be an integer in 1..64"):
        export_lancedb(tmp_path / "x", db, y, 128)
    with pytest.raises(MRLError, match="keep=5 must be an integer >= 10"):
        LanceFunnel(tbl, keep=5, k=10)
