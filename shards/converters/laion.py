"""img2dataset / LAION-style shards (``{key}.jpg`` + ``{key}.txt`` caption + ``{key}.json``) read as they are.

Tags come from the json's ``tag_field`` (default ``tags``: a list of strings or one comma-separated
string) when present. Otherwise they are derived from the caption by this rule (all configurable):
lowercase; split into words on anything that is not a letter or digit; drop stopwords (a built-in
English list or ``--stopwords FILE``), words shorter than ``min_word_length`` and pure numbers;
keep the first ``max_tags`` distinct words in caption order. The caption is kept as ``txt``.
Labels (for evaluation) come from the json's ``label_field`` when one is named (e.g. ``categories``:
a list of strings or one comma-separated string); a sample without it is kept unlabelled, one whose
field has another type is skipped as ``bad_labels``.
A sample with neither tags nor caption is skipped as ``missing_tags``; img2dataset's failed
downloads (json ``status`` not ``success`` and no image) are skipped as ``missing_image``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shards.converters.generic import string_list
from shards.reader import raw_samples
from shards.schema import IMAGE_EXTS, make_key
from shards.writer import DatasetWriter, ShardingConfig

STOPWORDS = frozenset("""a an and are as at be been but by for from has have he her his i in into is it its
of on or our she that the their them there these they this those to was we were which while with you your
my me us not no so than then too very can will just over under up down out off about after before above below
""".split())
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass
class LaionConfig:
    tag_field: str = "tags"
    label_field: str | None = None
    min_word_length: int = 3
    max_tags: int = 20
    stopwords_file: str | None = None

    def stopwords(self) -> frozenset[str]:
        if self.stopwords_file is None:
            return STOPWORDS
        return frozenset(Path(self.stopwords_file).read_text(encoding="utf-8").split())


def caption_tags(caption: str, cfg: LaionConfig, stop: frozenset[str]) -> list[str]:
    out: list[str] = []
    for word in _WORD.findall(caption.lower()):
        if len(word) < cfg.min_word_length or word in stop or word.isdigit() or word in out:
            continue
        out.append(word)
        if len(out) == cfg.max_tags:
            break
    return out


def convert_laion(inputs: list[str], out: str, sharding: ShardingConfig | None = None,
                  cfg: LaionConfig | None = None, overwrite: bool = False) -> DatasetWriter:
    cfg = cfg or LaionConfig()
    stop = cfg.stopwords()
    with DatasetWriter(out, "img2dataset/LAION-style shards", None, sharding, overwrite) as w:
        read_skips: Counter = Counter()
        for url in inputs:
            for _, raw in raw_samples(str(url), read_skips):
                where = f"{url}:{raw['__key__']}"
                image = next((raw[e] for e in IMAGE_EXTS if e in raw), None)
                if image is None:
                    w.skip("missing_image", f"{where}: no image (failed download?)")
                    continue
                try:
                    meta = json.loads(raw["json"].decode("utf-8")) if "json" in raw else {}
                    caption = raw["txt"].decode("utf-8") if "txt" in raw else meta.get("caption")
                except (UnicodeDecodeError, ValueError):
                    w.skip("bad_metadata", f"{where}: json/txt not UTF-8 JSON/text")
                    continue
                if not isinstance(meta, dict):
                    w.skip("bad_metadata", f"{where}: json is not an object")
                    continue
                try:
                    tags = string_list(meta.get(cfg.tag_field), ",")
                except ValueError as exn:
                    w.skip("bad_tags", f"{where}: {cfg.tag_field!r}: {exn}")
                    continue
                try:
                    labels = string_list(meta.get(cfg.label_field), ",") if cfg.label_field else None
                except ValueError as exn:
                    w.skip("bad_labels", f"{where}: {cfg.label_field!r}: {exn}")
                    continue
                if cfg.label_field and labels is None:
                    labels = []
                if tags is None:
                    if not caption:
                        w.skip("missing_tags", f"{where}: no '{cfg.tag_field}' in json and no caption")
                        continue
                    tags = caption_tags(caption, cfg, stop)
                w.add(make_key(raw["__key__"]), image, tags, labels, caption or None, where=where)
        for reason, n in read_skips.items():
            w.skipped[reason] += n
            w.examples.setdefault(reason, "reading the input tars (see log)")
    return w
