"""Generic sources: a JSONL/CSV list of images with tags, or a folder of images with sidecar tag files.

List form, one item per line/row, paths relative to the list file unless absolute:

* JSONL: ``{"image": "a/b.jpg", "tags": ["sky", "new york"], "labels": ["sky"], "caption": "...",
  "key": "optional-id"}``; ``tags`` may also be one string split on ``--tag-sep``.
* CSV with a header: columns ``image``, ``tags`` (split on ``--tag-sep``, default ``|``), optional
  ``labels``, ``caption``, ``key``.

Folder form: every ``*.jpg|jpeg|png|webp`` under the folder (sorted walk); tags from the sidecar
``<name>.tags.txt`` (else ``<name>.txt``), one tag per line or comma-separated; labels from an
optional ``<name>.labels.txt``. The key is the image path relative to the folder, without suffix.

An item without a tags field / sidecar is skipped as ``missing_tags`` (an empty tag list is kept as
untagged); a tag file that is not UTF-8 is skipped as ``non_utf8_tags``; an unreadable line as
``bad_list_line``; a listed image that does not exist as ``missing_image_file``.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterator

from shards.schema import make_key
from shards.writer import DatasetWriter, ShardingConfig

DEFAULT_SEP = "|"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _split(value, sep: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [t for t in (v.strip() for v in value.split(sep)) if t]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"expected a list of strings or a {sep!r}-separated string, got {type(value).__name__}")


def _rows(path: Path) -> Iterator[tuple[int, dict | None, str]]:
    """(line number, row or None when unreadable, error) streamed from a .jsonl or .csv file."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8", errors="strict") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "image" not in reader.fieldnames:
                raise ValueError(f"{path}: CSV needs a header with an 'image' column (got {reader.fieldnames})")
            try:
                for row in reader:
                    yield reader.line_num, row, ""
            except UnicodeDecodeError as exn:
                raise ValueError(f"{path}: not UTF-8 near line {reader.line_num + 1} ({exn.reason})") from None
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.decode("utf-8"))
                if not isinstance(row, dict):
                    raise ValueError("not a JSON object")
                yield n, row, ""
            except (UnicodeDecodeError, ValueError) as exn:
                yield n, None, f"{type(exn).__name__}: {exn}"


def convert_list(list_path: str, out: str, sharding: ShardingConfig | None = None, sep: str = DEFAULT_SEP,
                 source: str | None = None, overwrite: bool = False) -> DatasetWriter:
    path = Path(list_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found")
    with DatasetWriter(out, source or f"list:{path.name}", None, sharding, overwrite) as w:
        for n, row, err in _rows(path):
            where = f"{path}:{n}"
            if row is None:
                w.skip("bad_list_line", f"{where}: {err}")
                continue
            if not row.get("image"):
                w.skip("bad_list_line", f"{where}: no 'image' field")
                continue
            img = Path(row["image"]) if os.path.isabs(row["image"]) else path.parent / row["image"]
            try:
                tags = _split(row.get("tags"), sep)
                labels = _split(row.get("labels") or None, sep)
            except ValueError as exn:
                w.skip("bad_tags", f"{where}: {exn}")
                continue
            if tags is None:
                w.skip("missing_tags", f"{where}: no 'tags' field")
                continue
            try:
                data = img.read_bytes()
            except OSError:
                w.skip("missing_image_file", f"{where}: {img} not readable")
                continue
            key = make_key(row.get("key") or os.path.splitext(row["image"])[0])
            w.add(key, data, tags, labels, row.get("caption") or None, where=f"{where} ({img})")
    return w


def _read_tag_file(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")  # UnicodeDecodeError -> counted by the caller
    return [t for line in text.splitlines() for t in (p.strip() for p in line.split(",")) if t]


def _images_under(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath, name)


def convert_folder(folder: str, out: str, sharding: ShardingConfig | None = None, source: str | None = None,
                   overwrite: bool = False) -> DatasetWriter:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: folder not found")
    with DatasetWriter(out, source or f"folder:{root.name}", None, sharding, overwrite) as w:
        for img in _images_under(root):
            stem = img.with_suffix("")
            sidecar = next((p for p in (Path(f"{stem}.tags.txt"), Path(f"{stem}.txt")) if p.is_file()), None)
            if sidecar is None:
                w.skip("missing_tags", f"{img}: no {stem.name}.tags.txt or {stem.name}.txt beside it")
                continue
            try:
                tags = _read_tag_file(sidecar)
                labels_file = Path(f"{stem}.labels.txt")
                labels = _read_tag_file(labels_file) if labels_file.is_file() else None
            except UnicodeDecodeError:
                w.skip("non_utf8_tags", f"{sidecar}: not UTF-8")
                continue
            w.add(make_key(str(stem.relative_to(root))), img.read_bytes(), tags, labels, where=str(img))
    return w
