"""Tag-area fixtures: small tag corpora and shard sets written with the project's shard writer."""
from __future__ import annotations

import json

import pytest

# Eight images, hand-countable: sky/clouds co-occur 3x, dog/puppy 2x.
CORPUS = [
    ["Sky", "clouds", "sunset"],
    ["sky", "clouds"],
    ["sky ", "CLOUDS", "blue"],
    ["dog", "puppy"],
    ["Dog", "puppy", "grass"],
    ["dog", "grass"],
    [],
    ["2007", "sky"],
]
LABELS = [["sky"], ["sky"], ["sky"], ["dog"], ["dog", "plant"], ["dog", "plant"], [], ["sky"]]


def write_shard_set(url: str, tag_lists: list, labels: list | None = None, per_shard: int = 3,
                    raw_tags: dict[int, bytes] | None = None) -> list[str]:
    """Write a shard set with ``shards.writer.ShardSetWriter``; ``raw_tags`` overrides tags.json bytes."""
    from shards.writer import ShardSetWriter

    w = ShardSetWriter(url, source="test", split="train", max_count=per_shard)
    for i, tags in enumerate(tag_lists):
        sample = {"__key__": f"img{i:05d}", "jpg": b"\xff\xd8not-decoded",
                  "tags.json": (raw_tags or {}).get(i, json.dumps(tags).encode("utf-8"))}
        if labels is not None:
            sample["labels.json"] = json.dumps(labels[i]).encode("utf-8")
        w.write(sample)
    return w.close().shard_urls()


@pytest.fixture
def corpus():
    return [list(t) for t in CORPUS], [list(l) for l in LABELS]
