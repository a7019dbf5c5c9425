"""Differentiable cross-device sampling over a real 2-process gloo group with DDP (no Ray): the
2-worker loss and gradients of MoPQ and MeCoQ equal one process's on the concatenated batch."""
from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from trainer import distributed as dist

N, IN, DIM = 7, 12, 8
SPLIT = (4, 3)  # uneven: rank 0 holds rows 0-3, rank 1 rows 4-6


def _method(kind: str):
    from shards.config import from_dict
    from trainer.encoders import EncoderConfig
    from trainer.methods import build_method, method_config

    enc = from_dict(EncoderConfig, {"kind": "mlp", "in_features": IN, "hidden": 16}, "encoder")
    if kind == "mecoq":
        cfg = method_config("mecoq", M=2, K=4, alpha=5.0, embed_dim=DIM, memory_size=9, memory_epoch=0)
    else:
        cfg = method_config("mopq", M=2, K=4, alpha=5.0, embed_dim=DIM, keys=kind.split("-")[1],
                            temperature=0.5)
    return build_method(cfg, enc, np.random.default_rng(3).standard_normal((5, DIM)).astype(np.float32))


def _data():
    g = torch.Generator().manual_seed(7)
    views = torch.randn(2, N, IN, generator=g)  # two fixed views (augmentation is per-rank random)
    y = (torch.rand(N, 5, generator=g) < 0.4).to(torch.uint8)
    y[0] = 0  # an untagged row: left out of MoPQ's tag loss
    memory = torch.softmax(torch.randn(5, 2, 4, generator=g), -1)
    return views, y, memory


def _step(method, net, kind: str, rows: slice):
    """One loss + backward on ``rows`` of the data, through ``net`` (DDP-wrapped on 2 ranks)."""
    views, y, memory = _data()
    if kind == "mecoq":
        method.objective.memory = memory.clone()
    x = torch.cat([views[0, rows], views[1, rows]]) if kind in ("mecoq", "mopq-views") else views[0, rows]
    out = net(x)
    loss, terms = method.objective.loss(out, y[rows], epoch=0)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in method.net.named_parameters() if p.grad is not None}
    extra = method.objective.memory.clone() if kind == "mecoq" else None
    return loss.item(), terms, grads, extra


def _worker(rank: int, port: int, out_dir: str, kind: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.nn.parallel import DistributedDataParallel

        method = _method(kind)
        ddp = DistributedDataParallel(method.net)
        rows = slice(0, SPLIT[0]) if rank == 0 else slice(SPLIT[0], N)
        loss, terms, grads, memory = _step(method, ddp, kind, rows)
        # DDP already averaged the gradients over the two ranks
        ddp_grads = {k.removeprefix("module."): v for k, v in grads.items()}
        torch.save({"loss": loss, "terms": terms, "grads": ddp_grads, "memory": memory},
                   f"{out_dir}/r{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # ~50 s a case on 2 cores: two spawned processes import torch each
@pytest.mark.parametrize("kind", ["mopq-tags", "mopq-views", "mecoq"])
def test_two_gloo_workers_give_the_loss_and_gradients_of_one_process_on_the_concatenated_batch(tmp_path, kind):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), kind), nprocs=2, join=True)
    assert not dist.is_distributed()
    method = _method(kind)
    loss, terms, grads, memory = _step(method, method.net, kind, slice(0, N))
    ranks = [torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(2)]
    for r in ranks:
        assert r["loss"] == pytest.approx(loss, abs=1e-6)
        assert set(r["grads"]) == set(grads) and len(grads) >= 5  # encoder weights and the codebooks
        for k, g in grads.items():
            assert torch.allclose(r["grads"][k], g, atol=1e-6, rtol=1e-5), k
    if kind == "mecoq":
        # the memory is the gathered soft codes: the same on both ranks and as one process's
        assert memory.shape == (9, 2, 4)
        assert torch.equal(ranks[0]["memory"], ranks[1]["memory"])
        assert torch.allclose(ranks[0]["memory"], memory, atol=1e-6)
    else:
        # every rank sees every other row as a negative: 2 workers, 2x the rows of one (here 4 + 3)
        y = _data()[1]
        tagged = int((y.sum(1) > 0).sum()) if kind == "mopq-tags" else N
        assert tagged >= 4
        assert terms["negatives"] == tagged - 1
        assert all(r["terms"]["negatives"] == tagged - 1 for r in ranks)
