"""The streaming reader: shard sets -> batches, for training (``train=True``) and encoding (``train=False``).

Tar reading is webdataset's (``url_opener`` -> ``tar_file_expander`` -> ``group_by_keys``, with a
counting handler; ``ResampledShards(deterministic=True)``; its shuffle buffer). What is written here
is the part webdataset leaves to the user: which shards each (rank, DataLoader worker) *slot* reads,
and how many batches it yields, computed from the manifest counts so no rank ever waits on another.

* ``train=True``: shards are shuffled by ``(seed, epoch)`` identically on every rank and dealt to the
  ``world_size * num_workers`` slots; each rank yields exactly ``total // (world_size*batch_size)``
  batches, a slot cycling its shards again if they run short (as open_clip's ``with_epoch``).
  With ``resample`` each slot instead draws shards with replacement, seeded by (seed, epoch, slot).
* ``train=False``: manifest order, no augmentation, no padding, every sample exactly once across all
  ranks; ``len(loader)`` is this rank's batch count (partial last batches per worker). ``EvalRead``
  narrows it to some of the set's shards (their global indices kept), reports each shard as it
  ends (rows, skips, loss: what a per-shard output needs) and can hand images over as uint8 pixels
  (the encode and extraction jobs).
* Fewer shards than slots: every slot reads every shard and keeps the samples whose global index
  ``% slots == slot`` (correct for both modes; costs ``slots`` times the reads, fine for small sets,
  so the loader logs it). Convert with a smaller ``--max-count`` to avoid it. ``SlotPlan`` is that
  rule; the training driver applies the same one (and ``train_batches``) before any worker starts.

Bad samples are skipped and counted by reason in ``loader.skips`` (logged at the end of each pass),
per sample and against the manifest: every shard read gives samples read + skipped = its manifest
count, a shard that delivers fewer counting the rest as ``truncated_tar`` / ``unreadable_shard`` /
``short_shard`` (``raw_samples``); a missing shard or a shard whose byte size disagrees with the
manifest is refused before streaming.
"""
from __future__ import annotations

import bisect
import logging
import random
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import _shuffle
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander, url_opener
from webdataset.utils import make_seed

from shards import storage
from shards.config import at_least, require
from shards.images import DEFAULT_MAX_PIXELS, decode_rgb
from shards.manifest import Manifest, check_shards
from shards.schema import IMAGE_EXTS, SampleError, decode_fields
from shards.transforms import eval_pixels, eval_transform, train_transform

log = logging.getLogger(__name__)
_SKIPS = "_skips"  # key of the per-worker marker dict that carries skip counts back to the Loader


@dataclass
class ReaderConfig:
    batch_size: int = 64
    image_size: int = 224
    augment: bool = True  # random resized crop + flip; only when train=True
    crop_scale: tuple[float, float] = (0.35, 1.0)
    shuffle_buffer: int = 1000  # samples; only when train=True
    num_workers: int = 2
    seed: int = 0
    resample: bool = False
    features_only: bool = False  # skip image decode; batches carry "feat" only
    max_pixels: int = DEFAULT_MAX_PIXELS
    check_sizes: bool = True  # stat every shard against the manifest's byte size before streaming
    label_column: str = ""  # embedding sets without embeddings.json (clip-retrieval): the labels column

    def __post_init__(self):
        for key in ("batch_size", "image_size", "max_pixels"):
            at_least(self, key, 1)
        for key in ("num_workers", "shuffle_buffer"):
            at_least(self, key, 0)
        lo, hi = self.crop_scale
        require(0 < lo <= hi <= 1, "crop_scale",
                f"must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale!r}")


@dataclass(frozen=True)
class EvalRead:
    """What a per-shard job (encode, extract) asks of an eval pass beyond plain batches.

    ``shards``: manifest positions to read, in this order, dealt to the slots as a whole set is (one
    shard per slot at most; fewer shards than slots is refused, since a shard then ends in every
    slot). ``reports``: each batch carries ``ended``, the reports of the shards whose last row is in
    it or an earlier batch of its worker; ``{"shard", "url", "skipped", "lost", "short"}`` (``short``
    the ``check_complete`` line of a shard that fell short of its manifest count, else None); after a
    worker's last full batch they come in a batch of 0 rows. ``pixels``: ``image`` is uint8
    (B, H, W, 3), normalised by the consumer (``transforms.normalise_batch``) where its model runs:
    4x fewer bytes between the processes, 2-10% less CPU per image than float batches (measured,
    docs/eval.md "Reading stack")."""

    shards: tuple[int, ...] | None = None
    reports: bool = True
    pixels: bool = True


class ReaderError(RuntimeError):
    """The shard set cannot be read as asked; the message names the set and the numbers."""


@dataclass(frozen=True)
class SlotPlan:
    """How a shard set is dealt to the ``world_size x workers`` slots: whole shards per slot, or, with
    fewer shards than slots, every shard to every slot, each keeping the samples whose global index
    ``% slots == slot``. The one rule the reader follows and the training driver checks beforehand."""

    shards: int
    world_size: int
    workers: int  # DataLoader workers per rank (0 counts as 1: the rank's own process)

    @property
    def slots(self) -> int:
        return self.world_size * max(1, self.workers)

    @property
    def by_sample(self) -> bool:
        return self.shards < self.slots

    def describe(self) -> str:
        return (f"{self.shards} shard(s) < {self.slots} slots (world_size {self.world_size} x workers "
                f"{max(1, self.workers)}): every slot reads every shard and keeps its share of samples by index")


def train_batches(total: int, world_size: int, batch_size: int, url: str) -> int:
    """Batches every rank yields in a training pass: full batches only, the same on every rank."""
    batches = total // (world_size * batch_size)
    if batches == 0:
        raise ReaderError(f"{url}: {total} samples < world_size {world_size} x batch_size {batch_size}; "
                          "no full batch per rank")
    return batches


@dataclass
class ShardRead:
    """What reading one shard gave, beside the samples: how many samples its members held (``seen``),
    how many the manifest promised (``expected``), and why any were lost (``reason``, ``error``)."""

    url: str
    expected: int | None = None
    seen: int = 0
    lost: int = 0
    reason: str | None = None
    error: str | None = None
    unavailable: bool = False  # the storage itself failed (endpoint down), not the data


class _Tally:
    """The member-level view of a shard, fed by webdataset's ``select_files`` hook (called with every
    member's name before its data is read): which sample each member starts or continues, so every
    sample is counted once, including those with no selected member and repeated keys, which
    ``group_by_keys`` would drop or merge (a repeated key raised once per tar member)."""

    def __init__(self, fields: set[str] | None):
        self.fields = fields
        self.groups = 0
        self.key: str | None = None
        self.suffixes: set[str] = set()
        self.first: dict[str, int] = {}  # key -> position of its first sample
        self.dups: list[int] = []
        self.taken: list[bool] = []  # per sample: did any member pass ``fields``

    def select(self, fname: str) -> bool:
        # webdataset's base_plus_ext without its regex (this runs once per tar member): the key is
        # the name up to the first dot after the last slash
        start = fname.rfind("/") + 1
        dot = fname.find(".", start)
        if dot > start:
            prefix, suffix = fname[:dot], fname[dot + 1:].lower()
        else:  # no extension, or a dot-file: the regex decides, as in group_by_keys
            prefix, suffix = base_plus_ext(fname)
            if prefix is None:
                return False
            suffix = suffix.lower()
        if prefix != self.key or suffix in self.suffixes:  # a new sample (or the same key again)
            self.key, self.suffixes = prefix, set()
            self.taken.append(False)
            if prefix in self.first:
                self.dups.append(self.groups)
            else:
                self.first[prefix] = self.groups
            self.groups += 1
        self.suffixes.add(suffix)
        if self.groups - 1 in self.dups[-1:]:
            return False  # a repeated key: counted as duplicate_key, never read
        take = self.fields is None or suffix in self.fields
        self.taken[-1] = self.taken[-1] or take
        return take


class _Recorder:
    """A webdataset error handler that records the error and lets the stream continue; the loss it
    caused is counted per sample at the end of the shard (``raw_samples``)."""

    def __init__(self, url: str):
        self.url = url
        self.errors: list[Exception] = []

    def __call__(self, exn: Exception) -> bool:
        self.errors.append(exn)
        return True

    def outcome(self) -> tuple[str | None, str | None, bool]:
        """(loss reason, message, storage unavailable) of the first error, if any."""
        if not self.errors:
            return None, None, False
        exn = self.errors[0]
        if isinstance(exn, (tarfile.TarError, EOFError)):
            return "truncated_tar", f"{type(exn).__name__}: {_first_arg(exn)}", False
        err = storage.read_error(self.url, exn)
        return "unreadable_shard", str(err), isinstance(err, storage.StorageUnavailable)


def _first_arg(exn: Exception) -> str:
    return str(exn.args[0]).split(" @ ")[0] if exn.args else type(exn).__name__


def raw_samples(url: str, skips: Counter, fields: set[str] | None = None, expected: int | None = None,
                keep=None, result: ShardRead | None = None) -> Iterator[tuple[int, dict]]:
    """(position in shard, raw sample) for one shard, via webdataset's tar iterators.

    Accounting, per sample (a group of members sharing a key), into ``skips``: a repeated key is
    ``duplicate_key``; a sample none of whose members is in ``fields`` is ``missing_tags`` (``fields``
    always holds tags.json); and when the shard holds fewer samples than ``expected`` (the manifest's
    count) the shortfall is ``truncated_tar`` (the tar broke), ``unreadable_shard`` (it could not be
    opened or streamed) or ``short_shard`` (it ended early without an error: stream-mode tarfile
    takes a cut or a damaged header for the end of the archive), logged naming the shard. So yielded
    samples + these skips = ``expected``; the caller counts its decode failures among the yielded.
    Without ``expected`` (converter inputs) a broken tar counts once. ``keep(position)`` restricts
    yields and counts to a slot's share of the shard. ``result`` receives the shard's outcome.
    """
    res = result if result is not None else ShardRead(url)
    res.url, res.expected = url, expected
    keep = keep or (lambda _pos: True)
    tally, handler = _Tally(None if fields is None else set(fields)), _Recorder(url)
    files = tar_file_expander(url_opener([{"url": url}], handler=handler), handler=handler,
                              select_files=tally.select)
    produced: set[int] = set()
    for raw in group_by_keys(files, handler=handler):
        pos = tally.first.get(raw["__key__"], tally.groups - 1)
        produced.add(pos)
        if keep(pos):
            yield pos, raw
    res.seen = tally.groups
    dups = set(tally.dups)
    unyielded = [p for p in range(tally.groups) if p not in produced and p not in dups]
    missing = "missing_tags" if fields is None or "tags.json" in fields else "missing_fields"
    skips["duplicate_key"] += sum(keep(p) for p in dups)
    skips[missing] += sum(keep(p) for p in unyielded if not tally.taken[p])
    reason, message, res.unavailable = handler.outcome()
    # samples the tar promised but never delivered: cut off by an error, or past an early end
    broken = [p for p in unyielded if tally.taken[p]]
    beyond = range(tally.groups, expected) if expected is not None else range(0)
    if broken or beyond:
        res.reason = reason or "short_shard"
        res.lost = sum(keep(p) for p in broken) + sum(keep(p) for p in beyond)
        res.error = message or f"the tar ended after {tally.groups} of {expected} samples"
        skips[res.reason] += res.lost
        log.warning("%s: %d of %s samples missing (%s): %s", url, len(broken) + len(beyond),
                    expected if expected is not None else "?", res.reason, res.error)
    elif reason is not None:
        res.reason, res.error = reason, message
        if expected is None:
            skips[reason] += 1
        log.warning("%s: %s after all %d samples: %s", url, reason, tally.groups, message)
    if expected is not None and tally.groups > expected:
        log.warning("%s: holds %d samples, more than the %d its manifest says", url, tally.groups, expected)
    for reason_ in [r for r, n in skips.items() if n == 0]:
        del skips[reason_]


def iter_samples(shard_url: str, fields: Iterable[str] | None = None, skips: Counter | None = None,
                 expected: int | None = None, result: ShardRead | None = None) -> Iterator[dict]:
    """Every usable sample of one shard, json/npy decoded, image left as bytes (``image``, ``image_ext``).

    ``fields`` limits which tar members are read (e.g. ``["tags.json", "labels.json"]``); bad samples
    are counted into ``skips`` (a fresh Counter, logged at the end of the shard, when not given);
    ``expected`` (the manifest's count) turns a short shard into counted skips (``raw_samples``).
    """
    own = skips is None
    skips = Counter() if skips is None else skips
    wanted = None if fields is None else set(fields) | {"tags.json"}
    need_image = wanted is None or bool(wanted & set(IMAGE_EXTS))
    for _, raw in raw_samples(shard_url, skips, wanted, expected, result=result):
        try:
            yield decode_fields(raw, need_image=need_image)
        except SampleError as exn:
            skips[exn.reason] += 1
            log.debug("skipping (%s): %s", exn.reason, exn)
    if own and skips:
        log.warning("%s: skipped %s", shard_url, dict(skips))


class IncompleteRead(ValueError):
    """An eval-type pass lost whole samples at shard level; it refuses to publish unless asked for
    partial output. The message names every shard that fell short and by how much."""


def iter_set(manifest: Manifest, fields: Iterable[str] | None = None, skips: Counter | None = None,
             reads: list[ShardRead] | None = None) -> Iterator[dict]:
    """``iter_samples`` over every shard of a set in manifest order, each accounted against its
    manifest count; ``reads`` collects each shard's ``ShardRead`` (for ``check_complete``)."""
    for entry, url in zip(manifest.shards, manifest.shard_urls()):
        res = ShardRead(url)
        yield from iter_samples(url, fields, skips if skips is not None else Counter(), entry.count, res)
        if reads is not None:
            reads.append(res)


def check_complete(reads: Iterable[ShardRead], what: str, partial: bool = False) -> list[str]:
    """One line per shard that lost samples; raises ``IncompleteRead`` with them unless ``partial``."""
    short = [f"{r.url}: {r.lost} of {r.expected} samples lost ({r.reason}: {r.error})" for r in reads if r.lost]
    if short and not partial:
        raise IncompleteRead(f"{what}: refusing an incomplete result, {len(short)} shard(s) fell short: "
                             + "; ".join(short[:3]) + (" ..." if len(short) > 3 else "")
                             + " (pass --partial to accept it)")
    return short


class _SlotStream(IterableDataset):
    """What one (rank, worker) slot reads; picklable so DataLoader workers can run it."""

    def __init__(self, manifest: Manifest, cfg: ReaderConfig, rank: int, world_size: int, epoch: int,
                 train: bool, per_worker_batches: list[int] | None, job: EvalRead | None = None):
        self.urls, self.offsets, self.total = manifest.shard_urls(), manifest.offsets(), manifest.total
        self.counts = [e.count for e in manifest.shards]
        self.cfg, self.rank, self.world, self.epoch, self.train = cfg, rank, world_size, epoch, train
        self.per_worker_batches = per_worker_batches  # train mode: batches each worker yields
        self.job = job or EvalRead(reports=False, pixels=False)
        self.read = list(range(len(self.urls))) if self.job.shards is None else list(self.job.shards)
        plan = SlotPlan(len(self.read), world_size, cfg.num_workers)
        self.workers, self.slots, self.by_sample = max(1, cfg.num_workers), plan.slots, plan.by_sample
        self.by_shard: dict[int, Counter] = {}  # reports: skips of the shards read, not yet reported
        self.ended: list[dict] = []  # reports: shards read to their end, not yet handed out

    def _passes(self, slot: int) -> Iterator[Iterable[int]]:
        """Shard numbers this slot reads, pass by pass (train repeats its passes until enough batches)."""
        n = len(self.urls)
        if not self.train:
            yield self.read if self.by_sample else self.read[slot::self.slots]
            return
        if self.cfg.resample:
            # ResampledShards yields dict(url=...); map back to shard numbers for the global index.
            pos = {u: i for i, u in enumerate(self.urls)}
            rs = wds.ResampledShards(self.urls, deterministic=True,
                                     worker_seed=lambda: make_seed(self.cfg.seed, self.epoch, slot))
            yield (pos[d["url"]] for d in rs)
            return
        order = list(range(n))
        random.Random(make_seed(self.cfg.seed, self.epoch)).shuffle(order)  # same on every rank
        mine = order if self.by_sample else order[slot::self.slots]
        while True:
            yield mine

    def _samples(self, slot: int, shards: Iterable[int], skips: Counter, dry: list[int]) -> Iterator[dict]:
        """Decoded (not image-decoded) samples of ``shards``; ``dry`` counts shard reads with no sample.

        Every shard read is accounted against its manifest count (``raw_samples``); a storage outage
        that outlasts the retry budget on consecutive shards stops the pass naming the endpoint."""
        keep = (lambda pos, off: (off + pos) % self.slots == slot) if self.by_sample else None
        outage_since, outage_reads = None, 0
        for shard in shards:
            url, offset = self.urls[shard], self.offsets[shard]
            got = False
            res = ShardRead(url)
            mine = self.by_shard[shard] = Counter()  # this shard's skips (all of a slot's go to ``skips``)
            for pos, raw in raw_samples(url, mine, None, self.counts[shard],
                                        None if keep is None else (lambda p, o=offset: keep(p, o)), res):
                index = offset + pos
                try:
                    s = decode_fields(raw, need_image=not self.cfg.features_only)
                except SampleError as exn:
                    mine[exn.reason] += 1
                    log.debug("skipping (%s): %s", exn.reason, exn)
                    continue
                if self.cfg.features_only and "feat" not in s:
                    mine["missing_feat"] += 1
                    continue
                s["index"] = index
                got = True
                yield s
            skips.update(mine)  # raw_samples counts a shard's losses at its end; image skips come later
            if self.job.reports:
                self.ended.append({"shard": shard, "url": url, "lost": res.lost, "short": (
                    check_complete([res], url, partial=True)[0] if res.lost else None)})
            else:
                del self.by_shard[shard]
            if res.unavailable:  # every shard in a row, or for longer than the retry budget: an outage
                outage_since = outage_since or time.monotonic()
                outage_reads += 1
                waited = time.monotonic() - outage_since
                if outage_reads >= len(self.urls) or (outage_reads > 1 and waited >= storage.S3_RETRY_BUDGET_S):
                    raise ReaderError(f"storage outage: {res.error}; {outage_reads} shard reads in a row failed "
                                      f"over {waited:.0f} s (slot {slot}, rank {self.rank})")
            else:
                outage_since, outage_reads = None, 0
            dry[0] = 0 if got else dry[0] + 1
            if self.train and dry[0] > 2 * len(self.urls) + 8:
                why = f"; last shard error: {res.error}" if res.error else ""
                raise ReaderError(f"slot {slot} (rank {self.rank}) found no usable sample in "
                                  f"{dry[0]} shard reads; skips so far: {dict(skips)}{why}")

    def _stream(self, slot: int, skips: Counter) -> Iterator[dict]:
        """Pass after pass, each through its own shuffle buffer: a pass is fully emitted before the
        next begins, so a slot repeats samples only when its shards hold fewer than it must yield."""
        dry = [0]
        for p, shards in enumerate(self._passes(slot)):
            stream: Iterable[dict] = self._samples(slot, shards, skips, dry)
            if self.train and self.cfg.shuffle_buffer > 1:
                stream = _shuffle(stream, bufsize=self.cfg.shuffle_buffer,
                                  initial=min(100, self.cfg.shuffle_buffer),
                                  rng=random.Random(make_seed(self.cfg.seed, self.epoch, slot, 2, p)))
            yield from stream

    def _to_tensor(self, s: dict, gen: torch.Generator) -> dict:
        if self.cfg.features_only:
            return s
        where = f"{s['__url__']}:{s['__key__']}"
        augment = self.train and self.cfg.augment  # random crops need the full pixels
        img = decode_rgb(s.pop("image"), where, self.cfg.max_pixels, None if augment else self.cfg.image_size)
        if augment:
            s["image"] = train_transform(img, self.cfg.image_size, gen, self.cfg.crop_scale)
        elif self.job.pixels:
            s["image"] = torch.from_numpy(np.array(eval_pixels(img, self.cfg.image_size)))  # Pillow's are read-only
        else:
            s["image"] = eval_transform(img, self.cfg.image_size)
        return s

    def _skipped(self, s: dict, reason: str, skips: Counter) -> None:
        """A sample dropped after ``_samples`` yielded it. With reports, counted for its shard, which
        is still open (``_samples`` closes a shard, adding its counts to the slot's, only when asked
        for the sample after its last; no shuffle buffer in eval passes)."""
        if self.job.reports:
            self.by_shard[bisect.bisect_right(self.offsets, s["index"]) - 1][reason] += 1
        else:
            skips[reason] += 1

    def _with_ended(self, batch: dict) -> dict:
        """``batch`` with the reports of the shards ended so far (their rows all in it or before)."""
        if self.job.reports:
            batch["ended"] = [r | {"skipped": dict(self.by_shard.pop(r["shard"]))} for r in self.ended]
            self.ended = []
        return batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.rank * self.workers + worker
        skips: Counter = Counter()
        gen = torch.Generator().manual_seed(make_seed(self.cfg.seed, self.epoch, slot, 1))
        stream = self._stream(slot, skips)
        limit = None if self.per_worker_batches is None else self.per_worker_batches[worker]
        batch: list[dict] = []
        produced = failed_in_a_row = 0
        if limit != 0:
            for s in stream:
                try:
                    batch.append(self._to_tensor(s, gen))
                    failed_in_a_row = 0
                except SampleError as exn:
                    self._skipped(s, exn.reason, skips)
                    log.debug("skipping (%s): %s", exn.reason, exn)
                    failed_in_a_row += 1
                    if failed_in_a_row > self.total:  # a whole cycle of this slot's shards, all bad
                        raise ReaderError(f"slot {slot} (rank {self.rank}) found no usable image in "
                                          f"{failed_in_a_row} samples in a row; skips: {dict(skips)}") from None
                    continue
                if len(batch) == self.cfg.batch_size:
                    yield self._with_ended(collate(batch))
                    batch, produced = [], produced + 1
                    if limit is not None and produced == limit:
                        break
            if limit is None and (batch or self.ended):
                yield self._with_ended(collate(batch))
        yield {_SKIPS: dict(skips)}


def collate(samples: list[dict]) -> dict:
    out = {"key": [s["__key__"] for s in samples], "tags": [s["tags"] for s in samples],
           "labels": [s["labels"] for s in samples],
           "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64)}
    if not samples:  # a batch of 0 rows: it carries only the reports of shards that ended (EvalRead)
        return out
    if "image" in samples[0] and isinstance(samples[0]["image"], torch.Tensor):
        out["image"] = torch.stack([s["image"] for s in samples])
    if all("feat" in s for s in samples):
        try:
            out["feat"] = torch.from_numpy(np.stack([s["feat"] for s in samples]))
        except ValueError:
            raise ReaderError(f"feat.npy sizes differ within a batch (keys {out['key'][:3]}...)") from None
    return out


def worker_shares(batches: int, workers: int) -> list[int]:
    """How a rank's DataLoader workers split its ``batches`` (the first ones take one more)."""
    return [batches // workers + (w < batches % workers) for w in range(workers)]


class Loader:
    """Iterate for batches; ``len()`` from the manifest; ``skips`` counts bad samples of the last pass."""

    def __init__(self, manifest: Manifest, cfg: ReaderConfig, rank: int, world_size: int, epoch: int,
                 train: bool, job: EvalRead | None = None):
        if not 0 <= rank < world_size:
            raise ReaderError(f"rank {rank} is not in [0, world_size={world_size})")
        if manifest.total == 0:
            raise ReaderError(f"{manifest.url}: the shard set is empty (0 samples); nothing to read")
        if job is not None and train:
            raise ReaderError("EvalRead (a subset of shards, per-shard reports, pixels) is for train=False passes")
        self.manifest, self.cfg, self.rank, self.world_size, self.train = manifest, cfg, rank, world_size, train
        self.epoch, self.job = epoch, job
        self.read = list(range(len(manifest.shards))) if job is None or job.shards is None else list(job.shards)
        self.skips: Counter = Counter()
        workers = max(1, cfg.num_workers)
        plan = SlotPlan(len(self.read), world_size, cfg.num_workers)
        if plan.by_sample and job is not None and job.reports:
            raise ReaderError(f"{manifest.url}: per-shard reports need a shard per slot at least: "
                              + plan.describe() + " (use fewer workers)")
        if plan.by_sample:
            log.info("%s: %s", manifest.url, plan.describe())
        if train:
            self.batches = train_batches(manifest.total, world_size, cfg.batch_size, manifest.url)
            self.per_worker = worker_shares(self.batches, workers)
        else:
            self.per_worker = None
            self.batches = sum(-(-n // cfg.batch_size) for n in self._eval_counts(plan))
        if cfg.check_sizes:
            check_shards(manifest)

    def _eval_counts(self, plan: SlotPlan) -> list[int]:
        counts = [self.manifest.shards[i].count for i in self.read]
        out = []
        slots, workers = plan.slots, max(1, plan.workers)
        for w in range(workers):
            slot = self.rank * workers + w
            if plan.by_sample:
                out.append(len(range(slot, sum(counts), slots)))
            else:
                out.append(sum(counts[slot::slots]))
        return out

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict]:
        ds = _SlotStream(self.manifest, self.cfg, self.rank, self.world_size, self.epoch, self.train,
                         self.per_worker, self.job)
        self.skips = Counter()
        it = iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, persistent_workers=False))
        try:
            for item in it:
                if _SKIPS in item:
                    self.skips.update(item[_SKIPS])
                    continue
                yield item
        finally:
            # A pass left early (an error, a consumer that stopped) stops its workers now: a traceback
            # keeps the iterator alive until the garbage collector finds it, and while torch still
            # counts a dead worker as its own, its SIGCHLD handler raises in whatever runs next.
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        if self.skips:
            log.warning("%s rank %d epoch %d: skipped %s", self.manifest.url, self.rank, self.epoch,
                        dict(sorted(self.skips.items())))


def make_loader(shard_set: str | Manifest, cfg: ReaderConfig | None = None, rank: int = 0, world_size: int = 1,
                epoch: int = 0, train: bool = True, job: EvalRead | None = None) -> Loader:
    """A Loader over a shard set (directory / S3 prefix / manifest URL, or a loaded Manifest), or an
    ``EmbeddingLoader`` (same batches, features mode) when the URL is an embedding set (shards.embeddings);
    ``job`` (eval passes over shard sets only) is a per-shard job's narrower read (``EvalRead``)."""
    cfg = cfg or ReaderConfig()
    if not isinstance(shard_set, Manifest):
        from shards.embeddings import is_embedding_set

        if is_embedding_set(str(shard_set)):
            from shards.embedding_loader import make_embedding_loader

            if job is not None:
                raise ReaderError(f"{shard_set}: an embedding set has no shards to read one by one")
            return make_embedding_loader(str(shard_set), cfg, rank, world_size, epoch, train, cfg.label_column or None)
    manifest = shard_set if isinstance(shard_set, Manifest) else Manifest.load(str(shard_set))
    return Loader(manifest, cfg, rank, world_size, epoch, train, job)
