"""Code sets on disk / S3: one ``.npz`` code file per input shard, the codebooks, a manifest written last.

Layout of a code set directory (or S3 prefix)::

    codes-shard-000000.npz ...   one per corpus shard: key (str), index (int64), codes (uint8, N x M),
                                 labels (str, label names joined by "\\n"), optional feat (float32, N x D)
    quantizer.npz, meta.json     copies from the checkpoint (codebooks travel with the codes)
    codes_manifest.json          written last: per-file rows and sha256, M/K/bits/kind, checkpoint
                                 hashes, tag_semantics_hash, the source shard set

npz (``allow_pickle=False``: strings are fixed-width unicode arrays, never objects) rather than
Parquet keeps one dependency-free format that numpy reads straight into the arrays the scorer
needs; one file per input shard is what makes the encode job resumable (done = file exists).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from shards import storage

MANIFEST = "codes_manifest.json"
SCHEMA_VERSION = 1
LABEL_SEP = "\n"


class CodeSetError(ValueError):
    """A code set that cannot be used as asked; the message names the file or the mismatch."""


def code_file_name(shard_url: str) -> str:
    name = str(shard_url).rstrip("/").rsplit("/", 1)[-1]
    return "codes-" + (name[:-4] if name.endswith(".tar") else name) + ".npz"


def pack_code_file(keys: list[str], index: np.ndarray, codes: np.ndarray, labels: list[list[str]],
                   feat: np.ndarray | None = None) -> bytes:
    """The bytes of one code file (``np.savez`` into memory: written in one atomic put/rename)."""
    arrays = {"key": np.asarray(keys, dtype=str), "index": np.asarray(index, dtype=np.int64),
              "codes": np.ascontiguousarray(codes, dtype=np.uint8),
              "labels": np.asarray([LABEL_SEP.join(ls) for ls in labels], dtype=str)}
    if feat is not None:
        arrays["feat"] = np.ascontiguousarray(feat, dtype=np.float32)
    if len(arrays["key"]) == 0:  # np.asarray([], str) is float64-free but keep the dtypes explicit
        arrays["key"] = np.zeros(0, dtype="<U1")
        arrays["labels"] = np.zeros(0, dtype="<U1")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_code_file(url: str, data: bytes | None = None) -> dict[str, np.ndarray]:
    """The arrays of one code file (``data``: its bytes when the caller already has them)."""
    try:
        with np.load(io.BytesIO(storage.read_bytes(url) if data is None else data), allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as exn:
        raise CodeSetError(f"{url}: not a readable code file ({exn})") from None
    missing = {"key", "index", "codes", "labels"} - set(out)
    if missing:
        raise CodeSetError(f"{url}: code file lacks {sorted(missing)}")
    return out


@dataclass
class CodeSet:
    """A whole code set in memory (N x M uint8 codes are small: 10^7 items at M=4 is 40 MB)."""

    url: str
    manifest: dict
    codebooks: np.ndarray  # (M, K, D) float32
    keys: np.ndarray
    index: np.ndarray
    codes: np.ndarray
    # labels as an index into the distinct label combinations (joined strings, as on disk): a Python
    # list per item cost ~650 bytes per item at 10^7 (docs/scaling.md); 4 bytes per item this way
    label_combos: np.ndarray
    label_ids: np.ndarray
    feat: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def labels_of(self, i: int) -> list[str]:
        s = str(self.label_combos[self.label_ids[i]])
        return s.split(LABEL_SEP) if s else []

    @property
    def labels(self) -> list[list[str]]:
        """Every item's label list (small sets; large ones use ``label_matrix``)."""
        return [self.labels_of(i) for i in range(len(self.label_ids))]

    def label_names(self) -> list[str]:
        used = self.label_combos[np.unique(self.label_ids)].tolist()
        return sorted({x for s in used if s for x in s.split(LABEL_SEP)})

    def label_matrix(self, names: list[str]) -> np.ndarray:
        """Multi-hot (N, L) uint8 over ``names``, built once per distinct label combination."""
        rows = label_matrix([s.split(LABEL_SEP) if s else [] for s in self.label_combos.tolist()], names)
        return rows[self.label_ids]

    @property
    def M(self) -> int:
        return int(self.manifest["M"])

    @property
    def kind(self) -> str:
        return str(self.manifest["quantizer_kind"])

    @property
    def has_labels(self) -> bool:
        return bool((self.label_combos[np.unique(self.label_ids)] != "").any())

    def __len__(self) -> int:
        return len(self.keys)


def read_json_manifest(url: str, name: str, version: int, error: type[Exception], missing: str) -> dict:
    """The JSON manifest ``name`` under ``url`` at schema ``version``; ``error`` names what is wrong."""
    murl = storage.join(str(url), name)
    try:
        m = json.loads(storage.read_bytes(murl).decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{url}: no {name} ({missing})") from None
    except ValueError as exn:
        raise error(f"{murl}: not valid JSON ({exn})") from None
    if m.get("schema_version") != version:
        raise error(f"{murl}: schema_version {m.get('schema_version')!r}, expected {version}")
    return m


def load_manifest(url: str) -> dict:
    return read_json_manifest(url, MANIFEST, SCHEMA_VERSION, CodeSetError,
                              "not a finished code set; did the encode job complete?")


def load_codebooks(url: str) -> tuple[str, np.ndarray]:
    """(kind, codebooks (M, K, D)) from a code set's ``quantizer.npz``."""
    from trainer.quantizers import load_quantizer

    qurl = storage.join(url, "quantizer.npz")
    try:
        q = load_quantizer(io.BytesIO(storage.read_bytes(qurl)))
    except FileNotFoundError:
        raise CodeSetError(f"{qurl}: missing (the codebooks travel with the codes)") from None
    return q.kind, q.codebooks.detach().cpu().numpy().astype(np.float32)


def read_listed_file(url: str, entry: dict, codebooks: np.ndarray) -> dict[str, np.ndarray]:
    """One code file of the manifest, checked against its listed rows and the codebooks' M and K."""
    mm, kk = codebooks.shape[:2]
    furl = storage.join(url, entry["url"])
    d = read_code_file(furl)
    n = len(d["key"])
    if n != entry["rows"]:
        raise CodeSetError(f"{furl}: {n} rows but {MANIFEST} lists {entry['rows']}")
    if d["codes"].ndim != 2 or d["codes"].shape[1] != mm:
        raise CodeSetError(f"{furl}: codes have shape {d['codes'].shape}, but the codebooks have M={mm} "
                           f"levels (codes from another quantizer?)")
    if n and int(d["codes"].max()) >= kk:
        raise CodeSetError(f"{furl}: code value {int(d['codes'].max())} >= K={kk}")
    return d


def load_checked_codebooks(url: str, m: dict) -> np.ndarray:
    """The code set's codebooks, which must agree with its manifest's kind, M and K."""
    kind, codebooks = load_codebooks(url)
    mm, kk = codebooks.shape[:2]
    if (m["M"], m["K"]) != (mm, kk) or m["quantizer_kind"] != kind:
        raise CodeSetError(f"{url}: manifest says {m['quantizer_kind']} M={m['M']} K={m['K']} but "
                           f"quantizer.npz holds {kind} M={mm} K={kk}")
    return codebooks


def load_code_set(url: str, with_features: bool = True) -> CodeSet:
    """Read a finished code set, checking every file against the manifest and the codebooks."""
    url = str(url)
    m = load_manifest(url)
    codebooks = load_checked_codebooks(url, m)
    mm = codebooks.shape[0]
    parts: dict[str, list] = {"key": [], "index": [], "codes": [], "labels": [], "feat": []}
    combo_ids: dict[str, int] = {}
    for entry in m["files"]:
        d = read_listed_file(url, entry, codebooks)
        n = len(d["key"])
        for k in ("key", "index", "codes"):
            parts[k].append(d[k])
        file_combos, inverse = np.unique(d["labels"], return_inverse=True)
        ids = np.array([combo_ids.setdefault(c, len(combo_ids)) for c in file_combos.tolist()], np.int32)
        parts["labels"].append(ids[inverse.reshape(-1)] if n else np.zeros(0, np.int32))
        if with_features and m.get("has_features"):
            if "feat" not in d:
                raise CodeSetError(f"{storage.join(url, entry['url'])}: manifest says features are stored "
                                   "but the file has none")
            parts["feat"].append(d["feat"])
    keys = np.concatenate(parts["key"]) if parts["key"] else np.zeros(0, str)
    if len(np.unique(keys)) != len(keys):
        u, c = np.unique(keys, return_counts=True)
        raise CodeSetError(f"{url}: key {u[c > 1][0]!r} appears {c[c > 1][0]} times")
    label_ids = np.concatenate(parts["labels"]) if parts["labels"] else np.zeros(0, np.int32)
    label_combos = np.array(list(combo_ids) or [""], dtype=str)
    feat = np.concatenate(parts["feat"]) if parts["feat"] else None
    meta = {}
    if storage.exists(storage.join(url, "meta.json")):
        meta = json.loads(storage.read_bytes(storage.join(url, "meta.json")).decode("utf-8"))
    return CodeSet(url=url, manifest=m, codebooks=codebooks, keys=keys,
                   index=np.concatenate(parts["index"]) if parts["index"] else np.zeros(0, np.int64),
                   codes=np.concatenate(parts["codes"]) if parts["codes"] else np.zeros((0, mm), np.uint8),
                   label_combos=label_combos, label_ids=label_ids, feat=feat, meta=meta)


def label_matrix(label_lists: list[list[str]], names: list[str]) -> np.ndarray:
    """Multi-hot (N, L) uint8 over ``names``; labels outside ``names`` are ignored."""
    pos = {n: i for i, n in enumerate(names)}
    out = np.zeros((len(label_lists), len(names)), np.uint8)
    for r, ls in enumerate(label_lists):
        for name in ls:
            j = pos.get(name)
            if j is not None:
                out[r, j] = 1
    return out


def check_compatible(query: CodeSet, db: CodeSet) -> None:
    """Query and database codes must come from one checkpoint and one tag semantics."""
    qm, dm = query.manifest, db.manifest
    for key in ("quantizer_kind", "M", "K", "D"):
        if qm[key] != dm[key]:
            raise CodeSetError(f"query codes ({query.url}) have {key}={qm[key]} but database codes "
                               f"({db.url}) have {key}={dm[key]}")
    qc, dc = qm.get("checkpoint_sha256", {}), dm.get("checkpoint_sha256", {})
    qt, dt = qm.get("tag_semantics_hash"), dm.get("tag_semantics_hash")
    if qc != dc or qt != dt:
        raise CodeSetError(
            f"query codes come from checkpoint {qm.get('checkpoint')} (model {str(qc.get('model.pt'))[:12]}, "
            f"tags {str(qt)[:12]}), database from {dm.get('checkpoint')} (model {str(dc.get('model.pt'))[:12]}, "
            f"tags {str(dt)[:12]}): encode both with the same checkpoint")


def write_manifest(url: str, info: dict, files: list[dict]) -> dict:
    """Write ``codes_manifest.json`` last: ``info`` (M, K, D, bits, quantizer_kind, checkpoint hashes,
    tag_semantics_hash, source, has_features, ...) plus the per-file rows; returns the manifest."""
    m = {"schema_version": SCHEMA_VERSION, **info, "files": files, "total": sum(f["rows"] for f in files)}
    storage.write_bytes(storage.join(url, MANIFEST), (json.dumps(m, indent=1) + "\n").encode("utf-8"))
    return m
