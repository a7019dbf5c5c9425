"""``TagSemantics``: the tag-semantics artifact training reads (vocabulary, merge map, V, hash)."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field

import numpy as np

from shards.config import from_dict
from trainer.tags.normalize import NormalizeConfig, TagNormalizer

FORMAT = 1
FILES = ("vocab.json", "merge_map.json", "embeddings.npy", "semantics.json")


class ArtifactError(ValueError):
    """A tag-semantics directory is missing a file or does not match its recorded hash."""


@dataclass
class TagSemantics:
    """T merged tag units with unit-length embeddings, and the rule mapping raw tags onto them.

    ``merge_map`` maps every vocabulary tag to its unit id, or -1 when the tag was dropped (no
    vector); ``config`` holds the semantic configuration (normalisation included), so ``targets``
    normalises exactly as counting did. ``hash`` covers names, vocabulary, counts, merge map,
    embeddings and config; ``stats`` (report figures) are not part of it.
    """

    names: list[str]
    embeddings: np.ndarray
    vocab: list[str]
    counts: list[int]
    merge_map: dict[str, int]
    config: dict
    stats: dict = field(default_factory=dict)
    hash: str = ""

    def __post_init__(self):
        self.embeddings = np.ascontiguousarray(self.embeddings, dtype=np.float32)
        if not self.hash:
            self.hash = self.content_hash()
        self._normalizer = TagNormalizer(from_dict(NormalizeConfig, self.config.get("normalize", {})))

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def T(self) -> int:
        return len(self.names)

    def content_hash(self) -> str:
        canon = json.dumps({"format": FORMAT, "names": self.names, "vocab": self.vocab,
                            "counts": [int(c) for c in self.counts], "merge_map": self.merge_map,
                            "config": self.config}, sort_keys=True, ensure_ascii=False,
                           separators=(",", ":")).encode("utf-8")
        h = hashlib.sha256(canon)
        h.update(repr(self.embeddings.shape).encode())
        h.update(self.embeddings.astype("<f4").tobytes())
        return h.hexdigest()

    def unit_ids(self, tags: list) -> list[int]:
        """Sorted unit ids of one image's raw tags (unknown and dropped tags ignored)."""
        ids = {self.merge_map.get(k, -1) for k in self._normalizer.normalize_image(tags)}
        ids.discard(-1)
        return sorted(ids)

    def targets(self, tag_lists: list[list]) -> np.ndarray:
        """(B, T) uint8 multi-hot of merged units; an image with no known tag gets an all-zero row."""
        out = np.zeros((len(tag_lists), self.T), dtype=np.uint8)
        for i, tags in enumerate(tag_lists):
            out[i, self.unit_ids(tags)] = 1
        return out

    def groups(self) -> list[list[str]]:
        """Member tags of each unit, most frequent first."""
        members: list[list[str]] = [[] for _ in self.names]
        for tag in self.vocab:
            u = self.merge_map[tag]
            if u >= 0:
                members[u].append(tag)
        return members

    # -- storage -----------------------------------------------------------------------------
    def save(self, url: str) -> None:
        """Write the artifact files (and report) to a local directory or an s3:// prefix."""
        from trainer.tags.report import render_report

        buf = io.BytesIO()
        np.save(buf, self.embeddings, allow_pickle=False)
        files = {
            "vocab.json": _json([[t, int(c)] for t, c in zip(self.vocab, self.counts)]),
            "merge_map.json": _json({"units": self.names, "map": self.merge_map}),
            "embeddings.npy": buf.getvalue(),
            "semantics.json": _json({"format": FORMAT, "hash": self.hash, "T": self.T, "dim": self.dim,
                                     "config": self.config, "stats": self.stats}),
        }
        markdown, png = render_report(self)
        files["report.md"] = markdown.encode("utf-8")
        files["tag_frequency.png"] = png
        for name, data in files.items():
            _write(url, name, data)

    @classmethod
    def load(cls, url: str) -> "TagSemantics":
        """Read an artifact; a missing file or a hash mismatch raises ArtifactError naming ``url``."""
        raw = {name: _read(url, name) for name in FILES}
        try:
            meta = json.loads(raw["semantics.json"])
            vocab = json.loads(raw["vocab.json"])
            mm = json.loads(raw["merge_map.json"])
            emb = np.load(io.BytesIO(raw["embeddings.npy"]), allow_pickle=False)
        except (ValueError, KeyError) as e:
            raise ArtifactError(f"{url}: unreadable tag-semantics artifact: {e}") from None
        if meta.get("format") != FORMAT:
            raise ArtifactError(f"{url}: artifact format {meta.get('format')!r}, this code reads {FORMAT}")
        sem = cls(names=mm["units"], embeddings=emb, vocab=[t for t, _ in vocab],
                  counts=[c for _, c in vocab], merge_map=mm["map"], config=meta["config"],
                  stats=meta.get("stats", {}), hash="")
        if sem.hash != meta.get("hash"):
            raise ArtifactError(f"{url}: content hash {sem.hash[:12]} does not match the recorded "
                                f"{str(meta.get('hash'))[:12]} (files changed or mixed)")
        return sem


def _json(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")


def _write(url: str, name: str, data: bytes) -> None:
    from shards import storage  # atomic locally (temp + rename), one put on S3

    storage.write_bytes(storage.join(url, name), data)


def _read(url: str, name: str) -> bytes:
    from shards import storage

    try:
        return storage.read_bytes(storage.join(url, name))
    except FileNotFoundError:
        raise ArtifactError(f"{url}: tag-semantics artifact has no {name}") from None
