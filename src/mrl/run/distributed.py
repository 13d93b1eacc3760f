"""Several processes, one result: who writes, how shards become one array, how to spawn.

Conventions:

* Rank 0 (:func:`is_main`) alone writes run-dir files (``metrics.json``, the embedding cache,
  plots); the other ranks compute their shard and wait.
* Evaluation splits are sharded *without padding*: rank ``r`` of ``W`` holds samples
  ``r, r + W, r + 2W, ...`` (Lightning's ``UnrepeatedDistributedSampler``; the shards differ in
  length by at most one). :func:`gather_shards` puts every sample back in its place on rank 0
  and checks that each appears exactly once, so evaluators see the same arrays as in one
  process (equal up to float rounding of the batch composition).
* Without an initialised process group every helper is a no-op (one process).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from mrl.core.errors import MRLError


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a picklable object)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def sync_from_main(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers.

    DDP keeps parameters equal, but each rank updates its own BatchNorm statistics on its own
    batches; before an evaluation pass every rank must hold the weights rank 0 checkpoints.
    """
    if world_size() == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        flat = t.detach().contiguous()
        dist.broadcast(flat, src=0)
        t.copy_(flat)


def shard_sampler(dataset: Dataset) -> Sampler | None:
    """An unpadded, unshuffled shard of ``dataset`` for this rank; ``None`` in one process."""
    if world_size() == 1:
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)


def shard_indices(sampler: Sampler | None, total: int) -> np.ndarray:
    """The dataset indices a loader visits, in order (``arange(total)`` without a sampler)."""
    if sampler is None or not isinstance(sampler, torch.utils.data.DistributedSampler):
        return np.arange(total)
    return np.fromiter(iter(sampler), dtype=np.int64)


def gather_shards(
    parts: Mapping[str, np.ndarray], indices: np.ndarray, total: int
) -> dict[str, np.ndarray] | None:
    """Every rank's ``parts`` (rows aligned with ``indices``) as full arrays in dataset order.

    Returns the arrays on rank 0 and ``None`` elsewhere (in one process: ``parts``). Raises
    :class:`MRLError` unless the shards cover ``0..total-1`` exactly once.
    """
    if world_size() == 1:
        return dict(parts)
    shards: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object((np.asarray(indices), dict(parts)), shards, dst=0)
    if not is_main():
        return None
    assert shards is not None
    idx = np.concatenate([s[0] for s in shards])
    if idx.shape[0] != total or not np.array_equal(np.sort(idx), np.arange(total)):
        dup = idx.shape[0] - np.unique(idx).shape[0]
        raise MRLError(
            f"gathered {idx.shape[0]} embeddings from {world_size()} ranks for {total} samples "
            f"({dup} duplicated): the evaluation loaders must shard without padding"
        )
    order = np.argsort(idx, kind="stable")
    return {k: np.concatenate([s[1][k] for s in shards])[order] for k in parts}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    local_rank: int, world: int, port: int, backend: str, fn: Callable, args: tuple
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=local_rank, world_size=world)
    try:
        fn(local_rank, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn: Callable, world: int, *args: Any, backend: str = "gloo") -> None:
    """Run ``fn(rank, *args)`` in ``world`` fresh processes joined in one process group.

    ``torch.multiprocessing.spawn`` starts new interpreters that run ``fn`` only, so the
    command (and a Hydra multirun) is never re-executed. A worker's exception becomes one
    :class:`MRLError` naming its last line.
    """
    import torch.multiprocessing as mp

    try:
        mp.spawn(_worker, args=(world, free_port(), backend, fn, args), nprocs=world, join=True)
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
        raise worker_error(e) from None


def worker_error(e: BaseException) -> MRLError:
    """One line for a spawned worker's failure: our own one-line errors pass through as they
    are; anything else is named by the last line of the worker's traceback."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
    last = lines[-1].strip()
    if last.startswith(("mrl.core.errors.", "MRLError", "NonFiniteLossError")):
        return MRLError(last.split(": ", 1)[-1])
    return MRLError(f"a worker process failed: {last}")
