"""``python -m eval.search --index <dir> --checkpoint <final> (--image F | --key K | --tags "a b")``.

Also ``wsdhq search``. Top-k keys and scores from an index directory (``eval.index``), ranked by
AQD (the query vector against the items' reconstructions), exact, ties by ascending row:

- ``--image FILE``: the checkpoint's encoder embeds the image (the eval transform the encode job
  uses), so results equal ``eval.evaluate``'s ranking for that image;
- ``--key KEY``: a database item as the query, its own code decoded (what the index knows of it);
- ``--tags "sunset beach"``: the checkpoint's tag semantics artifact maps each tag to its merged
  unit; WSDHQ trains image embeddings towards those units' embeddings, so their normalised mean
  is a query in the same space (comma-separated when a tag has spaces: ``--tags "new york, night"``).

The index must come from the checkpoint given (sha256 of its files, and its tag semantics hash):
codes of another model are refused, not searched with the wrong encoder.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import numpy as np

from eval.index import IndexDirError, labels_of, load_index_manifest, read_group
from shards import storage


class SearchError(ValueError):
    """A query that cannot be answered as given; the message names the culprit."""


@dataclass
class Hit:
    rank: int
    row: int
    key: str
    score: float
    labels: list[str]


class IndexSearcher:
    """Exact top-k over every group of an index directory, merged by (-score, global row)."""

    def __init__(self, url: str):
        from eval.codes import load_codebooks

        self.url = str(url)
        self.manifest = load_index_manifest(self.url)
        _, self.codebooks = load_codebooks(self.url)
        self._groups: dict[int, tuple] = {}

    def __len__(self) -> int:
        return int(self.manifest["total"])

    def group(self, g: int) -> tuple:
        """(AQDSearcher, row table) of group ``g``, read once."""
        from eval.scoring import AQDSearcher

        if g not in self._groups:
            index, rows = read_group(self.url, self.manifest["groups"][g])
            self._groups[g] = (AQDSearcher(self.codebooks, rows["codes"], "faiss", index=index), rows)
        return self._groups[g]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, global rows), both (Q, min(k, N))."""
        from eval.metrics import merge_top_k

        if len(self) == 0:
            raise SearchError(f"{self.url}: the index holds no rows")
        best, seen = None, 0
        for g, info in enumerate(self.manifest["groups"]):
            if info["rows_count"] == 0:
                continue
            s, i = self.group(g)[0].search(queries, k)
            part = (s, i + info["first_row"])
            seen += info["rows_count"]
            best = part if best is None else merge_top_k(best, part, min(k, seen))
        return best

    def locate(self, row: int) -> tuple[dict, int]:
        for g, info in enumerate(self.manifest["groups"]):
            if info["first_row"] <= row < info["first_row"] + info["rows_count"]:
                return self.group(g)[1], row - info["first_row"]
        raise SearchError(f"row {row} is outside the index ({len(self)} rows)")

    def hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        out = []
        for r, (s, row) in enumerate(zip(scores.tolist(), rows.tolist())):
            table, j = self.locate(row)
            out.append(Hit(r + 1, int(row), str(table["key"][j]), float(s), labels_of(table, j)))
        return out

    def find_key(self, key: str) -> tuple[int, dict, int]:
        """(global row, row table, row in it) of ``key``."""
        for g, info in enumerate(self.manifest["groups"]):
            table = self.group(g)[1]
            where = np.flatnonzero(table["key"] == key)
            if len(where):
                return info["first_row"] + int(where[0]), table, int(where[0])
        raise SearchError(f"key {key!r} is not in the index {self.url}")

    def key_query(self, key: str) -> np.ndarray:
        """(1, D) the item's own code decoded (sum of its codewords)."""
        from eval.scoring import Codebooks

        _, table, j = self.find_key(key)
        return Codebooks(self.codebooks).decoded(table["codes"][j:j + 1])


def check_checkpoint(manifest: dict, checkpoint: str) -> dict:
    """The checkpoint's meta, after checking the index's codes came from it; refuses otherwise."""
    from eval.encode import EncodeError, checkpoint_identity

    try:
        ident = checkpoint_identity(checkpoint)
    except EncodeError as exn:
        raise SearchError(str(exn)) from None
    want, have = manifest.get("checkpoint_sha256") or {}, ident["sha256"]
    tags_want, tags_have = manifest.get("tag_semantics_hash"), ident["meta"].get("tag_semantics_hash")
    if want != have or tags_want != tags_have:
        raise SearchError(
            f"the index was built from checkpoint {manifest.get('checkpoint')} (model "
            f"{str(want.get('model.pt'))[:12]}, tags {str(tags_want)[:12]}), not from {checkpoint} (model "
            f"{str(have.get('model.pt'))[:12]}, tags {str(tags_have)[:12]}): search with the checkpoint that "
            "encoded the codes")
    return ident["meta"]


def tag_query(meta: dict, tags: str, tag_semantics: str | None = None) -> tuple[np.ndarray, dict]:
    """(1, D) normalised mean embedding of the tags' merged units, and what they mapped to."""
    from trainer.tags import TagSemantics
    from trainer.tags.artifact import ArtifactError

    from trainer.methods import METHODS

    if METHODS[meta["method"]].supervision != "tags":
        raise SearchError(f"--tags needs a weak-tag checkpoint (wsdhq, wsdhq_progressive): {meta['method']}'s "
                          "label embeddings carry no tag semantics")
    url = tag_semantics or (meta.get("config") or {}).get("data", {}).get("tags")
    if not url:
        raise SearchError("the checkpoint does not record its tag semantics artifact: pass --tag-semantics")
    try:
        sem = TagSemantics.load(url)
    except (ArtifactError, OSError) as exn:
        raise SearchError(f"tag semantics: {exn}") from None
    if sem.hash != meta.get("tag_semantics_hash"):
        raise SearchError(f"tag semantics at {url} have hash {sem.hash[:12]}, the checkpoint was trained with "
                          f"{str(meta.get('tag_semantics_hash'))[:12]}")
    words = [t.strip() for t in (tags.split(",") if "," in tags else tags.split())]
    words = [w for w in words if w]
    if not words:
        raise SearchError("--tags: no tag given")
    units = {w: sem.unit_ids([w]) for w in words}
    unknown = [w for w, u in units.items() if not u]
    if unknown:
        raise SearchError(f"unknown tag(s) {', '.join(map(repr, unknown))}: not in the tag semantics "
                          f"vocabulary ({len(sem.vocab)} tags, {sem.T} units)")
    ids = sorted({u for us in units.values() for u in us})
    v = sem.embeddings[ids].mean(axis=0)
    norm = float(np.linalg.norm(v))
    if norm == 0:
        raise SearchError(f"tags {words} average to the zero vector (opposite embeddings)")
    return (v / norm)[None].astype(np.float32), {"units": [sem.names[u] for u in ids], "unit_ids": ids}


def image_query(checkpoint: str, meta: dict, path: str) -> tuple[np.ndarray, np.ndarray]:
    """(1, D) embedding of the image file by the checkpoint's encoder, and its thumbnail pixels."""
    import torch

    from shards.images import decode_rgb
    from shards.schema import SampleError
    from shards.transforms import eval_pixels, normalise_batch
    from trainer.inference import load_inference

    if meta["config"]["encoder"]["kind"] == "mlp":
        raise SearchError(f"checkpoint {checkpoint} encodes precomputed features (feat.npy), not images: "
                          "query by --key or --tags")
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise SearchError(f"--image {path}: no such file") from None
    model = load_inference(checkpoint)
    size = model.image_size
    if not size:
        raise SearchError(f"checkpoint {checkpoint} records no image_size")
    try:
        pixels = eval_pixels(decode_rgb(data, path, min_side=size), size)
    except SampleError as exn:
        raise SearchError(f"--image {path}: cannot decode the image ({exn})") from None
    x = normalise_batch(torch.from_numpy(np.array(pixels))[None])  # a writable copy
    return model.embed(x).numpy().astype(np.float32), pixels


def write_grid(path: str, shards: str, hits: list[Hit], title: str, query_pixels: np.ndarray | None,
               query_key: str | None, relevant_to: set[str] | None) -> None:
    """top-k thumbnails (looked up by key in the database shard set) beside the query."""
    from eval.evaluate import shard_images
    from eval.plots import retrieval_grid

    keys = {h.key for h in hits} | ({query_key} if query_key else set())
    images = shard_images(shards, keys)
    missing = sorted(keys - set(images))
    if missing:
        raise SearchError(f"--grid: {len(missing)} image(s) not in the shard set {shards} (e.g. {missing[0]!r})")
    query = images[query_key] if query_key else query_pixels
    if query is None:
        query = np.full((96, 96, 3), 255, np.uint8)  # a tag query has no picture: a blank tile, titled
    rel = [None if relevant_to is None else bool(relevant_to & set(h.labels)) for h in hits]
    retrieval_grid([query], [[images[h.key] for h in hits]], [rel], [title], path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.search", description=__doc__.split("\n")[0])
    p.add_argument("--index", required=True, help="index directory (wsdhq index)")
    p.add_argument("--checkpoint", help="the final checkpoint that encoded the codes (required for "
                                        "--image and --tags; checked against the index when given)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="an image file: search by its embedding")
    q.add_argument("--key", help="a database key: search by that item's decoded code")
    q.add_argument("--tags", help='tags, e.g. "sunset beach" (comma-separated if a tag has spaces)')
    p.add_argument("--tag-semantics", help="tag semantics artifact (default: the checkpoint's data.tags)")
    p.add_argument("-k", "--top", type=int, default=10, help="results to return (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--grid", help="write a PNG of the query and its top results")
    p.add_argument("--shards", help="database shard set (images for --grid)")
    a = p.parse_args(argv)
    try:
        if a.top < 1:
            raise SearchError(f"-k {a.top}: must be >= 1")
        if a.grid and not a.shards:
            raise SearchError("--grid needs --shards (the database shard set the images come from)")
        searcher = IndexSearcher(a.index)
        if (a.image or a.tags) and not a.checkpoint:
            raise SearchError("--image and --tags need --checkpoint (the encoder / tag semantics)")
        meta = check_checkpoint(searcher.manifest, a.checkpoint) if a.checkpoint else {}
        query: dict = {}
        pixels, qkey, relevant = None, None, None
        if a.key is not None:
            vec = searcher.key_query(a.key)
            _, table, j = searcher.find_key(a.key)
            query, qkey = {"key": a.key, "labels": labels_of(table, j)}, a.key
            relevant = set(query["labels"])
        elif a.tags is not None:
            vec, mapped = tag_query(meta, a.tags, a.tag_semantics)
            query = {"tags": a.tags, **mapped}
        else:
            vec, pixels = image_query(a.checkpoint, meta, a.image)
            query = {"image": a.image}
        scores, rows = searcher.search(vec, a.top)
        hits = searcher.hits(scores[0], rows[0])
        if a.grid:
            title = f"{a.key or a.image or 'tags'}: {', '.join(query.get('labels') or query.get('units') or [])}"
            write_grid(a.grid, a.shards, hits, title, pixels, qkey, relevant)
    except (SearchError, IndexDirError, ValueError, FileNotFoundError) as exn:
        print(f"search: error: {exn}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps({"index": a.index, "query": query, "results": [h.__dict__ for h in hits]}, indent=1))
    else:
        what = ", ".join(f"{k}={v}" for k, v in query.items() if k != "unit_ids")
        print(f"top {len(hits)} of {len(searcher):,} for {what}")
        for h in hits:
            print(f"{h.rank:>4}  {h.score:+.4f}  {h.key}  {','.join(h.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
