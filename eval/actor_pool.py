"""A pool of Ray actors over groups of shards, shared by the encode and extraction jobs.

Each actor loads its model once (constructor), then handles one group of shard tasks per call and
returns their manifest entries; entries are handed to ``progress`` as they come. Pool size: the
cluster's CPUs - 1 unless set (2 actors on 2 CPUs deadlock, ecosystem.md §2.1); one GPU per actor
when the cluster has GPUs unless ``gpus_per_actor`` says otherwise.
"""
from __future__ import annotations

import os


def run_pool(actor_cls, init_args: tuple, method: str, groups: list[list], actors: int, cpus_per_actor: float,
             gpus_per_actor: float, progress) -> list[dict]:
    import ray
    from ray.util import ActorPool

    started = not ray.is_initialized()
    if started:
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    try:
        res = ray.cluster_resources()
        gpus = gpus_per_actor if gpus_per_actor >= 0 else (1.0 if res.get("GPU", 0) > 0 else 0.0)
        n = min(actors or max(1, int(res.get("CPU", 2)) - 1), len(groups))
        cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus)(actor_cls)
        pool = ActorPool([cls.remote(*init_args) for _ in range(n)])
        out = []
        for entries in pool.map_unordered(lambda a, g: getattr(a, method).remote(g), groups):
            for entry in entries:
                out.append(entry)
                progress.step(entry["rows"])
        return out
    finally:
        if started:
            ray.shutdown()
