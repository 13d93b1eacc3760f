"""``search.device``: the choice of search implementation and the torch (GPU) search path.

No GPU here: the torch path is run on CPU tensors (the same code the GPU runs, only the
device differs) against the CPU FAISS search, and ``cuda`` without a GPU must be refused.
"""

import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.eval import search
from mrl.eval.adaptive import adaptive_retrieval
from mrl.eval.search import (
    _torch_prefix_search,
    exact_search,
    prefix_neighbors,
    search_backend,
    use_search_device,
)


def _data(n=300, q=40, d=48, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(q, d)).astype(np.float32)


def _brute(db, qs, m, k):
    """Independent reference: cosine of sliced, normalised prefixes, full argsort (float64)."""
    a = db[:, :m].astype(np.float64)
    b = qs[:, :m].astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    s = b @ a.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, 1), ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_cuda_without_gpu_is_one_line_error_and_auto_is_cpu():
    db, qs = _data()
    with pytest.raises(MRLError, match=r"search.device=cuda but neither FAISS nor torch") as e:
        prefix_neighbors(db, qs, [8, 48], 5, device="cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(MRLError, match="search.device='gpu': use auto, cpu or cuda"):
        exact_search(db, qs, 5, device="gpu")
    with pytest.raises(MRLError, match="search.device=cuda"), use_search_device("cuda"):
        pass
    assert search_backend("auto") == "cpu"
    # auto on a CPU machine is the CPU search itself, byte for byte
    ref = prefix_neighbors(db, qs, [8, 16, 48], 7, device="cpu")
    for device in ("auto", None):
        got = prefix_neighbors(db, qs, [8, 16, 48], 7, device=device)
        for m in ref:
            assert got[m][0].tobytes() == ref[m][0].tobytes()
            assert got[m][1].tobytes() == ref[m][1].tobytes()


def test_torch_search_path_matches_exact_reference():
    db, qs = _data()
    dims, k = [4, 12, 48], 9
    got = _torch_prefix_search(db, qs, dims, k, True, query_chunk=16, device=torch.device("cpu"))
    for m in dims:
        s, ids = _brute(db, qs, m, k)
        np.testing.assert_array_equal(got[m][1], ids)
        np.testing.assert_allclose(got[m][0], s, atol=1e-5)
    # several database blocks (tiny block budget) merge to the same result
    small = search.torch_search(
        torch.from_numpy(db), torch.from_numpy(qs), dims, k, True, 7, block_bytes=4 * 7 * 20
    )
    for m in dims:
        np.testing.assert_array_equal(small[m][1].numpy(), got[m][1])


def test_cuda_dispatches_to_torch_when_faiss_has_no_gpu(monkeypatch):
    """With a (simulated) CUDA torch and CPU-only FAISS, ``cuda`` and ``auto`` take the torch
    path; here its device is the CPU so the results can be checked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(search, "faiss_has_gpu", lambda: False)
    monkeypatch.setattr(search, "_cuda_device", lambda: torch.device("cpu"))
    calls = []
    real = search.torch_search
    monkeypatch.setattr(search, "torch_search", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert search_backend("auto") == "torch-cuda" and search_backend("cpu") == "cpu"
    db, qs = _data(seed=1)
    with use_search_device("cuda"):
        got = prefix_neighbors(db, qs, [8, 48], 6)
        ex = exact_search(db / np.linalg.norm(db, axis=1, keepdims=True), qs, 6)
    assert len(calls) == 2
    for m in (8, 48):
        np.testing.assert_array_equal(got[m][1], _brute(db, qs, m, 6)[1])
    ref = exact_search(db / np.linalg.norm(db, axis=1, keepdims=True), qs, 6, device="cpu")
    np.testing.assert_array_equal(ex[1], ref[1])
    # adaptive retrieval's GPU funnel (torch) gives the CPU funnel's answers
    y = np.arange(len(db)) % 5
    qy = np.arange(len(qs)) % 5
    kw = dict(d_shortlist=8, d_rerank=48, shortlist_k=50, k=5, repeats=1)
    gpu = adaptive_retrieval(db, y, qs, qy, device="cuda", **kw)
    cpu = adaptive_retrieval(db, y, qs, qy, device="cpu", **kw)
    for key in ("adaptive_ret/mAP@5", "adaptive_ret/exact_mAP@5", "adaptive_ret/overlap@5"):
        assert gpu[key] == pytest.approx(cpu[key], abs=1e-9), key


def test_eval_cli_refuses_search_device_cuda_without_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    from mrl_test_utils import run_cli

    rng = np.random.default_rng(0)
    emb = tmp_path / "e.npz"
    np.savez(
        emb,
        train_x=rng.normal(size=(40, 16)).astype(np.float32),
        train_y=np.arange(40) % 4,
        test_x=rng.normal(size=(10, 16)).astype(np.float32),
        test_y=np.arange(10) % 4,
    )
    out = tmp_path / "run"
    r = run_cli(
        "eval.py",
        f"embeddings={emb}",
        "eval=[knn]",
        "search.device=cuda",
        "logger=csv",
        f"hydra.run.dir={out}",
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert err and "search.device=cuda" in err[0], r.stderr[-2000:]
    assert not (out / "metrics.json").exists()


def test_missing_faiss_is_one_line_naming_the_extra():
    import subprocess
    import sys

    code = "import sys; sys.modules['faiss'] = None\nimport mrl.eval"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert "faiss is not installed: pip install 'matryoshka-rl[cpu]'" in last
    assert "'matryoshka-rl[gpu]'" in last


def test_gpu_search_bench_arguments_and_no_gpu(tmp_path, capsys):
    from scripts.bench import gpu_search

    assert gpu_search.main(["--dry-run", "--n", "1000", "--dim", "64"]) == 0
    assert "1,000 x 64" in capsys.readouterr().out
    a = gpu_search.parse([])
    assert (a.n, a.dim, a.d_shortlist, a.shortlist_k, a.k) == (1_000_000, 2048, 16, 200, 10)
    with pytest.raises(SystemExit):
        gpu_search.parse(["--k", "300"])  # more than the shortlist
    if not torch.cuda.is_available():
        out = tmp_path / "r.json"
        assert gpu_search.main(["--n", "300", "--dim", "32", "--out", str(out)]) == 1
        assert "no CUDA GPU" in capsys.readouterr().out and not out.exists()
