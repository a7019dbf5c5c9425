"""Methods-area fixtures: the synthetic weakly-tagged set and an AQD mAP helper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.metrics import average_precision, mean_ap
from benchmarks.plain_loop import synthetic_weak_tags


def aqd_map(queries: torch.Tensor, db: torch.Tensor, q_labels: torch.Tensor, db_labels: torch.Tensor) -> float:
    """mAP over the whole database, relevance = same latent class, index tie-breaking, skip convention."""
    s = (queries @ db.T).numpy()
    order = np.argsort(-s, axis=1, kind="stable")
    ap, r = average_precision(db_labels.numpy()[order] == q_labels.numpy()[:, None])
    return mean_ap(ap, r, "skip")


@pytest.fixture(scope="module")
def weak_set():
    """700 samples, 10 latent classes, 30 noisy tags, 10% untagged: 600 train/database + 100 queries."""
    return synthetic_weak_tags(n=700, classes=10, noise=2.0, seed=0)


@pytest.fixture
def one_thread():
    """Small models train ~3x faster on one thread than on two on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
