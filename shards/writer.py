"""Writing shard sets: webdataset's ShardWriter, a manifest written last, deterministic splits.

A converter hands ``DatasetWriter.add`` one source item at a time; memory stays bounded by one shard
plus the set of written keys (needed to refuse duplicates and to prove the splits disjoint; about
100 bytes per sample). S3 targets are written to a local temp dir and each finished shard is
uploaded (multipart when large) from ShardWriter's ``post`` hook, then deleted locally.
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from shards import storage
from shards.config import at_least, require, within
from shards.images import DEFAULT_MAX_PIXELS, probe_image
from shards.manifest import MANIFEST_NAME, Manifest, ShardEntry, sha256_of
from shards.schema import SampleError, encode_sample

SPLITS = ("train", "query", "database")
SHARD_PATTERN = "shard-%06d.tar"


class SplitOverlapError(RuntimeError):
    """Query keys also landed in train/database: the splits are not disjoint."""


@dataclass
class ShardingConfig:
    """How a converter cuts shards and splits.

    Splits are decided per key by a seeded hash (order-independent and streaming): a key goes to
    ``query`` with probability ``query_fraction``, else to ``train`` with probability
    ``train_fraction`` (of all keys), and every non-query key goes to ``database`` when
    ``database_includes_train`` (the retrieval protocol of the methods) else only the rest does.
    ``train_needs_tags``: an untagged item drawn for ``train`` goes to ``database`` only (weak
    supervision has nothing to learn from it; e.g. MIRFLICKR images outside the tagged Cleared-Set).
    """

    max_count: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    query_fraction: float = 0.1
    train_fraction: float = 0.5
    database_includes_train: bool = True
    split_seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    validate_images: bool = True
    train_needs_tags: bool = False

    def __post_init__(self):
        within(self, "query_fraction", 0, 1, high_open=True)
        require(0 < self.query_fraction and 0 < self.train_fraction
                and self.query_fraction + self.train_fraction <= 1, "train_fraction",
                f"must be > 0 with query_fraction + train_fraction <= 1, got {self.train_fraction} "
                f"(query_fraction {self.query_fraction})")
        at_least(self, "max_count", 1)
        at_least(self, "max_bytes", 1)
        at_least(self, "max_pixels", 1)

    def splits_of(self, key: str, tagged: bool = True) -> tuple[str, ...]:
        u = int.from_bytes(hashlib.blake2b(f"{self.split_seed}:{key}".encode(), digest_size=8).digest(),
                           "big") / 2.0 ** 64
        if u < self.query_fraction:
            return ("query",)
        if u < self.query_fraction + self.train_fraction and (tagged or not self.train_needs_tags):
            return ("train", "database") if self.database_includes_train else ("train",)
        return ("database",)


def _made_dirs(path: str) -> list[Path]:
    """The directories ``mkdir(parents=True)`` of ``path`` would create, outermost first."""
    out: list[Path] = []
    p = Path(path).absolute()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out[::-1]


class ShardSetWriter:
    """One shard set (a directory or S3 prefix): shards via ``wds.ShardWriter``, manifest last."""

    def __init__(self, url: str, source: str, split: str, label_names: list[str] | None = None,
                 max_count: int = 1000, max_bytes: int = 256 * 1024 * 1024, overwrite: bool = False):
        self.url, self.source, self.split, self.label_names = str(url), source, split, label_names
        self.max_count, self.max_bytes = max_count, max_bytes
        existing = storage.list_files(self.url)
        if existing and not overwrite:
            raise FileExistsError(f"{self.url}: output already holds {len(existing)} file(s); "
                                  "pass --overwrite to replace it")
        for f in existing:
            storage.remove(f)
        self._tmp = tempfile.mkdtemp(prefix="wsdhq-shards-") if storage.is_s3(self.url) else None
        self._local = self._tmp or self.url
        self._made = _made_dirs(self._local)  # removed again by abort(): a refused conversion leaves nothing
        Path(self._local).mkdir(parents=True, exist_ok=True)
        self._writer: wds.ShardWriter | None = None
        self.entries: list[ShardEntry] = []
        self.keys: set[str] = set()

    def _post(self, fname: str) -> None:
        count = self._writer.count if self._writer is not None else 0
        digest, nbytes = sha256_of(fname)
        name = Path(fname).name
        if self._tmp is not None:
            storage.upload_file(fname, storage.join(self.url, name))
            Path(fname).unlink()
        self.entries.append(ShardEntry(url=name, count=count, bytes=nbytes, sha256=digest))

    def write(self, sample: dict) -> None:
        key = sample["__key__"]
        if key in self.keys:
            raise SampleError("duplicate_key", f"{key}: key already written to {self.url}")
        if self._writer is None:  # lazily: ShardWriter opens a shard in its constructor
            # an integer mtime: with webdataset's default float time.time() tarfile adds a 1 KiB PAX
            # header to every member, which doubled a features-mode sample (8.2 KB -> 4.1 KB)
            self._writer = wds.ShardWriter(str(Path(self._local, SHARD_PATTERN)), maxcount=self.max_count,
                                           maxsize=self.max_bytes, post=self._post, verbose=0,
                                           mtime=int(time.time()))
        self._writer.write(sample)
        self.keys.add(key)

    def abort(self) -> None:
        """Stop without a manifest and remove what was written: a failed conversion leaves no half set."""
        if self._writer is not None:
            self._writer.post = None
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        for f in storage.list_files(self.url):
            storage.remove(f)
        for d in reversed(self._made):
            with contextlib.suppress(OSError):  # only when empty: never anything that was there before
                d.rmdir()

    def close(self, skipped: Counter | None = None) -> Manifest:
        if self._writer is not None:
            self._writer.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        m = Manifest(shards=self.entries, source=self.source, split=self.split, label_names=self.label_names,
                     skipped=dict(sorted((skipped or Counter()).items())), base_url=self.url)
        m.save()
        return m


class DatasetWriter:
    """``<root>/{train,query,database}/`` shard sets fed one item at a time, with skip counting.

    ``add`` checks and stores one item; a bad item is counted under its reason in ``skipped``
    (and reported at the end), never dropped silently. ``close`` proves the splits disjoint.
    Used as a context manager: closed on success, aborted (nothing left behind) on an error.
    """

    def __init__(self, root: str, source: str, label_names: list[str] | None = None,
                 cfg: ShardingConfig | None = None, overwrite: bool = False):
        self.root, self.cfg = str(root), cfg or ShardingConfig()
        self.label_names = sorted(label_names) if label_names is not None else None
        self.writers = {s: ShardSetWriter(storage.join(self.root, s), source, s, self.label_names,
                                          self.cfg.max_count, self.cfg.max_bytes, overwrite) for s in SPLITS}
        self.skipped: Counter = Counter()
        self.examples: dict[str, str] = {}  # first message per skip reason, for the summary
        self.untagged = 0
        self._labels_seen: set[str] = set()

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, message)

    def add(self, key: str, image: bytes, tags: list[str], labels: list[str] | None = None,
            caption: str | None = None, feat: np.ndarray | None = None, where: str | None = None) -> bool:
        """Store one item in its split(s); returns False (and counts the reason) when it is skipped."""
        where = where or key
        try:
            ext = probe_image(image, where, self.cfg.max_pixels, full=self.cfg.validate_images)
            sample = encode_sample(key, image, ext, tags, labels, caption, feat)
            for split in self.cfg.splits_of(key, tagged=bool(tags)):
                self.writers[split].write(sample)
        except SampleError as exn:
            self.skip(exn.reason, str(exn))
            return False
        if not tags:
            self.untagged += 1
        if labels:
            self._labels_seen.update(labels)
        return True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            for sw in self.writers.values():
                sw.abort()
            made = {d for sw in self.writers.values() for d in sw._made}
            for d in sorted(made, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()

    def close(self) -> dict[str, Manifest]:
        w = self.writers
        overlap = w["query"].keys & (w["train"].keys | w["database"].keys)
        if overlap:
            raise SplitOverlapError(f"{self.root}: {len(overlap)} query key(s) also in train/database, "
                                    f"e.g. {sorted(overlap)[:3]}")
        if self.label_names is None and self._labels_seen:
            self.label_names = sorted(self._labels_seen)
            for sw in w.values():
                sw.label_names = self.label_names
        return {s: sw.close(self.skipped) for s, sw in w.items()}

    def summary(self) -> str:
        lines = [f"wrote {self.root}:"]
        for s, sw in self.writers.items():
            lines.append(f"  {s:9s} {sum(e.count for e in sw.entries):7d} samples in {len(sw.entries)} shard(s)")
        lines.append(f"  untagged (kept, tags.json = []): {self.untagged}")
        if self.skipped:
            lines.append("  skipped:")
            for reason, n in sorted(self.skipped.items()):
                lines.append(f"    {reason}: {n}  (first: {self.examples[reason]})")
        else:
            lines.append("  skipped: none")
        return "\n".join(lines)


__all__ = ["DatasetWriter", "ShardSetWriter", "ShardingConfig", "SplitOverlapError", "SPLITS", "MANIFEST_NAME"]
