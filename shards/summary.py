"""``shards summary``: per-split sample counts, tag and label statistics of a converted dataset."""
from __future__ import annotations

from collections import Counter

from shards import storage
from shards.manifest import Manifest
from shards.reader import iter_samples
from shards.writer import SPLITS


def split_stats(manifest: Manifest, top: int = 10) -> dict:
    tags, labels, skips = Counter(), Counter(), Counter()
    n = untagged = tag_total = 0
    for url in manifest.shard_urls():
        for s in iter_samples(url, fields=["tags.json", "labels.json"], skips=skips):
            n += 1
            tag_total += len(s["tags"])
            untagged += not s["tags"]
            tags.update(s["tags"])
            labels.update(s["labels"])
    return {"split": manifest.split, "samples": n, "manifest_total": manifest.total, "shards": len(manifest.shards),
            "untagged": untagged, "tags_per_sample": tag_total / max(n, 1), "distinct_tags": len(tags),
            "top_tags": tags.most_common(top), "labels": dict(sorted(labels.items())),
            "read_skips": dict(skips), "conversion_skips": manifest.skipped}


def summarize(root: str) -> str:
    """A text report over ``root`` (a dataset root with split folders, or a single shard set)."""
    sets = [storage.join(root, s) for s in SPLITS if storage.exists(storage.join(root, s, "manifest.json"))]
    lines = []
    for url in sets or [root]:
        st = split_stats(Manifest.load(url))
        lines.append(f"[{st['split']}] {st['samples']} samples (manifest: {st['manifest_total']}) in "
                     f"{st['shards']} shard(s); untagged {st['untagged']}; {st['tags_per_sample']:.2f} tags/sample; "
                     f"{st['distinct_tags']} distinct tags")
        lines.append("  top tags: " + ", ".join(f"{t} ({c})" for t, c in st["top_tags"]))
        lines.append("  labels: " + (", ".join(f"{t} ({c})" for t, c in st["labels"].items()) or "none"))
        lines.append(f"  skipped at conversion: {st['conversion_skips'] or 'none'}; "
                     f"skipped on this read: {st['read_skips'] or 'none'}")
    return "\n".join(lines)
