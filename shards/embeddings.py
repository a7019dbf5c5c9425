"""Embedding sets: features stored as contiguous arrays, one per part, with their metadata beside them.

The layout is clip-retrieval's / img2dataset's, so a set they wrote is read as it is and ours is theirs::

    <set>/img_emb/img_emb_<part>.npy          # (rows, dim) float16 or float32, C order
    <set>/metadata/metadata_<part>.parquet    # key, tags (list<str>), labels (list<str>, may be null)
    <set>/embeddings.json                     # ours only: {"format": "wsdhq-embeddings", "version": 1, ...}

Why this and not ``feat.npy`` inside tars: one training batch is then a slice (or gather) of a memory
map instead of 256 tar members parsed and decoded (docs/embeddings.md has the measurements).

A clip-retrieval set has no ``embeddings.json``: its parts are found by listing, the key is the ``key``
column if present else ``image_path`` (else ``<part>/<row>``, logged), tags come from a ``tags`` column
if present else from ``caption`` by the LAION converter's rule (``shards.converters.laion.caption_tags``),
and labels from the column the caller names (``label_column``).

``open_embedding_set`` validates every part from the npy headers and parquet footers only (no array
is read): a missing file, a dtype the reader does not know, a truncated array, dims differing between
parts and array rows differing from metadata rows are each one ``EmbeddingSetError`` naming the file.
The reader is ``shards.embedding_loader``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from shards import storage

log = logging.getLogger(__name__)

FORMAT, VERSION = "wsdhq-embeddings", 1
MANIFEST_NAME = "embeddings.json"
DTYPES = ("float16", "float32")
_PART_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_NPY_HEADER_BYTES = 64 * 1024  # npy v1 headers are at most 65,535 bytes; np.save writes ~128


class EmbeddingSetError(ValueError):
    """An embedding set that cannot be used; the message names the file."""


def npy_url(url: str, part: str) -> str:
    return storage.join(url, "img_emb", f"img_emb_{part}.npy")


def meta_url(url: str, part: str) -> str:
    return storage.join(url, "metadata", f"metadata_{part}.parquet")


def is_embedding_set(url: str) -> bool:
    """An ``embeddings.json`` or an ``img_emb/`` folder holding ``img_emb_*.npy``, and no shard manifest."""
    url = str(url)
    if storage.exists(storage.join(url, "manifest.json")):
        return False
    if storage.exists(storage.join(url, MANIFEST_NAME)):
        return True
    return any(_part_of(u, "img_emb_", ".npy") for u in storage.list_files(storage.join(url, "img_emb")))


def _part_of(url: str, prefix: str, suffix: str) -> str | None:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if name.startswith(prefix) and name.endswith(suffix):
        return name[len(prefix):-len(suffix)]
    return None


# ---- one part: its array header and metadata footer ---------------------------------------------------

@dataclass
class NpyHeader:
    rows: int
    dim: int
    dtype: str
    offset: int   # bytes before the first row
    bytes: int    # the file's size


def read_npy_header(url: str) -> NpyHeader:
    """Shape, dtype and data offset of an ``.npy`` from its first bytes; refuses what the reader cannot map."""
    try:
        n = storage.size(url)
        head = io.BytesIO(storage.read_range(url, 0, _NPY_HEADER_BYTES))
        major, _ = np.lib.format.read_magic(head)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if major == 1
                                 else np.lib.format.read_array_header_2_0)(head)
    except FileNotFoundError:
        raise EmbeddingSetError(f"{url}: no such file") from None
    except (ValueError, EOFError, OSError) as exn:
        raise EmbeddingSetError(f"{url}: not a readable .npy array ({exn})") from None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise EmbeddingSetError(f"{url}: dtype {dtype} is not one the reader knows ({', '.join(DTYPES)})")
    if len(shape) != 2 or fortran:
        raise EmbeddingSetError(f"{url}: expected a C-ordered (rows, dim) array, got shape {shape}"
                                f"{' in Fortran order' if fortran else ''}")
    offset = head.tell()
    want = offset + shape[0] * shape[1] * dtype.itemsize
    if n != want:
        raise EmbeddingSetError(f"{url}: {n} bytes but its header says {shape[0]} x {shape[1]} {dtype.name} "
                                f"({want} bytes): the file is {'truncated' if n < want else 'longer than its array'}")
    return NpyHeader(int(shape[0]), int(shape[1]), dtype.name, offset, n)


def read_parquet_footer(url: str) -> pq.FileMetaData:
    try:
        with storage.open_seekable(url) as f:
            return pq.read_metadata(f)
    except FileNotFoundError:
        raise EmbeddingSetError(f"{url}: no such file") from None
    except (pa.ArrowException, OSError) as exn:
        raise EmbeddingSetError(f"{url}: not a readable parquet file ({exn})") from None


@dataclass
class Part:
    name: str
    rows: int
    npy_url: str
    meta_url: str
    offset: int   # header bytes of the npy
    bytes: int    # npy size


# ---- the set ---------------------------------------------------------------------------------------------

@dataclass
class EmbeddingSet:
    """A validated set: parts in order (global index = part offset + row), and where each field comes from."""

    url: str
    dim: int
    dtype: str
    parts: list[Part]
    kind: str                         # "wsdhq" (ours) or "clip-retrieval" (no embeddings.json)
    key_column: str | None = "key"    # None: keys are "<part>/<row>"
    tags_column: str = "tags"         # "caption": tags derived by the LAION rule at read time
    label_column: str | None = "labels"
    label_names: list[str] | None = None
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(p.rows for p in self.parts)

    def offsets(self) -> np.ndarray:
        """Global index of each part's first row (and the total last)."""
        return np.concatenate([[0], np.cumsum([p.rows for p in self.parts], dtype=np.int64)])


_VALIDATED: dict[tuple[str, bytes], EmbeddingSet] = {}  # this process's sets with embeddings.json, by its bytes


def open_embedding_set(url: str, label_column: str | None = None) -> EmbeddingSet:
    """Find and validate every part (headers and footers only); ``label_column`` names where labels come
    from in a clip-retrieval set (ours always has ``labels``).

    A set with ``embeddings.json`` is validated fully once per process; opened again (every loader, i.e.
    twice an epoch) with the same manifest, only each array's size is checked, as the shard reader checks
    its shards: one stat or HEAD per part instead of about seven requests on S3."""
    url = str(url).rstrip("/") if storage.is_s3(url) else str(url)
    murl = storage.join(url, MANIFEST_NAME)
    try:
        raw = storage.read_bytes(murl)
    except FileNotFoundError:
        return _open_clip_retrieval(url, label_column)
    es = _VALIDATED.pop((url, raw), None)
    if es is None or not all(_same_size(p) for p in es.parts):  # anything changed: validate it all again
        es = _open_ours(url, murl, raw)
    _VALIDATED[(url, raw)] = es
    return es


def _same_size(part: Part) -> bool:
    try:
        return storage.size(part.npy_url) == part.bytes
    except FileNotFoundError:
        return False


def _open_ours(url: str, murl: str, raw: bytes) -> EmbeddingSet:
    try:
        m = json.loads(raw)
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            raise EmbeddingSetError(f"{murl}: format {m.get('format')!r} version {m.get('version')!r}, "
                                    f"expected {FORMAT!r} version {VERSION}")
        dim, dtype, listed = int(m["dim"]), str(m["dtype"]), m["parts"]
        entries = [(str(p["name"]), int(p["rows"]), int(p["bytes"])) for p in listed]
    except (ValueError, KeyError, TypeError) as exn:
        if isinstance(exn, EmbeddingSetError):
            raise
        raise EmbeddingSetError(f"{murl}: not a valid embedding-set manifest ({type(exn).__name__}: {exn})") from None
    if dtype not in DTYPES:
        raise EmbeddingSetError(f"{murl}: dtype {dtype!r} is not one the reader knows ({', '.join(DTYPES)})")
    if not entries:
        raise EmbeddingSetError(f"{murl}: the embedding set has no parts")
    parts, labelled = [], True
    for name, rows, nbytes in entries:
        nu, mu = npy_url(url, name), meta_url(url, name)
        for u in (nu, mu):
            if not storage.exists(u):
                raise EmbeddingSetError(f"{u}: part {name!r} listed in {murl} does not exist")
        part, _, columns = _validate_part(name, nu, mu, dim, dtype, ("key", "tags"))
        labelled = labelled and "labels" in columns
        if (part.rows, part.bytes) != (rows, nbytes):
            raise EmbeddingSetError(f"{nu}: {part.rows} rows / {part.bytes} bytes but {murl} says {rows} / "
                                    f"{nbytes}; the part changed since the manifest was written")
        parts.append(part)
    return EmbeddingSet(url, dim, dtype, parts, "wsdhq", label_column="labels" if labelled else None,
                        label_names=m.get("label_names"),
                        source=m.get("source") or {})


def _validate_part(name: str, nu: str, mu: str, dim: int | None, dtype: str | None,
                   columns: tuple[str, ...] = ()) -> tuple[Part, NpyHeader, set[str]]:
    h = read_npy_header(nu)
    if dim is not None and h.dim != dim:
        raise EmbeddingSetError(f"{nu}: dim {h.dim} differs from the set's dim {dim}")
    if dtype is not None and h.dtype != dtype:
        raise EmbeddingSetError(f"{nu}: dtype {h.dtype} differs from the set's dtype {dtype}")
    footer = read_parquet_footer(mu)
    if footer.num_rows != h.rows:
        raise EmbeddingSetError(f"{mu}: {footer.num_rows} metadata rows but {nu} has {h.rows} array rows")
    have = set(footer.schema.to_arrow_schema().names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise EmbeddingSetError(f"{mu}: no column {missing[0]!r} (columns: {', '.join(sorted(have))})")
    return Part(name, h.rows, nu, mu, h.offset, h.bytes), h, have


def _open_clip_retrieval(url: str, label_column: str | None) -> EmbeddingSet:
    """Parts by listing ``img_emb/``; an array without its parquet is an uncommitted part, left out and logged."""
    arrays = {p: u for u in storage.list_files(storage.join(url, "img_emb"))
              if (p := _part_of(u, "img_emb_", ".npy")) is not None}
    metas = {p: u for u in storage.list_files(storage.join(url, "metadata"))
             if (p := _part_of(u, "metadata_", ".parquet")) is not None}
    if not arrays:
        raise EmbeddingSetError(f"{storage.join(url, 'img_emb')}: no img_emb_*.npy arrays (and no {MANIFEST_NAME} "
                                f"in {url}): not an embedding set")
    orphans = sorted(set(metas) - set(arrays))
    if orphans:
        raise EmbeddingSetError(f"{metas[orphans[0]]}: metadata without its array {npy_url(url, orphans[0])}")
    uncommitted = sorted(set(arrays) - set(metas))
    if uncommitted:
        log.warning("%s: %d array(s) without metadata left out (uncommitted parts): %s", url, len(uncommitted),
                    ", ".join(uncommitted[:5]))
    names = sorted(set(arrays) & set(metas), key=_natural)
    if not names:
        raise EmbeddingSetError(f"{storage.join(url, 'metadata')}: no metadata_*.parquet beside the arrays")
    schema = read_parquet_footer(metas[names[0]]).schema.to_arrow_schema()
    key = next((c for c in ("key", "image_path") if c in schema.names), None)
    tags = next((c for c in ("tags", "caption") if c in schema.names), None)
    if tags is None:
        raise EmbeddingSetError(f"{metas[names[0]]}: neither a 'tags' nor a 'caption' column to take tags from")
    if label_column and label_column not in schema.names:
        raise EmbeddingSetError(f"{metas[names[0]]}: no label column {label_column!r} "
                                f"(columns: {', '.join(schema.names)})")
    if key is None:
        log.warning("%s: no 'key' or 'image_path' column: sample keys are '<part>/<row>'", url)
    columns = tuple(c for c in (key, tags, label_column) if c)
    parts, dim, dtype = [], None, None
    for name in names:
        part, h, _ = _validate_part(name, arrays[name], metas[name], dim, dtype, columns)
        dim, dtype = h.dim, h.dtype
        parts.append(part)
    es = EmbeddingSet(url, dim, dtype, parts, "clip-retrieval", key, tags, label_column or None)
    if label_column:
        es.label_names = sorted({str(v) for p in parts for v in _label_values(p.meta_url, label_column)})
    return es


def _natural(name: str):
    """clip-retrieval numbers parts 0, 1, ..., 10 (unpadded): order them as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _label_values(url: str, column: str) -> list:
    col = read_table(url, [column]).column(column)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = pc.list_flatten(col)
    return [v for v in col.to_pylist() if v is not None]


def read_table(url: str, columns: list[str]) -> pa.Table:
    """A part's metadata columns (one GET on S3: parquet metadata files are small next to the arrays)."""
    source = io.BytesIO(storage.read_bytes(url)) if storage.is_s3(url) else url
    return pq.read_table(source, columns=columns)


# ---- writing ---------------------------------------------------------------------------------------------

class EmbeddingSetWriter:
    """Writes parts one at a time; each part is atomic and idempotent, ``close`` writes ``embeddings.json``.

    A part is committed by its parquet, written last: ``write_part`` first removes an existing parquet,
    then writes the array (local: temp file + rename; S3: one upload), then the parquet. A run killed
    at any point leaves each part complete or absent (``has_part`` false), so a resumed job re-writes it.
    """

    def __init__(self, url: str, dim: int, dtype: str = "float16", source: dict | None = None):
        if dtype not in DTYPES:
            raise EmbeddingSetError(f"{url}: dtype {dtype!r} is not one the reader knows ({', '.join(DTYPES)})")
        if int(dim) < 1:
            raise EmbeddingSetError(f"{url}: dim must be >= 1, got {dim}")
        self.url, self.dim, self.dtype, self.source = str(url), int(dim), dtype, dict(source or {})
        murl = storage.join(self.url, MANIFEST_NAME)
        if storage.exists(murl):  # resuming: the set must be the same shape
            m = json.loads(storage.read_bytes(murl))
            if (m.get("dim"), m.get("dtype")) != (self.dim, self.dtype):
                raise EmbeddingSetError(f"{murl}: existing set is dim {m.get('dim')} {m.get('dtype')}, "
                                        f"this writer dim {self.dim} {self.dtype}; write to a new location")

    def has_part(self, name: str) -> bool:
        return storage.exists(meta_url(self.url, name)) and storage.exists(npy_url(self.url, name))

    def write_part(self, name: str, keys: list[str], emb: np.ndarray, tags: list[list[str]],
                   labels: list[list[str]] | None = None) -> Part:
        if not _PART_NAME.match(str(name)):
            raise EmbeddingSetError(f"part name {name!r}: use letters, digits, '_' and '-' only")
        emb = np.asarray(emb)
        n = len(keys)
        if emb.ndim != 2 or emb.shape != (n, self.dim):
            raise EmbeddingSetError(f"part {name!r}: embeddings of shape {emb.shape}, expected ({n}, {self.dim}) "
                                    f"for {n} keys")
        if len(tags) != n or (labels is not None and len(labels) != n):
            raise EmbeddingSetError(f"part {name!r}: {n} keys, {len(tags)} tag lists"
                                    f"{'' if labels is None else f', {len(labels)} label lists'}: lengths differ")
        if len(set(keys)) != n:
            raise EmbeddingSetError(f"part {name!r}: duplicate keys")
        table = pa.table({"key": pa.array(keys, pa.string()), "tags": pa.array(tags, pa.list_(pa.string())),
                          "labels": pa.array(labels if labels is not None else [None] * n, pa.list_(pa.string()))})
        names = sorted({lab for row in labels for lab in row}) if labels is not None else []
        table = table.replace_schema_metadata({"wsdhq_label_names": json.dumps(names)})
        nu, mu = npy_url(self.url, name), meta_url(self.url, name)
        storage.remove(mu)  # un-commit first: a replaced array is never paired with an old parquet
        arr = np.ascontiguousarray(emb, dtype=self.dtype)
        storage.write_file(nu, lambda f: np.save(f, arr, allow_pickle=False))  # atomic: temp + rename / upload
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        storage.write_bytes(mu, buf.getvalue().to_pybytes())
        h = read_npy_header(nu)
        return Part(name, h.rows, nu, mu, h.offset, h.bytes)

    def close(self) -> EmbeddingSet:
        """``embeddings.json`` from the committed parts present (rows of array == parquet verified)."""
        metas = {p: u for u in storage.list_files(storage.join(self.url, "metadata"))
                 if (p := _part_of(u, "metadata_", ".parquet")) is not None}
        entries, labels = [], set()
        for name in sorted(metas, key=_natural):
            part, _, _ = _validate_part(name, npy_url(self.url, name), metas[name], self.dim, self.dtype)
            entries.append({"name": name, "rows": part.rows, "bytes": part.bytes})
            kv = read_parquet_footer(metas[name]).metadata or {}
            labels.update(json.loads(kv.get(b"wsdhq_label_names", b"[]")))
        if not entries:
            raise EmbeddingSetError(f"{self.url}: no part written; nothing to close")
        m = {"format": FORMAT, "version": VERSION, "dim": self.dim, "dtype": self.dtype, "parts": entries,
             "total": sum(e["rows"] for e in entries), "label_names": sorted(labels) or None,
             "source": self.source}
        storage.write_bytes(storage.join(self.url, MANIFEST_NAME), (json.dumps(m, indent=1) + "\n").encode())
        return open_embedding_set(self.url)


def local_array(part: Part, cache_dir: str | None = None) -> str:
    """A local path to map the part's array from: the file itself, or an S3 object cached once per machine
    (named by URL and size, so a changed object is fetched again)."""
    if not storage.is_s3(part.npy_url):
        return part.npy_url
    root = Path(cache_dir or os.environ.get("WSDHQ_CACHE_DIR") or Path(tempfile.gettempdir(), "wsdhq-cache"))
    path = root / "embeddings" / f"{hashlib.sha256(part.npy_url.encode()).hexdigest()[:24]}-{part.bytes}.npy"
    if not (path.is_file() and path.stat().st_size == part.bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            storage.download_file(part.npy_url, tmp)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(path)
