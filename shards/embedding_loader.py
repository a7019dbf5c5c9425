"""The embedding-set reader: batches of rows out of numpy memory maps, with the shard reader's contract.

Why memory maps (``np.load(mmap_mode="r")``) rather than Ray Data or embedding-reader: a batch is a
gather of a few hundred rows from arrays the OS keeps in its page cache, which numpy does at memory
speed with no copies beyond the batch; Ray Data would put an object store and tasks between the
training loop and the same bytes, and embedding-reader reads whole pieces in order (no random
access), which a shuffled epoch needs. S3 parts are copied to a local cache once and mapped from there
(``shards.embeddings.local_array``). docs/embeddings.md has the side-by-side numbers.

The contract is the shard reader's (``shards.reader``), with rows in place of shards:

* ``train=True``: each rank yields exactly ``total // (world_size * batch_size)`` full batches, split
  over its DataLoader workers as the shard reader splits them. The epoch's order is one sequence of all
  rows, a function of (seed, epoch) only: parts permuted, then taken ``MIX_PARTS`` at a time and the
  rows of each group permuted together (so a batch mixes up to ``MIX_PARTS`` parts while a worker holds
  only a few parts' metadata at once). Rank r, worker w reads its contiguous stretch of that sequence,
  so an epoch is every sample at most once and all but ``total % (world_size * batch_size)`` exactly once.
* ``train=False``: every row exactly once across all ranks, in set order: the (rank, worker) slots get
  contiguous ranges of rows; ``len(loader)`` is this rank's batch count (partial last batch per worker).

Batches are the shard reader's features-mode dict: ``key``, ``tags``, ``labels`` (lists),
``index`` (int64, the global row), ``feat`` (float32, whatever the stored dtype).
"""
from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.embeddings import EmbeddingSet, local_array, open_embedding_set, read_table
from shards.reader import ReaderConfig, ReaderError

log = logging.getLogger(__name__)

MIX_PARTS = 4      # parts whose rows one shuffle group mixes
OPEN_PARTS = 12    # parts a worker keeps mapped, with their metadata, at once


class _PartCache:
    """Memory maps and metadata columns of the parts a worker reads, least recently used dropped first."""

    def __init__(self, es: EmbeddingSet, cache_dir: str | None):
        self.es, self.cache_dir, self.open = es, cache_dir, OrderedDict()

    def get(self, p: int) -> tuple[np.ndarray, dict[str, list]]:
        if p in self.open:
            self.open.move_to_end(p)
            return self.open[p]
        part, es = self.es.parts[p], self.es
        arr = np.load(local_array(part, self.cache_dir), mmap_mode="r", allow_pickle=False)
        cols = [c for c in (es.key_column, es.tags_column, es.label_column) if c]
        table = read_table(part.meta_url, cols)
        meta = {"key": table.column(es.key_column).to_pylist() if es.key_column else None,
                "tags": table.column(es.tags_column).to_pylist(),
                "labels": table.column(es.label_column).to_pylist() if es.label_column else None}
        self.open[p] = (arr, meta)
        if len(self.open) > OPEN_PARTS:
            self.open.popitem(last=False)
        return self.open[p]


def _labels(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


class _RowStream(IterableDataset):
    """What one (rank, worker) slot reads; picklable so DataLoader workers can run it."""

    def __init__(self, es: EmbeddingSet, cfg: ReaderConfig, rank: int, world_size: int, epoch: int,
                 train: bool, per_worker_batches: list[int] | None, cache_dir: str | None):
        self.es, self.cfg, self.rank, self.world, self.epoch, self.train = es, cfg, rank, world_size, epoch, train
        self.per_worker, self.cache_dir = per_worker_batches, cache_dir
        self.workers = max(1, cfg.num_workers)
        self.offsets = es.offsets()

    # -- which rows --
    def slot_rows(self, worker: int) -> tuple[int, int]:
        """[start, stop) of this slot: sequence positions (train) or global rows (eval)."""
        bs = self.cfg.batch_size
        if self.train:
            start = (self.rank * sum(self.per_worker) + sum(self.per_worker[:worker])) * bs
            return start, start + self.per_worker[worker] * bs
        slots, slot, n = self.world * self.workers, self.rank * self.workers + worker, int(self.offsets[-1])
        return slot * n // slots, (slot + 1) * n // slots

    def train_sequence(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """The global rows at sequence positions [start, stop), group by group."""
        counts = np.diff(self.offsets)
        order = np.random.default_rng([self.cfg.seed, self.epoch]).permutation(len(counts))
        pos = 0
        for g in range(0, len(order), MIX_PARTS):
            group = order[g:g + MIX_PARTS]
            size = int(counts[group].sum())
            if pos + size > start and pos < stop:
                rows = np.concatenate([np.arange(self.offsets[p], self.offsets[p + 1]) for p in group])
                rows = rows[np.random.default_rng([self.cfg.seed, self.epoch, 1, g]).permutation(size)]
                yield rows[max(0, start - pos):stop - pos]
            pos += size
            if pos >= stop:
                return

    def batches_of(self, worker: int) -> Iterator[np.ndarray]:
        start, stop = self.slot_rows(worker)
        bs = self.cfg.batch_size
        if not self.train:
            for b in range(start, stop, bs):
                yield np.arange(b, min(b + bs, stop))
            return
        pending = np.zeros(0, dtype=np.int64)
        for rows in self.train_sequence(start, stop):
            pending = np.concatenate([pending, rows])
            while len(pending) >= bs:
                yield pending[:bs]
                pending = pending[bs:]

    # -- reading them --
    def read(self, cache: _PartCache, index: np.ndarray) -> dict:
        part = np.searchsorted(self.offsets, index, side="right") - 1
        feat = np.empty((len(index), self.es.dim), dtype=np.float32)
        keys: list = [None] * len(index)
        tags: list = [None] * len(index)
        labels: list = [None] * len(index)
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            rows = index[where] - self.offsets[p]
            arr, meta = cache.get(int(p))
            srt = np.argsort(rows, kind="stable")
            r = rows[srt]
            contiguous = r[-1] - r[0] + 1 == len(r)
            feat[where[srt]] = arr[r[0]:r[-1] + 1] if contiguous else arr[r]
            name = self.es.parts[p].name
            for i, row in zip(where.tolist(), rows.tolist()):
                keys[i] = meta["key"][row] if meta["key"] is not None else f"{name}/{row}"
                tags[i] = meta["tags"][row]
                labels[i] = _labels(meta["labels"][row]) if meta["labels"] is not None else []
        if self.es.tags_column != "tags":
            tags = _caption_tags(tags)
        return {"key": keys, "tags": [t if t is not None else [] for t in tags], "labels": labels,
                "index": torch.from_numpy(index.astype(np.int64)), "feat": torch.from_numpy(feat)}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        cache = _PartCache(self.es, self.cache_dir)
        for index in self.batches_of(worker):
            yield self.read(cache, index)


def _caption_tags(captions: list) -> list[list[str]]:
    from shards.converters.laion import STOPWORDS, LaionConfig, caption_tags

    cfg = LaionConfig()
    return [caption_tags(c, cfg, STOPWORDS) if c else [] for c in captions]


class EmbeddingLoader:
    """Iterate for batches; ``len()`` from the part row counts. ``skips`` is always empty (validated sets
    have no bad rows) and is kept so callers treat both readers alike."""

    def __init__(self, es: EmbeddingSet, cfg: ReaderConfig, rank: int, world_size: int, epoch: int,
                 train: bool, cache_dir: str | None = None):
        if not 0 <= rank < world_size:
            raise ReaderError(f"rank {rank} is not in [0, world_size={world_size})")
        if cfg.resample and train:
            raise ReaderError(f"{es.url}: reader.resample is for shard sets; an embedding set is shuffled by row")
        total = len(es)
        if total == 0:
            raise ReaderError(f"{es.url}: the embedding set is empty (0 rows); nothing to read")
        self.es, self.cfg, self.rank, self.world_size, self.train = es, cfg, rank, world_size, train
        self.epoch, self.cache_dir, self.skips = epoch, cache_dir, Counter()
        workers = max(1, cfg.num_workers)
        if train:
            self.batches = total // (world_size * cfg.batch_size)
            if self.batches == 0:
                raise ReaderError(f"{es.url}: {total} rows < world_size {world_size} x batch_size "
                                  f"{cfg.batch_size}; no full batch per rank")
            self.per_worker = [self.batches // workers + (w < self.batches % workers) for w in range(workers)]
        else:
            self.per_worker = None
            probe = self._stream()
            self.batches = sum(-(-(b - a) // cfg.batch_size) for a, b in map(probe.slot_rows, range(workers)))

    def _stream(self) -> _RowStream:
        return _RowStream(self.es, self.cfg, self.rank, self.world_size, self.epoch, self.train, self.per_worker,
                          self.cache_dir)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict]:
        yield from DataLoader(self._stream(), batch_size=None, num_workers=self.cfg.num_workers,
                              persistent_workers=False)


def make_embedding_loader(embedding_set: str | EmbeddingSet, cfg: ReaderConfig | None = None, rank: int = 0,
                          world_size: int = 1, epoch: int = 0, train: bool = True,
                          label_column: str | None = None) -> EmbeddingLoader:
    """An EmbeddingLoader over a set URL (validated here) or an opened EmbeddingSet."""
    es = embedding_set if isinstance(embedding_set, EmbeddingSet) else open_embedding_set(embedding_set, label_column)
    return EmbeddingLoader(es, cfg or ReaderConfig(), rank, world_size, epoch, train)
