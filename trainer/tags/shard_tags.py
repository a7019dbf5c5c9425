"""Read the tag fields of one WebDataset shard, with a counted skip for every bad sample.

Why not ``shards.reader.iter_samples``: this pass must tell a sample whose ``tags.json`` is not
UTF-8 or not JSON from a good one and go on with the rest of the shard, naming shard and key; so it
takes raw bytes from webdataset's tar iterator and decodes the two JSON fields itself. Images are
never decoded.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

from trainer.tags.counting import Sample


def iter_shard_tags(url: str, skips: Counter, examples: list[str]) -> Iterator[Sample]:
    """Yield ``Sample``s of shard ``url``; bad samples are counted in ``skips`` and not yielded."""
    import webdataset as wds

    if url.startswith("s3://"):
        import shards.storage  # noqa: F401  (registers the s3 scheme in webdataset's gopen)
    dataset = wds.WebDataset([url], shardshuffle=False, empty_check=False)
    for raw in dataset:
        key = raw.get("__key__", "?")
        if "tags.json" not in raw:
            _skip(skips, examples, "no_tags_json", url, key)
            continue
        tags = _decode(raw["tags.json"], url, key, "tags", skips, examples)
        if tags is None:
            continue
        labels = None
        if "labels.json" in raw:
            labels = _decode(raw["labels.json"], url, key, "labels", skips, examples)
            if labels is not None and not all(isinstance(x, str) for x in labels):
                _skip(skips, examples, "labels_not_strings", url, key)
                labels = None
        yield Sample(key, tags, labels)


def _decode(data: bytes, url: str, key: str, what: str, skips: Counter, examples: list[str]):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        _skip(skips, examples, f"{what}_not_utf8", url, key, f"byte {e.start}")
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        _skip(skips, examples, f"{what}_bad_json", url, key, e.msg)
        return None
    if not isinstance(value, list):
        _skip(skips, examples, f"{what}_not_a_list", url, key)
        return None
    return value


def _skip(skips: Counter, examples: list[str], reason: str, url: str, key: str, detail: str = "") -> None:
    skips[reason] += 1
    if len(examples) < 20:
        examples.append(f"{reason}: {url} key {key}" + (f" ({detail})" if detail else ""))
