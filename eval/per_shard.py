"""The reading side of the per-shard jobs (encode, extract): one output per input shard.

They read through the reader training uses (``shards.reader``, an eval pass narrowed by
``EvalRead``): DataLoader worker processes decode beside the model, each reading whole shards in
order, so a shard's rows arrive in order and in one worker's batches, which stay full across that
worker's shard boundaries. Each shard's rows are kept until the reader reports the shard ended (its
last row is in a batch already handed out), then handed over with its skip counts and, for a shard
that fell short of its manifest count, the ``check_complete`` line; the caller writes its output
then. Memory: the shards in progress, one per worker, plus the DataLoader's two batches per worker.

Why not a pool of its own: the job once had one (``eval/decoding.py``: spawned processes, a JSON +
raw-bytes wire format); side by side on real images it spent 2-5% less CPU per image than the
DataLoader path handing over uint8 pixels, under the 10% that would have justified a second stack
(docs/eval.md, "Reading stack"), and two stacks meant two sets of accounting to keep equal.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from shards.manifest import Manifest
from shards.reader import EvalRead, Loader, ReaderConfig, ReaderError


@dataclass
class ShardOutput:
    """One input shard's rows and what the model made of them (``arrays``, row-aligned)."""

    shard: int  # position in the manifest
    url: str
    keys: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    skipped: dict[str, int] = field(default_factory=dict)
    short: str | None = None  # why it holds fewer samples than its manifest count

    def add(self, batch: dict, computed: dict[str, np.ndarray], lo: int, hi: int) -> None:
        self.keys += batch["key"][lo:hi]
        self.index += batch["index"][lo:hi].tolist()
        self.labels += batch["labels"][lo:hi]
        self.tags += batch["tags"][lo:hi]
        for k, v in computed.items():
            self.parts.setdefault(k, []).append(v[lo:hi])

    def close(self, report: dict, empty: dict[str, np.ndarray]) -> ShardOutput:
        self.arrays = {k: np.concatenate(self.parts[k]) if self.parts.get(k) else v for k, v in empty.items()}
        self.parts, self.skipped, self.short = {}, report["skipped"], report["short"]
        return self


def shard_outputs(source: Manifest, positions: list[int], reader: ReaderConfig,
                  compute: Callable[[dict], dict[str, np.ndarray]], empty: dict[str, np.ndarray],
                  error: type[Exception]) -> Iterator[ShardOutput]:
    """Each shard at ``positions`` of ``source`` as it ends, ``compute(batch)`` run on every batch
    with rows (images as uint8 pixels; ``batch["url"]`` names each row's shard). ``empty`` gives the
    arrays of a shard without a usable row. A reader failure raised in a DataLoader worker becomes
    ``error`` with the original one-line message (not the worker's traceback)."""
    cfg = dataclasses.replace(reader, num_workers=min(reader.num_workers, len(positions)), check_sizes=False)
    offsets, urls = source.offsets(), source.shard_urls()
    rows = {p: ShardOutput(p, urls[p]) for p in positions}
    try:
        for batch in Loader(source, cfg, 0, 1, 0, train=False, job=EvalRead(tuple(positions))):
            if batch["key"]:
                shard = [bisect.bisect_right(offsets, i) - 1 for i in batch["index"].tolist()]
                batch["url"] = [urls[s] for s in shard]
                computed = compute(batch)
                lo = 0
                for s, group in itertools.groupby(shard):
                    hi = lo + len(list(group))
                    rows[s].add(batch, computed, lo, hi)
                    lo = hi
            for report in batch["ended"]:
                yield rows.pop(report["shard"]).close(report, empty)
    except ReaderError as exn:
        raise error(_original_line(str(exn))) from None


def _original_line(message: str) -> str:
    """The message an exception had in the DataLoader worker that raised it (DataLoader re-raises it
    with "Caught X in DataLoader worker process N" and the worker's traceback)."""
    if "\nOriginal Traceback" not in message:
        return message
    return message.rstrip().rsplit("\n", 1)[-1].split(": ", 1)[-1]
