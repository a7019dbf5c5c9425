"""Collectives over a real 2-process gloo group (no Ray), and checkpoint files round-tripping."""
from __future__ import annotations

import os
import random
import socket

import numpy as np
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from trainer import distributed as dist, resume


def _collectives(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0 holds global samples 4, 0, 2; rank 1 holds 3, 1 (uneven, interleaved)
        index = torch.tensor([4, 0, 2]) if rank == 0 else torch.tensor([3, 1])
        rows = index.to(torch.float32)[:, None] * torch.ones(1, 3)
        gathered, order = dist.gather_rows(rows, index)
        summed = dist.all_reduce_sum(torch.tensor([0.1 * (rank + 1), 1e-17], dtype=torch.float64))
        means = dist.all_reduce_mean({"loss": float(rank), "wait": 0.5})
        peak = dist.all_reduce_max(float(rank) * 3.0)
        objs = dist.all_gather_object({"rank": rank})
        bcast = dist.broadcast(torch.tensor([float(rank + 7)]), src=1)
        torch.save({"gathered": gathered, "order": order, "summed": summed, "means": means, "peak": peak,
                    "objs": objs, "bcast": bcast, "world": dist.world_size()}, f"{out_dir}/r{rank}.pt")
    finally:
        tdist.destroy_process_group()


def test_collectives_over_two_gloo_ranks_sum_in_float64_and_gather_rows_in_global_index_order(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collectives, args=(port, str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = torch.load(tmp_path / f"r{rank}.pt", weights_only=False)
        assert r["world"] == 2
        assert r["order"].tolist() == [0, 1, 2, 3, 4]
        assert r["gathered"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert r["summed"].dtype == torch.float64
        assert r["summed"].tolist() == [0.1 + 0.2, 2e-17]  # float64: the tiny term survives
        assert r["means"] == {"loss": 0.5, "wait": 0.5} and r["peak"] == 3.0
        assert r["objs"] == [{"rank": 0}, {"rank": 1}]
        assert r["bcast"].tolist() == [8.0]


def test_without_a_process_group_the_collectives_are_the_identity():
    rows, index = torch.arange(6.0).reshape(3, 2), torch.tensor([2, 0, 1])
    gathered, order = dist.gather_rows(rows, index)
    assert order.tolist() == [0, 1, 2] and gathered.tolist() == [[2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]
    t = torch.tensor([1.5])
    assert dist.all_reduce_sum(t).tolist() == [1.5] and dist.world_size() == 1 and dist.rank() == 0


def test_checkpoint_round_trips_state_and_rng_streams_with_weights_only_loading(tmp_path):
    resume.seed_everything(123)
    saved_rng = resume.rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    state = resume.TrainState(epoch=3, step=42, data_seed=7, rng=[saved_rng],
                                     metrics=[{"epoch": 0, "loss": 1.0}])
    resume.save(tmp_path, state=state, method_state={"w": torch.ones(2)}, optimizer={"lr": 0.1},
                       scheduler=None, config={"training": {"epochs": 5}}, tag_semantics_hash="abc")
    loaded = resume.load(tmp_path)  # torch.load(weights_only=True) inside
    assert (loaded.state.epoch, loaded.state.step, loaded.state.data_seed) == (3, 42, 7)
    assert loaded.state.metrics == [{"epoch": 0, "loss": 1.0}]
    assert loaded.tag_semantics_hash == "abc" and loaded.config == {"training": {"epochs": 5}}
    assert torch.equal(loaded.method_state["w"], torch.ones(2)) and loaded.optimizer == {"lr": 0.1}
    resume.seed_everything(999)  # disturb, then restore: the same draws come out again
    resume.set_rng_state(loaded.state.rng[0])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]
