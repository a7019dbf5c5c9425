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
import os
from collections import Counter, OrderedDict
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.embeddings import EmbeddingSet, local_array, open_embedding_set, read_table
from shards.reader import ReaderConfig, ReaderError, train_batches, worker_shares

log = logging.getLogger(__name__)

MIX_PARTS = 4            # parts whose rows one shuffle group mixes
CACHE_ROWS = 1_000_000   # rows of parts a process keeps mapped with their metadata (peak RSS ~570 B a row
                         # measured), but at least MIX_PARTS parts: a train batch gathers from that many


def _objects(values) -> np.ndarray:
    """A 1-d object array of ``values`` (lists stay elements): batches gather from it with one fancy index,
    ten times faster than a Python comprehension over randomly placed objects."""
    return np.fromiter(values, dtype=object, count=len(values))


def _strings(col) -> np.ndarray:
    """A string column (keys: one string each; numpy builds them faster than to_pylist)."""
    return col.to_numpy(zero_copy_only=False).astype(object)


def _string_lists(col) -> np.ndarray:
    """A list<string> column as one Python list per row (a null row is empty), through a dictionary: tags
    repeat across rows, so each distinct string is built once and the rows share it."""
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_null(arr.type):
        return _objects([[] for _ in range(len(arr))])
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    lens = np.diff(offsets) * ~arr.is_null().to_numpy(zero_copy_only=False)
    codes = pc.dictionary_encode(arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
    vocab = np.array(codes.dictionary.to_pylist() + [None], dtype=object)[:-1]
    flat = vocab[codes.indices.to_numpy(zero_copy_only=False)].tolist()
    starts = (offsets[:-1] - offsets[0]).tolist()
    return _objects([flat[a:a + n] for a, n in zip(starts, lens.tolist())])


def _scalar_labels(col) -> np.ndarray:
    """A scalar label column (clip-retrieval: one label a row) as one-element lists."""
    return _objects([[] if v is None else [str(v)] for v in _strings(col)])


def _is_list(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_null(t)


_OPEN: OrderedDict = OrderedDict()  # this process's mapped parts with their metadata, across passes


class _PartCache:
    """The parts one pass reads: memory maps and metadata lists, kept per process (least recently used
    dropped beyond ``CACHE_ROWS``) so the training pass and the codebook update's pass, and the next
    epoch's, reuse what the last one built. A part is known by its file's identity (URL, size, mtime)."""

    def __init__(self, es: EmbeddingSet, cache_dir: str | None):
        self.es, self.cache_dir, self.keys = es, cache_dir, {}

    def get(self, p: int) -> tuple[np.ndarray, dict]:
        key = self.keys.get(p)
        if key is None:  # once a pass: the file's identity now
            part, es = self.es.parts[p], self.es
            path = local_array(part, self.cache_dir)
            key = self.keys[p] = (path, os.stat(path).st_mtime_ns, part.meta_url, es.key_column, es.tags_column,
                                  es.label_column)
        if key in _OPEN:
            _OPEN.move_to_end(key)
        else:
            _OPEN[key] = self._load(p, key[0])
            while len(_OPEN) > MIX_PARTS and sum(len(arr) for arr, _ in _OPEN.values()) > CACHE_ROWS:
                _OPEN.popitem(last=False)
        return _OPEN[key]

    def _load(self, p: int, path: str) -> tuple[np.ndarray, dict]:
        part, es = self.es.parts[p], self.es
        arr = np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)  # the map, minus memmap overhead
        table = read_table(part.meta_url, [c for c in (es.key_column, es.tags_column, es.label_column) if c])

        def column(name, scalars):
            col = table.column(name)
            return _string_lists(col) if _is_list(col.type) else scalars(col)

        # Python objects per row, built once per part and shared by the batches: treat them as read-only
        meta = {"key": _strings(table.column(es.key_column)) if es.key_column
                else _objects([f"{part.name}/{r}" for r in range(part.rows)]),
                "tags": column(es.tags_column, _strings),
                "labels": column(es.label_column, _scalar_labels) if es.label_column
                else _objects([[] for _ in range(part.rows)])}
        return arr, meta


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
    def read(self, cache: _PartCache, index: np.ndarray, contiguous: bool) -> dict:
        """One batch: a slice of the map when the rows are contiguous (eval), else a sorted gather per part."""
        part = np.searchsorted(self.offsets, index, side="right") - 1
        first = int(part[0])
        if contiguous and first == int(part[-1]):
            arr, meta = cache.get(first)
            a, b = int(index[0] - self.offsets[first]), int(index[-1] - self.offsets[first]) + 1
            feat = np.array(arr[a:b], dtype=np.float32)
            keys, tags, labels = (meta[c][a:b].tolist() for c in ("key", "tags", "labels"))
        else:  # a gather in file order, part by part, put back in batch order
            order = np.argsort(index, kind="stable")
            srt = index[order]
            part = part[order]
            feat = np.empty((len(index), self.es.dim), dtype=np.float32)
            cols = {c: np.empty(len(index), dtype=object) for c in ("key", "tags", "labels")}
            cuts = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), len(index)]
            for a, b in zip(cuts[:-1], cuts[1:]):
                p = int(part[a])
                arr, meta = cache.get(p)
                rows = srt[a:b] - self.offsets[p]
                where = order[a:b]
                feat[where] = arr[rows]
                for c, out in cols.items():
                    out[where] = meta[c][rows]
            keys, tags, labels = (cols[c].tolist() for c in ("key", "tags", "labels"))
        if self.es.tags_column != "tags":
            tags = _caption_tags(tags)
        return {"key": keys, "tags": tags, "labels": labels, "index": torch.from_numpy(index.astype(np.int64)),
                "feat": torch.from_numpy(feat)}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        cache = _PartCache(self.es, self.cache_dir)
        for index in self.batches_of(worker):
            yield self.read(cache, index, contiguous=not self.train)


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
            self.batches = train_batches(total, world_size, cfg.batch_size, es.url)
            self.per_worker = worker_shares(self.batches, workers)
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
        if self.cfg.num_workers == 0:  # no DataLoader: its default_convert would walk every tag string
            yield from self._stream()
            return
        yield from DataLoader(self._stream(), batch_size=None, num_workers=self.cfg.num_workers,
                              persistent_workers=False, collate_fn=_as_is)


def _as_is(batch: dict) -> dict:
    return batch


def make_embedding_loader(embedding_set: str | EmbeddingSet, cfg: ReaderConfig | None = None, rank: int = 0,
                          world_size: int = 1, epoch: int = 0, train: bool = True,
                          label_column: str | None = None) -> EmbeddingLoader:
    """An EmbeddingLoader over a set URL (validated here) or an opened EmbeddingSet."""
    es = embedding_set if isinstance(embedding_set, EmbeddingSet) else open_embedding_set(embedding_set, label_column)
    return EmbeddingLoader(es, cfg or ReaderConfig(), rank, world_size, epoch, train)
