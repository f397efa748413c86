"""Data-parallel training under ``torchrun``: torch.distributed and DistributedDataParallel,
nothing of kdeploy's own on the wire.

One process per device (``torchrun --nproc_per_node N``; ``--nnodes M --rdzv-endpoint``
across machines). Every process joins one process group (NCCL when CUDA is there, gloo on
CPU); control messages and NumPy arrays (the leader's stage announcements, the teacher's
targets, a resumed checkpoint) travel on a second, gloo group with a long timeout, since
ranks wait there while rank 0 alone scores dev or runs a stage that is not training.

How the pieces keep N processes on the one-process recipe:

- batches: every rank draws the same global batches from (seed, epoch) (``shuffled_batches``)
  and takes its slice of each (``rank_part``): over an epoch the ranks see disjoint shards of
  the corpus, the number of optimizer steps and the schedule are those of one process, and a
  checkpoint does not depend on how many processes wrote it. torch's ``DistributedSampler``
  would shard items, not batches, losing the length grouping and the global batch.
- gradients: DDP averages them; each rank's loss is weighted by its share of the global
  batch (``rank_part``) so the average is the global batch's mean loss, unequal slices too.
- teacher targets: each rank computes its shard (``sharded``) and they are gathered once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from kdeploy.core import ranks

T = TypeVar("T")
# how long a rank waits for the others at a control message (rank 0 may run export, bench
# and verify alone meanwhile); failures do not wait for it: a dead peer closes its sockets
CONTROL_TIMEOUT = timedelta(hours=24)

_control: Any = None  # the gloo group of control messages, once joined


class WorkerDone(Exception):  # noqa: N818 - a signal, not an error
    """Raised on ranks > 0 when their part of a stage (the training) is over: what the stage
    does next (saving, exporting) is rank 0's alone."""


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def join() -> ranks.Rank:
    """Join the job's process group (once; a no-op outside torchrun) and return this rank.
    On CUDA each rank takes GPU ``LOCAL_RANK`` of its node."""
    global _control
    me = ranks.current()
    if not me.distributed or _control is not None:
        return me
    if torch.cuda.is_available():
        torch.cuda.set_device(me.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend())
    _control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return me


def leave() -> None:
    """Leave the process group (at the end of the job, on every rank)."""
    global _control
    if dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def active() -> bool:
    return _control is not None


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable; tensors in it should be on the CPU)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def broadcast_array(arr: np.ndarray | None) -> np.ndarray:
    """Rank 0's float32 array on every rank (others pass None)."""
    if not active():
        assert arr is not None
        return arr
    shape = broadcast_object(None if arr is None else arr.shape)
    buf = (
        torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        if arr is not None
        else torch.empty(shape, dtype=torch.float32)
    )
    dist.broadcast(buf, src=0, group=_control)
    return buf.numpy()


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """This rank's items: every ``world``-th from ``rank`` (so each shard has a like mix of
    lengths and the shards differ in size by one at most)."""
    return list(items[rank::world])


def sharded(compute: Callable[[list], np.ndarray], items: Sequence) -> np.ndarray:
    """``compute(items)`` (rows per item), with each rank computing its ``shard`` and the
    rows gathered once onto every rank, in ``items``' order."""
    if not active():
        return compute(list(items))
    me = ranks.current()
    n, world = len(items), me.world_size
    mine = shard(items, me.rank, world)
    local = compute(mine) if mine else compute(list(items[:1]))[:0]
    width = local.shape[1]
    rows = -(-n // world)  # the longest shard
    buf = torch.zeros((rows, width), dtype=torch.float32)
    buf[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf, group=_control)
    out = np.zeros((n, width), dtype=np.float32)
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        out[r::world] = part[:count].numpy()
    return out


def rank_part(idx: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's slice of a global batch and the weight of its mean loss: ``n_r * N / n``,
    so that DDP's average of the ranks' weighted means is the global batch's mean. A rank
    whose slice is empty (a last batch smaller than the world) still runs one item, at
    weight 0, to take part in the gradient all-reduce."""
    if not active():
        return idx, 1.0
    me = ranks.current()
    mine = np.array_split(idx, me.world_size)[me.rank]
    if len(mine) == 0:
        return idx[:1], 0.0
    return mine, len(mine) * me.world_size / len(idx)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The student in DDP (its weights and buffers broadcast from rank 0 here); the model
    itself outside a distributed run. ``find_unused_parameters``: a pooler or head the
    losses do not reach gets no gradient, which DDP must be told to expect."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def grad_averager(modules: torch.nn.Module | None) -> Callable[[], None] | None:
    """What averages the gradients of parameters trained outside the DDP model (the
    projections to the teacher's width), to call between backward and the optimizer step."""
    if not active() or modules is None:
        return None
    params = list(modules.parameters())
    world = ranks.current().world_size

    def average() -> None:
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= world

    return average


def mean_over_ranks(sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-step values summed on each rank, as means over all ranks and ``count`` steps
    (every rank reports the same keys)."""
    if not active():
        return {k: v / max(count, 1) for k, v in sums.items()}
    keys = sorted(sums)  # the same order on every rank
    world = ranks.current().world_size
    t = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t, group=_control)
    total = dict(zip(keys, t.tolist(), strict=True))
    return {k: total[k] / (world * max(count, 1)) for k in sums}


def cpu_tree(obj: Any) -> Any:
    """``obj`` with every tensor in it moved to the CPU (to broadcast a state dict)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: cpu_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(cpu_tree(v) for v in obj)
    return obj
