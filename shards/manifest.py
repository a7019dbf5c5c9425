"""``manifest.json`` beside a shard set: every shard with its sample count, byte size and sha256.

The counts are what the reader sizes epochs from (equal batches on every rank without reading the
data first); the byte size is checked cheaply on every read, the sha256 by ``verify``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from shards import storage
from shards.schema import SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the manifest file."""


@dataclass
class ShardEntry:
    url: str
    count: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    shards: list[ShardEntry]
    source: str
    split: str
    label_names: list[str] | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_by: str = "wsdhq 0.1.0"
    base_url: str = ""  # the shard set's directory/prefix; not serialised

    @property
    def total(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def url(self) -> str:
        return storage.join(self.base_url, MANIFEST_NAME)

    def shard_urls(self) -> list[str]:
        """Absolute shard URLs (manifest URLs are relative to the manifest's directory)."""
        return [s.url if "://" in s.url or s.url.startswith("/") else storage.join(self.base_url, s.url)
                for s in self.shards]

    def offsets(self) -> list[int]:
        """Global index of each shard's first sample, in manifest order."""
        out, acc = [], 0
        for s in self.shards:
            out.append(acc)
            acc += s.count
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("base_url")
        d["total"] = self.total
        order = ["schema_version", "source", "split", "created_by", "label_names", "shards", "total", "skipped"]
        return {k: d[k] for k in order}

    def save(self, url: str | None = None) -> str:
        """Write to ``url`` (a set directory/prefix or the manifest file); defaults to ``base_url``."""
        target = _manifest_url(url) if url is not None else self.url
        storage.write_bytes(target, (json.dumps(self.to_json(), indent=1) + "\n").encode("utf-8"))
        return target

    @classmethod
    def load(cls, url: str) -> "Manifest":
        """Load and validate; ``url`` is a shard-set directory/prefix or the manifest file itself."""
        murl = _manifest_url(url)
        try:
            raw = storage.read_bytes(murl)
        except FileNotFoundError:
            raise FileNotFoundError(f"{murl}: no manifest.json here (is {url} a shard set?)") from None
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exn:
            raise ManifestError(f"{murl}: not valid UTF-8 JSON ({exn})") from None
        if not isinstance(d, dict):
            raise ManifestError(f"{murl}: expected a JSON object")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{murl}: schema_version {d.get('schema_version')!r}; this reader knows "
                                f"{SCHEMA_VERSION}")
        missing = [k for k in ("source", "split", "shards", "total") if k not in d]
        if missing:
            raise ManifestError(f"{murl}: missing field(s) {missing}")
        try:
            entries = [ShardEntry(url=str(s["url"]), count=int(s["count"]), bytes=int(s["bytes"]),
                                  sha256=str(s["sha256"])) for s in d["shards"]]
        except (KeyError, TypeError, ValueError) as exn:
            raise ManifestError(f"{murl}: bad shard entry ({type(exn).__name__}: {exn})") from None
        m = cls(shards=entries, source=str(d["source"]), split=str(d["split"]),
                label_names=d.get("label_names"), skipped=dict(d.get("skipped") or {}),
                schema_version=d["schema_version"], created_by=str(d.get("created_by", "")),
                base_url=storage.parent(murl))
        if m.total != int(d["total"]):
            raise ManifestError(f"{murl}: total {d['total']} != sum of shard counts {m.total}")
        if any(s.count < 0 or s.bytes < 0 for s in entries):
            raise ManifestError(f"{murl}: negative count or bytes in a shard entry")
        if len({s.url for s in entries}) != len(entries):
            raise ManifestError(f"{murl}: a shard is listed twice")
        return m


def _manifest_url(url: str) -> str:
    url = str(url)
    return url if url.endswith(".json") else storage.join(url, MANIFEST_NAME)


def sha256_of(url: str) -> tuple[str, int]:
    """(hex digest, byte count) of a file/object, streamed in 1 MiB chunks."""
    h, n = hashlib.sha256(), 0
    for chunk in storage.iter_chunks(url):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def verify(manifest: Manifest, checksums: bool = True) -> list[str]:
    """Problems found (empty when the set is intact): missing shards, size or sha256 mismatches."""
    problems = []
    for entry, url in zip(manifest.shards, manifest.shard_urls()):
        try:
            if checksums:
                digest, n = sha256_of(url)
            else:
                digest, n = entry.sha256, storage.size(url)
        except FileNotFoundError:
            problems.append(f"{url}: shard listed in {manifest.url} does not exist")
            continue
        if n != entry.bytes:
            problems.append(f"{url}: {n} bytes but {manifest.url} says {entry.bytes}; "
                            "the shard changed since the manifest was written")
        elif digest != entry.sha256:
            problems.append(f"{url}: sha256 {digest[:12]}... does not match manifest {manifest.url} "
                            f"({entry.sha256[:12]}...)")
    return problems


def check_shards(manifest: Manifest, checksums: bool = False) -> None:
    """Refuse a shard set with a missing or changed shard before anything streams from it: the first
    problem as one line (``FileNotFoundError`` for a missing shard, else ``ManifestError``). Byte
    sizes by default (one stat/HEAD per shard); ``checksums`` also compares every sha256."""
    problems = verify(manifest, checksums=checksums)
    if problems:
        more = (f" (and {len(problems) - 1} more; python -m shards verify {manifest.base_url})"
                if len(problems) > 1 else "")
        cls = FileNotFoundError if problems[0].endswith("does not exist") else ManifestError
        raise cls(problems[0] + more)


def load_split(root: str, split: str) -> Manifest:
    return Manifest.load(storage.join(root, split))

