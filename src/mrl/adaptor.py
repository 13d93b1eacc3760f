"""Matryoshka-Adaptor (Yoon et al., EMNLP 2024): make the prefixes of *frozen* embeddings good.

A small residual MLP ``f(e) = e + MLP(e)`` is trained on cached embeddings so that every
prefix ``truncate(f(e), m, normalize=True)`` keeps the similarity structure of the original
full-width embedding. The MLP's output layer starts at zero, so an untrained adaptor is exactly
the identity (every prefix equals ``truncate(e, m)``). The adaptor keeps the width; it is
applied after an encoder and before slicing.

Losses (each per-prefix term summed over ``dims`` with the relative weights ``c_m`` of
:func:`mrl.core.dims.parse_weights`, as :func:`mrl.core.nesting.nested_sum`; ``S`` is the
cosine-similarity matrix of one batch: ``S[i, j] = <n(e_i), n(e_j)>`` of the original full
width, ``S_m`` that of ``truncate(f(e), m, normalize=True)``):

* ``pair`` (weight ``alpha``): mean over pairs ``i != j`` of ``|S_m[i, j] - S[i, j]|``;
* ``topk`` (weight ``beta``): the same mean over each row's ``k`` nearest neighbours ``j != i``
  under ``S`` (local structure, what kNN and retrieval read);
* ``rec`` (weight ``gamma``): ``mean_i ||f(e_i) - e_i||^2 / ||e_i||^2``, the reconstruction
  regulariser, relative so that it does not depend on the embeddings' scale;
* ``rank`` (weight ``delta``, only with ``pairs=(queries, documents)``): the nested InfoNCE of
  :class:`mrl.objectives.contrastive.NestedInfoNCE` (in-batch negatives) on ``f(q)``, ``f(d)``.

The similarity terms are absolute differences (L1, as we read the paper; ``distance="l2"``:
squared). Defaults: ``alpha = beta = 1``, ``gamma = 0.01`` (a light pull towards the
original), ``k = 10``; Adam, ``lr = 3e-3``, batches of 128, 20 epochs. They follow the
paper's recipe, not hyper-parameters of its own (there is no official code).

Persisted as ``<dir>/adaptor.safetensors`` (weights) + ``<dir>/adaptor.json`` (config); never
pickled. ``python -m mrl.adaptor fit --embeddings <cache> --out <dir> [--dims 8,16,...,768]``
fits one on the ``train_x`` rows of an embedding cache (:func:`mrl.eval.cache.load_embeddings`).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.core.dims import auto_dims, parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.nesting import nested_sum, truncate
from mrl.core.validate import as_matrix, integer, number, positive_int, seed_int

__all__ = [
    "MatryoshkaAdaptor",
    "adaptor_losses",
    "default_dims",
    "fit_adaptor",
    "load_adaptor",
]

CONFIG_FILE = "adaptor.json"
WEIGHTS_FILE = "adaptor.safetensors"
FORMAT = "mrl.matryoshka_adaptor"
DISTANCES = ("l1", "l2")


def default_dims(width: int) -> list[int]:
    """Training prefixes when none are given: powers of two from 8 below ``width``, the
    halvings of :func:`mrl.core.dims.auto_dims`, and ``width`` itself (784 -> 8, 16, 32, 49,
    64, 98, 128, 196, 256, 392, 512, 784)."""
    width = positive_int(width, "adaptor width")
    pow2 = [2**i for i in range(3, 32) if 2**i < width]
    return sorted({*pow2, *auto_dims(width), width})


def _dims(spec: Any, width: int) -> list[int]:
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "default"):
        return default_dims(width)
    dims = parse_dims(spec, width)
    if dims[-1] > width:
        raise MRLError(f"adaptor dims={dims}: {dims[-1]} exceeds the embedding width {width}")
    return dims


class MatryoshkaAdaptor(nn.Module):
    """``f(e) = e + W2 act(W1 e + b1) + b2`` with ``W2, b2`` zero at initialisation (identity).

    Args:
        width: embedding width (input = output).
        hidden: hidden units of the MLP (default: ``width``).
        dims: the prefixes it is trained for (spec of :func:`mrl.core.dims.parse_dims`, all
            ``<= width``; default :func:`default_dims`); kept in the saved config.
        weights: ``c_m`` per prefix (:func:`mrl.core.dims.parse_weights`; default ones).
    """

    def __init__(
        self, width: int, hidden: int | None = None, dims: Any = None, weights: Any = None
    ) -> None:
        super().__init__()
        self.width = positive_int(width, "adaptor width")
        self.hidden = self.width if hidden is None else positive_int(hidden, "adaptor hidden")
        self.dims = _dims(dims, self.width)
        self.weights = parse_weights(weights, self.dims)
        self.mlp = nn.Sequential(
            nn.Linear(self.width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.width)
        )
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.mlp(e)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (what :func:`load_adaptor` rebuilds it from)."""
        return {
            "format": FORMAT,
            "width": self.width,
            "hidden": self.hidden,
            "dims": list(self.dims),
            "weights": list(self.weights),
        }

    def apply(self, x: Any, batch_size: int = 4096) -> Any:  # type: ignore[override]
        """``f(x)`` of a ``(rows, width)`` array as float32 numpy, ``batch_size`` rows at a time
        (on the module's device). Refuses non-finite rows, empty input and another width.

        A callable ``x`` keeps :meth:`torch.nn.Module.apply`'s meaning (``fn`` on every
        submodule)."""
        if callable(x):
            return super().apply(x)
        x = as_matrix(x, "adaptor input")
        if x.shape[1] != self.width:
            raise MRLError(
                f"adaptor input has width {x.shape[1]}; this adaptor was fitted on width "
                f"{self.width}"
            )
        batch_size = positive_int(batch_size, "batch_size")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = np.empty_like(x, dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size])).to(device)
                out[s : s + batch_size] = self(xb).float().cpu().numpy()
        self.train(was_training)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``adaptor.safetensors`` + ``adaptor.json`` into ``folder``; returns it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
        (folder / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2) + "\n")
        return folder


def load_adaptor(folder: str | Path) -> MatryoshkaAdaptor:
    """The adaptor saved in ``folder`` by :meth:`MatryoshkaAdaptor.save` (safetensors + json
    only; any other file there, pickles included, is never read)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise MRLError(f"adaptor {folder}: {p.name} is missing; save one with fit_adaptor")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise MRLError(f"adaptor config {cfg_path} is unreadable: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise MRLError(f"adaptor config {cfg_path} is not an mrl adaptor (format != {FORMAT!r})")
    args = {k: cfg.get(k) for k in ("width", "hidden", "dims", "weights")}
    adaptor = MatryoshkaAdaptor(**args)
    try:
        state = load_file(str(w_path))
        adaptor.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign file: one line
        raise MRLError(
            f"adaptor weights {w_path} are unreadable: {' '.join(str(e).split())}"
        ) from e
    return adaptor.eval()


def _cosine(x: torch.Tensor) -> torch.Tensor:
    z = F.normalize(x, p=2, dim=-1, eps=1e-12)
    return z @ z.T


def adaptor_losses(
    original: torch.Tensor,
    adapted: torch.Tensor,
    dims: Sequence[int],
    weights: Sequence[float] | None = None,
    k: int = 10,
    distance: str = "l1",
) -> dict[str, torch.Tensor]:
    """The unsupervised terms of one batch (module docstring): ``{"pair", "topk", "rec"}``,
    the first two already summed over ``dims`` with ``weights`` (default ones).

    ``original`` (the frozen embeddings ``e``) and ``adapted`` (``f(e)``) are ``(n, width)``
    with ``n >= 2``; ``k`` is clipped to ``n - 1``.
    """
    if distance not in DISTANCES:
        raise MRLError(f"adaptor distance={distance!r} is not one of {list(DISTANCES)}")
    n = original.shape[0]
    if n < 2:
        raise MRLError(f"adaptor batch has {n} row; similarity losses need at least 2")
    weights = [1.0] * len(dims) if weights is None else list(weights)
    with torch.no_grad():
        ref = _cosine(original.float())
        off = ~torch.eye(n, dtype=torch.bool, device=ref.device)
        kk = min(int(k), n - 1)
        masked = ref.masked_fill(~off, float("-inf"))
        nn_idx = masked.topk(kk, dim=1).indices  # each row's k nearest j != i
    pair: dict[int, torch.Tensor] = {}
    topk: dict[int, torch.Tensor] = {}
    for m in dims:
        diff = _cosine(truncate(adapted, m)) - ref
        diff = diff.abs() if distance == "l1" else diff.square()
        pair[m] = diff[off].mean()
        topk[m] = diff.gather(1, nn_idx).mean()
    rel = (adapted - original).square().sum(1) / original.square().sum(1).clamp_min(1e-12)
    return {
        "pair": nested_sum(pair, dims, weights),
        "topk": nested_sum(topk, dims, weights),
        "rec": rel.mean(),
    }


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``n`` inside (unchanged for ``None``), restored."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finite_rows(x: Any, name: str) -> np.ndarray:
    try:
        return as_matrix(x, name)
    except MRLError as e:
        raise MRLError(f"fit_adaptor: {e}") from None


def fit_adaptor(
    train_x: Any,
    dims: Any = None,
    weights: Any = None,
    hidden: int | None = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma: float = 0.01,
    delta: float = 1.0,
    k: int = 10,
    distance: str = "l1",
    temperature: float = 0.05,
    pairs: tuple[Any, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    threads: int | None = None,
    verbose: bool = False,
) -> MatryoshkaAdaptor:
    """Train a :class:`MatryoshkaAdaptor` on the frozen rows ``train_x`` (``(n, width)``).

    Adam (``lr``, ``weight_decay``) for ``epochs`` passes over ``train_x`` in shuffled batches
    of ``batch_size``; loss ``alpha * pair + beta * topk + gamma * rec`` (module docstring),
    plus ``delta * rank`` on a batch of ``pairs = (queries, documents)`` (row ``i`` of each is
    a positive pair) per step when given. Deterministic for a ``seed`` on one device (torch's
    own generator; torch's global generator is left as it was). ``threads``: torch's CPU
    threads while fitting (restored after; ``None`` keeps the current setting; 1 is much
    faster on a busy machine: small ops, no waiting on descheduled threads). Returns the
    adaptor in eval mode on the CPU.
    """
    x = _finite_rows(train_x, "train_x")
    if len(x) < 2:
        raise MRLError(f"fit_adaptor: train_x has {len(x)} row; need at least 2")
    width = x.shape[1]
    epochs = positive_int(epochs, "epochs")
    batch_size = integer(batch_size, "batch_size", min=2)
    k = positive_int(k, "k")
    seed = seed_int(seed)
    lr = number(lr, "lr", positive=True)
    alpha, beta, gamma, delta = (
        number(v, n)
        for v, n in ((alpha, "alpha"), (beta, "beta"), (gamma, "gamma"), (delta, "delta"))
    )
    if distance not in DISTANCES:
        raise MRLError(f"adaptor distance={distance!r} is not one of {list(DISTANCES)}")
    q = d = None
    if pairs is not None:
        if not isinstance(pairs, Sequence) or len(pairs) != 2:
            raise MRLError("fit_adaptor: pairs must be (queries, documents), two (n, width) arrays")
        q, d = _finite_rows(pairs[0], "pairs[0]"), _finite_rows(pairs[1], "pairs[1]")
        if q.shape != d.shape or q.shape[1] != width or len(q) < 2:
            raise MRLError(
                f"fit_adaptor: pairs have shapes {q.shape}, {d.shape}; need two equal "
                f"(n >= 2, {width}) arrays (the width of train_x)"
            )
    if threads is not None:
        threads = positive_int(threads, "threads")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise MRLError(f"fit_adaptor: device={device!r} is not a torch device") from e

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adaptor = MatryoshkaAdaptor(width, hidden=hidden, dims=dims, weights=weights)
    adaptor.to(dev).train()
    rank = None
    if q is not None:
        from mrl.objectives.contrastive import NestedInfoNCE

        rank = NestedInfoNCE(adaptor.dims, temperature=temperature)
    with _torch_threads(threads):
        opt = torch.optim.Adam(adaptor.parameters(), lr=lr, weight_decay=weight_decay)
        xt = torch.from_numpy(x)
        bs = min(batch_size, len(x))
        t0 = time.time()
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            pair_order = torch.randperm(len(q), generator=gen) if q is not None else None
            total, steps = 0.0, 0
            for s in range(0, len(x) - bs + 1, bs):  # full batches only (drop the last partial)
                e = xt[order[s : s + bs]].to(dev)
                parts = adaptor_losses(e, adaptor(e), adaptor.dims, adaptor.weights, k, distance)
                loss = alpha * parts["pair"] + beta * parts["topk"] + gamma * parts["rec"]
                if rank is not None and pair_order is not None:
                    j = pair_order[(steps * bs) % len(q) :][:bs]
                    j = j if len(j) >= 2 else pair_order[:bs]
                    qb, db = (
                        torch.from_numpy(q[j.numpy()]).to(dev),
                        torch.from_numpy(d[j.numpy()]).to(dev),
                    )
                    per = rank(adaptor(qb), adaptor(db))
                    loss = loss + delta * nested_sum(per, adaptor.dims, adaptor.weights)
                if not torch.isfinite(loss):
                    raise MRLError(
                        f"fit_adaptor: the loss became {loss.item()} at epoch {epoch}; "
                        f"lower lr={lr}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
            if verbose:
                print(
                    f"epoch {epoch + 1}/{epochs} loss {total / steps:.4f} ({time.time() - t0:.1f}s)"
                )
    return adaptor.cpu().eval()


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from mrl.eval.cache import load_embeddings

    p = argparse.ArgumentParser(prog="python -m mrl.adaptor", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit an adaptor on the train_x rows of an embedding cache")
    f.add_argument("--embeddings", required=True, help="cache folder, <prefix>, .npz or .parquet")
    f.add_argument("--out", required=True, help="folder for adaptor.safetensors + adaptor.json")
    f.add_argument(
        "--dims", default=None, help="e.g. 8,16,...,768 (default: powers of two + width)"
    )
    f.add_argument("--hidden", type=int, default=None)
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--batch-size", type=int, default=128)
    f.add_argument("--lr", type=float, default=3e-3)
    f.add_argument("--gamma", type=float, default=0.01)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="cpu")
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads while fitting")
    args = p.parse_args(argv)
    try:
        arrays = load_embeddings(args.embeddings)
        t = time.time()
        adaptor = fit_adaptor(
            np.asarray(arrays["train_x"], dtype=np.float32),
            dims=args.dims,
            hidden=args.hidden,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            gamma=args.gamma,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            verbose=True,
        )
        out = adaptor.save(args.out)
    except MRLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"adaptor ({adaptor.width} wide, dims {adaptor.dims}) fitted in "
        f"{time.time() - t:.1f}s: {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
