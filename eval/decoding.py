"""The encode job's reading side: shard tars -> full batches of model inputs, in processes of their own.

Why processes and not a thread beside the model: the reading work is tar parsing (webdataset, pure
Python: it holds the GIL), JPEG decoding and resizing (Pillow, GIL released). In the model's
process it shares the GIL with the forward pass's op dispatch, and on a machine whose cores the
model already fills, every slice of reading stalls the model's thread team. A reading process has
an interpreter of its own, runs at a lower scheduling priority (``nice``) so it takes the cores
mostly when the model leaves them idle, and hands over uint8 pixels (4x smaller than float) whose
normalisation runs once per batch where the model runs.

Wire format between a decoder and the job, per message: one JSON header (keys, indices, labels,
tags, which shards ended and their skip counts) then, for a batch with rows, the raw bytes of its array.
No pickle: keys and labels come from shard contents.

``decoders`` processes split a call's shards (shard i to decoder i % n): each shard is read once,
by one process, and its rows keep their order; batches stay full across a decoder's shard
boundaries. ``read_batches`` is also run in a thread (``decoders=0``) where processes do not pay.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Iterator

import numpy as np

from shards.schema import SampleError


class ReadError(ValueError):
    """Input the job refuses (names the sample); raised in the job as ``EncodeError``."""


@dataclass(frozen=True)
class ReadSpec:
    """What a decoder needs to know of the model: the input it takes and the batch size."""

    batch_size: int
    features_only: bool
    in_features: int | None = None
    image_size: int | None = None


@dataclass
class Batch:
    """Samples on their way to the model. ``shard`` is each row's position in the caller's task
    list; ``ended`` the shards whose last row is in this batch or before it, with their skip
    counts in ``skipped``."""

    shard: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)
    skipped: dict[int, dict] = field(default_factory=dict)
    x: np.ndarray | None = None
    xs: list[np.ndarray] = field(default_factory=list, repr=False)

    def add(self, shard: int, key: str, index: int, labels: list[str], tags: list[str], x: np.ndarray) -> None:
        self.shard.append(shard)
        self.keys.append(key)
        self.index.append(index)
        self.labels.append(labels)
        self.tags.append(tags)
        self.xs.append(x)

    def stacked(self) -> Batch:
        if self.xs:
            self.x, self.xs = np.stack(self.xs), []
        return self


SHORT = "__short__"  # key in a shard's skip dict: why it held fewer samples than its manifest count


def read_batches(todo: list[tuple], spec: ReadSpec) -> Iterator[Batch]:
    """Full batches over the shards ``(position, url, manifest offset[, manifest count])`` in order,
    read across shard boundaries. With the count, a shard that falls short has its lost samples in
    its skip counts and the reason under ``SHORT``. Images leave as uint8 pixels (``eval_pixels``:
    Pillow and numpy only, no torch op, so a reading thread never starts an OpenMP team of its own)."""
    from shards.images import decode_rgb
    from shards.reader import ShardRead, check_complete, raw_samples
    from shards.schema import decode_fields
    from shards.transforms import eval_pixels

    b = Batch()
    fields = {"feat.npy", "labels.json", "tags.json"} if spec.features_only else None  # skip image bytes
    for task in todo:
        i, url, offset = task[:3]
        skips: Counter = Counter()
        res = ShardRead(url)
        for pos, raw in raw_samples(url, skips, fields, task[3] if len(task) > 3 else None, result=res):
            try:
                s = decode_fields(raw, need_image=not spec.features_only)
                where = f"{url}:{s['__key__']}"
                if spec.features_only:
                    if "feat" not in s:
                        raise SampleError("missing_feat", f"{where}: no feat.npy")
                    x = np.asarray(s["feat"], dtype=np.float32)
                    if spec.in_features and x.shape != (spec.in_features,):
                        raise ReadError(f"{where}: feat.npy holds {x.size} values, the checkpoint's "
                                        f"encoder takes {spec.in_features}")
                else:
                    x = eval_pixels(decode_rgb(s["image"], where, min_side=spec.image_size), spec.image_size)
            except SampleError as exn:
                skips[exn.reason] += 1
                continue
            b.add(i, s["__key__"], offset + pos, s["labels"], s["tags"], x)
            if len(b.keys) == spec.batch_size:
                yield b.stacked()
                b = Batch()
        b.ended.append(i)
        b.skipped[i] = dict(skips)
        if res.lost:
            b.skipped[i][SHORT] = check_complete([res], url, partial=True)[0]
    if b.ended:
        yield b.stacked()


# --- the wire -------------------------------------------------------------------------------------

def _send(conn: Connection, header: dict, x: np.ndarray | None = None) -> None:
    if x is not None:
        x = np.ascontiguousarray(x)
        header = header | {"dtype": x.dtype.str, "shape": list(x.shape)}
    conn.send_bytes(json.dumps(header).encode("utf-8"))
    if x is not None:
        conn.send_bytes(memoryview(x).cast("B"))


def _send_batch(conn: Connection, b: Batch) -> None:
    _send(conn, {"shard": b.shard, "keys": b.keys, "index": b.index, "labels": b.labels, "tags": b.tags,
                 "ended": b.ended,
                 "skipped": {str(i): s for i, s in b.skipped.items()}}, b.x)


def _recv(conn: Connection) -> dict:
    header = json.loads(conn.recv_bytes().decode("utf-8"))
    if "dtype" in header:
        x = np.empty(header["shape"], np.dtype(header["dtype"]))  # writable, filled in place: no copy
        conn.recv_bytes_into(memoryview(x).cast("B"))
        header["x"] = x
    return header


def _batch_of(msg: dict) -> Batch:
    return Batch(shard=msg["shard"], keys=msg["keys"], index=msg["index"], labels=msg["labels"],
                 tags=msg["tags"], ended=msg["ended"], skipped={int(i): s for i, s in msg["skipped"].items()}, x=msg.get("x"))


def _serve(conn: Connection, spec: ReadSpec, nice: int) -> None:
    """A decoder process: per request (a JSON task list), stream its batches, then ``done``."""
    if nice:
        os.nice(nice)
    import shards.images, shards.reader, shards.transforms  # noqa: E401,F401 - imported before "ready"

    _send(conn, {"ready": True})
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):  # the job is gone
            return
        todo = json.loads(request.decode("utf-8"))
        if todo is None:
            return
        try:
            for b in read_batches([tuple(t) for t in todo], spec):
                _send_batch(conn, b)
            _send(conn, {"done": True})
        except BrokenPipeError:  # the job stopped reading (it failed, or was killed)
            return
        except Exception as exn:  # noqa: BLE001 - handed to the job, which raises it
            try:
                _send(conn, {"error": type(exn).__name__, "message": str(exn)})
            except BrokenPipeError:
                return


ERRORS = {"ReadError": ReadError, "FileNotFoundError": FileNotFoundError, "PermissionError": PermissionError}


class Decoders:
    """``n`` decoder processes (spawned once, reused for every call) at ``nice`` priority."""

    def __init__(self, spec: ReadSpec, n: int, nice: int = 10):
        ctx = mp.get_context("spawn")  # never fork a process that holds torch's and Ray's threads
        self.conns: list[Connection] = []
        self.procs = []
        for j in range(n):
            ours, theirs = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_serve, args=(theirs, spec, nice), name=f"wsdhq-decoder-{j}", daemon=True)
            p.start()
            theirs.close()
            self.conns.append(ours)
            self.procs.append(p)
        for conn, p in zip(self.conns, self.procs):  # started and imported: no start-up inside a call
            try:
                ready = _recv(conn).get("ready")
            except (EOFError, OSError):
                p.join(timeout=1)
                self.close()
                raise RuntimeError(f"decoder process {p.name} died on start-up (exit code {p.exitcode})") from None
            if not ready:
                self.close()
                raise RuntimeError(f"decoder process {p.name} did not report ready")

    def batches(self, todo: list[tuple[int, str, int]]) -> Iterator[Batch]:
        """Batches of every shard in ``todo``, in the order the decoders finish them."""
        n = len(self.conns)
        active = {}
        try:
            for j, conn in enumerate(self.conns):
                mine = todo[j::n]
                if mine:
                    active[conn] = j
                    try:
                        conn.send_bytes(json.dumps(mine).encode("utf-8"))
                    except OSError:
                        raise self._died(j) from None
            while active:
                for conn in wait(list(active)):
                    try:
                        msg = _recv(conn)
                    except (EOFError, OSError):
                        raise self._died(active[conn]) from None
                    if msg.get("done"):
                        del active[conn]
                    elif "error" in msg:
                        raise ERRORS.get(msg["error"], RuntimeError)(
                            msg["message"] if msg["error"] in ERRORS else f"{msg['error']}: {msg['message']}")
                    else:
                        yield _batch_of(msg)
        except BaseException:
            self.close()  # a call left half-read cannot be resumed: the next one starts fresh processes
            raise

    def _died(self, j: int) -> RuntimeError:
        p = self.procs[j]
        p.join(timeout=1)
        return RuntimeError(f"decoder process {p.name} died (exit code {p.exitcode})")

    @property
    def alive(self) -> bool:
        return bool(self.procs) and all(p.is_alive() for p in self.procs)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send_bytes(b"null")
            except OSError:
                pass
            conn.close()
        for p in self.procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
        self.conns, self.procs = [], []


def prefetch(it, depth: int = 2):
    """Iterate ``it`` in a background thread, ``depth`` items ahead (the ``decoders=0`` path).
    Exceptions from the producer are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def produce():
        try:
            for item in it:
                q.put(item)
            q.put(end)
        except BaseException as exn:  # noqa: BLE001 - handed to the consumer
            q.put(exn)

    threading.Thread(target=produce, daemon=True).start()
    while True:
        item = q.get()
        if item is end:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
