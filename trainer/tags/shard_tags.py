"""The tag fields of one shard, through ``shards.reader.iter_samples`` (only the two JSON members).

Bad samples (tags.json not UTF-8 / not JSON / not a list of strings, truncated tar, ...) are counted
by the shard reader under its reasons; this adapter adds one example line per reason naming the
shard, so the report says where to look.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from trainer.tags.counting import Sample

FIELDS = ("tags.json", "labels.json")


def iter_shard_tags(url: str, skips: Counter, examples: list[str]) -> Iterator[Sample]:
    """Yield one ``Sample`` per good sample of shard ``url``; bad ones are counted in ``skips``."""
    from shards.reader import iter_samples

    local: Counter = Counter()
    for s in iter_samples(url, fields=FIELDS, skips=local):
        yield Sample(s["__key__"], s["tags"], s.get("labels", []))
    for reason, n in sorted(local.items()):
        if len(examples) < 20:
            examples.append(f"{reason}: {n} sample(s) in {url}")
    skips.update(local)
