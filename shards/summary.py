"""``shards summary``: per-split sample counts, tag and label statistics of a converted dataset."""
from __future__ import annotations

from collections import Counter

from shards import storage
from shards.manifest import Manifest, check_shards
from shards.reader import check_complete, iter_set
from shards.writer import SPLITS


def split_stats(manifest: Manifest, top: int = 10) -> dict:
    """Counts over one set; ``samples + sum(read_skips) == manifest_total`` (shard losses included)."""
    check_shards(manifest)
    tags, labels, skips = Counter(), Counter(), Counter()
    n = untagged = tag_total = 0
    reads: list = []
    for s in iter_set(manifest, ["tags.json", "labels.json"], skips, reads):
        n += 1
        tag_total += len(s["tags"])
        untagged += not s["tags"]
        tags.update(s["tags"])
        labels.update(s["labels"])
    return {"split": manifest.split, "samples": n, "manifest_total": manifest.total, "shards": len(manifest.shards),
            "untagged": untagged, "tags_per_sample": tag_total / max(n, 1), "distinct_tags": len(tags),
            "top_tags": tags.most_common(top), "labels": dict(sorted(labels.items())),
            "read_skips": dict(skips), "conversion_skips": manifest.skipped,
            "short_shards": check_complete(reads, manifest.url, partial=True)}


def summarize(root: str) -> tuple[str, bool]:
    """A text report over ``root`` (a dataset root with split folders, or a single shard set), and
    whether every sample was accounted for without a shard-level loss."""
    sets = [storage.join(root, s) for s in SPLITS if storage.exists(storage.join(root, s, "manifest.json"))]
    lines = []
    whole = True
    for url in sets or [root]:
        st = split_stats(Manifest.load(url))
        lines.append(f"[{st['split']}] {st['samples']} samples (manifest: {st['manifest_total']}) in "
                     f"{st['shards']} shard(s); untagged {st['untagged']}; {st['tags_per_sample']:.2f} tags/sample; "
                     f"{st['distinct_tags']} distinct tags")
        lines.append("  top tags: " + ", ".join(f"{t} ({c})" for t, c in st["top_tags"]))
        lines.append("  labels: " + (", ".join(f"{t} ({c})" for t, c in st["labels"].items()) or "none"))
        lines.append(f"  skipped at conversion: {st['conversion_skips'] or 'none'}; "
                     f"skipped on this read: {st['read_skips'] or 'none'}")
        for line in st["short_shards"]:
            lines.append(f"  SHORT {line}")
        whole = whole and not st["short_shards"]
    return "\n".join(lines), whole
