"""``python -m eval.index --codes <code set> --out <index dir>`` (also ``wsdhq index``): searchable indexes.

An index directory (local or s3://) holds, per group of code files (``group_rows`` rows at most,
whole code files only, so building holds one group in memory, not the corpus)::

    index-000000.faiss     faiss index of the group: the fastest exact scan for the code
                           (eval.faiss_export: tiled IndexPQ, or IndexPQFastScan for K <= 16);
                           it takes plain D-dimensional queries in any faiss program
    rows-000000.npz        the group's row table: key, labels (joined by "\\n"), codes (uint8 N x M:
                           FastScan's exact re-ranking and --key queries read them)
    quantizer.npz, meta.json   copies from the code set (the codebooks score the codes)
    index_manifest.json    written last: kind, M, K, D, per group its files, rows, first global
                           row and sha256s, checkpoint sha256s and tag semantics hash (search
                           refuses a checkpoint that is not the one the codes came from)

Groups are flat code indexes: faiss merges them by appending codes (``merge``, which is
``IndexFlatCodes.merge_from``), and a search over the groups equals a search over the merge.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys

import numpy as np

from eval.codes import (LABEL_SEP, CodeSetError, load_checked_codebooks, load_manifest, read_json_manifest,
                        read_listed_file)
from shards import storage

MANIFEST = "index_manifest.json"
SCHEMA_VERSION = 1


class IndexDirError(ValueError):
    """An index directory that cannot be built or read as asked; the message names the culprit."""


def groups_of(files: list[dict], group_rows: int) -> list[list[dict]]:
    """Consecutive code files packed into groups of at most ``group_rows`` rows (a file larger than
    that is a group of its own)."""
    out: list[list[dict]] = []
    rows = 0
    for entry in files:
        if not out or (rows + entry["rows"] > group_rows and out[-1]):
            out.append([])
            rows = 0
        out[-1].append(entry)
        rows += entry["rows"]
    return out


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def build_index(codes_url: str, out: str, group_rows: int = 1 << 26, kind: str = "auto", log=print) -> dict:
    """Write the index directory for the code set at ``codes_url``; returns its manifest."""
    import faiss

    from eval.faiss_export import best_kind, build

    codes_url, out = str(codes_url), str(out)
    if group_rows < 1:
        raise IndexDirError(f"group_rows={group_rows}: must be >= 1")
    m = load_manifest(codes_url)
    codebooks = load_checked_codebooks(codes_url, m)
    kind = best_kind(codebooks.shape[1]) if kind == "auto" else kind
    if kind not in ("pq", "fastscan"):
        raise IndexDirError(f"kind={kind!r}: an index directory holds 'pq' or 'fastscan' (or 'auto')")
    groups, first = [], 0
    for g, files in enumerate(groups_of(m["files"], group_rows)):
        parts = [read_listed_file(codes_url, entry, codebooks) for entry in files]
        keys = np.concatenate([p["key"] for p in parts])
        codes = np.concatenate([p["codes"] for p in parts]) if parts else np.zeros((0, codebooks.shape[0]), np.uint8)
        if len(np.unique(keys)) != len(keys):
            u, c = np.unique(keys, return_counts=True)
            raise IndexDirError(f"{codes_url}: key {u[c > 1][0]!r} appears {c[c > 1][0]} times")
        index_bytes = faiss.serialize_index(build(codebooks, codes, kind)).tobytes()
        rows_bytes = _npz_bytes(key=keys, labels=np.concatenate([p["labels"] for p in parts]), codes=codes)
        names = {"index": f"index-{g:06d}.faiss", "rows": f"rows-{g:06d}.npz"}
        storage.write_bytes(storage.join(out, names["index"]), index_bytes)
        storage.write_bytes(storage.join(out, names["rows"]), rows_bytes)
        groups.append({**names, "code_files": [e["url"] for e in files], "rows_count": len(keys),
                       "first_row": first, "sha256": {"index": hashlib.sha256(index_bytes).hexdigest(),
                                                      "rows": hashlib.sha256(rows_bytes).hexdigest()}})
        first += len(keys)
        log(f"index: group {g} ({len(files)} code files, {len(keys):,} rows) -> {names['index']}")
    for name in ("quantizer.npz", "meta.json"):
        if storage.exists(storage.join(codes_url, name)):
            storage.write_bytes(storage.join(out, name), storage.read_bytes(storage.join(codes_url, name)))
    info = {k: m.get(k) for k in ("quantizer_kind", "M", "K", "D", "bits", "method", "checkpoint",
                                  "checkpoint_sha256", "tag_semantics_hash", "label_names", "source")}
    manifest = {"schema_version": SCHEMA_VERSION, "kind": kind, **info, "codes": codes_url,
                "group_rows": group_rows, "groups": groups, "total": first}
    storage.write_bytes(storage.join(out, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return manifest


def load_index_manifest(url: str) -> dict:
    return read_json_manifest(url, MANIFEST, SCHEMA_VERSION, IndexDirError,
                              "not a finished index; run `wsdhq index`")


def read_group(url: str, group: dict):
    """(faiss index, row table) of one group, each checked against its recorded sha256."""
    import faiss

    data = {}
    for part in ("index", "rows"):
        gurl = storage.join(str(url), group[part])
        try:
            data[part] = storage.read_bytes(gurl)
        except FileNotFoundError:
            raise IndexDirError(f"{gurl}: missing (listed in {MANIFEST})") from None
        if hashlib.sha256(data[part]).hexdigest() != group["sha256"][part]:
            raise IndexDirError(f"{gurl}: sha256 differs from {MANIFEST} (file changed or from another build)")
    index = faiss.deserialize_index(np.frombuffer(data["index"], dtype=np.uint8))
    with np.load(io.BytesIO(data["rows"]), allow_pickle=False) as z:
        rows = {k: z[k] for k in z.files}
    return index, rows


def merge(url: str):
    """One faiss index holding every group's codes in row order (faiss's own ``merge_from``)."""
    m = load_index_manifest(url)
    merged = None
    for group in m["groups"]:
        index, _ = read_group(url, group)
        if merged is None:
            merged = index
        else:
            merged.merge_from(index)
    return merged


def labels_of(rows: dict, i: int) -> list[str]:
    s = str(rows["labels"][i])
    return s.split(LABEL_SEP) if s else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.index", description=__doc__.split("\n")[0])
    p.add_argument("--codes", required=True, help="code set (dir or s3:// prefix) written by eval.encode")
    p.add_argument("--out", required=True, help="index directory (local or s3://)")
    p.add_argument("--group-rows", type=int, default=1 << 26,
                   help="rows per index file at most (whole code files; bounds the build's memory)")
    p.add_argument("--kind", default="auto", choices=["auto", "pq", "fastscan"],
                   help="auto: FastScan for K <= 16, else the tiled IndexPQ")
    a = p.parse_args(argv)
    try:
        m = build_index(a.codes, a.out, a.group_rows, a.kind)
    except (CodeSetError, IndexDirError, FileNotFoundError, ValueError) as exn:
        print(f"index: error: {exn}", file=sys.stderr)
        return 2
    print(f"index: {m['total']:,} rows in {len(m['groups'])} group(s), {m['kind']} "
          f"(M={m['M']}, K={m['K']}, {m['bits']} bits) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
