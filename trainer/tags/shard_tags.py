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


def iter_shard_tags(url: str, skips: Counter, examples: list[str], expected: int | None = None,
                    short: list[str] | None = None) -> Iterator[Sample]:
    """Yield one ``Sample`` per good sample of shard ``url``; bad ones are counted in ``skips``.
    With ``expected`` (the manifest's count) a shard that falls short adds a line to ``short``."""
    from shards.reader import ShardRead, check_complete, iter_samples

    local: Counter = Counter()
    res = ShardRead(url)
    for s in iter_samples(url, fields=FIELDS, skips=local, expected=expected, result=res):
        yield Sample(s["__key__"], s["tags"], s.get("labels", []))
    if short is not None:
        short += check_complete([res], url, partial=True)
    for reason, n in sorted(local.items()):
        if len(examples) < 20:
            examples.append(f"{reason}: {n} sample(s) in {url}")
    skips.update(local)
