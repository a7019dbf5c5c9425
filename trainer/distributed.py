"""The few collectives the training loop needs, over torch.distributed.

Each is the identity when no process group is up (world size 1, Ray Train local mode, a plain
script), so the same loop and the same codebook update run in one process or on N workers. Sums go
through float64 tensors so a 2-worker and a 1-worker run reduce the same numbers to the same result
up to rounding; row gathers come back ordered by each row's global sample index, so the gathered
sample does not depend on how samples were split across ranks.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _comm_device() -> torch.device:
    """nccl only moves CUDA tensors; gloo moves CPU tensors."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks; returns a new tensor on ``t``'s device with ``t``'s dtype."""
    if not is_distributed():
        return t.clone()
    buf = t.detach().to(_comm_device()).contiguous().clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(t.device)


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of per-rank scalars (one all-reduce for the whole dict, keys in sorted order)."""
    if not values:
        return {}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    t = all_reduce_sum(t) / world_size()
    return dict(zip(keys, t.tolist()))


def all_reduce_max(value: float) -> float:
    if not is_distributed():
        return float(value)
    buf = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return float(buf.item())


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s ``t`` on every rank (same shape and dtype required everywhere)."""
    if not is_distributed():
        return t
    buf = t.detach().to(_comm_device()).contiguous().clone()
    dist.broadcast(buf, src=src)
    return buf.to(t.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (small Python objects only: RNG states, counters)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_rows(rows: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' ``rows`` (N_r, D) stacked on every rank, sorted by their global ``index`` (N_r,).

    Ranks may hold different numbers of rows; the result is the same on every rank and the same as
    a single process holding all the rows, which is what makes a k-means initialisation from a
    gathered sample independent of the world size.
    """
    rows = rows.detach().cpu()
    index = index.detach().cpu().to(torch.int64)
    if is_distributed():
        parts = all_gather_object((rows.numpy(), index.numpy()))
        rows = torch.cat([torch.from_numpy(r) for r, _ in parts])
        index = torch.cat([torch.from_numpy(i) for _, i in parts])
    order = torch.argsort(index, stable=True)
    return rows[order], index[order]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class ProcessGroupCollectives:
    """``trainer.methods.Collectives`` over the process group Ray Train set up (the identity when
    none is up, so one process and N workers run the same codebook update)."""

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t)

    def gather_rows(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return gather_rows(rows, index)[0]


class _GatherRows(torch.autograd.Function):
    """All ranks' rows concatenated in rank order; the backward sums every rank's gradient of the
    gathered rows (one all-reduce) and hands each rank its own rows' part. Ranks may hold different
    numbers of rows (padded to the largest for the collective, the padding dropped)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        n_max = max(sizes)
        padded = torch.zeros((n_max, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]], None


def gather_with_grad(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all ranks' rows of ``t`` in rank order, where this rank's rows start): the cross-device
    sampling of the contrastive objectives (MoPQ's Differentiable Cross-device Sampling).

    The local rows keep their gradient, and the backward adds in what every other rank's loss sends
    them: when every rank computes the same loss on the gathered rows, each rank's gradient is
    world_size × its share, and DDP's average over ranks turns it into exactly the gradient of one
    process computing that loss on the concatenated batch. Without a process group: ``(t, 0)``.
    """
    if not is_distributed():
        return t, 0
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=_comm_device())
    parts = [torch.empty_like(n) for _ in range(world_size())]
    dist.all_gather(parts, n)
    sizes = [int(p.item()) for p in parts]
    return _GatherRows.apply(t, sizes), sum(sizes[: rank()])
